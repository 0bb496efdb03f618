defmodule ModelBudget.Backend.LlamaServer.Runtime do
  @moduledoc """
  The runtime profile of a `llama-server` binary on this machine: which
  extra CPU buffers it uses (see `ModelBudget.breakdown/3`'s
  `:cpu_buffers`) and its build number, asked of the binary itself.

  The binary is started once with an empty model file on an ephemeral
  loopback port: it logs its `system_info:` line (the CPU features it was
  built for and finds, `AMX_INT8`, `REPACK`, `KLEIDIAI`, ...) and its build,
  fails to load the file and exits, within milliseconds (it is killed after
  5 s). The answer is cached per binary (path, size and modification time)
  for the life of the VM. A `:command` that is no llama-server (a test's
  fake) should be given a profile by name (`cpu_buffers:`), so that it is
  not run for this.
  """

  @typedoc "What a binary reports about itself."
  @type t :: %{
          cpu_buffers: ModelBudget.cpu_buffers(),
          build: non_neg_integer() | nil,
          system_info: String.t()
        }

  require ModelBudget.Native.Errors, as: Errors

  @probe_timeout 5_000

  @doc """
  The profile of the `llama-server` at `executable` (a path), probed once.

  Returns `{:error, {:runtime_probe_failed, executable, detail}}` when the
  binary prints no `system_info:` line in time.

  ## Examples

      iex> ModelBudget.Backend.LlamaServer.Runtime.profile("/nonexistent/llama-server")
      {:error, {:runtime_probe_failed, "/nonexistent/llama-server", :enoent}}
  """
  @spec profile(Path.t()) :: {:ok, t()} | {:error, term()}
  def profile(executable) when is_binary(executable) do
    with {:ok, stat} <- stat(executable) do
      key = {__MODULE__, executable, stat.size, stat.mtime}

      case :persistent_term.get(key, nil) do
        nil ->
          with {:ok, profile} <- probe(executable) do
            :persistent_term.put(key, profile)
            {:ok, profile}
          end

        profile ->
          {:ok, profile}
      end
    end
  end

  @doc """
  What a binary's log says about itself: the profile its `system_info:`
  line names and the build number of its `build N (commit)` line.

  ## Examples

      iex> log = "cmn  common_params_print_info: build 11434 (unknown) with GNU 12.2.0\\n" <>
      ...>   "cmn  common_param: system_info: n_threads = 2 / 2 | CPU : SSE3 = 1 | AVX2 = 1 | AMX_INT8 = 1 | REPACK = 1 |"
      iex> {:ok, p} = ModelBudget.Backend.LlamaServer.Runtime.parse(log)
      iex> {p.cpu_buffers, p.build}
      {:x86_amx, 11434}
  """
  @spec parse(String.t()) :: {:ok, t()} | :error
  def parse(log) when is_binary(log) do
    case Regex.run(~r/system_info: [^\n]*/, log) do
      [line] ->
        build =
          case Regex.run(~r/\bbuild (\d+) \(/, log) do
            [_, n] -> String.to_integer(n)
            nil -> nil
          end

        profile = Errors.call(ModelBudget.Native.cpu_buffers_from_system_info(line))
        {:ok, %{cpu_buffers: profile, build: build, system_info: String.trim(line)}}

      nil ->
        :error
    end
  end

  defp stat(executable) do
    case File.stat(executable, time: :posix) do
      {:ok, stat} -> {:ok, stat}
      {:error, reason} -> {:error, {:runtime_probe_failed, executable, reason}}
    end
  end

  defp probe(executable) do
    dir = Path.join(System.tmp_dir!(), "model_budget_probe_#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    empty = Path.join(dir, "empty.gguf")
    File.write!(empty, "")

    args =
      ~w(--host 127.0.0.1 --port 0 --device none --n-gpu-layers 0 --verbosity 4 --model) ++
        [empty]

    try do
      port =
        Port.open({:spawn_executable, executable}, [
          :binary,
          :exit_status,
          :stderr_to_stdout,
          args: args
        ])

      # nil when the binary has exited already.
      os_pid = with {:os_pid, pid} <- Port.info(port, :os_pid), do: pid
      log = collect(port, os_pid, [], System.monotonic_time(:millisecond) + @probe_timeout)

      case parse(log) do
        {:ok, profile} -> {:ok, profile}
        :error -> {:error, {:runtime_probe_failed, executable, last_line(log)}}
      end
    after
      File.rm_rf(dir)
    end
  end

  # Reads until the binary exits; past the deadline it is killed.
  defp collect(port, os_pid, acc, deadline) do
    wait = max(deadline - System.monotonic_time(:millisecond), 0)

    receive do
      {^port, {:data, data}} -> collect(port, os_pid, [acc | data], deadline)
      {^port, {:exit_status, _}} -> IO.iodata_to_binary(acc)
    after
      wait ->
        if os_pid, do: System.cmd("kill", ["-KILL", to_string(os_pid)], stderr_to_stdout: true)

        receive do
          {^port, {:exit_status, _}} -> :ok
        after
          1_000 -> :ok
        end

        IO.iodata_to_binary(acc)
    end
  end

  defp last_line(log) do
    log |> String.split("\n", trim: true) |> List.last() || :no_output
  end
end
