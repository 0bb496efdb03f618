defmodule ModelBudget.Eviction do
  @moduledoc """
  Chooses which resident models to evict to make room for a placement: the
  Rust core's eviction chooser (`native/model_budget_core/src/evict.rs`),
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
    unless is_list(candidates) and Enum.all?(candidates, &match?({_, _}, &1)) do
      raise ArgumentError,
            "invalid candidates: expected a list of {id, placement}, got: #{inspect(candidates)}"
    end

    held = Enum.map(candidates, &elem(&1, 1))
    native_ledger = Map.put(ledger, :rules, rules_ref(Map.get(ledger, :rules)))

    case Errors.call(Native.evict_choose(native_ledger, placement, held)) do
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

  defp rules_ref(nil), do: nil
  defp rules_ref(%{constraint: %ModelBudget.Constraint{ref: ref}}), do: ref

  defp rules_ref(other),
    do:
      raise(ArgumentError,
        message:
          "invalid ledger :rules: expected nil or %{constraint: %ModelBudget.Constraint{}}, got: #{inspect(other)}"
      )
end
