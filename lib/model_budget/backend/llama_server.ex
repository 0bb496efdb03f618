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
  status (and the signal that killed it, if one did) and last log lines are
  logged and the process the manager monitors (`handle.pid`) exits, so the
  manager releases the model's memory.

  ## The manager owns what it starts

  Each server runs under a small `sh` watchdog in a process group of its
  own (`ModelBudget.Backend.LlamaServer.Watchdog`), and every signal goes to
  that group, so a `:command` that is a wrapper script forking
  `llama-server` is ended with everything it started. The server, and all
  it forks, ends when the manager that loaded it ends, however it ends:
  stopped, crashed or killed (the server's process monitors the manager and
  kills the group at once), or the whole VM killed, even by `SIGKILL` (the
  watchdog sees its pipe close, then sends `SIGTERM` and, after
  `:stop_timeout`, `SIGKILL` to the group). This needs nothing beyond
  `/bin/sh`: `setsid` where it is found (Linux), the shell's job control
  where the shell is bash (macOS); no `setpriv`. Every wait is bounded:
  ready (`:ready_timeout`, then the group is killed), unload (`SIGTERM`,
  `SIGKILL` after `:stop_timeout`, then at most 5 s more for the exit).

  ## The AMX crash

  llama.cpp b11434 dies with `SIGSEGV` in `ggml_backend_amx_mul_mat` while
  warming up on CPUs with AMX (llama.cpp issue #20824). When a server dies
  by `SIGSEGV` before it is ready, after llama.cpp logged an `AMX` model
  buffer, `load/3` logs a warning and starts it once more with
  `--no-repack` (no extra CPU buffers); every later load through the same
  executable starts with `--no-repack` at once, and `estimate_options/1`
  then says `cpu_buffers: :none`, so it is placed as it runs. The handle's
  `:cpu_buffers` says what the server runs with, and `measured/1` reports
  the buffers of the server that runs. `amx_retry: false` turns this off.

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
    * `:repack` - the older name: `true` is `cpu_buffers: :x86_avx2`, `false`
      is `:none`, a profile or `:auto` is that.
    * `:mmap` - `true` maps the model file, `false` reads it
      (`--load-mode`). Defaults to `true`.

  Options of this backend alone:

    * `:command` - the `llama-server` executable: a path, or a name looked
      up on `PATH`. Defaults to `llama-server` on `PATH`, else the
      `LLAMA_SERVER` environment variable.
    * `:port` - the port to listen on; a port already in use fails the load
      with `{:port_in_use, port}`. Defaults to a free port.
    * `:host` - the one address to listen on. A host that is not loopback
      (`"127.0.0.1"`, `"::1"`, `"localhost"`) needs `:api_key`, else
      `ArgumentError`. `handle.base_url` names it as given: `"0.0.0.0"`
      (every IPv4 address) is `http://0.0.0.0:PORT`. Defaults to
      `"127.0.0.1"`.
    * `:api_key` - the key clients must send (`Authorization: Bearer KEY`;
      `/health` needs none). It reaches the server through its environment
      (`LLAMA_API_KEY`), never its command line. Defaults to `nil`, none.
    * `:extra_args` - more command-line arguments, passed last; `--host`,
      `--port`, `--api-key` and `--api-key-file` are refused
      (`ArgumentError` naming the option to use). Defaults to `[]`.
    * `:ready_timeout` - milliseconds to wait for `/health`; the server is
      then killed and the load fails with its last log lines. Defaults to
      `120_000`.
    * `:stop_timeout` - milliseconds between SIGTERM and SIGKILL on unload
      (and, after the VM died, in the watchdog, in whole seconds).
      Defaults to `5_000`.
    * `:amx_retry` - start once more with `--no-repack` after llama.cpp's
      AMX crash (see above). Defaults to `true`.

  A malformed option raises `ArgumentError` (from `footprint/2`, so in the
  caller of `ModelBudget.ModelManager.load/4`, before anything is reserved).

  ## Errors

  `load/3` returns `{:error, reason}`, and the manager fails the load with
  `{:load_failed, reason}`, for:

    * `{:command_not_found, command}` / `{:not_executable, path}`;
    * `{:port_in_use, port}`;
    * `{:server_exited, status, last_lines}` - the server exited with
      `status` before it was ready (a model llama.cpp rejects: its message
      is in the lines);
    * `{:server_crashed, signal, last_lines}` - it was killed by a signal
      before it was ready, named like `:sigsegv` or `:sigkill` (a status of
      `128 + N` from a wrapper shell counts as signal `N`);
    * `{:ready_timeout, ms, last_lines}` - not ready in time; its process
      group was killed.
  """

  @behaviour ModelBudget.Backend

  alias ModelBudget.Backend.LlamaServer.{Args, Log, Runtime, Server}

  require Logger

  @enforce_keys [:pid, :base_url, :port, :os_pid, :path, :cpu_buffers]
  defstruct @enforce_keys

  @typedoc """
  A running server: the process that owns it (monitored by the manager),
  where it listens, its port and OS pid (the leader of its process group:
  `llama-server` itself, or a wrapper `:command`), the model file, and the
  runtime profile it runs with: `:none` when it runs with `--no-repack`
  (asked for, or after the AMX crash), else the profile the options named
  or the binary reports (`:auto` where it could not be asked).
  """
  @type t :: %__MODULE__{
          pid: pid(),
          base_url: String.t(),
          port: pos_integer(),
          os_pid: pos_integer(),
          path: Path.t(),
          cpu_buffers: ModelBudget.cpu_buffers() | :auto
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
  (see `ModelBudget.Backend.LlamaServer.Runtime`), and any profile becomes
  `:none` once this binary crashed on AMX here (see "The AMX crash"; not
  with `amx_retry: false`). A binary that cannot be found or asked leaves
  `:auto` (this CPU, a native build), and the load then fails on the binary
  as usual.
  """
  @impl true
  @spec estimate_options(keyword()) :: keyword()
  def estimate_options(opts) do
    checked = Args.validate!(opts)
    executable = if Args.no_extra_buffers?(checked), do: nil, else: executable(checked.command)

    case executable do
      {:ok, executable} ->
        cond do
          checked.amx_retry and amx_crashed?(executable) ->
            Keyword.merge(Keyword.delete(opts, :repack), cpu_buffers: :none)

          checked.cpu_buffers == :auto ->
            case Runtime.profile(executable) do
              {:ok, runtime} ->
                Keyword.merge(Keyword.delete(opts, :repack), cpu_buffers: runtime.cpu_buffers)

              {:error, _} ->
                opts
            end

          true ->
            opts
        end

      _ ->
        opts
    end
  end

  @doc """
  Starts `llama-server` on the model and returns once `/health` answers
  ready, with the running server's `t:t/0`. GPUs are used only when
  `placement` puts bytes on one. See "Errors" above for what can fail; on
  failure nothing is left running.

  The context the server gets is `:n_ctx`, else the one the estimate sized
  the KV cache for: the manager's `decision` (`t:ModelBudget.Backend.decision/0`)
  carries it in its breakdown, so the model file is not read again; without
  a decision (`load/3` called directly, or a load placed by
  `ModelBudget.Cluster`), the GGUF header is read and
  `ModelBudget.breakdown/3` asked.

  The server's process (`handle.pid`) is owned by the manager: the first
  of the calling process's `$callers` (the manager, for its load task),
  else the caller itself. When the owner dies, so does the server. It is
  also linked to the caller, as `ModelBudget.Backend` asks: if the caller
  dies before it returns, the server is killed; once the caller exits
  normally (the manager's load task returns), the server lives on as long
  as its owner. A caller that lives on stays linked, and exits with the
  server unless it traps exits.
  """
  @impl true
  @spec load(
          {:path, Path.t()},
          ModelBudget.placement(),
          keyword(),
          ModelBudget.Backend.decision() | nil
        ) :: {:ok, t()} | {:error, term()}
  def load(source, placement, opts, decision \\ nil) do
    path = path!(source)
    opts = Args.validate!(opts)

    with {:ok, executable} <- executable(opts.command),
         {:ok, n_ctx} <- n_ctx(path, opts, decision),
         {:ok, port} <- listen_port(opts),
         {:ok, _} <- Application.ensure_all_started(:inets) do
      opts =
        if opts.amx_retry and amx_crashed?(executable),
          do: %{opts | cpu_buffers: :none},
          else: opts

      start(%{
        path: path,
        executable: executable,
        opts: opts,
        port: port,
        n_ctx: n_ctx,
        gpus?: map_size(placement.vram) > 0
      })
    end
  end

  defp start(load) do
    %{opts: opts, port: port} = load
    base_url = "http://#{url_host(opts.host)}:#{port}"

    spec = %{
      executable: load.executable,
      args: Args.build(load.path, opts, port, load.n_ctx, load.gpus?),
      env: Args.env(opts),
      base_url: base_url,
      health_url: "http://#{health_host(opts.host)}:#{port}/health",
      ready_timeout: opts.ready_timeout,
      stop_timeout: opts.stop_timeout,
      parent: self(),
      owner: owner()
    }

    with {:ok, pid} <- Server.start(spec) do
      case Server.await_ready(pid) do
        {:ok, os_pid} ->
          {:ok,
           %__MODULE__{
             pid: pid,
             base_url: base_url,
             port: port,
             os_pid: os_pid,
             path: load.path,
             cpu_buffers: cpu_buffers(opts, load.executable)
           }}

        {:error, reason, details} ->
          if amx_crash?(reason, details) and opts.amx_retry and not Args.no_extra_buffers?(opts) do
            retry_without_amx(load, reason)
          else
            {:error, reason}
          end
      end
    end
  end

  # The manager that started the load task, else the caller.
  defp owner do
    case Process.get(:"$callers") do
      [owner | _] when is_pid(owner) -> owner
      _ -> self()
    end
  end

  # llama.cpp #20824: a SIGSEGV at warm-up after an AMX buffer was made.
  defp amx_crash?({:server_crashed, :sigsegv, lines}, %{buffers: buffers}) do
    Enum.any?(buffers, &(&1.kind == :amx)) or
      Enum.any?(lines, &Regex.match?(~r/\bAMX model buffer size/, &1))
  end

  defp amx_crash?(_reason, _details), do: false

  defp retry_without_amx(load, {_, _, lines}) do
    Logger.warning(
      "llama-server (#{load.executable}) crashed with SIGSEGV at start-up after llama.cpp " <>
        "made an AMX buffer: llama.cpp #20824 (ggml_backend_amx_mul_mat). Starting it once " <>
        "more with --no-repack (no extra CPU buffers), as every later load through this " <>
        "executable will be; amx_retry: false turns this off. Its last log lines:\n" <>
        Enum.join(Enum.take(lines, -5), "\n")
    )

    remember_amx_crash(load.executable)
    start(%{load | opts: %{load.opts | cpu_buffers: :none}})
  end

  # Remembered per executable (path, size and modification time) for the
  # life of the VM.
  defp amx_key(executable) do
    case File.stat(executable, time: :posix) do
      {:ok, stat} -> {__MODULE__, :amx_crash, executable, stat.size, stat.mtime}
      {:error, _} -> nil
    end
  end

  defp amx_crashed?(executable) do
    case amx_key(executable) do
      nil -> false
      key -> :persistent_term.get(key, false)
    end
  end

  defp remember_amx_crash(executable) do
    case amx_key(executable) do
      nil -> :ok
      key -> :persistent_term.put(key, true)
    end
  end

  # The runtime profile the server runs with.
  defp cpu_buffers(opts, executable) do
    cond do
      Args.no_extra_buffers?(opts) ->
        :none

      opts.cpu_buffers != :auto ->
        opts.cpu_buffers

      true ->
        case Runtime.profile(executable) do
          {:ok, runtime} -> runtime.cpu_buffers
          {:error, _} -> :auto
        end
    end
  end

  @doc """
  Stops the server: SIGTERM to its process group, then SIGKILL to it after
  `:stop_timeout`. Returns once the OS process is gone (at once if it
  already is), or at most 5 s after the SIGKILL.
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
  # model's default as ModelBudget.breakdown/3 pads it for these slots: the
  # manager's decision, else the file read again.
  defp n_ctx(_path, %{n_ctx: n_ctx}, _decision) when is_integer(n_ctx), do: {:ok, n_ctx}

  defp n_ctx(_path, _opts, %{breakdown: %{n_ctx: n_ctx}}) when is_integer(n_ctx),
    do: {:ok, n_ctx}

  defp n_ctx(path, opts, _decision) do
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
    case :inet.parse_address(String.to_charlist(host)) do
      {:ok, {_, _, _, _} = ip} -> [ip: ip]
      {:ok, ip} -> [:inet6, ip: ip]
      {:error, _} -> ip_opt_by_name(host)
    end
  end

  defp ip_opt_by_name(host) do
    case :inet.getaddr(String.to_charlist(host), :inet) do
      {:ok, ip} -> [ip: ip]
      {:error, _} -> []
    end
  end

  # Where the server listens, as given.
  defp url_host(host) do
    if String.contains?(host, ":"), do: "[#{host}]", else: host
  end

  # Where to ask it: a wildcard address is reached through loopback.
  defp health_host("0.0.0.0"), do: "127.0.0.1"

  defp health_host(host) do
    case :inet.parse_address(String.to_charlist(host)) do
      {:ok, {0, 0, 0, 0, 0, 0, 0, 0}} -> "[::1]"
      _ -> url_host(host)
    end
  end
end
