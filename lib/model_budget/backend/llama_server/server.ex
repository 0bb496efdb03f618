defmodule ModelBudget.Backend.LlamaServer.Server do
  @moduledoc """
  The process that owns one `llama-server` OS process through a port: it
  starts it under a watchdog (`ModelBudget.Backend.LlamaServer.Watchdog`),
  polls `/health` until the model is ready, keeps the last log lines and the
  buffer sizes llama.cpp reports, and stops it.

  Who ends it, and how:

    * its **owner** (the manager: the first of the load task's `$callers`,
      else the caller of `ModelBudget.Backend.LlamaServer.load/3`) is
      monitored: when it dies, however it dies, the server's process group
      gets `SIGKILL` at once and this process stops;
    * the process that started it (the manager's load task) is linked
      until it returns normally: if it dies before (the load was
      cancelled), so does the server;
    * the VM: when it dies, even by `SIGKILL`, the port's pipe closes and
      the watchdog ends the server's group (`SIGTERM`, `SIGKILL` after
      `:stop_timeout`);
    * `stop/1`: `SIGTERM` to the process group, `SIGKILL` to it after
      `:stop_timeout`, then at most 5 seconds more for the exit, after which
      the port is closed (the watchdog then kills what is left).

  Every signal goes to the server's process group, so a `:command` that is
  a wrapper script forking `llama-server` (no `exec`) is ended with all it
  started. A server that exits on its own once ready is logged (its exit
  status, the signal that killed it if one did, its last log lines) and
  this process stops with `{:shutdown, {:server_exited, status}}` or
  `{:shutdown, {:server_crashed, signal}}`, which the manager, monitoring
  it, sees.
  """

  use GenServer, restart: :temporary
  require Logger

  alias ModelBudget.Backend.LlamaServer.{Log, Watchdog}

  @kept_lines 40
  @max_line 65_536
  @poll_ms 100
  @health_timeout_ms 1_000
  # How long to wait for the exit once SIGKILL was sent, before the port is
  # closed (a process that escaped the group can hold its pipe open).
  @reap_ms 5_000

  @typedoc "What `start/1` needs."
  @type spec :: %{
          required(:executable) => Path.t(),
          required(:args) => [String.t()],
          required(:base_url) => String.t(),
          required(:health_url) => String.t(),
          required(:ready_timeout) => pos_integer(),
          required(:stop_timeout) => pos_integer(),
          required(:parent) => pid(),
          required(:owner) => pid(),
          optional(:env) => [{String.t(), String.t()}],
          optional(:shell) => Path.t() | nil
        }

  @typedoc "What a failed start leaves to look at: the buffers llama.cpp reported."
  @type details :: %{buffers: [Log.buffer()]}

  @doc """
  Starts the server process, links it to `spec.parent` and monitors
  `spec.owner`. Returns `{:error, {:spawn_failed, reason}}` when the
  watchdog cannot be started.
  """
  @spec start(spec()) :: {:ok, pid()} | {:error, term()}
  def start(spec), do: GenServer.start(__MODULE__, spec)

  @doc """
  Waits until `/health` answers 200: `{:ok, os_pid}`, or `{:error, reason,
  details}` once the server has exited (`{:server_exited, status,
  last_lines}`, `{:server_crashed, signal, last_lines}`) or `:ready_timeout`
  has passed (`{:ready_timeout, ms, last_lines}`; its group is killed
  first). After an error the process is gone.
  """
  @spec await_ready(pid()) :: {:ok, pos_integer()} | {:error, term(), details()}
  def await_ready(pid), do: GenServer.call(pid, {__MODULE__, :await_ready}, :infinity)

  @doc """
  Stops the OS process and this process; returns once both are gone, within
  about `:stop_timeout` plus 5 seconds.
  """
  @spec stop(pid()) :: :ok
  def stop(pid) do
    ref = Process.monitor(pid)

    try do
      GenServer.call(pid, {__MODULE__, :stop}, :infinity)
    catch
      :exit, _ -> :ok
    end

    receive do
      {:DOWN, ^ref, :process, _, _} -> :ok
    end
  end

  @doc "The buffers llama.cpp reported and the process's resident memory now."
  @spec measured(pid()) :: Log.measured()
  def measured(pid), do: GenServer.call(pid, {__MODULE__, :measured})

  @doc "The last log lines of the server, oldest first."
  @spec last_lines(pid()) :: [String.t()]
  def last_lines(pid), do: GenServer.call(pid, {__MODULE__, :last_lines})

  @impl true
  def init(spec) do
    Process.flag(:trap_exit, true)
    shell = Map.get_lazy(spec, :shell, &Watchdog.shell/0)

    watchdog_opts = [env: Map.get(spec, :env, []), grace_ms: spec.stop_timeout, shell: shell]

    case Watchdog.open(spec.executable, spec.args, watchdog_opts) do
      {:error, reason} ->
        {:stop, {:spawn_failed, reason}}

      {:ok, port, mode} ->
        # Linked only now: a failed start must not send the parent an exit
        # signal. A parent already gone sends {:EXIT, parent, :noproc}.
        Process.link(spec.parent)
        owner_ref = Process.monitor(spec.owner)
        Process.send_after(self(), :poll, @poll_ms)

        {os_pid, target} =
          case mode do
            :watchdog -> {nil, nil}
            {:direct, os_pid} -> {os_pid, {:pid, os_pid}}
          end

        {:ok,
         %{
           port: port,
           shell: shell,
           os_pid: os_pid,
           target: target,
           base_url: spec.base_url,
           health_url: spec.health_url,
           parent: spec.parent,
           owner_ref: owner_ref,
           ready_timeout: spec.ready_timeout,
           stop_timeout: spec.stop_timeout,
           timer: Process.send_after(self(), :ready_timeout, spec.ready_timeout),
           # :starting | :ready | :halting | :exited
           status: :starting,
           # When halting: what to do once the process is gone.
           then: nil,
           halt_timer: nil,
           # A signal waiting for the server's pid.
           pending: nil,
           outcome: nil,
           awaiting: nil,
           stoppers: [],
           partial: "",
           lines: :queue.new(),
           n_lines: 0,
           buffers: []
         }}
    end
  end

  @impl true
  def handle_call({__MODULE__, :await_ready}, from, %{outcome: nil} = state),
    do: {:noreply, %{state | awaiting: from}}

  def handle_call({__MODULE__, :await_ready}, _from, %{outcome: {:ok, _}} = state),
    do: {:reply, state.outcome, state}

  def handle_call({__MODULE__, :await_ready}, _from, state),
    do: {:stop, :normal, state.outcome, state}

  def handle_call({__MODULE__, :stop}, from, %{status: :exited} = state),
    do: {:stop, :normal, :ok, %{state | stoppers: [from | state.stoppers]}}

  def handle_call({__MODULE__, :stop}, from, %{status: :halting} = state),
    do: {:noreply, %{state | stoppers: [from | state.stoppers]}}

  def handle_call({__MODULE__, :stop}, from, state) do
    halt(%{state | stoppers: [from | state.stoppers]}, "TERM", {:stop, :normal})
  end

  def handle_call({__MODULE__, :measured}, _from, state),
    do: {:reply, Log.measured(Enum.reverse(state.buffers), rss(state.os_pid)), state}

  def handle_call({__MODULE__, :last_lines}, _from, state),
    do: {:reply, :queue.to_list(state.lines), state}

  @impl true
  def handle_info({port, {:data, {:eol, part}}}, %{port: port} = state),
    do: {:noreply, line(%{state | partial: ""}, append(state.partial, part))}

  def handle_info({port, {:data, {:noeol, part}}}, %{port: port} = state),
    do: {:noreply, %{state | partial: append(state.partial, part)}}

  def handle_info({port, {:exit_status, status}}, %{port: port} = state) do
    state = if state.partial == "", do: state, else: line(state, state.partial)
    exited(%{state | partial: ""}, status)
  end

  def handle_info(:poll, %{status: :starting} = state) do
    # Ready once it answers, and once the watchdog said which pid it is.
    if state.os_pid != nil and healthy?(state.health_url) do
      Process.cancel_timer(state.timer)
      ready(%{state | status: :ready}, {:ok, state.os_pid})
    else
      Process.send_after(self(), :poll, @poll_ms)
      {:noreply, state}
    end
  end

  def handle_info(:poll, state), do: {:noreply, state}

  def handle_info(:ready_timeout, %{status: :starting} = state),
    do: halt(state, "KILL", :ready_timeout)

  def handle_info(:ready_timeout, state), do: {:noreply, state}

  # SIGTERM was not enough.
  def handle_info({:halt, :kill}, %{status: :halting} = state) do
    state = deliver(state, "KILL")
    {:noreply, %{state | halt_timer: Process.send_after(self(), {:halt, :give_up}, @reap_ms)}}
  end

  # Nor SIGKILL: something holds the port's pipe. Closing it ends the
  # watchdog's wait on its standard input, which kills the group again.
  def handle_info({:halt, :give_up}, %{status: :halting} = state) do
    Logger.warning(
      "llama-server at #{state.base_url} (OS pid #{inspect(state.os_pid)}) was not " <>
        "seen to exit #{@reap_ms} ms after SIGKILL; its port is closed"
    )

    close(state.port)
    gone(state)
  end

  def handle_info({:halt, _}, state), do: {:noreply, state}

  # The load task that started us returned: we outlive it.
  def handle_info({:EXIT, parent, :normal}, %{parent: parent} = state), do: {:noreply, state}

  # It was killed (its caller died, or the load was cancelled): so are we.
  def handle_info({:EXIT, parent, _reason}, %{parent: parent} = state),
    do: halt_now(state, {:stop, :normal})

  def handle_info({:EXIT, _other, _reason}, state), do: {:noreply, state}

  # The manager is gone, however it went: so is what it started.
  def handle_info({:DOWN, ref, :process, _, _}, %{owner_ref: ref} = state),
    do: halt_now(state, {:stop, {:shutdown, :owner_down}})

  @impl true
  def terminate(_reason, %{status: :exited}), do: :ok

  # Not by one of our own stops: SIGKILL and a bounded wait. Before the
  # watchdog said which pid the server is, closing its pipe makes the
  # watchdog end the group.
  def terminate(_reason, %{target: nil} = state), do: close(state.port)

  def terminate(_reason, state) do
    Watchdog.signal(state.target, "KILL", state.shell)
    port = state.port

    receive do
      {^port, {:exit_status, _}} -> :ok
    after
      @reap_ms -> :ok
    end

    close(port)
  end

  # Starts ending the OS process: `signal` to its group now; SIGKILL after
  # :stop_timeout if that was SIGTERM; the port closed @reap_ms after
  # SIGKILL. `then` says what to do once it is gone. Returns what a
  # callback returns.
  defp halt(%{status: :exited} = state, _signal, then), do: finish(state, then)

  defp halt(%{status: :halting} = state, _signal, _then), do: {:noreply, state}

  defp halt(state, signal, then) do
    Process.cancel_timer(state.timer)
    state = deliver(%{state | status: :halting, then: then}, signal)

    {next, ms} = if signal == "KILL", do: {:give_up, @reap_ms}, else: {:kill, state.stop_timeout}

    {:noreply, %{state | halt_timer: Process.send_after(self(), {:halt, next}, ms)}}
  end

  # A signal to the server's group; before the watchdog said which pid the
  # server is (its first line), the signal waits for that.
  defp deliver(%{target: nil} = state, signal), do: %{state | pending: signal}

  defp deliver(state, signal) do
    Watchdog.signal(state.target, signal, state.shell)
    %{state | pending: nil}
  end

  # SIGKILL at once, also when a SIGTERM is under way.
  defp halt_now(%{status: :halting} = state, then) do
    state = deliver(state, "KILL")
    Process.cancel_timer(state.halt_timer)
    timer = Process.send_after(self(), {:halt, :give_up}, @reap_ms)
    {:noreply, %{state | then: merge_then(state.then, then), halt_timer: timer}}
  end

  defp halt_now(state, then), do: halt(state, "KILL", then)

  # A load waiting on a ready timeout still gets its answer.
  defp merge_then(:ready_timeout, _), do: :ready_timeout
  defp merge_then(_, then), do: then

  defp gone(state) do
    Process.cancel_timer(state.halt_timer)
    finish(%{state | status: :exited}, state.then)
  end

  # The process is gone: answer whoever waits, and stop unless a load still
  # has to ask for its outcome.
  defp finish(state, then) do
    Enum.each(state.stoppers, &GenServer.reply(&1, :ok))
    state = %{state | stoppers: []}

    case then do
      :ready_timeout ->
        ready(
          state,
          {:error, {:ready_timeout, state.ready_timeout, lines(state)}, details(state)}
        )

      {:stop, reason} ->
        if state.awaiting,
          do: GenServer.reply(state.awaiting, {:error, :stopped, details(state)})

        {:stop, reason, %{state | awaiting: nil}}
    end
  end

  defp exited(%{status: :halting} = state, _status), do: gone(state)

  defp exited(%{status: :starting} = state, status) do
    Process.cancel_timer(state.timer)
    state = %{state | status: :exited}

    reason =
      case Watchdog.exit_reason(status) do
        {:exited, _} -> {:server_exited, status, lines(state)}
        {:signal, signal} -> {:server_crashed, signal, lines(state)}
      end

    ready(state, {:error, reason, details(state)})
  end

  defp exited(%{status: :ready} = state, status) do
    Logger.warning(
      "llama-server at #{state.base_url} (OS pid #{state.os_pid}) exited with " <>
        "#{Watchdog.describe(status)}; its last log lines:\n" <> Enum.join(lines(state), "\n")
    )

    reason =
      case Watchdog.exit_reason(status) do
        {:exited, _} -> {:server_exited, status}
        {:signal, signal} -> {:server_crashed, signal}
      end

    {:stop, {:shutdown, reason}, %{state | status: :exited}}
  end

  defp exited(state, _status), do: {:noreply, state}

  # Answers the load waiting for readiness (now or when it asks); a failed
  # start stops this process once the answer is delivered.
  defp ready(%{awaiting: nil} = state, outcome), do: {:noreply, %{state | outcome: outcome}}

  defp ready(state, {:ok, _} = outcome) do
    GenServer.reply(state.awaiting, outcome)
    {:noreply, %{state | outcome: outcome, awaiting: nil}}
  end

  defp ready(state, outcome) do
    GenServer.reply(state.awaiting, outcome)
    {:stop, :normal, %{state | outcome: outcome, awaiting: nil}}
  end

  defp lines(state), do: :queue.to_list(state.lines)
  defp details(state), do: %{buffers: Enum.reverse(state.buffers)}

  # One whole line of output: the watchdog's first (the server's pid), or a
  # line of the server's log.
  defp line(%{target: nil} = state, line) do
    case Watchdog.marker(line) do
      {os_pid, target} ->
        state = %{state | os_pid: os_pid, target: target}
        if state.pending, do: deliver(state, state.pending), else: state

      nil ->
        log_line(state, line)
    end
  end

  defp line(state, line), do: log_line(state, line)

  defp log_line(state, line) do
    state = keep_line(state, line)

    case Log.buffer(line) do
      nil -> state
      buffer -> %{state | buffers: [buffer | state.buffers]}
    end
  end

  # A line longer than @max_line bytes is kept cut short.
  defp append(partial, part) do
    line = partial <> part
    binary_part(line, 0, min(byte_size(line), @max_line))
  end

  defp keep_line(state, line) do
    lines = :queue.in(line, state.lines)

    if state.n_lines < @kept_lines,
      do: %{state | lines: lines, n_lines: state.n_lines + 1},
      else: %{state | lines: :queue.drop(lines)}
  end

  defp healthy?(url) do
    request = {String.to_charlist(url), []}
    http_opts = [timeout: @health_timeout_ms, connect_timeout: @health_timeout_ms]

    match?({:ok, {{_, 200, _}, _, _}}, :httpc.request(:get, request, http_opts, []))
  end

  defp close(port) do
    Port.close(port)
    :ok
  rescue
    ArgumentError -> :ok
  end

  # VmRSS from /proc (Linux); nil elsewhere or once the process is gone.
  defp rss(nil), do: nil

  defp rss(os_pid) do
    with {:ok, status} <- File.read("/proc/#{os_pid}/status"),
         [_, kib] <- Regex.run(~r/^VmRSS:\s+(\d+) kB/m, status) do
      String.to_integer(kib) * 1024
    else
      _ -> nil
    end
  end
end
