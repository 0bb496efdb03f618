defmodule ModelBudget.Eviction do
  @moduledoc """
  Which resident models make room for a placement, and what an admission
  takes: the Rust core's eviction (`native/model_budget_core/src/budget/`:
  `evict.rs` chooses, `handover.rs` counts what evicted models still hold,
  `admission.rs` does both in one step), the one owner of the arithmetic,
  and the `:evict_when` rules `ModelBudget.ModelManager` evaluates with it
  (see "Eviction" in `ModelBudget.ModelManager` for what the rules and
  their variables mean).

  A `ModelBudget.ModelManager` admits a load with one call, `admit/4`:
  its snapshot, the placement and the list of models it may evict cross
  once, and the evictions, what each evicted model still counts and the
  new usage come back.

  ## The snapshot

  What a manager holds at one instant, as every function here reads it
  (`t:snapshot/0`):

    * `:budget` - the resolved budget.
    * `:rules` - the compiled `:evict_when` rules (`compile!/1`), or `nil`.
    * `:usage` - what is held or reserved, folded.
    * `:resident_count` - how many models are resident.
    * `:free` - live free bytes by device (`probe_free/3`), or `nil` when
      no rule reads `free`.
    * `:ahead` - optional, `admit/4` only: the placements of loads waiting
      ahead, counted as held but not part of the usage it answers.
      Defaults to `[]`.
  """

  alias ModelBudget.{Constraint, Native}
  require ModelBudget.Native.Errors, as: Errors

  @variables [
    :memory_required,
    :available,
    :total,
    :used,
    :used_percent,
    :free,
    :model_size,
    :resident_count,
    :resident_bytes
  ]

  @default_rules ["memory_required > available * 0.70"]

  @typedoc """
  Compiled `:evict_when` rules (`compile!/1`): the constraint, and the
  variables an admission measures (what the rules read, and what the fit
  needs).
  """
  @type rules :: %{constraint: Constraint.t(), measure: [atom()]}

  @typedoc "What a manager holds at one instant (see \"The snapshot\" above)."
  @type snapshot :: %{
          required(:budget) => ModelBudget.budget(),
          required(:rules) => rules() | %{constraint: Constraint.t()} | nil,
          required(:usage) => ModelBudget.placement(),
          required(:resident_count) => non_neg_integer(),
          required(:free) => %{ModelBudget.device() => non_neg_integer()} | nil,
          optional(:ahead) => [ModelBudget.placement()]
        }

  @typedoc """
  Why a model is evicted: the `:evict_when` rules hold on the device, or the
  placement needs `required` bytes there and only `available` are left.
  """
  @type reason :: :constraint | {:does_not_fit, non_neg_integer(), non_neg_integer()}

  @typedoc "One chosen eviction: the model, what it holds, and the device and reason it goes for."
  @type eviction :: %{
          id: term(),
          placement: ModelBudget.placement(),
          device: ModelBudget.device(),
          reason: reason()
        }

  @typedoc """
  An admission (`admit/4`): the evictions in order, what each evicted model
  still counts until its unload returns (in the same order), and the usage
  afterwards.
  """
  @type admission :: %{
          evictions: [eviction()],
          residuals: [ModelBudget.placement()],
          usage: ModelBudget.placement()
        }

  @typedoc "Models that may be evicted, `{id, placement}`, least recently used first."
  @type candidates :: [{term(), ModelBudget.placement()}]

  @doc """
  The variables eviction rules may read, in the order their constraint
  must declare them.

  ## Examples

      iex> ModelBudget.Eviction.variables()
      [:memory_required, :available, :total, :used, :used_percent, :free, :model_size, :resident_count, :resident_bytes]
  """
  @spec variables() :: [atom()]
  def variables, do: @variables

  @doc """
  The default `:evict_when` rules, the ones dgenerate ships.

  ## Examples

      iex> ModelBudget.Eviction.default_rules()
      ["memory_required > available * 0.70"]
  """
  @spec default_rules() :: [String.t()]
  def default_rules, do: @default_rules

  @doc """
  Compiles `:evict_when` rules over `variables/0`, raising `ArgumentError`
  with the compile error when they do not compile.

  ## Examples

      iex> rules = ModelBudget.Eviction.compile!(["memory_required > available * 0.70 or free < 1GiB"])
      iex> rules.constraint.used_variables
      ["memory_required", "available", "free"]
      iex> rules.measure
      [:memory_required, :available, :free]

      iex> ModelBudget.Eviction.compile!(["used > totl"])
      ** (ArgumentError) invalid option :evict_when: "used > totl" does not compile at column 8: expected a variable (memory_required, available, total, used, used_percent, free, model_size, resident_count, resident_bytes), got `totl`
  """
  @spec compile!([String.t()]) :: rules()
  def compile!(rules) do
    unless is_list(rules) and Enum.all?(rules, &is_binary/1) do
      raise ArgumentError,
            "invalid option :evict_when: expected a list of strings, got: #{inspect(rules)}"
    end

    case Constraint.compile(rules, @variables) do
      {:ok, constraint} ->
        reads = Enum.map(constraint.used_variables, &String.to_existing_atom/1)
        %{constraint: constraint, measure: Enum.uniq([:memory_required, :available | reads])}

      {:error, {:invalid_constraint, expression, message, column}} ->
        raise ArgumentError,
              "invalid option :evict_when: #{inspect(expression)} does not compile " <>
                "at column #{column}: #{message}"
    end
  end

  @doc """
  Admits `placement` on top of `snapshot` in one call to the core: the
  evictions `choose/3` picks from `candidates`, what each evicted model
  still counts until its unload returns, and the usage afterwards.

  `candidates` are the models that may be evicted, `{id, placement}`,
  least recently used first: a list, or a function returning one, called
  only when the placement needs room (listing them may cost more than the
  admission). The core reads the list only as far as its walk reaches: a
  malformed candidate beyond that is not seen.

  The residuals: a load takes the evicted models' memory over, and its
  backend load starts only once their unloads have returned, so what
  backends hold on a device is at most the evicted bytes until then and
  the load's afterwards. Each evicted model counts its share of the
  evicted bytes beyond the load's (per device, or in total for a combined
  budget; `residuals/3`), and the new usage is the usage less the evicted
  placements, plus the residuals, plus the placement. A fence only makes
  room: its evicted models count in full, and the usage is unchanged.

  Returns `{:ok, admission}`, or `ModelBudget.check/3`'s error against the
  usage and the loads ahead, as they stand, when even evicting every
  candidate leaves a device short.

  ## Options

    * `:intent` - `:load` (the placement takes the evicted models' memory
      over and joins the usage) or `:fence` (it only makes room). Defaults
      to `:load`.

  ## Examples

      iex> snapshot = %{
      ...>   budget: %{mode: :combined, limit: 1_000},
      ...>   rules: nil,
      ...>   usage: %{ram: 800, vram: %{}},
      ...>   resident_count: 2,
      ...>   free: nil
      ...> }
      iex> candidates = [a: %{ram: 400, vram: %{}}, b: %{ram: 400, vram: %{}}]
      iex> ModelBudget.Eviction.admit(snapshot, %{ram: 100, vram: %{}}, candidates)
      {:ok, %{evictions: [], residuals: [], usage: %{ram: 900, vram: %{}}}}
      iex> {:ok, %{evictions: [%{id: :a}, %{id: :b}], residuals: residuals, usage: usage}} =
      ...>   ModelBudget.Eviction.admit(snapshot, %{ram: 700, vram: %{}}, fn -> candidates end)
      iex> {residuals, usage}
      {[%{ram: 100, vram: %{}}, %{ram: 0, vram: %{}}], %{ram: 800, vram: %{}}}
      iex> ModelBudget.Eviction.admit(snapshot, %{ram: 1_001, vram: %{}}, candidates)
      {:error, {:insufficient_memory, [device: :total, required: 1001, available: 200]}}
  """
  @spec admit(snapshot(), ModelBudget.placement(), candidates() | (() -> candidates()), keyword()) ::
          {:ok, admission()} | {:error, ModelBudget.insufficient()}
  def admit(snapshot, placement, candidates, opts \\ []) do
    intent = if opts == [], do: :load, else: Keyword.get(opts, :intent, :load)

    cond do
      is_list(candidates) ->
        admitted(Errors.call(Native.evict_admit(snapshot, placement, candidates, intent)))

      is_function(candidates, 0) ->
        case Errors.call(Native.evict_admit(snapshot, placement, nil, intent)) do
          :candidates ->
            listed = candidates.()
            admitted(Errors.call(Native.evict_admit(snapshot, placement, listed, intent)))

          answer ->
            admitted(answer)
        end

      true ->
        raise ArgumentError,
              "invalid candidates: expected a list of {id, placement} or a function " <>
                "returning one, got: #{inspect(candidates)}"
    end
  end

  defp admitted({:ok, evictions, residuals, usage}),
    do: {:ok, %{evictions: evictions, residuals: residuals, usage: usage}}

  defp admitted({:error, _} = refused), do: refused

  @doc """
  Chooses evictions for `placement` from `candidates`, a list of `{id,
  placement}` least recently used first: for each device the placement
  touches (the combined pool, or RAM and then each GPU by index), while the
  load does not fit there or the rules hold, the next candidate holding
  bytes on that device is evicted in the simulation. Rules that still hold
  with no candidate left do not refuse a load that fits.

  Returns `{:ok, evictions, usage}` (in order; `usage` once they are
  released, the new placement not added), or `ModelBudget.check/3`'s error
  against the snapshot as it stands when even evicting every candidate
  leaves a device short. (`admit/4` is this, the residuals and the new
  usage in one call.)

  ## Examples

      iex> snapshot = %{
      ...>   budget: %{mode: :combined, limit: 1_000},
      ...>   rules: nil,
      ...>   usage: %{ram: 900, vram: %{}},
      ...>   resident_count: 3,
      ...>   free: nil
      ...> }
      iex> candidates = [a: %{ram: 300, vram: %{}}, b: %{ram: 300, vram: %{}}, c: %{ram: 300, vram: %{}}]
      iex> ModelBudget.Eviction.choose(snapshot, %{ram: 200, vram: %{}}, candidates)
      {:ok, [%{id: :a, placement: %{ram: 300, vram: %{}}, device: :total, reason: {:does_not_fit, 200, 100}}],
       %{ram: 600, vram: %{}}}
      iex> ModelBudget.Eviction.choose(snapshot, %{ram: 200, vram: %{}}, [])
      {:error, {:insufficient_memory, [device: :total, required: 200, available: 100]}}
  """
  @spec choose(snapshot(), ModelBudget.placement(), candidates()) ::
          {:ok, [eviction()], ModelBudget.placement()} | {:error, ModelBudget.insufficient()}
  def choose(snapshot, placement, candidates) do
    candidates!(candidates)
    held = Enum.map(candidates, &elem(&1, 1))
    evictions(Errors.call(Native.evict_choose(snapshot, placement, held)), candidates)
  end

  defp candidates!(candidates) do
    unless is_list(candidates) and Enum.all?(candidates, &match?({_, _}, &1)) do
      raise ArgumentError,
            "invalid candidates: expected a list of {id, placement}, got: #{inspect(candidates)}"
    end
  end

  # The core names candidates by their index in the list.
  defp evictions({:ok, chosen, usage}, candidates) do
    by_index = List.to_tuple(candidates)

    evictions =
      for {i, device, reason} <- chosen do
        {id, held} = elem(by_index, i)
        %{id: id, placement: held, device: device, reason: reason}
      end

    {:ok, evictions, usage}
  end

  defp evictions({:error, _} = error, _candidates), do: error

  @doc """
  Whether `placement` needs room: `nil` when it fits on every device it
  touches and the rules hold on none, so that `choose/3` would evict
  nothing whatever the candidates; else the first device that needs room,
  and why.

  ## Examples

      iex> snapshot = %{
      ...>   budget: %{mode: :combined, limit: 1_000},
      ...>   rules: nil,
      ...>   usage: %{ram: 900, vram: %{}},
      ...>   resident_count: 3,
      ...>   free: nil
      ...> }
      iex> ModelBudget.Eviction.needs(snapshot, %{ram: 100, vram: %{}})
      nil
      iex> ModelBudget.Eviction.needs(snapshot, %{ram: 200, vram: %{}})
      {:total, {:does_not_fit, 200, 100}}
  """
  @spec needs(snapshot(), ModelBudget.placement()) :: nil | {ModelBudget.device(), reason()}
  def needs(snapshot, placement), do: Errors.call(Native.evict_needs(snapshot, placement))

  @doc """
  The rule variables' values on `device` for a load of `placement`, in
  `variables/0` order: each an integer from 0 to 2^64 - 1 (an unbounded
  device's `:total` is 2^64 - 1); `:free` is 0 when the snapshot carries
  none.

  ## Examples

      iex> snapshot = %{
      ...>   budget: %{mode: :per_device, ram: 1_000, vram: %{0 => 400}},
      ...>   rules: nil,
      ...>   usage: %{ram: 250, vram: %{0 => 100}},
      ...>   resident_count: 3,
      ...>   free: nil
      ...> }
      iex> placement = %{ram: 10, vram: %{0 => 200, 1 => 50}}
      iex> ModelBudget.Eviction.variables()
      ...> |> Enum.zip(ModelBudget.Eviction.values(snapshot, placement, {:gpu, 0}))
      [memory_required: 200, available: 300, total: 400, used: 100, used_percent: 25, free: 0,
       model_size: 260, resident_count: 3, resident_bytes: 350]
  """
  @spec values(snapshot(), ModelBudget.placement(), ModelBudget.device()) :: [non_neg_integer()]
  def values(snapshot, placement, device),
    do: Errors.call(Native.evict_values(snapshot, placement, device))

  @doc """
  The hand-over: what each evicted model (`evicted`, their placements in
  eviction order) still counts while a load of `placement` takes their
  memory over, until its unload returns (see `admit/4`, which answers them
  with the admission). They add up to the evicted bytes beyond the load's,
  per device or in total for a combined budget; each is at most its
  model's placement, and the earlier models take the excess first, so a
  model's unload returning never leaves the count below what the others
  still hold.

  ## Examples

      iex> evicted = [%{ram: 300, vram: %{0 => 100}}, %{ram: 300, vram: %{}}]
      iex> ModelBudget.Eviction.residuals(%{mode: :unlimited}, evicted, %{ram: 500, vram: %{}})
      [%{ram: 100, vram: %{0 => 100}}, %{ram: 0, vram: %{}}]
      iex> ModelBudget.Eviction.residuals(%{mode: :combined, limit: 1_000}, evicted, %{ram: 500, vram: %{}})
      [%{ram: 200, vram: %{}}, %{ram: 0, vram: %{}}]
  """
  @spec residuals(ModelBudget.budget(), [ModelBudget.placement()], ModelBudget.placement()) ::
          [ModelBudget.placement()]
  def residuals(budget, evicted, placement),
    do: Errors.call(Native.evict_residuals(budget, evicted, placement))

  @doc """
  The devices `placement` touches, in the order they are walked: `[:total]`
  for a combined budget, else `:ram` and then each GPU by index, where the
  placement puts bytes. An unlimited budget counts per device.

  ## Examples

      iex> placement = %{ram: 10, vram: %{1 => 5, 0 => 0}}
      iex> ModelBudget.Eviction.devices(%{mode: :per_device, ram: 100, vram: :infinity}, placement)
      [:ram, {:gpu, 1}]
      iex> ModelBudget.Eviction.devices(%{mode: :combined, limit: 100}, placement)
      [:total]
      iex> ModelBudget.Eviction.devices(%{mode: :combined, limit: 100}, %{ram: 0, vram: %{}})
      []
  """
  @spec devices(ModelBudget.budget(), ModelBudget.placement()) :: [ModelBudget.device()]
  def devices(%{mode: :combined}, %{ram: ram, vram: vram}) do
    if ram > 0 or Enum.any?(vram, fn {_gpu, bytes} -> bytes > 0 end), do: [:total], else: []
  end

  def devices(_budget, %{ram: ram, vram: vram}) do
    gpus = for {gpu, bytes} <- Enum.sort(vram), bytes > 0, do: {:gpu, gpu}
    if ram > 0, do: [:ram | gpus], else: gpus
  end

  @doc """
  A snapshot's `:free`: the free bytes on each device `placement` touches,
  from a probe's `ram` (available bytes) and `gpus` (free bytes by GPU
  index; a GPU missing has 0). The combined pool has their sum.

  ## Examples

      iex> ModelBudget.Eviction.free(%{mode: :combined, limit: 1}, %{ram: 1, vram: %{}}, 100, %{0 => 50})
      %{total: 150}
      iex> ModelBudget.Eviction.free(%{mode: :unlimited}, %{ram: 1, vram: %{1 => 1}}, 100, %{0 => 50})
      %{:ram => 100, {:gpu, 1} => 0}
  """
  @spec free(ModelBudget.budget(), ModelBudget.placement(), non_neg_integer(), %{
          non_neg_integer() => non_neg_integer()
        }) :: %{ModelBudget.device() => non_neg_integer()}
  def free(budget, placement, ram, gpus),
    do: Errors.call(Native.evict_free(budget, placement, ram, gpus))

  @doc """
  Live free bytes on each device `placement` touches (`devices/2`) when
  `rules` read `free`, else `nil` (nothing is probed): a snapshot's
  `:free`. RAM is `ModelBudget.system_memory/0`'s `:available`; a GPU is
  `ModelBudget.devices/0`'s `:memory_free`, 0 for a GPU the probe does not
  see; `:total` is the sum of RAM and every GPU.

  ## Examples

      iex> alias ModelBudget.Eviction
      iex> budget = %{mode: :unlimited}
      iex> %{ram: free} = Eviction.probe_free(Eviction.compile!(["free < 1GiB"]), budget, %{ram: 1, vram: %{}})
      iex> free > 0
      true
      iex> Eviction.probe_free(Eviction.compile!(["used > 0"]), budget, %{ram: 1, vram: %{}})
      nil
  """
  @spec probe_free(rules(), ModelBudget.budget(), ModelBudget.placement()) ::
          %{ModelBudget.device() => non_neg_integer()} | nil
  def probe_free(rules, budget, placement) do
    if :lists.member(:free, rules.measure) do
      # Only what the placement's devices need is probed.
      devices = devices(budget, placement)
      gpus = if devices == [:ram], do: [], else: ModelBudget.devices()

      ram =
        if Enum.any?(devices, &(&1 in [:ram, :total])),
          do: ModelBudget.system_memory().available,
          else: 0

      gpu_free = Map.new(gpus, &{&1.gpu_index, &1.memory_free})
      free(budget, placement, ram, gpu_free)
    end
  end
end
