defmodule ModelBudget.Backend.LlamaServer do
  @moduledoc """
  A `ModelBudget.Backend` that serves each model with its own llama.cpp
  `llama-server` process.

      {ModelBudget.ModelManager,
       name: MyApp.Models, memory_budget: :auto, backend: ModelBudget.Backend.LlamaServer}

      {:ok, info} =
        ModelBudget.ModelManager.load(MyApp.Models, :qwen, {:path, "qwen2.5-7b-q4_k_m.gguf"},
          n_ctx: 8192, n_parallel: 2)

      info.handle.base_url
      #=> "http://127.0.0.1:40423"

  The source is `{:path, path}` to a GGUF file. `footprint/2` reads its
  header, so the manager places it layer by layer with the same options the
  server is started with (see `ModelBudget.Backend.LlamaServer.Args` for the
  command line). `load/3` returns once the server's `/health` answers, with
  a handle (`t:t/0`) telling where it listens; `unload/1` returns once the
  OS process is gone. A server that dies on its own is noticed: its exit
  status and last log lines are logged and the process the manager monitors
  (`handle.pid`) exits, so the manager releases the model's memory.

  `measured/1` reports what the server really holds: every buffer llama.cpp
  allocated (model, repack, KV cache, compute, output), summed per device
  like a placement, and the process's resident memory.

  ## Options

  The estimator's options, with its names and defaults (see
  `ModelBudget.distribute/3`; they are llama-server's own defaults except
  where noted), each passed to the server explicitly: `:n_ctx` (default:
  the context the estimator sized the KV cache for, the model's trained
  one), `:n_gpu_layers` (`99`; a negative value is `all`), `:split_mode`
  (`:none`), `:tensor_split`, `:main_gpu`, `:flash_attn`, `:cache_type_k`,
  `:cache_type_v`, `:n_batch`, `:n_ubatch`, `:offload_kqv`, and:

    * `:n_parallel` - server slots (`--parallel`). Defaults to `4`, the
      server's automatic choice.
    * `:kv_unified` - one KV cache shared by the slots (`--kv-unified`).
      Defaults to `true`, as the server's automatic choice.
    * `:cache_ram` - bytes of the server's RAM prompt cache (`--cache-ram`,
      rounded up to whole MiB). Defaults to 8 GiB, the server's default,
      which the estimate reserves in RAM; `0` turns it off.
    * `:cpu_buffers` - the runtime profile (see `ModelBudget.breakdown/3`).
      `:auto` asks the binary once (`ModelBudget.Backend.LlamaServer.Runtime`)
      which extra CPU buffers it uses here, AMX included, and the estimate
      takes that; `:none` starts the server with `--no-repack`; a named
      profile is taken as given. Defaults to `:auto`.
    * `:repack` - the older name: `false` or `:none` is `cpu_buffers: :none`.
    * `:mmap` - `true` maps the model file, `false` reads it
      (`--load-mode`). Defaults to `true`.

  Options of this backend alone:

    * `:command` - the `llama-server` executable: a path, or a name looked
      up on `PATH`. Defaults to `llama-server` on `PATH`, else the
      `LLAMA_SERVER` environment variable.
    * `:port` - the port to listen on; a port already in use fails the load
      with `{:port_in_use, port}`. Defaults to a free port.
    * `:host` - the address to listen on. Defaults to `"127.0.0.1"`.
    * `:extra_args` - more command-line arguments, passed last. Defaults to `[]`.
    * `:ready_timeout` - milliseconds to wait for `/health`; the server is
      then killed and the load fails with its last log lines. Defaults to
      `120_000`.
    * `:stop_timeout` - milliseconds between SIGTERM and SIGKILL on unload.
      Defaults to `5_000`.

  A malformed option raises `ArgumentError` (from `footprint/2`, so in the
  caller of `ModelBudget.ModelManager.load/4`, before anything is reserved).

  ## Errors

  `load/3` returns `{:error, reason}`, and the manager fails the load with
  `{:load_failed, reason}`, for:

    * `{:command_not_found, command}` / `{:not_executable, path}`;
    * `{:port_in_use, port}`;
    * `{:server_exited, status, last_lines}` - the server exited before it
      was ready (a model llama.cpp rejects: its message is in the lines);
    * `{:ready_timeout, ms, last_lines}` - not ready in time; killed.
  """

  @behaviour ModelBudget.Backend

  alias ModelBudget.Backend.LlamaServer.{Args, Log, Runtime, Server}

  @enforce_keys [:pid, :base_url, :port, :os_pid, :path]
  defstruct @enforce_keys

  @typedoc """
  A running server: the process that owns it (monitored by the manager),
  where it listens, its port and OS pid, and the model file.
  """
  @type t :: %__MODULE__{
          pid: pid(),
          base_url: String.t(),
          port: pos_integer(),
          os_pid: pos_integer(),
          path: Path.t()
        }

  @doc """
  The GGUF header of `{:path, path}` as a `%ModelBudget.Model{}`, after
  checking the options (a malformed one raises `ArgumentError`).

  Returns `{:error, {reason, path}}` for a file that cannot be read
  (`:enoent`, `{:invalid_model, why}`, ...) or is not GGUF (`:not_gguf`).

  ## Examples

      iex> ModelBudget.Backend.LlamaServer.footprint({:path, "/nonexistent/model.gguf"}, [])
      {:error, {:enoent, "/nonexistent/model.gguf"}}

      iex> ModelBudget.Backend.LlamaServer.footprint({:path, "m.gguf"}, flash_attn: :yes)
      ** (ArgumentError) invalid option :flash_attn: expected a boolean, got: :yes
  """
  @impl true
  @spec footprint({:path, Path.t()}, keyword()) ::
          {:ok, ModelBudget.Model.t()} | {:error, {term(), Path.t()}}
  def footprint(source, opts) do
    path = path!(source)
    Args.validate!(opts)
    read_gguf(path)
  end

  defp path!({:path, path}) when is_binary(path) and path != "", do: path

  defp path!(source) do
    raise ArgumentError,
          "invalid source: expected {:path, path} to a GGUF file, got: " <> inspect(source)
  end

  defp read_gguf(path) do
    case ModelBudget.Model.read(path) do
      {:ok, %{format: :gguf} = model} -> {:ok, model}
      {:ok, _} -> {:error, {:not_gguf, path}}
      {:error, reason} -> {:error, {reason, path}}
    end
  end

  @doc """
  The estimator's options for `opts` with this backend: `cpu_buffers: :auto`
  becomes the profile the `llama-server` binary reports on this machine
  (see `ModelBudget.Backend.LlamaServer.Runtime`). A binary that cannot be
  found or asked leaves `:auto` (this CPU, a native build), and the load
  then fails on the binary as usual.
  """
  @impl true
  @spec estimate_options(keyword()) :: keyword()
  def estimate_options(opts) do
    checked = Args.validate!(opts)

    with true <- checked.cpu_buffers == :auto and checked.repack in [nil, true, :auto],
         {:ok, executable} <- executable(checked.command),
         {:ok, runtime} <- Runtime.profile(executable) do
      Keyword.merge(Keyword.delete(opts, :repack), cpu_buffers: runtime.cpu_buffers)
    else
      _ -> opts
    end
  end

  @doc """
  Starts `llama-server` on the model and returns once `/health` answers
  ready, with the running server's `t:t/0`. GPUs are used only when
  `placement` puts bytes on one. See "Errors" above for what can fail; on
  failure nothing is left running.

  The server's process (`handle.pid`) is linked to the caller, as
  `ModelBudget.Backend` asks: if the caller dies, the server is killed; once
  the caller exits normally (the manager's load task returns), the server
  lives on its own. A caller that lives on stays linked, and exits with the
  server unless it traps exits.
  """
  @impl true
  @spec load({:path, Path.t()}, ModelBudget.placement(), keyword()) ::
          {:ok, t()} | {:error, term()}
  def load(source, placement, opts) do
    path = path!(source)
    opts = Args.validate!(opts)

    with {:ok, executable} <- executable(opts.command),
         {:ok, n_ctx} <- n_ctx(path, opts),
         {:ok, port} <- listen_port(opts),
         {:ok, _} <- Application.ensure_all_started(:inets) do
      base_url = "http://#{url_host(opts.host)}:#{port}"

      spec = %{
        executable: executable,
        args: Args.build(path, opts, port, n_ctx, map_size(placement.vram) > 0),
        base_url: base_url,
        ready_timeout: opts.ready_timeout,
        stop_timeout: opts.stop_timeout,
        parent: self()
      }

      with {:ok, pid} <- Server.start(spec),
           {:ok, os_pid} <- Server.await_ready(pid) do
        {:ok, %__MODULE__{pid: pid, base_url: base_url, port: port, os_pid: os_pid, path: path}}
      end
    end
  end

  @doc """
  Stops the server: SIGTERM, then SIGKILL after `:stop_timeout`. Returns
  once the OS process is gone (at once if it already is).
  """
  @impl true
  @spec unload(t()) :: :ok
  def unload(%__MODULE__{pid: pid}), do: Server.stop(pid)

  @doc """
  What the server holds now (see `t:ModelBudget.Backend.LlamaServer.Log.measured/0`):
  llama.cpp's buffers summed per device, the buffers, and the resident
  memory. `{:error, :not_running}` once the server is gone.
  """
  @impl true
  @spec measured(t()) :: {:ok, Log.measured()} | {:error, :not_running}
  def measured(%__MODULE__{pid: pid}) do
    {:ok, Server.measured(pid)}
  catch
    :exit, _ -> {:error, :not_running}
  end

  @doc "The server's last log lines, oldest first (`[]` once it is gone)."
  @spec last_lines(t()) :: [String.t()]
  def last_lines(%__MODULE__{pid: pid}) do
    Server.last_lines(pid)
  catch
    :exit, _ -> []
  end

  # A bare name is looked up on PATH; anything with a slash is a path.
  defp executable(nil) do
    case System.find_executable("llama-server") || System.get_env("LLAMA_SERVER") do
      nil -> {:error, {:command_not_found, "llama-server"}}
      "" -> {:error, {:command_not_found, "llama-server"}}
      command -> executable(command)
    end
  end

  defp executable(command) do
    if String.contains?(command, "/") do
      case File.stat(command) do
        {:ok, %File.Stat{type: :regular, mode: mode}} when Bitwise.band(mode, 0o111) != 0 ->
          {:ok, Path.expand(command)}

        {:ok, _} ->
          {:error, {:not_executable, command}}

        {:error, _} ->
          {:error, {:command_not_found, command}}
      end
    else
      case System.find_executable(command) do
        nil -> {:error, {:command_not_found, command}}
        found -> {:ok, found}
      end
    end
  end

  # The context the estimator sized the KV cache for: the option, else the
  # model's default as ModelBudget.breakdown/3 pads it for these slots.
  defp n_ctx(_path, %{n_ctx: n_ctx}) when is_integer(n_ctx), do: {:ok, n_ctx}

  defp n_ctx(path, opts) do
    slots = [n_parallel: opts.n_parallel, kv_unified: opts.kv_unified]
    with {:ok, model} <- read_gguf(path), do: {:ok, ModelBudget.breakdown(model, slots, 0).n_ctx}
  end

  defp listen_port(opts) do
    listen_opts = [:binary, active: false, reuseaddr: true] ++ ip_opt(opts.host)

    case :gen_tcp.listen(opts.port || 0, listen_opts) do
      {:ok, socket} ->
        {:ok, port} = :inet.port(socket)
        :ok = :gen_tcp.close(socket)
        {:ok, port}

      {:error, :eaddrinuse} ->
        {:error, {:port_in_use, opts.port}}

      {:error, reason} ->
        {:error, {:listen_failed, opts.port, reason}}
    end
  end

  defp ip_opt(host) do
    case :inet.getaddr(String.to_charlist(host), :inet) do
      {:ok, ip} -> [ip: ip]
      {:error, _} -> []
    end
  end

  defp url_host("0.0.0.0"), do: "127.0.0.1"

  defp url_host(host) do
    if String.contains?(host, ":"), do: "[#{host}]", else: host
  end
end
