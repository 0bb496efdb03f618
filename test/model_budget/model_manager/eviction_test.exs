defmodule ModelBudget.ModelManager.EvictionTest do
  use ExUnit.Case, async: true

  alias ModelBudget.ModelManager.Eviction

  doctest Eviction

  defp ram(bytes), do: %{ram: bytes, vram: %{}}
  defp gpu(index, bytes), do: %{ram: 0, vram: %{index => bytes}}

  defp ledger(budget, usage, opts \\ []) do
    %{
      budget: ModelBudget.resolve(budget),
      rules: Eviction.compile!(Keyword.get(opts, :rules, [])),
      usage: usage,
      resident_count: Keyword.get(opts, :count, 0),
      free: Keyword.get(opts, :free)
    }
  end

  defp ids({:ok, evictions, _usage}), do: Enum.map(evictions, & &1.id)

  describe "compile!/1" do
    test "takes the variables and raises ArgumentError with the compile error" do
      rules = for name <- Eviction.variables(), do: "#{name} >= 0"

      assert %{constraint: %ModelBudget.Constraint{used_variables: used}, measure: measure} =
               Eviction.compile!(rules)

      assert used == Enum.map(Eviction.variables(), &Atom.to_string/1)
      assert Enum.sort(measure) == Enum.sort(Eviction.variables())
      assert Eviction.compile!([]).measure == [:memory_required, :available]

      for {rules, message} <- [
            {["used >"], ~s("used >" does not compile at column 7: expected an operand)},
            {["used + 1"], ~s("used + 1" does not compile at column 1: expected a comparison)},
            {"used > 1", ~s(expected a list of strings, got: "used > 1")},
            {[:used], "expected a list of strings, got: [:used]"}
          ] do
        error = assert_raise ArgumentError, fn -> Eviction.compile!(rules) end
        assert error.message =~ "invalid option :evict_when: "
        assert error.message =~ message
      end
    end
  end

  describe "values/3" do
    test "a combined budget is one device, :total, over RAM and every GPU" do
      ledger = ledger(1_000, %{ram: 100, vram: %{0 => 150, 1 => 50}}, count: 4)

      assert Eviction.values(ledger, %{ram: 10, vram: %{1 => 20}}, :total) == %{
               memory_required: 30,
               available: 700,
               total: 1_000,
               used: 300,
               used_percent: 30,
               model_size: 30,
               resident_count: 4,
               resident_bytes: 300
             }
    end

    test "a per-device budget measures RAM and each GPU on their own" do
      ledger = ledger(%{ram: 1_000, vram: [400, 0]}, %{ram: 999, vram: %{0 => 100}})
      placement = %{ram: 10, vram: %{0 => 300, 1 => 1}}

      assert %{memory_required: 10, total: 1_000, used: 999, available: 1, used_percent: 99} =
               Eviction.values(ledger, placement, :ram)

      assert %{memory_required: 300, total: 400, used: 100, available: 300, used_percent: 25} =
               Eviction.values(ledger, placement, {:gpu, 0})

      # A zero limit is a full device.
      assert %{total: 0, used: 0, available: 0, used_percent: 100} =
               Eviction.values(ledger, placement, {:gpu, 1})
    end

    test "a device with no limit has total 2^64 - 1; values never leave u64" do
      max = 2 ** 64 - 1

      for {budget, device} <- [
            {:infinity, :ram},
            {:infinity, {:gpu, 3}},
            {%{ram: :infinity, vram: [10]}, :ram},
            {%{ram: 10, vram: [10]}, {:gpu, 1}},
            {%{ram: 10, vram: :infinity}, {:gpu, 0}}
          ] do
        values = Eviction.values(ledger(budget, %{ram: 5, vram: %{0 => 5}}), ram(1), device)
        assert %{total: ^max, used_percent: 0} = values
        assert values.available == max - values.used
      end

      huge = %{ram: max, vram: %{0 => max}}
      values = Eviction.values(ledger(:infinity, huge), huge, :ram)
      assert values.model_size == max and values.resident_bytes == max
    end

    test "free is the ledger's when it carries one" do
      ledger = ledger(1_000, ram(0), free: %{total: 12_345})
      assert %{free: 12_345} = Eviction.values(ledger, ram(1), :total)
      refute Map.has_key?(Eviction.values(%{ledger | free: nil}, ram(1), :total), :free)
    end
  end

  describe "probe_free/3" do
    test "reads the probe only when a rule uses free, for the devices the placement touches" do
      uses_free = Eviction.compile!(["free < 1GiB"])
      %{available: available} = ModelBudget.system_memory()
      placement = %{ram: 1, vram: %{99 => 1}}

      # A GPU the probe does not see has 0.
      assert %{:ram => ram, {:gpu, 99} => 0} =
               Eviction.probe_free(uses_free, %{mode: :unlimited}, placement)

      assert %{total: total} =
               Eviction.probe_free(uses_free, %{mode: :combined, limit: 1}, placement)

      # RAM moves between probes, under other tests; :total adds every GPU.
      assert ram > 0 and abs(ram - available) < 2 ** 30 and total + 2 ** 30 >= ram
      unused = Eviction.compile!(["used > 0"])
      assert Eviction.probe_free(unused, %{mode: :unlimited}, placement) == nil
    end
  end

  describe "plan/3" do
    # Four models of 250 bytes in a 1,000-byte combined budget.
    defp full, do: ledger(1_000, ram(1_000), count: 4)
    defp candidates, do: for(id <- [:a, :b, :c, :d], do: {id, ram(250)})

    test "evicts in the candidates' order, as few as fit the load" do
      assert {:ok, [%{id: :a, device: :total, reason: {:does_not_fit, 200, 0}}], usage} =
               Eviction.plan(full(), ram(200), candidates())

      assert usage == ram(750)
      assert ids(Eviction.plan(full(), ram(251), candidates())) == [:a, :b]
      assert ids(Eviction.plan(full(), ram(1_000), candidates())) == [:a, :b, :c, :d]
      assert ids(Eviction.plan(full(), ram(0), candidates())) == []
    end

    test "a load that fits once evictions are planned takes the fewest big models" do
      gib = 2 ** 30
      ledger = ledger(6 * gib, ram(6 * gib), count: 3)
      candidates = for id <- [:x, :y, :z], do: {id, ram(2 * gib)}
      assert ids(Eviction.plan(ledger, ram(gib), candidates)) == [:x]
    end

    test "refuses with check/3's error against the ledger when evicting all is not enough" do
      assert Eviction.plan(full(), ram(800), Enum.take(candidates(), 3)) ==
               {:error, {:insufficient_memory, [device: :total, required: 800, available: 0]}}

      assert Eviction.plan(full(), ram(1_001), candidates()) ==
               ModelBudget.check(full().budget, ram(1_001), full().usage)
    end

    test "evicts while a rule holds, and stops when it no longer does" do
      # Keep at most two models besides the new one.
      ledger = %{full() | rules: Eviction.compile!(["resident_count > 2"])}
      # Four models; the first eviction makes room, the second the rule's.

      assert {:ok, [%{id: :a, reason: {:does_not_fit, 10, 0}}, %{id: :b, reason: :constraint}], _} =
               Eviction.plan(ledger, ram(10), candidates())
    end

    test "a rule that still holds when nothing is left to evict does not refuse a fitting load" do
      ledger = %{ledger(1_000, ram(500), count: 2) | rules: Eviction.compile!(["used >= 0"])}
      assert ids(Eviction.plan(ledger, ram(10), a: ram(250), b: ram(250))) == [:a, :b]
      assert ids(Eviction.plan(ledger, ram(10), [])) == []
    end

    test "the default rule evicts until the load takes at most 70% of what is available" do
      ledger = %{full() | rules: Eviction.compile!(Eviction.default_rules())}
      # 400 > 0.7 * 500 after two evictions; 400 <= 0.7 * 750 after three.
      assert ids(Eviction.plan(ledger, ram(400), candidates())) == [:a, :b, :c]
      # 350 <= 0.7 * 500.
      assert ids(Eviction.plan(ledger, ram(350), candidates())) == [:a, :b]
    end

    test "free counts the memory of the evictions planned so far" do
      ledger = %{full() | rules: Eviction.compile!(["free < 600"]), free: %{total: 100}}
      # 100 + 250 + 250 = 600 free after two.
      assert ids(Eviction.plan(ledger, ram(10), candidates())) == [:a, :b]
    end

    test "per device: only models holding memory on a short device are evicted for it" do
      ledger =
        ledger(%{ram: 1_000, vram: [1_000, 1_000]}, %{ram: 500, vram: %{0 => 1_000, 1 => 900}})

      candidates = [
        gpu0_old: gpu(0, 600),
        gpu0: gpu(0, 400),
        both: %{ram: 300, vram: %{1 => 300}},
        gpu1: gpu(1, 600)
      ]

      assert ids(Eviction.plan(ledger, gpu(1, 400), candidates)) == [:both]
      assert ids(Eviction.plan(ledger, gpu(1, 800), candidates)) == [:both, :gpu1]

      # Both GPUs short: GPU 0 first, then GPU 1; nothing twice.
      assert {:ok, evictions, usage} =
               Eviction.plan(ledger, %{ram: 0, vram: %{0 => 500, 1 => 200}}, candidates)

      assert Enum.map(evictions, &{&1.id, &1.device}) == [
               gpu0_old: {:gpu, 0},
               both: {:gpu, 1}
             ]

      assert usage == %{ram: 200, vram: %{0 => 400, 1 => 600}}

      # RAM is short and only `both` holds RAM (200 more are not candidates):
      # GPU 0's models are not touched.
      assert {:error, {:insufficient_memory, [device: :ram, required: 900, available: 500]}} =
               Eviction.plan(ledger, ram(900), candidates)

      assert ids(Eviction.plan(ledger, ram(800), candidates)) == [:both]
    end

    test "walks the candidates lazily and once, and not at all when the load fits" do
      test = self()

      candidates =
        Stream.map(candidates(), fn candidate ->
          send(test, {:walked, elem(candidate, 0)})
          candidate
        end)

      assert ids(Eviction.plan(full(), ram(300), candidates)) == [:a, :b]
      assert_received {:walked, :a}
      assert_received {:walked, :b}
      refute_received {:walked, _}

      # Four evictions: pulled in batches, each candidate once.
      assert ids(Eviction.plan(full(), ram(1_000), candidates)) == [:a, :b, :c, :d]
      for id <- [:a, :b, :c, :d], do: assert_received({:walked, ^id})
      refute_received {:walked, _}

      roomy = ledger(1_000, ram(500), count: 2)
      assert Eviction.plan(roomy, ram(300), candidates) == {:ok, [], ram(500)}
      refute_received {:walked, _}
    end
  end

  describe "residuals/3" do
    # The ledger counts the load plus the residuals; until the load's backend
    # load starts (all evicted models unloaded), backends really hold the
    # evicted models that are still unloading. The count must cover that for
    # any set of unloads returned so far, and never exceed what the budget
    # allowed before (max of the evicted bytes and the load's).
    test "cover what the evicted models still hold, and no more than needed" do
      :rand.seed(:exsss, {1, 2, 3})

      for _ <- 1..2_000 do
        evicted = for _ <- 1..:rand.uniform(5), do: random_placement()
        placement = random_placement()

        for budget <- [%{mode: :combined, limit: 1}, %{mode: :unlimited}] do
          residuals = Eviction.residuals(budget, evicted, placement)
          assert length(residuals) == length(evicted)

          for {r, e} <- Enum.zip(residuals, evicted) do
            assert r.ram <= e.ram and Enum.all?(r.vram, fn {g, b} -> b > 0 and b <= e.vram[g] end)
          end

          measures = measures(budget, [placement | evicted ++ residuals])
          pairs = Enum.zip(evicted, residuals)

          for measure <- measures do
            all_evicted = sum(Enum.map(evicted, measure))
            counted = measure.(placement) + sum(Enum.map(residuals, measure))
            assert counted == max(all_evicted, measure.(placement))

            for returned <- subsets(length(pairs)) do
              left = for {pair, i} <- Enum.with_index(pairs), i not in returned, do: pair
              held = sum(for {e, _} <- left, do: measure.(e))
              still = measure.(placement) + sum(for {_, r} <- left, do: measure.(r))
              assert held <= still
            end
          end
        end
      end
    end
  end

  defp random_placement do
    vram = for gpu <- 0..2, :rand.uniform(2) == 1, into: %{}, do: {gpu, :rand.uniform(100)}
    %{ram: :rand.uniform(101) - 1, vram: vram}
  end

  # Per device for a per-device or unlimited budget; the sum for a combined one.
  defp measures(%{mode: :combined}, _placements),
    do: [fn p -> p.ram + sum(Map.values(p.vram)) end]

  defp measures(_budget, placements) do
    gpus = placements |> Enum.flat_map(&Map.keys(&1.vram)) |> Enum.uniq()
    [(& &1.ram) | for(g <- gpus, do: &Map.get(&1.vram, g, 0))]
  end

  defp sum(list), do: Enum.sum(list)

  # Every subset of 0..n-1, as lists of indices.
  defp subsets(0), do: [[]]
  defp subsets(n), do: for(s <- subsets(n - 1), extra <- [[], [n - 1]], do: extra ++ s)
end
