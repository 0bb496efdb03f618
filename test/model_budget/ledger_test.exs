defmodule ModelBudget.LedgerTest do
  use ExUnit.Case, async: true

  alias ModelBudget.Ledger

  doctest ModelBudget.Ledger

  describe "admit/2" do
    test "is check/3 then fold/2 on the same usage, and nothing on refusal" do
      budget = %{mode: :per_device, ram: 1000, vram: %{0 => 500, 1 => 300}}
      ledger = Ledger.new(budget)
      :rand.seed(:exsss, {1, 2, 3})

      Enum.reduce(1..200, ModelBudget.empty_usage(), fn _, used ->
        p = %{ram: :rand.uniform(100), vram: %{0 => :rand.uniform(60), 1 => :rand.uniform(40)}}
        expected = ModelBudget.check(budget, p, used)
        assert Ledger.admit(ledger, p) == expected
        used = if expected == :ok, do: ModelBudget.fold(used, p), else: used
        assert Ledger.usage(ledger) == used
        used
      end)
    end

    test "processes racing for the last room: exactly one gets it" do
      ledger = Ledger.new(%{mode: :combined, limit: 100})

      results =
        1..50
        |> Enum.map(fn _ -> Task.async(fn -> Ledger.admit(ledger, %{ram: 60, vram: %{}}) end) end)
        |> Enum.map(&Task.await/1)

      assert Enum.count(results, &(&1 == :ok)) == 1
    end

    test "bad input raises ArgumentError naming the argument" do
      ledger = Ledger.new(%{mode: :unlimited})

      assert_raise ArgumentError, ~r/invalid placement: .*got: %{ram: -1/, fn ->
        Ledger.admit(ledger, %{ram: -1, vram: %{}})
      end

      assert_raise ArgumentError, ~r/invalid ledger: .*got: :nope/, fn ->
        Ledger.admit(:nope, %{ram: 1, vram: %{}})
      end

      assert_raise ArgumentError, ~r/invalid budget/, fn -> Ledger.new(%{mode: :sideways}) end

      assert_raise ArgumentError, ~r/releases 5 bytes of RAM but only 0 are held/, fn ->
        Ledger.release(ledger, %{ram: 5, vram: %{}})
      end
    end
  end
end
