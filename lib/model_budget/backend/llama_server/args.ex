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

  # The backend's own options; the estimator's come from
  # ModelBudget.LoadOptions, the core's table, with their defaults
  # (llama-server's, build 11434).
  @own [
    command: nil,
    port: nil,
    host: "127.0.0.1",
    api_key: nil,
    amx_retry: true,
    ready_timeout: 120_000,
    stop_timeout: 5_000,
    extra_args: []
  ]

  # Set by an option of ours, never by :extra_args.
  @reserved_args %{
    "--host" => :host,
    "--port" => :port,
    "--api-key" => :api_key,
    "--api-key-file" => :api_key
  }

  @typedoc """
  The checked options: the backend's own and every option of the
  estimator's model path (`ModelBudget.LoadOptions.read!/1`), defaults
  filled in.
  """
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
    # The table's reader first: it refuses improper lists by name.
    estimator = ModelBudget.LoadOptions.read!(opts)

    checked =
      Map.new(@own, fn {key, default} ->
        value = Keyword.get(opts, key, default)
        {key, check!(key, value)}
      end)
      |> Map.merge(estimator)

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
      # The estimator's options as llama-server takes them (the table's
      # flags), the context the placement padded; the server uses the
      # extra CPU buffers of its build whichever profile the estimate
      # assumed, and :none turns them all off.
      ModelBudget.LoadOptions.server_args(%{opts | n_ctx: n_ctx}, gpus?),
      if(gpus?, do: [], else: ["--device", "none", "--n-gpu-layers", "0"]),
      ["--fit", "off"],
      # llama.cpp logs its buffer sizes (what `measured/1` reports) only at
      # trace verbosity.
      ["--verbosity", to_string(@log_verbosity)],
      opts.extra_args
    ])
  end

  @doc """
  Whether `opts` turn llama.cpp's extra CPU buffers off (`--no-repack`):
  `cpu_buffers: :none` (or the older `repack: false`, read into it).
  """
  @spec no_extra_buffers?(t()) :: boolean()
  def no_extra_buffers?(opts), do: opts.cpu_buffers == :none
end
