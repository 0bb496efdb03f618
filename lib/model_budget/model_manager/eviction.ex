defmodule ModelBudget.ModelManager.Eviction do
  @moduledoc """
  Plans which resident models a `ModelBudget.ModelManager` evicts to make
  room for a load or a fence: pure functions over the manager's ledger (plus
  `probe_free/3`, which reads the device probe), so a plan can be made, and
  tested, without touching a model. The arithmetic is the Rust core's
  (`ModelBudget.Eviction`): this module holds the rules' options, the
  probe, and the manager's view of the plan.

  The manager makes a plan before every admission and acts on it only when
  it succeeds; the rules and the variables are described under "Eviction" in
  `ModelBudget.ModelManager`.

  A ledger, as `plan/3` and `values/3` take it:

    * `:budget` - the resolved budget.
    * `:rules` - the compiled `:evict_when` rules (`compile!/1`).
    * `:usage` - what the manager holds or reserves, folded.
    * `:resident_count` - how many models the manager lists.
    * `:free` - live free bytes by device (`probe_free/3`), or `nil` when no
      rule reads `free`.
  """

  alias ModelBudget.Constraint

  # One list of rule variables, in the order the core's chooser reads them.
  @variables ModelBudget.Eviction.variables()

  @default_rules ["memory_required > available * 0.70"]

  @typedoc """
  Compiled `:evict_when` rules: the constraint, and the variables a plan
  measures (what the rules read, and what the fit needs).
  """
  @type rules :: %{constraint: Constraint.t(), measure: [atom()]}

  @typedoc "The manager's ledger, as the planner reads it (see the module doc)."
  @type ledger :: %{
          budget: ModelBudget.budget(),
          rules: rules(),
          usage: ModelBudget.placement(),
          resident_count: non_neg_integer(),
          free: %{ModelBudget.device() => non_neg_integer()} | nil
        }

  @typedoc """
  Why a model is evicted: the `:evict_when` rules hold on the device, or the
  load needs `required` bytes there and only `available` are left.
  """
  @type reason :: ModelBudget.Eviction.reason()

  @typedoc "One planned eviction: the model, what it holds, and the device and reason it goes for."
  @type eviction :: ModelBudget.Eviction.eviction()

  @doc """
  The variable names `:evict_when` rules may use.

  ## Examples

      iex> ModelBudget.ModelManager.Eviction.variables()
      [:memory_required, :available, :total, :used, :used_percent, :free, :model_size, :resident_count, :resident_bytes]
  """
  @spec variables() :: [atom()]
  def variables, do: @variables

  @doc """
  The default `:evict_when` rules, the ones dgenerate ships.

  ## Examples

      iex> ModelBudget.ModelManager.Eviction.default_rules()
      ["memory_required > available * 0.70"]
  """
  @spec default_rules() :: [String.t()]
  def default_rules, do: @default_rules

  @doc """
  Compiles `:evict_when` rules over `variables/0`, raising `ArgumentError`
  with the compile error when they do not compile.

  ## Examples

      iex> rules = ModelBudget.ModelManager.Eviction.compile!(["memory_required > available * 0.70 or free < 1GiB"])
      iex> rules.constraint.used_variables
      ["memory_required", "available", "free"]
      iex> rules.measure
      [:memory_required, :available, :free]

      iex> ModelBudget.ModelManager.Eviction.compile!(["used > totl"])
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
  The devices `placement` touches, in the order they are planned: `[:total]`
  for a combined budget, else `:ram` and then each GPU by index, where the
  placement puts bytes. An unlimited budget counts per device.

  ## Examples

      iex> placement = %{ram: 10, vram: %{1 => 5, 0 => 0}}
      iex> ModelBudget.ModelManager.Eviction.devices(%{mode: :per_device, ram: 100, vram: :infinity}, placement)
      [:ram, {:gpu, 1}]
      iex> ModelBudget.ModelManager.Eviction.devices(%{mode: :combined, limit: 100}, placement)
      [:total]
      iex> ModelBudget.ModelManager.Eviction.devices(%{mode: :combined, limit: 100}, %{ram: 0, vram: %{}})
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
  Live free bytes on each device `placement` touches (`devices/2`) when
  `rules` read `free`, else `nil` (nothing is probed). RAM is
  `ModelBudget.system_memory/0`'s `:available`; a GPU is
  `ModelBudget.devices/0`'s `:memory_free`, 0 for a GPU the probe does not
  see; `:total` is the sum of RAM and every GPU.

  ## Examples

      iex> alias ModelBudget.ModelManager.Eviction
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
      ModelBudget.Eviction.free(budget, placement, ram, gpu_free)
    end
  end

  @doc """
  The variables' values on `device` for a load or fence of `placement`,
  given `ledger` (see "Eviction" in `ModelBudget.ModelManager` for what each
  one means). Every value is an integer from 0 to 2^64 - 1; `:free` is
  present only when the ledger carries it.

  ## Examples

      iex> ledger = %{
      ...>   budget: %{mode: :per_device, ram: 1_000, vram: %{0 => 400}},
      ...>   rules: nil,
      ...>   usage: %{ram: 250, vram: %{0 => 100}},
      ...>   resident_count: 3,
      ...>   free: nil
      ...> }
      iex> placement = %{ram: 10, vram: %{0 => 200, 1 => 50}}
      iex> ModelBudget.ModelManager.Eviction.values(ledger, placement, {:gpu, 0})
      %{memory_required: 200, available: 300, total: 400, used: 100, used_percent: 25,
        model_size: 260, resident_count: 3, resident_bytes: 350}
      iex> ModelBudget.ModelManager.Eviction.values(ledger, placement, {:gpu, 1}).available
      18446744073709551615
  """
  @spec values(ledger(), ModelBudget.placement(), ModelBudget.device()) :: %{
          atom() => non_neg_integer()
        }
  def values(ledger, placement, device) do
    values = Enum.zip(@variables, ModelBudget.Eviction.values(ledger, placement, device))
    Map.new(if ledger.free, do: values, else: List.keydelete(values, :free, 0))
  end

  @doc """
  Plans room for `placement`: for each device it touches (`devices/2`),
  while the load does not fit there or the rules hold, the next model of
  `candidates` that holds bytes on that device is evicted in the simulation,
  and the device is measured again; stop as soon as the load fits and the
  rules do not hold. Rules that still hold once no candidate is left do not
  refuse a load that fits.

  `candidates` is an enumerable of `{id, placement}`, the models that may be
  evicted, least recently used first. It is walked only when the load needs
  room (`ModelBudget.Eviction.needs/2`), then lazily and once: it crosses to
  the core's chooser (`ModelBudget.Eviction.choose_from/4`) a few
  candidates at a time, until the answer needs no more.

  Returns `{:ok, evictions, usage}` with the evictions in order and the usage
  once they are released (the new placement not added), or, when even
  evicting every candidate leaves a device short, `ModelBudget.check/3`'s
  error against the ledger as it stands: nothing is evicted.

  ## Examples

      iex> alias ModelBudget.ModelManager.Eviction
      iex> ledger = %{
      ...>   budget: %{mode: :combined, limit: 1_000},
      ...>   rules: Eviction.compile!([]),
      ...>   usage: %{ram: 900, vram: %{}},
      ...>   resident_count: 3,
      ...>   free: nil
      ...> }
      iex> candidates = [a: %{ram: 300, vram: %{}}, b: %{ram: 300, vram: %{}}, c: %{ram: 300, vram: %{}}]
      iex> {:ok, [%{id: :a, reason: {:does_not_fit, 200, 100}}], %{ram: 600, vram: %{}}} =
      ...>   Eviction.plan(ledger, %{ram: 200, vram: %{}}, candidates)
      iex> Eviction.plan(ledger, %{ram: 200, vram: %{}}, [])
      {:error, {:insufficient_memory, [device: :total, required: 200, available: 100]}}
  """
  @spec plan(ledger(), ModelBudget.placement(), Enumerable.t()) ::
          {:ok, [eviction()], ModelBudget.placement()} | {:error, ModelBudget.insufficient()}
  def plan(ledger, placement, candidates) do
    # The candidates cross to the core only when the load needs room.
    if ModelBudget.Eviction.needs(ledger, placement) == nil,
      do: {:ok, [], ledger.usage},
      else: walk(ledger, placement, candidates)
  end

  # The candidates are pulled and sent to the core's chooser a few at a time,
  # the pulled list growing fourfold (2, 8, 32, ...) until the answer needs
  # no more: a load that evicts two models lists two, one that evicts ten of
  # a thousand lists 32, and what crosses in all is under 4/3 of what was
  # pulled.
  @first_batch 2

  defp walk(ledger, placement, candidates) do
    walked =
      Enum.reduce_while(candidates, {[], 0, @first_batch}, fn candidate, {pulled, n, batch} ->
        pulled = [candidate | pulled]

        if n + 1 < batch do
          {:cont, {pulled, n + 1, batch}}
        else
          case ModelBudget.Eviction.choose_from(ledger, placement, Enum.reverse(pulled), true) do
            :more -> {:cont, {pulled, n + 1, batch * 4}}
            answer -> {:halt, {:answer, answer}}
          end
        end
      end)

    case walked do
      {:answer, answer} ->
        answer

      {pulled, _n, _batch} ->
        ModelBudget.Eviction.choose_from(ledger, placement, Enum.reverse(pulled), false)
    end
  end

  @doc """
  What each evicted model still counts in the ledger while its unload runs,
  when a load of `placement` takes over their memory (`evicted` are their
  placements, in eviction order).

  The load's own backend load starts only once every evicted model's unload
  has returned, so what backends really hold on a device is at most the
  evicted models' bytes until then, and the load's afterwards. The ledger
  must count the larger of the two: the load's placement plus these
  residuals, which add up to the evicted bytes beyond the load's (per device,
  or in total for a combined budget). Each residual is at most its model's
  placement, so a model's unload returning never leaves the ledger below
  what the others still hold.

  ## Examples

      iex> evicted = [%{ram: 300, vram: %{0 => 100}}, %{ram: 300, vram: %{}}]
      iex> ModelBudget.ModelManager.Eviction.residuals(%{mode: :unlimited}, evicted, %{ram: 500, vram: %{}})
      [%{ram: 100, vram: %{0 => 100}}, %{ram: 0, vram: %{}}]
      iex> ModelBudget.ModelManager.Eviction.residuals(%{mode: :combined, limit: 1_000}, evicted, %{ram: 500, vram: %{}})
      [%{ram: 200, vram: %{}}, %{ram: 0, vram: %{}}]
  """
  @spec residuals(ModelBudget.budget(), [ModelBudget.placement()], ModelBudget.placement()) ::
          [ModelBudget.placement()]
  def residuals(_budget, [], _placement), do: []

  def residuals(budget, evicted, placement),
    do: ModelBudget.Eviction.residuals(budget, evicted, placement)
end
