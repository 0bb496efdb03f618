defmodule ModelBudget.EvictionTest do
  use ExUnit.Case, async: true

  alias ModelBudget.Eviction

  doctest ModelBudget.Eviction

  defp ram(bytes), do: %{ram: bytes, vram: %{}}
  defp gpu(index, bytes), do: %{ram: 0, vram: %{index => bytes}}

  # A snapshot over a budget spec (resolved), with compiled rules.
  defp snapshot(budget, usage, opts \\ []) do
    %{
      budget: ModelBudget.resolve(budget),
      rules: Eviction.compile!(Keyword.get(opts, :rules, [])),
      usage: usage,
      resident_count: Keyword.get(opts, :count, 0),
      free: Keyword.get(opts, :free)
    }
  end

  # A snapshot over a resolved budget, rules as given.
  defp raw(budget, usage, rules \\ nil, free \\ nil),
    do: %{budget: budget, rules: rules, usage: usage, resident_count: 3, free: free}

  defp ids({:ok, %{evictions: evictions}}), do: Enum.map(evictions, & &1.id)

  defp values(snapshot, placement, device),
    do: Map.new(Enum.zip(Eviction.variables(), Eviction.values(snapshot, placement, device)))

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
      snapshot = snapshot(1_000, %{ram: 100, vram: %{0 => 150, 1 => 50}}, count: 4)

      assert values(snapshot, %{ram: 10, vram: %{1 => 20}}, :total) == %{
               memory_required: 30,
               available: 700,
               total: 1_000,
               used: 300,
               used_percent: 30,
               free: 0,
               model_size: 30,
               resident_count: 4,
               resident_bytes: 300
             }
    end

    test "a per-device budget measures RAM and each GPU on their own" do
      snapshot = snapshot(%{ram: 1_000, vram: [400, 0]}, %{ram: 999, vram: %{0 => 100}})
      placement = %{ram: 10, vram: %{0 => 300, 1 => 1}}

      assert %{memory_required: 10, total: 1_000, used: 999, available: 1, used_percent: 99} =
               values(snapshot, placement, :ram)

      assert %{memory_required: 300, total: 400, used: 100, available: 300, used_percent: 25} =
               values(snapshot, placement, {:gpu, 0})

      # A zero limit is a full device.
      assert %{total: 0, used: 0, available: 0, used_percent: 100} =
               values(snapshot, placement, {:gpu, 1})
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
        values = values(snapshot(budget, %{ram: 5, vram: %{0 => 5}}), ram(1), device)
        assert %{total: ^max, used_percent: 0} = values
        assert values.available == max - values.used
      end

      huge = %{ram: max, vram: %{0 => max}}
      values = values(snapshot(:infinity, huge), huge, :ram)
      assert values.model_size == max and values.resident_bytes == max
    end

    test "free is the snapshot's, 0 when it carries none" do
      snapshot = snapshot(1_000, ram(0), free: %{total: 12_345})
      assert %{free: 12_345} = values(snapshot, ram(1), :total)
      assert %{free: 0} = values(%{snapshot | free: nil}, ram(1), :total)
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

  describe "admit/4" do
    # Four models of 250 bytes in a 1,000-byte combined budget.
    defp full, do: snapshot(1_000, ram(1_000), count: 4)
    defp candidates, do: for(id <- [:a, :b, :c, :d], do: {id, ram(250)})

    test "evicts in the candidates' order, as few as fit the load, and hands over" do
      # 250 evicted for 200: :a counts the 50 beyond the load until its
      # unload returns; the usage stays within the budget.
      assert Eviction.admit(full(), ram(200), candidates()) ==
               {:ok,
                %{
                  evictions: [
                    %{
                      id: :a,
                      placement: ram(250),
                      device: :total,
                      reason: {:does_not_fit, 200, 0}
                    }
                  ],
                  residuals: [ram(50)],
                  usage: ram(1_000)
                }}

      assert ids(Eviction.admit(full(), ram(251), candidates())) == [:a, :b]
      assert ids(Eviction.admit(full(), ram(1_000), candidates())) == [:a, :b, :c, :d]
      assert ids(Eviction.admit(full(), ram(0), candidates())) == []
    end

    test "without evictions it is check/3 then fold/2, and nothing on refusal" do
      budget = %{mode: :per_device, ram: 1000, vram: %{0 => 500, 1 => 300}}
      :rand.seed(:exsss, {1, 2, 3})

      Enum.reduce(1..200, ModelBudget.empty_usage(), fn _, used ->
        p = %{ram: :rand.uniform(100), vram: %{0 => :rand.uniform(60), 1 => :rand.uniform(40)}}
        expected = ModelBudget.check(budget, p, used)

        case Eviction.admit(raw(budget, used), p, []) do
          {:ok, %{evictions: [], residuals: [], usage: usage}} ->
            assert expected == :ok
            assert usage == ModelBudget.fold(used, p)
            usage

          refused ->
            assert refused == expected
            used
        end
      end)
    end

    test "a load that fits takes over nothing; a fence adds nothing to the usage" do
      assert Eviction.admit(full(), ram(0), candidates(), intent: :fence) ==
               {:ok, %{evictions: [], residuals: [], usage: ram(1_000)}}

      # A fence's evicted models count in full until their unloads return.
      assert Eviction.admit(full(), ram(300), candidates(), intent: :fence) ==
               {:ok,
                %{
                  evictions: [
                    %{
                      id: :a,
                      placement: ram(250),
                      device: :total,
                      reason: {:does_not_fit, 300, 0}
                    },
                    %{
                      id: :b,
                      placement: ram(250),
                      device: :total,
                      reason: {:does_not_fit, 300, 250}
                    }
                  ],
                  residuals: [ram(250), ram(250)],
                  usage: ram(1_000)
                }}
    end

    test "a load that fits once evictions are planned takes the fewest big models" do
      gib = 2 ** 30
      snapshot = snapshot(6 * gib, ram(6 * gib), count: 3)
      candidates = for id <- [:x, :y, :z], do: {id, ram(2 * gib)}
      assert ids(Eviction.admit(snapshot, ram(gib), candidates)) == [:x]
    end

    test "refuses with check/3's error against the usage and the loads ahead" do
      assert Eviction.admit(full(), ram(800), Enum.take(candidates(), 3)) ==
               {:error, {:insufficient_memory, [device: :total, required: 800, available: 0]}}

      assert Eviction.admit(full(), ram(1_001), candidates()) ==
               ModelBudget.check(full().budget, ram(1_001), full().usage)

      half = snapshot(1_000, ram(500), count: 1)

      assert {:ok, %{usage: %{ram: 800}}} =
               Eviction.admit(Map.put(half, :ahead, [ram(200)]), ram(300), [])

      assert Eviction.admit(Map.put(half, :ahead, [ram(200)]), ram(500), []) ==
               {:error, {:insufficient_memory, [device: :total, required: 500, available: 300]}}
    end

    test "evicts while a rule holds, and stops when it no longer does" do
      # Keep at most two models besides the new one.
      snapshot = %{full() | rules: Eviction.compile!(["resident_count > 2"])}
      # Four models; the first eviction makes room, the second the rule's.
      assert {:ok,
              %{
                evictions: [
                  %{id: :a, reason: {:does_not_fit, 10, 0}},
                  %{id: :b, reason: :constraint}
                ]
              }} = Eviction.admit(snapshot, ram(10), candidates())
    end

    test "a rule that still holds when nothing is left to evict does not refuse a fitting load" do
      snapshot = %{snapshot(1_000, ram(500), count: 2) | rules: Eviction.compile!(["used >= 0"])}
      assert ids(Eviction.admit(snapshot, ram(10), a: ram(250), b: ram(250))) == [:a, :b]
      assert ids(Eviction.admit(snapshot, ram(10), [])) == []
    end

    test "the default rule evicts until the load takes at most 70% of what is available" do
      snapshot = %{full() | rules: Eviction.compile!(Eviction.default_rules())}
      # 400 > 0.7 * 500 after two evictions; 400 <= 0.7 * 750 after three.
      assert ids(Eviction.admit(snapshot, ram(400), candidates())) == [:a, :b, :c]
      # 350 <= 0.7 * 500.
      assert ids(Eviction.admit(snapshot, ram(350), candidates())) == [:a, :b]
    end

    test "free counts the memory of the evictions planned so far" do
      snapshot = %{full() | rules: Eviction.compile!(["free < 600"]), free: %{total: 100}}
      # 100 + 250 + 250 = 600 free after two.
      assert ids(Eviction.admit(snapshot, ram(10), candidates())) == [:a, :b]

      snapshot =
        raw(%{mode: :unlimited}, ram(600), Eviction.compile!(["free < 350"]), %{ram: 100})

      assert {:ok, %{evictions: [%{id: :a, device: :ram, reason: :constraint}]}} =
               Eviction.admit(snapshot, ram(1), a: ram(300), b: ram(300))
    end

    test "per device: only models holding memory on a short device are evicted for it" do
      snapshot =
        snapshot(%{ram: 1_000, vram: [1_000, 1_000]}, %{ram: 500, vram: %{0 => 1_000, 1 => 900}})

      candidates = [
        gpu0_old: gpu(0, 600),
        gpu0: gpu(0, 400),
        both: %{ram: 300, vram: %{1 => 300}},
        gpu1: gpu(1, 600)
      ]

      assert ids(Eviction.admit(snapshot, gpu(1, 400), candidates)) == [:both]
      assert ids(Eviction.admit(snapshot, gpu(1, 800), candidates)) == [:both, :gpu1]

      # Both GPUs short: GPU 0 first, then GPU 1; nothing twice. The
      # residuals are the evicted bytes beyond the load's, per device,
      # taken by the first evicted models first.
      assert {:ok, %{evictions: evictions, residuals: residuals, usage: usage}} =
               Eviction.admit(snapshot, %{ram: 0, vram: %{0 => 500, 1 => 200}}, candidates)

      assert Enum.map(evictions, &{&1.id, &1.device}) == [gpu0_old: {:gpu, 0}, both: {:gpu, 1}]
      assert residuals == [gpu(0, 100), %{ram: 300, vram: %{1 => 100}}]
      assert usage == %{ram: 500, vram: %{0 => 1_000, 1 => 900}}

      # RAM is short and only `both` holds RAM (200 more are not candidates):
      # GPU 0's models are not touched.
      assert {:error, {:insufficient_memory, [device: :ram, required: 900, available: 500]}} =
               Eviction.admit(snapshot, ram(900), candidates)

      assert ids(Eviction.admit(snapshot, ram(800), candidates)) == [:both]
    end

    test "lists the candidates only when the load needs room, and once" do
      test = self()

      lister = fn ->
        send(test, :listed)
        candidates()
      end

      assert ids(Eviction.admit(full(), ram(300), lister)) == [:a, :b]
      assert_received :listed
      refute_received :listed

      roomy = snapshot(1_000, ram(500), count: 2)

      assert Eviction.admit(roomy, ram(300), lister) ==
               {:ok, %{evictions: [], residuals: [], usage: ram(800)}}

      refute_received :listed
    end

    # The admission is the chooser's walk (choose/3, on the usage with the
    # loads ahead) plus the hand-over (residuals/3): the same evictions, and
    # the usage less the evicted placements plus the residuals and the load.
    test "agrees with choose/3 and residuals/3 on random snapshots" do
      :rand.seed(:exsss, {13, 13, 13})
      rule_sets = [nil, Eviction.compile!([]), Eviction.compile!(["used_percent > 50"])]

      for _ <- 1..300 do
        budget =
          Enum.random([
            %{mode: :unlimited},
            %{mode: :combined, limit: :rand.uniform(3000)},
            %{mode: :per_device, ram: limit(), vram: %{0 => limit(), 1 => limit()}}
          ])

        held = for i <- 1..:rand.uniform(4), do: {i, placement()}
        usage = Enum.reduce(held, placement(), fn {_, p}, u -> ModelBudget.fold(u, p) end)
        snapshot = raw(budget, usage, Enum.random(rule_sets))
        want = placement()
        case_ = inspect({snapshot, held, want})

        case {Eviction.admit(snapshot, want, held), Eviction.choose(snapshot, want, held)} do
          {{:ok, admission}, {:ok, evictions, after_evictions}} ->
            assert admission.evictions == evictions, case_
            evicted = Enum.map(evictions, & &1.placement)
            assert admission.residuals == residuals(budget, evicted, want), case_

            assert admission.usage ==
                     Enum.reduce(
                       admission.residuals,
                       ModelBudget.fold(after_evictions, want),
                       &ModelBudget.fold(&2, &1)
                     ),
                   case_

          {ours, theirs} ->
            assert ours == theirs, case_
        end
      end
    end

    test "bad input raises ArgumentError naming the argument" do
      s = raw(%{mode: :unlimited}, ram(0))

      assert_raise ArgumentError, ~r/invalid placement: .*got: %{ram: -1/, fn ->
        Eviction.admit(s, %{ram: -1, vram: %{}}, [])
      end

      assert_raise ArgumentError, ~r/invalid budget/, fn ->
        Eviction.admit(%{s | budget: %{mode: :sideways}}, ram(1), [])
      end

      assert_raise ArgumentError, ~r/invalid snapshot: expected a map with :budget/, fn ->
        Eviction.admit(Map.delete(s, :usage), ram(1), [])
      end

      assert_raise ArgumentError,
                   ~r/invalid snapshot :ahead: expected a list of placements/,
                   fn ->
                     Eviction.admit(Map.put(s, :ahead, :none), ram(1), [])
                   end

      assert_raise ArgumentError,
                   ~r/invalid candidates: expected nil or a list of {id, placement}, got: :x/,
                   fn ->
                     Eviction.admit(raw(%{mode: :combined, limit: 1}, ram(1)), ram(1), [:x])
                   end

      # An improper list is refused where the walk reaches its tail.
      assert_raise ArgumentError, ~r/invalid candidates: expected nil or a list/, fn ->
        Eviction.admit(full(), ram(300), [{:a, ram(250)} | :tail])
      end

      assert_raise ArgumentError,
                   ~r/invalid candidates: expected a list of {id, placement} or a function/,
                   fn ->
                     Eviction.admit(s, ram(1), :all)
                   end

      assert_raise ArgumentError,
                   ~r/invalid placement: releases 5 bytes of RAM but only 1 are held/,
                   fn ->
                     Eviction.admit(raw(%{mode: :combined, limit: 1}, ram(1)), ram(1), x: ram(5))
                   end

      assert_raise ArgumentError, ~r/invalid intent: expected :load or :fence, got: :evict/, fn ->
        Eviction.admit(s, ram(1), [], intent: :evict)
      end
    end
  end

  describe "needs/2, values/3, residuals/3 and free/4" do
    test "bad input raises ArgumentError naming the argument" do
      l = raw(%{mode: :unlimited}, %{ram: 0, vram: %{}})

      assert_raise ArgumentError, ~r/invalid placement: expected a map/, fn ->
        Eviction.needs(l, %{ram: -1})
      end

      assert_raise ArgumentError, ~r/invalid snapshot: expected a map with :budget/, fn ->
        Eviction.needs(Map.delete(l, :usage), %{ram: 1, vram: %{}})
      end

      assert_raise ArgumentError,
                   ~r/invalid snapshot :rules: expected nil or %{constraint:/,
                   fn ->
                     Eviction.needs(%{l | rules: :fast}, %{ram: 1, vram: %{}})
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
                     Eviction.choose(l, %{ram: 1, vram: %{}}, [:x])
                   end

      assert_raise ArgumentError, ~r/invalid gpus: expected a map of GPU indices to bytes/, fn ->
        Eviction.free(%{mode: :unlimited}, %{ram: 1, vram: %{}}, 1, [1])
      end
    end
  end

  describe "choose/3" do
    test "rules evict beyond the fit, and read free bytes that releases add to" do
      rules = Eviction.compile!(["free < 350"])
      l = raw(%{mode: :unlimited}, %{ram: 600, vram: %{}}, rules, %{ram: 100})
      held = [a: %{ram: 300, vram: %{}}, b: %{ram: 300, vram: %{}}]

      assert {:ok, [%{id: :a, device: :ram, reason: :constraint}], %{ram: 300, vram: %{}}} =
               Eviction.choose(l, %{ram: 1, vram: %{}}, held)
    end

    test "bad input raises ArgumentError naming the argument" do
      l = raw(%{mode: :unlimited}, %{ram: 0, vram: %{}})

      assert_raise ArgumentError, ~r/invalid candidates/, fn ->
        Eviction.choose(l, %{ram: 1, vram: %{}}, [%{ram: 1, vram: %{}}])
      end

      assert_raise ArgumentError, ~r/invalid placement: releases/, fn ->
        Eviction.choose(
          raw(%{mode: :combined, limit: 1}, %{ram: 1, vram: %{}}),
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
  end

  describe "residuals/3" do
    # The usage counts the load plus the residuals; until the load's backend
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

  defp residuals(_budget, [], _placement), do: []
  defp residuals(budget, evicted, placement), do: Eviction.residuals(budget, evicted, placement)

  defp limit, do: Enum.random([:infinity, :rand.uniform(2000) - 1])

  defp placement do
    vram = for gpu <- 0..1, (b = :rand.uniform(800) - 1) > 0, into: %{}, do: {gpu, b}
    %{ram: :rand.uniform(800) - 1, vram: vram}
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
