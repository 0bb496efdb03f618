defmodule ModelBudget.ModelManager.Options do
  @moduledoc false
  # The option schema of `ModelBudget.ModelManager`: what start_link/1,
  # load/4 and unload/3 accept, their defaults, and the ArgumentError each
  # bad value raises (naming the option and the value). The documentation of
  # each option lives with the public function that takes it.

  alias ModelBudget.Eviction

  @start_schema [
    :name,
    memory_budget: :infinity,
    backend: ModelBudget.Backend.default(),
    models: [],
    catalog: [],
    evict_when: Eviction.default_rules(),
    min_idle_ms: 0,
    clock: nil,
    sweep_ms: 1_000,
    history_limit: 10_000,
    cluster: nil,
    labels: %{},
    priority: :normal
  ]

  @typedoc "The checked start options, as the manager's init/1 takes them."
  @type start :: %{
          budget: ModelBudget.budget(),
          backend: module(),
          models: [{term(), term(), keyword()}],
          catalog: %{term() => {term(), keyword()}},
          gpu_limit: non_neg_integer() | nil,
          rules: Eviction.rules(),
          min_idle_ms: non_neg_integer() | :infinity,
          clock: (() -> integer()),
          sweep_ms: pos_integer(),
          history_limit: pos_integer() | :infinity,
          name: GenServer.name() | nil,
          cluster: term() | nil,
          labels: map(),
          priority: :high | :normal
        }

  @doc "The default clock: monotonic milliseconds."
  @spec monotonic_ms() :: integer()
  def monotonic_ms, do: :erlang.monotonic_time(:millisecond)

  @doc "Checks start_link/1's options; raises ArgumentError naming a bad one."
  @spec start!(term()) :: start()
  def start!(opts) do
    unless is_list(opts) do
      raise ArgumentError, "expected a keyword list of options, got: #{inspect(opts)}"
    end

    opts = Keyword.validate!(opts, @start_schema)

    budget = ModelBudget.resolve(opts[:memory_budget])

    %{
      budget: budget,
      gpu_limit: gpu_limit(opts[:memory_budget], budget),
      backend: backend!(opts[:backend]),
      models: models!(opts[:models], :models),
      catalog: catalog!(opts[:catalog]),
      rules: Eviction.compile!(opts[:evict_when]),
      min_idle_ms:
        check!(opts, :min_idle_ms, &ms_or_infinity?/1, "a non-negative integer or :infinity"),
      clock: clock!(opts[:clock]),
      sweep_ms: check!(opts, :sweep_ms, &(is_integer(&1) and &1 > 0), "a positive integer"),
      history_limit:
        check!(
          opts,
          :history_limit,
          &((is_integer(&1) and &1 > 0) or &1 == :infinity),
          "a positive integer or :infinity"
        ),
      name: opts[:name],
      cluster: opts[:cluster],
      labels: check!(opts, :labels, &is_map/1, "a map"),
      priority: check!(opts, :priority, &(&1 in [:high, :normal]), ":high or :normal")
    }
  end

  # The manager's own load/4 options.
  @load_keys [:n_gpus, :pinned, :keep_alive, :timeout]

  @doc """
  Checks load/4's options (the manager's own; the rest go to
  `ModelBudget.distribute/3` and the backend) and returns them unchanged.
  """
  @spec load!(term()) :: keyword()
  def load!(opts) do
    keyword!(opts, "load options")
    check!(opts, :n_gpus, &(is_integer(&1) and &1 >= 0), "a non-negative integer")
    check!(opts, :pinned, &is_boolean/1, "a boolean")
    check!(opts, :keep_alive, &ms_or_infinity?/1, "a non-negative integer or :infinity")
    check!(opts, :timeout, &ms_or_infinity?/1, "a non-negative integer or :infinity")
    opts
  end

  @doc """
  load/4's options less the manager's own (`:n_gpus`, `:pinned`,
  `:keep_alive`, `:timeout`): what `ModelBudget.distribute/3` is given. It
  checks every key it does not know against its own for a near miss, which
  costs microseconds a key; the manager's keys are never its.
  """
  @spec placement(keyword()) :: keyword()
  def placement(opts), do: Keyword.drop(opts, @load_keys)

  @doc """
  `opts` as `backend` refines them for its runtime (its optional
  `c:ModelBudget.Backend.estimate_options/1`), e.g. the runtime profile its
  binary reports; as given otherwise.
  """
  @spec for_backend(module(), keyword()) :: keyword()
  def for_backend(backend, opts),
    do: if(estimates?(backend), do: backend.estimate_options(opts), else: opts)

  @doc "Whether `backend` has the optional `c:ModelBudget.Backend.estimate_options/1`."
  @spec estimates?(module()) :: boolean()
  def estimates?(backend),
    do: Code.ensure_loaded?(backend) and function_exported?(backend, :estimate_options, 1)

  @doc "Checks unload/3's options; returns `%{timeout:, force:}` with defaults."
  @spec unload!(term()) :: %{timeout: non_neg_integer() | :infinity, force: boolean()}
  def unload!(opts) do
    keyword!(opts, "unload options")
    opts = Keyword.validate!(opts, timeout: :infinity, force: false)

    %{
      timeout: check!(opts, :timeout, &ms_or_infinity?/1, "a non-negative integer or :infinity"),
      force: check!(opts, :force, &is_boolean/1, "a boolean")
    }
  end

  defp keyword!(opts, what) do
    unless is_list(opts) and Keyword.keyword?(opts) do
      raise ArgumentError, "invalid #{what}: expected a keyword list, got: #{inspect(opts)}"
    end
  end

  defp ms_or_infinity?(ms), do: (is_integer(ms) and ms >= 0) or ms == :infinity

  # The option's value when present and valid (nil when absent).
  defp check!(opts, key, valid?, expected) do
    case Keyword.fetch(opts, key) do
      {:ok, value} ->
        unless valid?.(value) do
          raise ArgumentError,
                "invalid option #{inspect(key)}: expected #{expected}, got: #{inspect(value)}"
        end

        value

      :error ->
        nil
    end
  end

  defp clock!(nil), do: &__MODULE__.monotonic_ms/0
  defp clock!(clock) when is_function(clock, 0), do: clock

  defp clock!(clock) do
    raise ArgumentError,
          "invalid option :clock: expected a function of arity 0 returning milliseconds, got: " <>
            inspect(clock)
  end

  defp backend!(backend) do
    if is_atom(backend) and Code.ensure_loaded?(backend) and
         function_exported?(backend, :footprint, 2) and function_exported?(backend, :load, 3) and
         function_exported?(backend, :unload, 1) do
      backend
    else
      raise ArgumentError,
            "invalid option :backend: expected a module implementing ModelBudget.Backend, got: " <>
              inspect(backend)
    end
  end

  defp models!(models, key) when is_list(models), do: Enum.map(models, &model!(&1, key))

  defp models!(models, key) do
    raise ArgumentError,
          "invalid option #{inspect(key)}: expected a list of {id, source} or {id, source, opts}, got: " <>
            inspect(models)
  end

  # The catalog by id: a later entry of an id would silently win, so twice is an error.
  defp catalog!(entries) do
    Enum.reduce(models!(entries, :catalog), %{}, fn {id, source, opts}, acc ->
      if Map.has_key?(acc, id) do
        raise ArgumentError, "invalid option :catalog: id #{inspect(id)} is given twice"
      end

      Map.put(acc, id, {source, opts})
    end)
  end

  # A budget whose VRAM is :auto has room only on the GPUs found: how many.
  defp gpu_limit(spec, budget) do
    auto? = spec == :auto or (is_map(spec) and Map.get(spec, :vram) == :auto)

    case budget do
      %{mode: :per_device, vram: vram} when auto? and is_map(vram) -> map_size(vram)
      _ -> nil
    end
  end

  @doc """
  The GPU count a load with `opts` places over under `config`: its
  `:n_gpus`, else the manager's. Under a budget whose VRAM is `:auto`, more
  GPUs than were found is an `ArgumentError` naming both numbers.
  """
  @spec n_gpus!(map(), keyword()) :: non_neg_integer()
  def n_gpus!(config, opts) do
    n_gpus = Keyword.get(opts, :n_gpus, config.n_gpus)

    with %{gpu_limit: limit} when is_integer(limit) <- config do
      main_gpu = Keyword.get(opts, :main_gpu, 0)
      split = Keyword.get(opts, :tensor_split, [])

      cond do
        n_gpus > limit ->
          phantom!(:n_gpus, "#{n_gpus} GPUs", limit)

        is_integer(main_gpu) and main_gpu > 0 and main_gpu >= limit ->
          phantom!(:main_gpu, "GPU #{main_gpu}", limit)

        is_list(split) and length(split) > limit ->
          phantom!(:tensor_split, "#{length(split)} GPUs", limit)

        true ->
          :ok
      end
    end

    n_gpus
  end

  defp phantom!(key, asked, limit) do
    raise ArgumentError,
          "invalid option #{inspect(key)}: #{asked} asked for, but this machine has #{limit} " <>
            "(a :memory_budget with :auto VRAM has room only on the GPUs found; " <>
            "name the GPUs in a per-device budget to plan for another machine)"
  end

  @doc "Checks checkout/3's options; returns `%{load:, timeout:}` with defaults."
  @spec checkout!(term()) :: %{load: {term(), keyword()} | nil, timeout: timeout()}
  def checkout!(opts) do
    keyword!(opts, "checkout options")
    opts = Keyword.validate!(opts, load: nil, timeout: :infinity)

    load =
      case opts[:load] do
        nil ->
          nil

        {source, load_opts} ->
          {source, load!(load_opts)}

        other ->
          raise ArgumentError,
                "invalid option :load: expected {source, opts}, got: #{inspect(other)}"
      end

    %{
      load: load,
      timeout: check!(opts, :timeout, &ms_or_infinity?/1, "a non-negative integer or :infinity")
    }
  end

  defp model!({id, source}, _key), do: {id, source, []}
  defp model!({id, source, opts}, _key), do: {id, source, load!(opts)}

  defp model!(entry, key) do
    raise ArgumentError,
          "invalid option #{inspect(key)}: expected entries {id, source} or {id, source, opts}, got: " <>
            inspect(entry)
  end
end
