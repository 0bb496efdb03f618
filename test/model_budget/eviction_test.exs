defmodule ModelBudget.EvictionTest do
  use ExUnit.Case, async: true

  alias ModelBudget.Eviction
  alias ModelBudget.ModelManager.Eviction, as: Planner

  doctest ModelBudget.Eviction

  defp ledger(budget, usage, rules \\ nil, free \\ nil),
    do: %{budget: budget, rules: rules, usage: usage, resident_count: 3, free: free}

  describe "needs/2, choose_from/4, values/3, residuals/3 and free/4" do
    test "bad input raises ArgumentError naming the argument" do
      l = ledger(%{mode: :unlimited}, %{ram: 0, vram: %{}})

      assert_raise ArgumentError, ~r/invalid placement: expected a map/, fn ->
        Eviction.needs(l, %{ram: -1})
      end

      assert_raise ArgumentError, ~r/invalid ledger: expected a map with :budget/, fn ->
        Eviction.needs(Map.delete(l, :usage), %{ram: 1, vram: %{}})
      end

      assert_raise ArgumentError,
                   ~r/invalid device: expected :total, :ram or {:gpu, index}/,
                   fn ->
                     Eviction.values(l, %{ram: 1, vram: %{}}, :disk)
                   end

      assert_raise ArgumentError, ~r/invalid evicted: expected a list of placements/, fn ->
        Eviction.residuals(%{mode: :unlimited}, :none, %{ram: 1, vram: %{}})
      end

      assert_raise ArgumentError,
                   ~r/invalid candidates: expected a list of {id, placement}/,
                   fn ->
                     Eviction.choose_from(l, %{ram: 1, vram: %{}}, [:x], true)
                   end

      assert_raise ArgumentError, ~r/invalid gpus: expected a map of GPU indices to bytes/, fn ->
        Eviction.free(%{mode: :unlimited}, %{ram: 1, vram: %{}}, 1, [1])
      end
    end
  end

  describe "choose/3" do
    test "rules evict beyond the fit, and read free bytes that releases add to" do
      rules = Planner.compile!(["free < 350"])
      l = ledger(%{mode: :unlimited}, %{ram: 600, vram: %{}}, rules, %{ram: 100})
      held = [a: %{ram: 300, vram: %{}}, b: %{ram: 300, vram: %{}}]

      assert {:ok, [%{id: :a, device: :ram, reason: :constraint}], %{ram: 300, vram: %{}}} =
               Eviction.choose(l, %{ram: 1, vram: %{}}, held)
    end

    test "bad input raises ArgumentError naming the argument" do
      l = ledger(%{mode: :unlimited}, %{ram: 0, vram: %{}})

      assert_raise ArgumentError, ~r/invalid candidates/, fn ->
        Eviction.choose(l, %{ram: 1, vram: %{}}, [%{ram: 1, vram: %{}}])
      end

      assert_raise ArgumentError, ~r/invalid placement: releases/, fn ->
        Eviction.choose(
          ledger(%{mode: :combined, limit: 1}, %{ram: 1, vram: %{}}),
          %{ram: 1, vram: %{}},
          x: %{ram: 5, vram: %{}}
        )
      end

      {:ok, other} = ModelBudget.Constraint.compile(["x > 1"], [:x])

      assert_raise ArgumentError,
                   ~r/invalid rules: expected a constraint over the eviction/,
                   fn ->
                     Eviction.choose(%{l | rules: %{constraint: other}}, %{ram: 1, vram: %{}}, [])
                   end
    end

    # The manager's planner asks needs/2 first and lists the candidates for
    # choose/3 only when it says so: the same answer as choose/3 given them
    # all, on random ledgers, with and without rules.
    test "agrees with ModelManager.Eviction.plan/3 on random ledgers" do
      :rand.seed(:exsss, {13, 13, 13})
      rule_sets = [nil, Planner.compile!([]), Planner.compile!(["used_percent > 50"])]

      for _ <- 1..300 do
        budget =
          Enum.random([
            %{mode: :unlimited},
            %{mode: :combined, limit: :rand.uniform(3000)},
            %{mode: :per_device, ram: limit(), vram: %{0 => limit(), 1 => limit()}}
          ])

        held = for i <- 1..:rand.uniform(4), do: {i, placement()}
        usage = Enum.reduce(held, placement(), fn {_, p}, u -> ModelBudget.fold(u, p) end)
        rules = Enum.random(rule_sets)
        want = placement()

        ours = Eviction.choose(ledger(budget, usage, rules), want, held)
        theirs = Planner.plan(ledger(budget, usage, rules || Planner.compile!([])), want, held)
        assert ours == theirs, inspect({budget, usage, held, want, rules})
      end
    end
  end

  defp limit, do: Enum.random([:infinity, :rand.uniform(2000) - 1])

  defp placement do
    vram = for gpu <- 0..1, (b = :rand.uniform(800) - 1) > 0, into: %{}, do: {gpu, b}
    %{ram: :rand.uniform(800) - 1, vram: vram}
  end
end
