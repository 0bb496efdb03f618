defmodule ModelBudget.LoadOptions do
  @moduledoc """
  The load options the estimator reads (`ModelBudget.distribute/3`,
  `ModelBudget.breakdown/3`), from the core's one table of them: each
  option's name, the values it takes, its default, the llama-server flag
  it stands for, its `mix model_budget.plan` switch and a line of
  documentation.

  The llama-server backend's options and command line
  (`ModelBudget.Backend.LlamaServer.Args`) and the plan's switches
  (`ModelBudget.Plan.Args`) derive from it, so an option, a default or a
  cache type is written once, in the Rust core
  (`native/model_budget_core/src/estimate/options.rs`).
  """

  alias ModelBudget.Native
  require ModelBudget.Native.Errors, as: Errors

  @typedoc """
  How llama-server takes an option: not at all (`nil`), as `FLAG VALUE`
  (with GPUs only when the boolean says so), as one set of arguments when
  on and another when off, or as `FLAG MIB`.
  """
  @type server_flag ::
          nil
          | {:value, String.t(), boolean()}
          | {:switch, [String.t()], [String.t()]}
          | {:mib, String.t()}

  @typedoc "One option of the table."
  @type option :: %{
          name: atom(),
          reads: :both | :bytes | :model,
          kind: atom(),
          choices: [atom()],
          default: term(),
          server: server_flag(),
          switch: String.t() | nil,
          aliases: [{String.t(), String.t()}],
          doc: String.t()
        }

  @mib 1024 * 1024

  @doc """
  Every option, in the table's order.

  ## Examples

      iex> n_ctx = Enum.find(ModelBudget.LoadOptions.all(), &(&1.name == :n_ctx))
      iex> {n_ctx.server, n_ctx.switch, n_ctx.default}
      {{:value, "--ctx-size", false}, "--ctx-size", nil}
  """
  @spec all() :: [option()]
  def all do
    case :persistent_term.get(__MODULE__, nil) do
      nil ->
        table = Native.load_options()
        :persistent_term.put(__MODULE__, table)
        table

      table ->
        table
    end
  end

  @doc """
  The option named `name`.

  ## Examples

      iex> ModelBudget.LoadOptions.fetch!(:cache_type_k).choices
      [:f32, :f16, :bf16, :q8_0, :q4_0, :q4_1, :q5_0, :q5_1, :iq4_nl]
  """
  @spec fetch!(atom()) :: option()
  def fetch!(name) do
    Enum.find(all(), &(&1.name == name)) ||
      raise ArgumentError, "no such load option: #{inspect(name)}"
  end

  @doc """
  The model path's options in `opts`, checked as every estimate checks
  them: a map of every option that path reads, defaults filled in.
  `cpu_buffers: :auto` stays `:auto`, and the older `:repack` is read into
  `:cpu_buffers` (when that is not given). Other keys are ignored; a
  malformed value, or a key one typo from an option, raises
  `ArgumentError`.

  ## Examples

      iex> read = ModelBudget.LoadOptions.read!(n_ctx: 4096, repack: false, keep_alive: 1)
      iex> {read.n_ctx, read.cpu_buffers, read.cache_type_k}
      {4096, :none, :f16}

      iex> ModelBudget.LoadOptions.read!(n_batch: 0)
      ** (ArgumentError) invalid option :n_batch: expected a positive integer below 2^64, got: 0
  """
  @spec read!(keyword()) :: %{atom() => term()}
  def read!(opts), do: Errors.call(Native.load_options_read(opts))

  @doc """
  The llama-server arguments for the options in `values` (as `read!/1`
  returns them), in the table's order. Options that only matter with GPUs
  are left out when `gpus?` is false; a `nil` value or an empty list is
  left out (the server's own default applies).

  ## Examples

      iex> values = ModelBudget.LoadOptions.read!(n_ctx: 512, cache_ram: 0, cpu_buffers: :none)
      iex> args = ModelBudget.LoadOptions.server_args(values, false)
      iex> {"--ctx-size" in args, "--n-gpu-layers" in args, "--no-repack" in args}
      {true, false, true}
      iex> Enum.drop_while(args, &(&1 != "--cache-ram")) |> Enum.take(2)
      ["--cache-ram", "0"]
  """
  @spec server_args(%{atom() => term()}, boolean()) :: [String.t()]
  def server_args(values, gpus?) do
    Enum.flat_map(all(), fn option ->
      server_arg(option.server, option.kind, Map.get(values, option.name), gpus?)
    end)
  end

  defp server_arg(nil, _kind, _value, _gpus?), do: []
  defp server_arg({:value, _flag, true}, _kind, _value, false), do: []
  defp server_arg({:value, _flag, _gpu}, _kind, value, _gpus?) when value in [nil, []], do: []

  defp server_arg({:value, flag, _gpu}, kind, value, _gpus?),
    do: [flag, server_value(kind, value)]

  defp server_arg({:switch, on, off}, _kind, value, _gpus?),
    do: if(value in [false, :none], do: off, else: on)

  defp server_arg({:mib, flag}, _kind, bytes, _gpus?),
    do: [flag, Integer.to_string(div(bytes + @mib - 1, @mib))]

  # llama.cpp's -1 is "auto"; the estimator's negative count is "all".
  defp server_value(:layers, n) when n < 0, do: "all"
  defp server_value(:weights, list), do: Enum.map_join(list, ",", &weight/1)
  defp server_value(_kind, value), do: to_string(value)

  # The core reads weights as floats: 3.0 is written 3.
  defp weight(w) when w == trunc(w), do: Integer.to_string(trunc(w))
  defp weight(w), do: to_string(w)
end
