defmodule ModelBudget.ModelManager.EvictionTest do
  # Deprecated: every function delegates to ModelBudget.Eviction, whose
  # tests hold the rules (test/model_budget/eviction_test.exs). Called
  # through apply/3 so that the calls compile without deprecation warnings.
  use ExUnit.Case, async: true

  alias ModelBudget.ModelManager.Eviction, as: Deprecated

  defp ram(bytes), do: %{ram: bytes, vram: %{}}

  defp old(fun, args), do: apply(Deprecated, fun, args)

  test "every function is deprecated" do
    deprecated = Deprecated.__info__(:deprecated)

    for {fun, arity} <- Deprecated.__info__(:functions) do
      assert List.keymember?(deprecated, {fun, arity}, 0), "#{fun}/#{arity} is not deprecated"
    end
  end

  test "answers as ModelBudget.Eviction does" do
    assert old(:variables, []) == ModelBudget.Eviction.variables()
    assert old(:default_rules, []) == ModelBudget.Eviction.default_rules()
    rules = old(:compile!, [["used >= 0"]])
    assert rules.measure == ModelBudget.Eviction.compile!(["used >= 0"]).measure
    budget = %{mode: :combined, limit: 1_000}
    assert old(:devices, [budget, ram(1)]) == [:total]
    assert old(:residuals, [budget, [ram(300)], ram(200)]) == [ram(100)]
    assert old(:probe_free, [rules, budget, ram(1)]) == nil

    ledger = %{budget: budget, rules: rules, usage: ram(1_000), resident_count: 4, free: nil}

    assert %{used: 1_000, available: 0, resident_count: 4} =
             values = old(:values, [ledger, ram(1), :total])

    refute Map.has_key?(values, :free)

    candidates = for id <- [:a, :b, :c, :d], do: {id, ram(250)}

    assert old(:plan, [
             %{ledger | rules: old(:compile!, [[]])},
             ram(300),
             Stream.map(candidates, & &1)
           ]) ==
             ModelBudget.Eviction.choose(%{ledger | rules: nil}, ram(300), candidates)

    assert old(:plan, [%{ledger | usage: ram(500), rules: nil}, ram(300), [:never_listed]]) ==
             {:ok, [], ram(500)}
  end
end
