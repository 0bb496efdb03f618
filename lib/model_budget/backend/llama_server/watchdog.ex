defmodule ModelBudget.Backend.LlamaServer.Watchdog do
  @moduledoc """
  Starts a `llama-server` through a small POSIX `sh` watchdog, so that the
  server, and everything it forks, ends with the VM that started it, however
  the VM ends, on Linux and macOS alike, with no helper beyond `/bin/sh`.

  The port runs `/bin/sh -c SCRIPT`, where the script:

    1. starts the server in a process group of its own: under `setsid`
       where it is on `PATH` (util-linux, busybox), else with the shell's job
       control (`set -m`) when the shell is bash (macOS's `/bin/sh`); dash's
       job control is not used (without a terminal it has none, and with one
       it would take the terminal from the VM). Where neither is found the
       server runs in the watchdog's group and only it is signalled, not
       what it forks;
    2. prints `model_budget_watchdog pid=PID group=0|1` as the port's first
       line, from the server's own process just before it `exec`s the
       server (so no line of the server's comes before it): the server's
       pid, which is its group's id when `group=1`;
    3. blocks reading its standard input, the port's pipe, in a background
       guard: at end of file (the port was closed, because its owner died
       or the VM died, even by `SIGKILL`) it sends `SIGTERM` to the group,
       waits up to the grace period for it to go, then sends `SIGKILL`;
    4. when the server exits, signals what is left of its group (`SIGTERM`,
       then `SIGKILL` after the grace period) and exits with the server's
       status, `128 + N` for a server killed by signal `N`.

  The server's command line reaches the watchdog through its environment
  (`MODEL_BUDGET_ARG_<i>`, unset before the `exec`), so the watchdog's own
  command line names no model file and the server's has only its own
  arguments. `SIGINT` and `SIGQUIT` are ignored by the watchdog (a Ctrl-C in
  the VM's terminal is the VM's business); `SIGTERM` or `SIGHUP` to it stops
  the server. Without any `sh` the server is started directly, as a last
  resort, and a warning says that it may outlive the VM.
  """

  require Logger

  @marker ~r/^model_budget_watchdog pid=(\d+) group=([01])$/

  @script ~S"""
  grace=${MODEL_BUDGET_GRACE:-5}
  sh=${MODEL_BUDGET_SH:-/bin/sh}
  inner='echo "model_budget_watchdog pid=$$ group=$1"
  i=0
  set --
  while [ "$i" -lt "${MODEL_BUDGET_ARGC:-0}" ]; do
    eval "set -- \"\$@\" \"\$MODEL_BUDGET_ARG_$i\"; unset MODEL_BUDGET_ARG_$i"
    i=$((i + 1))
  done
  unset MODEL_BUDGET_ARGC MODEL_BUDGET_GRACE MODEL_BUDGET_SH
  exec "$@"'
  exec 3<&0 </dev/null
  if command -v setsid >/dev/null 2>&1; then
    setsid "$sh" -c "$inner" model_budget_server 1 3<&- &
    server=$!
    target=-$server
    col=pgid
  elif [ -n "${BASH_VERSION:-}" ]; then
    set -m
    "$sh" -c "$inner" model_budget_server 1 3<&- &
    server=$!
    set +m
    target=-$server
    col=pgid
  else
    "$sh" -c "$inner" model_budget_server 0 3<&- &
    server=$!
    target=$server
    col=pid
  fi
  alive() {
    kill -s 0 -- "$target" 2>/dev/null || return 1
    ps -A -o "$col=" -o stat= 2>/dev/null | {
      seen=
      while read -r p s; do
        seen=1
        if [ "$p" = "$server" ]; then
          case $s in Z*) ;; *) exit 0 ;; esac
        fi
      done
      [ -z "$seen" ]
    }
  }
  stop() {
    kill -s "$1" -- "$target" 2>/dev/null || return 0
    n=0
    while [ "$n" -lt "$grace" ] && alive; do
      sleep 1
      n=$((n + 1))
    done
    kill -s KILL -- "$target" 2>/dev/null
    return 0
  }
  trap '' INT QUIT
  { while read -r _; do :; done; stop TERM; } <&3 >/dev/null 2>&1 &
  guard=$!
  exec 3<&- 2>/dev/null
  trap 'stopping=1; stop TERM' TERM HUP
  status=
  while [ -z "$status" ]; do
    stopping=
    wait "$server"
    s=$?
    [ -n "$stopping" ] || status=$s
  done
  stop TERM
  kill -s KILL "$guard" 2>/dev/null
  exit "$status"
  """

  @typedoc """
  How a started server is addressed: through the watchdog (its pid and
  group come on the port's first line, see `marker/1`), or directly.
  """
  @type mode :: :watchdog | {:direct, pos_integer()}

  @typedoc "Where signals go: a process group (`-pgid`) or one pid."
  @type target :: {:group, pos_integer()} | {:pid, pos_integer()}

  @doc """
  Opens a port running `executable` with `args` under the watchdog.

  ## Options

    * `:env` - more environment variables for the server, as
      `{name, value}` strings. Defaults to `[]`.
    * `:grace_ms` - how long the watchdog waits after `SIGTERM` before
      `SIGKILL`, rounded up to whole seconds. Defaults to `5_000`.
    * `:shell` - the shell to run the watchdog with; `nil` starts the server
      directly. Defaults to `shell/0`.
  """
  @spec open(Path.t(), [String.t()], keyword()) :: {:ok, port(), mode()} | {:error, term()}
  def open(executable, args, opts \\ []) do
    env = Keyword.get(opts, :env, [])
    grace = div(Keyword.get(opts, :grace_ms, 5_000) + 999, 1000)

    case Keyword.get_lazy(opts, :shell, &shell/0) do
      nil ->
        Logger.warning(
          "no /bin/sh: #{executable} is started without a watchdog and may outlive the VM"
        )

        direct(executable, args, env)

      shell ->
        argv =
          args
          |> Enum.with_index(1)
          |> Enum.map(fn {arg, i} -> {"MODEL_BUDGET_ARG_#{i}", arg} end)

        vars =
          [
            {"MODEL_BUDGET_SH", shell},
            {"MODEL_BUDGET_GRACE", Integer.to_string(max(grace, 1))},
            {"MODEL_BUDGET_ARGC", Integer.to_string(length(args) + 1)},
            {"MODEL_BUDGET_ARG_0", executable}
          ] ++ argv ++ env

        spawn(shell, ["-c", @script, "model_budget_watchdog"], vars, :watchdog)
    end
  end

  defp direct(executable, args, env) do
    with {:ok, port, _} <- spawn(executable, args, env, :direct) do
      case Port.info(port, :os_pid) do
        {:os_pid, os_pid} -> {:ok, port, {:direct, os_pid}}
        nil -> {:error, :exited}
      end
    end
  end

  defp spawn(program, args, env, mode) do
    port =
      Port.open({:spawn_executable, program}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        :hide,
        {:line, 16_384},
        args: args,
        env: Enum.map(env, fn {k, v} -> {String.to_charlist(k), String.to_charlist(v)} end)
      ])

    {:ok, port, mode}
  rescue
    error in ErlangError -> {:error, error.original}
  end

  @doc """
  The shell the watchdog runs with: `/bin/sh`, else `sh` on `PATH`, else
  `nil`.
  """
  @spec shell() :: Path.t() | nil
  def shell do
    if File.exists?("/bin/sh"), do: "/bin/sh", else: System.find_executable("sh")
  end

  @doc """
  The server's pid and where its signals go, from the watchdog's first line;
  `nil` for any other line.

  ## Examples

      iex> ModelBudget.Backend.LlamaServer.Watchdog.marker("model_budget_watchdog pid=4242 group=1")
      {4242, {:group, 4242}}

      iex> ModelBudget.Backend.LlamaServer.Watchdog.marker("model_budget_watchdog pid=4242 group=0")
      {4242, {:pid, 4242}}

      iex> ModelBudget.Backend.LlamaServer.Watchdog.marker("main: loading model")
      nil
  """
  @spec marker(String.t()) :: {pos_integer(), target()} | nil
  def marker(line) do
    case Regex.run(@marker, line) do
      [_, pid, "1"] -> {String.to_integer(pid), {:group, String.to_integer(pid)}}
      [_, pid, "0"] -> {String.to_integer(pid), {:pid, String.to_integer(pid)}}
      nil -> nil
    end
  end

  @doc """
  Sends the signal `name` (`"TERM"`, `"KILL"`) to `target`, with the
  shell's own `kill` (no `kill` on `PATH` needed). A target that is gone
  is no error.
  """
  @spec signal(target() | nil, String.t(), Path.t() | nil) :: :ok
  def signal(target, name, shell \\ shell())

  def signal(nil, _name, _shell), do: :ok

  def signal(target, name, shell) do
    operand =
      case target do
        {:group, pgid} -> "-#{pgid}"
        {:pid, pid} -> "#{pid}"
      end

    case shell || System.find_executable("kill") do
      nil ->
        :ok

      "/" <> _ = program ->
        if shell,
          do:
            System.cmd(program, ["-c", "kill -s #{name} -- #{operand}"], stderr_to_stdout: true),
          else: System.cmd(program, ["-s", name, "--", operand], stderr_to_stdout: true)

        :ok
    end
  end

  @doc """
  What an exit status says: `{:exited, status}` for a plain exit code, or
  `{:signal, name}` for a process killed by a signal (an exit status of
  `128 + N` from a shell, which the watchdog passes on, or the port's own),
  named as this OS numbers its signals.

  ## Examples

      iex> ModelBudget.Backend.LlamaServer.Watchdog.exit_reason(139)
      {:signal, :sigsegv}

      iex> ModelBudget.Backend.LlamaServer.Watchdog.exit_reason(1)
      {:exited, 1}
  """
  @spec exit_reason(non_neg_integer()) :: {:exited, non_neg_integer()} | {:signal, atom()}
  def exit_reason(status) when status > 128 and status <= 128 + 64,
    do: {:signal, signal_name(status - 128)}

  def exit_reason(status), do: {:exited, status}

  # The numbers POSIX systems agree on, then Linux's and the BSDs' (macOS).
  @common %{
    1 => :sighup,
    2 => :sigint,
    3 => :sigquit,
    4 => :sigill,
    5 => :sigtrap,
    6 => :sigabrt,
    8 => :sigfpe,
    9 => :sigkill,
    11 => :sigsegv,
    13 => :sigpipe,
    14 => :sigalrm,
    15 => :sigterm
  }
  @linux %{7 => :sigbus, 10 => :sigusr1, 12 => :sigusr2, 24 => :sigxcpu, 31 => :sigsys}
  @bsd %{
    7 => :sigemt,
    10 => :sigbus,
    12 => :sigsys,
    24 => :sigxcpu,
    30 => :sigusr1,
    31 => :sigusr2
  }

  @doc """
  The name of signal `n` on this OS, e.g. `:sigsegv`; `:"sigN"` for one
  without a name here.

  ## Examples

      iex> ModelBudget.Backend.LlamaServer.Watchdog.signal_name(9)
      :sigkill
  """
  @spec signal_name(pos_integer()) :: atom()
  def signal_name(n) do
    table = if match?({:unix, :linux}, :os.type()), do: @linux, else: @bsd
    Map.get(@common, n) || Map.get(table, n) || :"sig#{n}"
  end

  @doc """
  How an exit status reads in a log: `"status 3"`, or
  `"status 139 (killed by SIGSEGV)"`.

  ## Examples

      iex> ModelBudget.Backend.LlamaServer.Watchdog.describe(137)
      "status 137 (killed by SIGKILL)"
  """
  @spec describe(non_neg_integer()) :: String.t()
  def describe(status) do
    case exit_reason(status) do
      {:exited, _} ->
        "status #{status}"

      {:signal, name} ->
        "status #{status} (killed by #{name |> Atom.to_string() |> String.upcase()})"
    end
  end
end
