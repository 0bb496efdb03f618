defmodule ModelBudget.ModelManager.Eviction do
  @moduledoc """
  Deprecated: `ModelBudget.Eviction` is the one eviction module. Its
  `variables/0`, `default_rules/0`, `compile!/1`, `devices/2`,
  `probe_free/3` and `residuals/3` are the functions of the same names
  here; a manager plans and admits with `ModelBudget.Eviction.admit/4`,
  which takes the place of `plan/3`. This module delegates to it and will
  be removed.
  """

  alias ModelBudget.Eviction

  @typedoc "See `t:ModelBudget.Eviction.rules/0`."
  @type rules :: Eviction.rules()

  @typedoc "See `t:ModelBudget.Eviction.snapshot/0`."
  @type ledger :: Eviction.snapshot()

  @typedoc "See `t:ModelBudget.Eviction.reason/0`."
  @type reason :: Eviction.reason()

  @typedoc "See `t:ModelBudget.Eviction.eviction/0`."
  @type eviction :: Eviction.eviction()

  @doc "See `ModelBudget.Eviction.variables/0`."
  @deprecated "Use ModelBudget.Eviction.variables/0"
  @spec variables() :: [atom()]
  defdelegate variables, to: Eviction

  @doc "See `ModelBudget.Eviction.default_rules/0`."
  @deprecated "Use ModelBudget.Eviction.default_rules/0"
  @spec default_rules() :: [String.t()]
  defdelegate default_rules, to: Eviction

  @doc "See `ModelBudget.Eviction.compile!/1`."
  @deprecated "Use ModelBudget.Eviction.compile!/1"
  @spec compile!([String.t()]) :: rules()
  defdelegate compile!(rules), to: Eviction

  @doc "See `ModelBudget.Eviction.devices/2`."
  @deprecated "Use ModelBudget.Eviction.devices/2"
  @spec devices(ModelBudget.budget(), ModelBudget.placement()) :: [ModelBudget.device()]
  defdelegate devices(budget, placement), to: Eviction

  @doc "See `ModelBudget.Eviction.probe_free/3`."
  @deprecated "Use ModelBudget.Eviction.probe_free/3"
  @spec probe_free(rules(), ModelBudget.budget(), ModelBudget.placement()) ::
          %{ModelBudget.device() => non_neg_integer()} | nil
  defdelegate probe_free(rules, budget, placement), to: Eviction

  @doc "See `ModelBudget.Eviction.residuals/3`."
  @deprecated "Use ModelBudget.Eviction.residuals/3"
  @spec residuals(ModelBudget.budget(), [ModelBudget.placement()], ModelBudget.placement()) ::
          [ModelBudget.placement()]
  defdelegate residuals(budget, evicted, placement), to: Eviction

  @doc """
  `ModelBudget.Eviction.values/3` as a map of `ModelBudget.Eviction.variables/0`
  to their values, `:free` only when the snapshot carries it.
  """
  @deprecated "Use ModelBudget.Eviction.values/3 (in ModelBudget.Eviction.variables/0 order)"
  @spec values(ledger(), ModelBudget.placement(), ModelBudget.device()) :: %{
          atom() => non_neg_integer()
        }
  def values(ledger, placement, device) do
    values = Enum.zip(Eviction.variables(), Eviction.values(ledger, placement, device))
    Map.new(if ledger.free, do: values, else: List.keydelete(values, :free, 0))
  end

  @doc """
  `ModelBudget.Eviction.choose/3` over `candidates` (an enumerable, listed
  only when the placement needs room): `{:ok, evictions, usage}` with the
  usage once the evictions are released, or check's error.
  """
  @deprecated "Use ModelBudget.Eviction.admit/4"
  @spec plan(ledger(), ModelBudget.placement(), Enumerable.t()) ::
          {:ok, [eviction()], ModelBudget.placement()} | {:error, ModelBudget.insufficient()}
  def plan(ledger, placement, candidates) do
    if Eviction.needs(ledger, placement) == nil,
      do: {:ok, [], ledger.usage},
      else: Eviction.choose(ledger, placement, Enum.to_list(candidates))
  end
end
