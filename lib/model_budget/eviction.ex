defmodule ModelBudget.Eviction do
  @moduledoc """
  Chooses which resident models to evict to make room for a placement: the
  Rust core's eviction chooser (`native/model_budget_core/src/budget/evict.rs`),
  the one owner of the arithmetic, exposed for `ModelBudget.ModelManager`.

  A ledger is the manager's, as `ModelBudget.ModelManager.Eviction`
  describes it:

    * `:budget` - the resolved budget.
    * `:rules` - compiled `:evict_when` rules, `%{constraint:
      %ModelBudget.Constraint{}}` over `variables/0` in that order (as
      `ModelBudget.ModelManager.Eviction.compile!/1` makes them), or `nil`.
    * `:usage` - what is held or reserved, folded.
    * `:resident_count` - how many models are resident.
    * `:free` - live free bytes by device, or `nil` when no rule reads `free`.
  """

  alias ModelBudget.Native
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

  @typedoc "Why a model is evicted."
  @type reason :: :constraint | {:does_not_fit, non_neg_integer(), non_neg_integer()}

  @typedoc "One chosen eviction."
  @type eviction :: %{
          id: term(),
          placement: ModelBudget.placement(),
          device: ModelBudget.device(),
          reason: reason()
        }

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
  Chooses evictions for `placement` from `candidates`, a list of `{id,
  placement}` least recently used first: for each device the placement
  touches (the combined pool, or RAM and then each GPU by index), while the
  load does not fit there or the rules hold, the next candidate holding
  bytes on that device is evicted in the simulation. Rules that still hold
  with no candidate left do not refuse a load that fits.

  Returns `{:ok, evictions, usage}` (in order; `usage` once they are
  released, the new placement not added), or `ModelBudget.check/3`'s error
  against the ledger as it stands when even evicting every candidate leaves
  a device short.

  ## Examples

      iex> ledger = %{
      ...>   budget: %{mode: :combined, limit: 1_000},
      ...>   rules: nil,
      ...>   usage: %{ram: 900, vram: %{}},
      ...>   resident_count: 3,
      ...>   free: nil
      ...> }
      iex> candidates = [a: %{ram: 300, vram: %{}}, b: %{ram: 300, vram: %{}}, c: %{ram: 300, vram: %{}}]
      iex> ModelBudget.Eviction.choose(ledger, %{ram: 200, vram: %{}}, candidates)
      {:ok, [%{id: :a, placement: %{ram: 300, vram: %{}}, device: :total, reason: {:does_not_fit, 200, 100}}],
       %{ram: 600, vram: %{}}}
      iex> ModelBudget.Eviction.choose(ledger, %{ram: 200, vram: %{}}, [])
      {:error, {:insufficient_memory, [device: :total, required: 200, available: 100]}}
  """
  @spec choose(map(), ModelBudget.placement(), [{term(), ModelBudget.placement()}]) ::
          {:ok, [eviction()], ModelBudget.placement()} | {:error, ModelBudget.insufficient()}
  def choose(ledger, placement, candidates) do
    candidates!(candidates)
    held = Enum.map(candidates, &elem(&1, 1))

    evictions(
      Errors.call(Native.evict_choose(native_ledger(ledger), placement, held)),
      candidates
    )
  end

  @doc """
  `choose/3` over the first candidates of a longer list, so that a caller
  can list them a few at a time: `:more` when `more?` (more candidates
  follow) and a device still needs room once these are walked; otherwise
  the answer `choose/3` gives over the whole list.

  ## Examples

      iex> ledger = %{
      ...>   budget: %{mode: :combined, limit: 1_000},
      ...>   rules: nil,
      ...>   usage: %{ram: 900, vram: %{}},
      ...>   resident_count: 3,
      ...>   free: nil
      ...> }
      iex> first = [a: %{ram: 50, vram: %{}}]
      iex> ModelBudget.Eviction.choose_from(ledger, %{ram: 200, vram: %{}}, first, true)
      :more
      iex> {:ok, [%{id: :a}, %{id: :b}], _usage} =
      ...>   ModelBudget.Eviction.choose_from(ledger, %{ram: 200, vram: %{}}, first ++ [b: %{ram: 300, vram: %{}}], true)
  """
  @spec choose_from(
          map(),
          ModelBudget.placement(),
          [{term(), ModelBudget.placement()}],
          boolean()
        ) ::
          :more
          | {:ok, [eviction()], ModelBudget.placement()}
          | {:error, ModelBudget.insufficient()}
  def choose_from(ledger, placement, candidates, more?) do
    candidates!(candidates)
    held = Enum.map(candidates, &elem(&1, 1))

    case Errors.call(
           Native.evict_choose_from(native_ledger(ledger), placement, held, more? == true)
         ) do
      :more -> :more
      answer -> evictions(answer, candidates)
    end
  end

  defp candidates!(candidates) do
    unless is_list(candidates) and Enum.all?(candidates, &match?({_, _}, &1)) do
      raise ArgumentError,
            "invalid candidates: expected a list of {id, placement}, got: #{inspect(candidates)}"
    end
  end

  # The core names candidates by their index in the list.
  defp evictions(answer, candidates) do
    case answer do
      {:ok, chosen, usage} ->
        by_index = List.to_tuple(candidates)

        evictions =
          for {i, device, reason} <- chosen do
            {id, held} = elem(by_index, i)
            %{id: id, placement: held, device: device, reason: reason}
          end

        {:ok, evictions, usage}

      {:error, _} = error ->
        error
    end
  end

  @doc """
  Whether `placement` needs room: `nil` when it fits on every device it
  touches and the rules hold on none, so that `choose/3` would evict
  nothing whatever the candidates (a manager need not list them); else the
  first device that needs room, and why.

  ## Examples

      iex> ledger = %{
      ...>   budget: %{mode: :combined, limit: 1_000},
      ...>   rules: nil,
      ...>   usage: %{ram: 900, vram: %{}},
      ...>   resident_count: 3,
      ...>   free: nil
      ...> }
      iex> ModelBudget.Eviction.needs(ledger, %{ram: 100, vram: %{}})
      nil
      iex> ModelBudget.Eviction.needs(ledger, %{ram: 200, vram: %{}})
      {:total, {:does_not_fit, 200, 100}}
  """
  @spec needs(map(), ModelBudget.placement()) :: nil | {ModelBudget.device(), reason()}
  def needs(ledger, placement),
    do: Errors.call(Native.evict_needs(native_ledger(ledger), placement))

  @doc """
  The rule variables' values on `device` for a load of `placement`, in
  `variables/0` order: each an integer from 0 to 2^64 - 1 (an unbounded
  device's `:total` is 2^64 - 1); `:free` is 0 when the ledger carries none.
  """
  @spec values(map(), ModelBudget.placement(), ModelBudget.device()) :: [non_neg_integer()]
  def values(ledger, placement, device),
    do: Errors.call(Native.evict_values(native_ledger(ledger), placement, device))

  @doc """
  The hand-over: what each evicted model (`evicted`, their placements in
  eviction order) still counts while a load of `placement` takes their
  memory over, until its unload returns (the core's `handover.rs`; see
  `ModelBudget.ModelManager.Eviction.residuals/3`).
  """
  @spec residuals(ModelBudget.budget(), [ModelBudget.placement()], ModelBudget.placement()) ::
          [ModelBudget.placement()]
  def residuals(budget, evicted, placement),
    do: Errors.call(Native.evict_residuals(budget, evicted, placement))

  @doc """
  A ledger's `:free`: the free bytes on each device `placement` touches,
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

  defp native_ledger(ledger), do: Map.put(ledger, :rules, rules_ref(Map.get(ledger, :rules)))

  defp rules_ref(nil), do: nil
  defp rules_ref(%{constraint: %ModelBudget.Constraint{ref: ref}}), do: ref

  defp rules_ref(other),
    do:
      raise(ArgumentError,
        message:
          "invalid ledger :rules: expected nil or %{constraint: %ModelBudget.Constraint{}}, got: #{inspect(other)}"
      )
end
