defmodule ModelBudget.Backend.LlamaServer.Args do
  @moduledoc """
  The load options of `ModelBudget.Backend.LlamaServer`, checked, and the
  `llama-server` command line they stand for.

  The options the estimator takes (`ModelBudget.distribute/3`) keep their
  names and defaults, and every one that llama-server defaults differently
  is passed explicitly too, so the server starts what was reserved: the
  context, the GPU layers, the split mode, flash attention, the KV cache
  types and offload, the batch sizes, the slots and whether their KV cache
  is unified, the RAM prompt cache, the extra CPU buffers and mmap. llama.cpp's `--fit`,
  which would shrink the context or the offload to what it thinks fits, is
  always off. Without GPUs in the placement the server gets `--device none`.

  Where the server listens is this module's to say: `:host` and `:port`
  only, never `--host`/`--port` in `:extra_args`. A host beyond loopback
  needs an `:api_key`, which reaches the server through its environment
  (`env/1`: `LLAMA_API_KEY`, the variable llama.cpp's `--api-key` reads),
  never its command line.
  """

  @log_verbosity 4

  @schema [
    command: nil,
    port: nil,
    host: "127.0.0.1",
    api_key: nil,
    amx_retry: true,
    ready_timeout: 120_000,
    stop_timeout: 5_000,
    extra_args: [],
    n_ctx: nil,
    n_gpu_layers: 99,
    split_mode: :none,
    tensor_split: [],
    main_gpu: 0,
    flash_attn: true,
    cache_type_k: :f16,
    cache_type_v: :f16,
    n_parallel: 4,
    kv_unified: true,
    # The estimator's defaults, which are llama-server's (build 11434).
    cache_ram: 8192 * 1024 * 1024,
    n_batch: 2048,
    n_ubatch: 512,
    offload_kqv: true,
    cpu_buffers: :auto,
    repack: nil,
    mmap: true
  ]

  @cache_types [:f32, :f16, :bf16, :q8_0, :q4_0, :q4_1, :q5_0, :q5_1, :iq4_nl]
  # The estimator's runtime profiles (ModelBudget.cpu_buffers/0), and the
  # older :repack's booleans.
  @profiles [:none, :x86_avx2, :x86_avx512, :x86_amx, :arm_dotprod, :arm_kleidiai]
  @repacks [nil, true, false, :auto | @profiles]
  @split_modes [:none, :layer, :row]
  # Set by an option of ours, never by :extra_args.
  @reserved_args %{
    "--host" => :host,
    "--port" => :port,
    "--api-key" => :api_key,
    "--api-key-file" => :api_key
  }
  @mib 1024 * 1024

  @typedoc "The checked options: every key of the schema, defaults filled in."
  @type t :: %{atom() => term()}

  @doc """
  Checks the backend's options in `opts` (other keys are ignored: they may
  belong to the manager) and fills in the defaults. Raises `ArgumentError`
  naming the option and its value when one is malformed.

  ## Examples

      iex> ModelBudget.Backend.LlamaServer.Args.validate!(n_ctx: 2048).n_ctx
      2048

      iex> ModelBudget.Backend.LlamaServer.Args.validate!(split_mode: :sideways)
      ** (ArgumentError) invalid option :split_mode: expected :none, :layer or :row, got: :sideways
  """
  @spec validate!(keyword()) :: t()
  def validate!(opts) when is_list(opts) do
    checked =
      Map.new(@schema, fn {key, default} ->
        value = Keyword.get(opts, key, default)
        {key, check!(key, value)}
      end)

    if checked.api_key == nil and not loopback?(checked.host) do
      raise ArgumentError,
            "invalid option :host: #{inspect(checked.host)} listens beyond loopback, " <>
              "which needs an :api_key (a non-empty string, given to the server through " <>
              "LLAMA_API_KEY, never on its command line); or use a loopback :host " <>
              ~s{("127.0.0.1", "::1" or "localhost")}
    end

    checked
  end

  def validate!(opts),
    do: raise(ArgumentError, "expected a keyword list of options, got: #{inspect(opts)}")

  defp check!(:command, nil), do: nil
  defp check!(:command, value) when is_binary(value) and value != "", do: value
  defp check!(:command, value), do: invalid!(:command, "a non-empty path string", value)

  defp check!(:port, nil), do: nil
  defp check!(:port, value) when is_integer(value) and value in 1..65_535, do: value
  defp check!(:port, value), do: invalid!(:port, "an integer from 1 to 65535", value)

  defp check!(:host, value) when is_binary(value) and value != "" do
    # llama-server takes a comma-separated list: one address here, so that
    # base_url says where the server listens.
    if String.contains?(value, ","),
      do: invalid!(:host, "one address", value),
      else: value
  end

  defp check!(:host, value), do: invalid!(:host, "a non-empty string", value)

  defp check!(:api_key, nil), do: nil

  defp check!(:api_key, value) when is_binary(value) and value != "" do
    if String.contains?(value, <<0>>) or not String.valid?(value),
      do:
        raise(
          ArgumentError,
          "invalid option :api_key: expected a non-empty UTF-8 string without NUL"
        ),
      else: value
  end

  # The value is a secret: its type is named, not the value.
  defp check!(:api_key, value) do
    got = if is_binary(value), do: "an empty string", else: "a value that is not a string"
    raise ArgumentError, "invalid option :api_key: expected a non-empty string, got: #{got}"
  end

  defp check!(:amx_retry, value) when is_boolean(value), do: value
  defp check!(:amx_retry, value), do: invalid!(:amx_retry, "a boolean", value)

  defp check!(key, value) when key in [:ready_timeout, :stop_timeout] do
    if is_integer(value) and value > 0,
      do: value,
      else: invalid!(key, "a positive integer (milliseconds)", value)
  end

  defp check!(:extra_args, value) when is_list(value) do
    unless Enum.all?(value, &is_binary/1), do: invalid!(:extra_args, "a list of strings", value)

    Enum.each(value, fn arg ->
      case Map.fetch(@reserved_args, normalize_arg(arg)) do
        {:ok, option} ->
          raise ArgumentError,
                "invalid option :extra_args: #{inspect(arg)} is not allowed there; " <>
                  "use the #{inspect(option)} option instead"

        :error ->
          :ok
      end
    end)

    value
  end

  defp check!(:extra_args, value), do: invalid!(:extra_args, "a list of strings", value)

  defp check!(:n_ctx, nil), do: nil

  defp check!(key, value) when key in [:n_ctx, :n_batch, :n_ubatch, :n_parallel] do
    if is_integer(value) and value > 0,
      do: value,
      else: invalid!(key, "a positive integer", value)
  end

  defp check!(:n_gpu_layers, value) when is_integer(value), do: value
  defp check!(:n_gpu_layers, value), do: invalid!(:n_gpu_layers, "an integer", value)

  defp check!(:split_mode, value) when value in @split_modes, do: value
  defp check!(:split_mode, value), do: invalid!(:split_mode, ":none, :layer or :row", value)

  defp check!(:tensor_split, value) when is_list(value) do
    if Enum.all?(value, &(is_number(&1) and &1 >= 0)),
      do: value,
      else: invalid!(:tensor_split, "a list of non-negative numbers", value)
  end

  defp check!(:tensor_split, value),
    do: invalid!(:tensor_split, "a list of non-negative numbers", value)

  defp check!(:main_gpu, value) when is_integer(value) and value >= 0, do: value
  defp check!(:main_gpu, value), do: invalid!(:main_gpu, "a non-negative integer", value)

  defp check!(key, value) when key in [:cache_type_k, :cache_type_v] do
    if value in @cache_types,
      do: value,
      else: invalid!(key, "one of #{Enum.map_join(@cache_types, ", ", &inspect/1)}", value)
  end

  defp check!(:cache_ram, value) when is_integer(value) and value >= 0, do: value

  defp check!(:cache_ram, value),
    do: invalid!(:cache_ram, "a non-negative integer (bytes)", value)

  defp check!(:cpu_buffers, value) when value == :auto or value in @profiles, do: value

  defp check!(:cpu_buffers, value),
    do: invalid!(:cpu_buffers, Enum.map_join([:auto | @profiles], ", ", &inspect/1), value)

  defp check!(:repack, value) when value in @repacks, do: value

  defp check!(:repack, value),
    do: invalid!(:repack, Enum.map_join(tl(@repacks), ", ", &inspect/1), value)

  defp check!(key, value) when key in [:flash_attn, :kv_unified, :offload_kqv, :mmap] do
    if is_boolean(value), do: value, else: invalid!(key, "a boolean", value)
  end

  # llama.cpp reads `--api_key` as `--api-key`; a later one may read
  # `--port=8080`.
  defp normalize_arg("--" <> _ = arg) do
    [name | _] = String.split(arg, "=", parts: 2)
    String.replace(name, "_", "-")
  end

  defp normalize_arg(arg), do: arg

  @doc """
  Whether `host` is a loopback address: `"localhost"`, `127.0.0.0/8`,
  `::1` (or IPv4-mapped `::ffff:127.x.y.z`).

  ## Examples

      iex> ModelBudget.Backend.LlamaServer.Args.loopback?("127.0.0.1")
      true

      iex> ModelBudget.Backend.LlamaServer.Args.loopback?("0.0.0.0")
      false
  """
  @spec loopback?(String.t()) :: boolean()
  def loopback?("localhost"), do: true

  def loopback?(host) do
    case :inet.parse_address(String.to_charlist(host)) do
      {:ok, {127, _, _, _}} -> true
      {:ok, {0, 0, 0, 0, 0, 0, 0, 1}} -> true
      {:ok, {0, 0, 0, 0, 0, 0xFFFF, high, _}} -> Bitwise.bsr(high, 8) == 127
      _ -> false
    end
  end

  @doc """
  The environment the server is started with for the checked options
  `opts`: `LLAMA_API_KEY` when there is an `:api_key`.

  ## Examples

      iex> opts = ModelBudget.Backend.LlamaServer.Args.validate!(host: "0.0.0.0", api_key: "k")
      iex> ModelBudget.Backend.LlamaServer.Args.env(opts)
      [{"LLAMA_API_KEY", "k"}]
  """
  @spec env(t()) :: [{String.t(), String.t()}]
  def env(%{api_key: nil}), do: []
  def env(%{api_key: key}), do: [{"LLAMA_API_KEY", key}]

  defp invalid!(key, expected, value) do
    raise ArgumentError,
          "invalid option #{inspect(key)}: expected #{expected}, got: #{inspect(value)}"
  end

  @doc """
  The command line (without the executable) that serves the GGUF file at
  `path` on `port` with the checked options `opts`, a context of `n_ctx`
  tokens, and GPUs only when `gpus?`.

  ## Examples

      iex> opts = ModelBudget.Backend.LlamaServer.Args.validate!(extra_args: ["--threads", "1"])
      iex> args = ModelBudget.Backend.LlamaServer.Args.build("m.gguf", opts, 8080, 512, false)
      iex> Enum.take(args, 6)
      ["--model", "m.gguf", "--host", "127.0.0.1", "--port", "8080"]
      iex> Enum.take(args, -2)
      ["--threads", "1"]
  """
  @spec build(Path.t(), t(), pos_integer(), pos_integer(), boolean()) :: [String.t()]
  def build(path, opts, port, n_ctx, gpus?) do
    List.flatten([
      ["--model", path, "--host", opts.host, "--port", to_string(port)],
      ["--ctx-size", to_string(n_ctx), "--parallel", to_string(opts.n_parallel)],
      if(opts.kv_unified, do: "--kv-unified", else: "--no-kv-unified"),
      ["--cache-ram", to_string(div(opts.cache_ram + @mib - 1, @mib))],
      ["--fit", "off"],
      gpu_args(opts, gpus?),
      ["--flash-attn", if(opts.flash_attn, do: "on", else: "off")],
      ["--cache-type-k", to_string(opts.cache_type_k)],
      ["--cache-type-v", to_string(opts.cache_type_v)],
      if(opts.offload_kqv, do: "--kv-offload", else: "--no-kv-offload"),
      ["--batch-size", to_string(opts.n_batch), "--ubatch-size", to_string(opts.n_ubatch)],
      # The server uses the extra CPU buffers of its build on this CPU,
      # whichever profile the estimate assumed; none turns them all off.
      if(no_extra_buffers?(opts), do: "--no-repack", else: "--repack"),
      ["--load-mode", if(opts.mmap, do: "mmap", else: "none")],
      # llama.cpp logs its buffer sizes (what `measured/1` reports) only at
      # trace verbosity.
      ["--verbosity", to_string(@log_verbosity)],
      opts.extra_args
    ])
  end

  @doc """
  Whether `opts` turn llama.cpp's extra CPU buffers off (`--no-repack`):
  `cpu_buffers: :none`, or the older `repack: false` / `repack: :none`.
  """
  @spec no_extra_buffers?(t()) :: boolean()
  def no_extra_buffers?(opts), do: opts.cpu_buffers == :none or opts.repack in [false, :none]

  defp gpu_args(_opts, false), do: ["--device", "none", "--n-gpu-layers", "0"]

  defp gpu_args(opts, true) do
    # The estimator reads a negative count as "all layers"; llama.cpp's -1 is "auto".
    layers = if opts.n_gpu_layers < 0, do: "all", else: to_string(opts.n_gpu_layers)

    [
      ["--n-gpu-layers", layers],
      ["--split-mode", to_string(opts.split_mode), "--main-gpu", to_string(opts.main_gpu)],
      if(opts.tensor_split == [],
        do: [],
        else: ["--tensor-split", Enum.map_join(opts.tensor_split, ",", &to_string/1)]
      )
    ]
  end
end
