defmodule ModelBudget.Backend.LlamaServer.Server do
  @moduledoc """
  The process that owns one `llama-server` OS process through a port: it
  starts it, polls `/health` until the model is ready, keeps the last log
  lines and the buffer sizes llama.cpp reports, and stops it (SIGTERM, then
  SIGKILL after a grace period), returning only once the OS process is gone.

  It is linked to the process that started it (the manager's load task) and
  traps exits: if that process dies before the load is done, the server is
  killed with it. Where util-linux's `setpriv` is found, the server is also
  started with a parent-death signal, so it does not outlive the VM.

  A server that exits on its own once ready is logged (exit status and last
  log lines) and this process stops with `{:shutdown, {:server_exited,
  status}}`, which the manager, monitoring it, sees.
  """

  use GenServer, restart: :temporary
  require Logger

  alias ModelBudget.Backend.LlamaServer.Log

  @kept_lines 40
  @max_line 65_536
  @poll_ms 100
  @health_timeout_ms 1_000
  # How long terminate/2 waits for a SIGKILLed server to be reaped.
  @reap_ms 5_000

  @typedoc "What `start/1` needs."
  @type spec :: %{
          executable: Path.t(),
          args: [String.t()],
          base_url: String.t(),
          ready_timeout: pos_integer(),
          stop_timeout: pos_integer(),
          parent: pid()
        }

  @doc """
  Starts the server process and links it to `spec.parent` once the OS
  process is running. Returns `{:error, {:spawn_failed, reason}}` when the
  executable cannot be started.
  """
  @spec start(spec()) :: {:ok, pid()} | {:error, term()}
  def start(spec), do: GenServer.start(__MODULE__, spec)

  @doc """
  Waits until `/health` answers 200: `{:ok, os_pid}`, or `{:error, reason}`
  once the server has exited (`{:server_exited, status, last_lines}`) or
  `:ready_timeout` has passed (`{:ready_timeout, ms, last_lines}`; the server
  is killed first). After an error the process is gone.
  """
  @spec await_ready(pid()) :: {:ok, pos_integer()} | {:error, term()}
  def await_ready(pid), do: GenServer.call(pid, {__MODULE__, :await_ready}, :infinity)

  @doc "Stops the OS process and this process; returns once both are gone."
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
    {executable, args} = wrap(spec.executable, spec.args)

    try do
      Port.open({:spawn_executable, executable}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        :hide,
        {:line, 16_384},
        args: args
      ])
    rescue
      error in ErlangError -> {:stop, {:spawn_failed, error.original}}
    else
      port ->
        {:os_pid, os_pid} = Port.info(port, :os_pid)
        # Linked only now: a failed start must not send the parent an exit signal.
        Process.link(spec.parent)
        Process.send_after(self(), :poll, @poll_ms)

        {:ok,
         %{
           port: port,
           os_pid: os_pid,
           base_url: spec.base_url,
           parent: spec.parent,
           ready_timeout: spec.ready_timeout,
           stop_timeout: spec.stop_timeout,
           timer: Process.send_after(self(), :ready_timeout, spec.ready_timeout),
           status: :starting,
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

  # The parent-death signal makes the kernel kill the server if the VM's
  # child-spawning helper goes away, that is when the VM dies.
  defp wrap(executable, args) do
    case System.find_executable("setpriv") do
      nil -> {executable, args}
      setpriv -> {setpriv, ["--pdeathsig", "KILL", "--", executable | args]}
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

  def handle_call({__MODULE__, :stop}, from, %{status: :stopping} = state),
    do: {:noreply, %{state | stoppers: [from | state.stoppers]}}

  def handle_call({__MODULE__, :stop}, from, state) do
    signal(state.os_pid, "TERM")
    Process.send_after(self(), :kill, state.stop_timeout)
    {:noreply, %{state | status: :stopping, stoppers: [from]}}
  end

  def handle_call({__MODULE__, :measured}, _from, state),
    do: {:reply, Log.measured(Enum.reverse(state.buffers), rss(state.os_pid)), state}

  def handle_call({__MODULE__, :last_lines}, _from, state),
    do: {:reply, :queue.to_list(state.lines), state}

  @impl true
  def handle_info({port, {:data, {:eol, part}}}, %{port: port} = state) do
    line = append(state.partial, part)
    state = %{keep_line(state, line) | partial: ""}

    case Log.buffer(line) do
      nil -> {:noreply, state}
      buffer -> {:noreply, %{state | buffers: [buffer | state.buffers]}}
    end
  end

  def handle_info({port, {:data, {:noeol, part}}}, %{port: port} = state),
    do: {:noreply, %{state | partial: append(state.partial, part)}}

  def handle_info({port, {:exit_status, status}}, %{port: port} = state) do
    state = if state.partial == "", do: state, else: keep_line(state, state.partial)
    exited(%{state | partial: ""}, status)
  end

  def handle_info(:poll, %{status: :starting} = state) do
    if healthy?(state.base_url) do
      Process.cancel_timer(state.timer)
      ready(%{state | status: :ready}, {:ok, state.os_pid})
    else
      Process.send_after(self(), :poll, @poll_ms)
      {:noreply, state}
    end
  end

  def handle_info(:poll, state), do: {:noreply, state}

  def handle_info(:ready_timeout, %{status: :starting} = state) do
    state = kill_and_reap(state)
    ready(state, {:error, {:ready_timeout, state.ready_timeout, :queue.to_list(state.lines)}})
  end

  def handle_info(:ready_timeout, state), do: {:noreply, state}

  def handle_info(:kill, %{status: :stopping} = state) do
    signal(state.os_pid, "KILL")
    {:noreply, state}
  end

  def handle_info(:kill, state), do: {:noreply, state}

  # The load task that started us returned: we outlive it.
  def handle_info({:EXIT, parent, :normal}, %{parent: parent} = state), do: {:noreply, state}

  # It was killed (its caller died, or the load was cancelled): so are we.
  def handle_info({:EXIT, parent, _reason}, %{parent: parent} = state),
    do: {:stop, :normal, kill_and_reap(state)}

  def handle_info({:EXIT, _port, _reason}, state), do: {:noreply, state}

  @impl true
  def terminate(_reason, state) do
    if state.status != :exited, do: kill_and_reap(state)
    :ok
  end

  defp exited(%{status: :stopping} = state, _status) do
    state = %{state | status: :exited}
    Enum.each(state.stoppers, &GenServer.reply(&1, :ok))
    {:stop, :normal, %{state | stoppers: []}}
  end

  defp exited(%{status: :starting} = state, status) do
    Process.cancel_timer(state.timer)
    state = %{state | status: :exited}
    ready(state, {:error, {:server_exited, status, :queue.to_list(state.lines)}})
  end

  defp exited(%{status: :ready} = state, status) do
    Logger.warning(
      "llama-server at #{state.base_url} (OS pid #{state.os_pid}) exited with status " <>
        "#{status}; its last log lines:\n" <> Enum.join(:queue.to_list(state.lines), "\n")
    )

    {:stop, {:shutdown, {:server_exited, status}}, %{state | status: :exited}}
  end

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

  defp healthy?(base_url) do
    request = {String.to_charlist(base_url <> "/health"), []}
    http_opts = [timeout: @health_timeout_ms, connect_timeout: @health_timeout_ms]

    match?({:ok, {{_, 200, _}, _, _}}, :httpc.request(:get, request, http_opts, []))
  end

  # SIGKILL, then wait for the port's exit status: the OS process is reaped.
  defp kill_and_reap(%{status: :exited} = state), do: state

  defp kill_and_reap(state) do
    signal(state.os_pid, "KILL")
    port = state.port

    receive do
      {^port, {:exit_status, _}} -> :ok
    after
      @reap_ms -> :ok
    end

    %{state | status: :exited}
  end

  defp signal(os_pid, name),
    do: System.cmd("kill", ["-s", name, Integer.to_string(os_pid)], stderr_to_stdout: true)

  # VmRSS from /proc (Linux); nil elsewhere or once the process is gone.
  defp rss(os_pid) do
    with {:ok, status} <- File.read("/proc/#{os_pid}/status"),
         [_, kib] <- Regex.run(~r/^VmRSS:\s+(\d+) kB/m, status) do
      String.to_integer(kib) * 1024
    else
      _ -> nil
    end
  end
end
