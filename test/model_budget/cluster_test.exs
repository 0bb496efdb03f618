defmodule ModelBudget.ClusterTest do
  # Real nodes (:peer) on this host, each test its own three and its own
  # cluster name; the peers go with the test.
  use ExUnit.Case, async: false

  alias ModelBudget.{Cluster, ModelManager}
  alias ModelBudget.Test.{ClusterPeers, SlowBackend, StallBackend}

  @moduletag :cluster

  # Combined budgets, placed in RAM: the sizes below are the bytes held.
  @load [mode: :direct, n_gpus: 0]

  setup_all do
    ClusterPeers.ensure_distributed("cluster_test")
  end

  setup context do
    peers = ClusterPeers.start("mb_#{System.pid()}_#{System.unique_integer([:positive])}_", 3)
    on_exit(fn -> ClusterPeers.stop(peers) end)
    cluster = {:test_cluster, context.test}
    {:ok, peers: peers, nodes: Enum.map(peers, &elem(&1, 1)), cluster: cluster}
  end

  # Managers on the three nodes: budgets (bytes), labels and backends by node.
  defp start_managers(nodes, cluster, specs) do
    managers =
      for {node, {budget, labels, backend}} <- Enum.zip(nodes, specs) do
        ClusterPeers.start_manager(node,
          memory_budget: budget,
          labels: labels,
          cluster: cluster,
          backend: backend,
          min_idle_ms: :infinity
        )
      end

    ClusterPeers.await_view(node(), cluster, length(managers))
    managers
  end

  defp standard(nodes, cluster, backends \\ List.duplicate(ModelBudget.Backend.Reservation, 3)) do
    labels = [%{gpu: "a", zone: "x"}, %{gpu: "b", zone: "x"}, %{gpu: "b", zone: "y"}]
    specs = Enum.zip([[1_000, 2_000, 4_000], labels, backends])
    start_managers(nodes, cluster, specs)
  end

  defp node_of({:ok, %{node: node}}), do: node

  defp ids_on(node, manager),
    do: node |> :erpc.call(ModelManager, :list, [manager]) |> Enum.map(& &1.id)

  describe "load/4" do
    test "binpack takes the fullest fit, spread the emptiest, :where filters", ctx do
      [n1, n2, n3] = ctx.nodes
      [m1, m2, _m3] = standard(ctx.nodes, ctx.cluster)
      c = ctx.cluster

      assert {:ok, %{node: ^n1, manager: ^m1, info: %{id: :a, status: :ready}}} =
               Cluster.load(c, :a, {:bytes, 100}, @load)

      ClusterPeers.await_view(node(), c, 3)
      assert node_of(Cluster.load(c, :b, {:bytes, 100}, [policy: :spread] ++ @load)) == n3
      ClusterPeers.await_view(node(), c, 3)

      # n1 has 900 left: 1_500 goes to n2, the least room left after it.
      assert node_of(Cluster.load(c, :c, {:bytes, 1_500}, @load)) == n2
      ClusterPeers.await_view(node(), c, 3)

      assert node_of(Cluster.load(c, :d, {:bytes, 10}, [where: %{gpu: "b"}] ++ @load)) == n2
      assert node_of(Cluster.load(c, :e, {:bytes, 10}, [where: %{zone: "y"}] ++ @load)) == n3

      assert Cluster.load(c, :f, {:bytes, 10}, where: %{gpu: "c"}) ==
               {:error, {:no_member, %{gpu: "c"}}}

      assert Cluster.locate(c, :c) == [{n2, m2}]
      assert Cluster.locate(c, :nope) == []
    end

    test "nothing fits: a reason per member", ctx do
      [m1, m2, m3] = standard(ctx.nodes, ctx.cluster)

      assert {:error, {:insufficient_memory, reasons}} =
               Cluster.load(ctx.cluster, :big, {:bytes, 5_000}, @load)

      assert Enum.sort(Enum.map(reasons, &elem(&1, 1))) == Enum.sort([m1, m2, m3])

      for {_node, _manager, reason} <- reasons do
        assert {:insufficient_memory, [device: :total, required: 5_000, available: _]} = reason
      end

      # A node without the application running says so.
      [_, _, n3] = ctx.nodes
      :ok = :erpc.call(n3, Application, :stop, [:model_budget])

      assert_raise ErlangError, ~r/needs the :model_budget application started/, fn ->
        :erpc.call(n3, Cluster, :usage, [ctx.cluster])
      end
    end

    test "a refused placement falls through to the next candidate", ctx do
      [n1, n2, _n3] = ctx.nodes
      [m1, _m2, _m3] = standard(ctx.nodes, ctx.cluster)

      # This node's view is held back while n1 fills up, so it still shows
      # n1 with room: n1 refuses, n2 takes the load.
      :sys.suspend(ModelBudget.Cluster.View)

      try do
        {:ok, _} = :erpc.call(n1, ModelManager, :load, [m1, :filler, {:bytes, 950}, @load])
        assert [%{node: ^n1, usage: %{ram: 0}} | _] = Cluster.usage(ctx.cluster)
        assert {:ok, %{node: ^n2}} = Cluster.load(ctx.cluster, :a, {:bytes, 100}, @load)
      after
        :sys.resume(ModelBudget.Cluster.View)
      end

      assert ids_on(n1, m1) == [:filler]
    end

    test "a member that does not answer within :timeout is passed over, its load cancelled",
         ctx do
      [n1, n2, _n3] = ctx.nodes
      backends = [StallBackend, ModelBudget.Backend.Reservation, ModelBudget.Backend.Reservation]
      [m1, m2, _m3] = standard(ctx.nodes, ctx.cluster, backends)

      assert {:ok, %{node: ^n2, manager: ^m2}} =
               Cluster.load(ctx.cluster, :a, {:bytes, 100}, [timeout: 200] ++ @load)

      ClusterPeers.await("the stalled load cancelled on #{n1}", fn -> ids_on(n1, m1) == [] end)
      assert Cluster.locate(ctx.cluster, :a) == [{n2, m2}]
    end

    test "a member on this node that does not answer within :timeout is passed over too",
         ctx do
      [n1, _n2, _n3] = ctx.nodes
      [m1, _m2, _m3] = standard(ctx.nodes, ctx.cluster)

      # The fullest fit, so binpack tries it first; its load never finishes.
      local =
        start_supervised!(
          {ModelManager,
           memory_budget: 500, cluster: ctx.cluster, backend: StallBackend, min_idle_ms: :infinity}
        )

      ClusterPeers.await_view(node(), ctx.cluster, 4)

      assert {:ok, %{node: ^n1, manager: ^m1}} =
               Cluster.load(ctx.cluster, :a, {:bytes, 100}, [timeout: 200] ++ @load)

      ClusterPeers.await("the stalled load cancelled here", fn ->
        ModelManager.list(local) == []
      end)

      assert Cluster.locate(ctx.cluster, :a) == [{n1, m1}]
    end

    test "200 concurrent loads from every node never oversubscribe a manager", ctx do
      specs = for b <- [10_000, 20_000, 30_000], do: {b, %{}, ModelBudget.Backend.Reservation}
      managers = start_managers(ctx.nodes, ctx.cluster, specs)
      for node <- ctx.nodes, do: ClusterPeers.await_view(node, ctx.cluster, 3)

      # 200 loads of 200..1_000 bytes (about twice the 60_000 there is), 50
      # from each node, binpack from two and spread from the other two.
      callers = [node() | ctx.nodes]

      tasks =
        for {caller, i} <- Enum.with_index(callers) do
          loads = for j <- 1..50, do: {{i, j}, {:bytes, 200 + rem(j * 37 + i * 101, 801)}}
          opts = [policy: Enum.at([:binpack, :spread], rem(i, 2))] ++ @load
          Task.async(fn -> ClusterPeers.load_many(caller, ctx.cluster, loads, opts, 8) end)
        end

      results = tasks |> Task.await_many(30_000) |> Enum.concat()
      assert length(results) == 200

      admitted =
        for {id, result} <- results, match?({:ok, _}, result), into: %{} do
          {:ok, %{manager: manager}} = result
          {id, manager}
        end

      for {_id, result} <- results,
          not match?({:ok, _}, result),
          do: assert({:error, {:insufficient_memory, _}} = result)

      assert map_size(admitted) > 0 and map_size(admitted) < 200

      held =
        for {node, manager, budget} <- Enum.zip([ctx.nodes, managers, [10_000, 20_000, 30_000]]) do
          infos = :erpc.call(node, ModelManager, :list, [manager])
          usage = :erpc.call(node, ModelManager, :usage, [manager])
          assert usage.ram <= budget
          assert usage.ram == infos |> Enum.map(& &1.placement.ram) |> Enum.sum()
          for info <- infos, do: {info.id, manager}
        end
        |> Enum.concat()

      # Every admitted model is held by exactly the manager that said so.
      assert length(held) == map_size(admitted)
      assert Map.new(held) == admitted
    end

    test "a node stopped during loads: errors or placements elsewhere, and it leaves usage/1",
         ctx do
      [{p3, n3}] = Enum.take(ctx.peers, -1)
      [n1, n2, _] = ctx.nodes
      backends = [ModelBudget.Backend.Reservation, ModelBudget.Backend.Reservation, SlowBackend]
      [_m1, _m2, m3] = standard(ctx.nodes, ctx.cluster, backends)

      loads = for j <- 1..40, do: {j, {:bytes, 10}}
      opts = [policy: :spread] ++ @load
      task = Task.async(fn -> ClusterPeers.load_many_here(ctx.cluster, loads, opts, 8) end)

      # Loads are under way on n3 (spread sends them there first).
      ClusterPeers.await("a load on #{n3}", fn -> ids_on(n3, m3) != [] end)
      :peer.stop(p3)

      results = Task.await(task, 20_000)
      assert length(results) == 40

      for {_id, result} <- results do
        case result do
          {:ok, %{node: node}} -> assert node in [n1, n2, n3]
          {:error, _} -> :ok
        end
      end

      ClusterPeers.await("#{n3} gone from usage/1", fn ->
        Enum.map(Cluster.usage(ctx.cluster), & &1.node) == [n1, n2]
      end)

      assert {:ok, %{node: node}} = Cluster.load(ctx.cluster, :after, {:bytes, 10}, opts)
      assert node in [n1, n2]
    end
  end

  describe "mix model_budget.plan --cluster" do
    test "prints the members and places the models in order", ctx do
      [n1, n2, n3] = ctx.nodes
      cluster = :"plan_#{System.unique_integer([:positive])}"
      gib = 2 ** 30

      specs = [
        {%{ram: 64 * gib, vram: [24 * gib]}, %{gpu: "l4"}, ModelBudget.Backend.Reservation},
        {%{ram: 64 * gib, vram: [80 * gib]}, %{gpu: "h100"}, ModelBudget.Backend.Reservation},
        {gib, %{}, ModelBudget.Backend.Reservation}
      ]

      start_managers(ctx.nodes, cluster, specs)
      args = ["--cluster", "#{cluster}", "--connect", "#{n1}"]

      {status, out} =
        with_io(fn ->
          models = ["llama-3.1-8b", "llama-3.1-70b", "llama-3.1-70b"]
          Mix.Tasks.ModelBudget.Plan.main(args ++ models, false)
        end)

      assert status == 1
      assert out =~ "cluster #{cluster}: 3 members"
      for node <- [n1, n2, n3], do: assert(out =~ "#{node}")
      assert out =~ "gpu=h100"
      assert out =~ ~r/llama-3.1-8b -> #{n1} /
      assert out =~ ~r/llama-3.1-70b -> #{n2} /
      assert out =~ "llama-3.1-70b -> does not fit on any member"

      {0, out} =
        with_io(fn ->
          ModelBudget.Cluster.Plan.main(args ++ ["--where", "gpu=h100", "llama-3.1-8b"])
        end)

      assert out =~ ~r/llama-3.1-8b -> #{n2} /

      bad = ["--cluster", "x", "--policy", "best"]

      assert ExUnit.CaptureIO.capture_io(:stderr, fn ->
               assert ModelBudget.Cluster.Plan.main(bad) == 2
             end) =~ "--policy: binpack or spread, got: best"
    end
  end

  defp with_io(fun), do: ExUnit.CaptureIO.with_io(fun)

  describe "usage/1" do
    test "every node sees every member, and a stopped manager leaves", ctx do
      [n1, n2, n3] = ctx.nodes
      [_m1, m2, _m3] = standard(ctx.nodes, ctx.cluster)

      for node <- ctx.nodes do
        members = ClusterPeers.await_view(node, ctx.cluster, 3)
        assert Enum.map(members, & &1.node) == [n1, n2, n3]

        assert Enum.map(members, & &1.budget) ==
                 Enum.map([1_000, 2_000, 4_000], &%{mode: :combined, limit: &1})

        assert Enum.at(members, 2).labels == %{gpu: "b", zone: "y"}
      end

      # A load made on the manager itself shows on every node.
      {:ok, _} = :erpc.call(n2, ModelManager, :load, [m2, :direct, {:bytes, 300}, @load])

      for node <- ctx.nodes do
        members = ClusterPeers.await_view(node, ctx.cluster, 3)
        assert Enum.at(members, 1).usage == %{ram: 300, vram: %{}}
      end

      assert :ok = Cluster.unload(ctx.cluster, :direct)
      assert Cluster.unload(ctx.cluster, :direct) == {:error, :not_loaded}

      :ok = :erpc.call(n2, GenServer, :stop, [m2])

      for node <- ctx.nodes do
        ClusterPeers.await("#{n2}'s manager gone, seen from #{node}", fn ->
          :erpc.call(node, Cluster, :usage, [ctx.cluster]) |> Enum.map(& &1.node) == [n1, n3]
        end)
      end
    end
  end
end

defmodule ModelBudget.ClusterOptionsTest do
  # Not async: one test restarts this node's view process.
  use ExUnit.Case, async: false

  alias ModelBudget.{Cluster, ModelManager}

  describe "load/4 options" do
    test "bad options raise ArgumentError naming them" do
      assert_raise ArgumentError, ~r/invalid option :policy: .*got: :pack/, fn ->
        Cluster.load(:nobody, :a, {:bytes, 1}, policy: :pack)
      end

      assert_raise ArgumentError,
                   ~r/invalid option :where: expected a map, got: \[gpu: "a"\]/,
                   fn ->
                     Cluster.load(:nobody, :a, {:bytes, 1}, where: [gpu: "a"])
                   end

      assert_raise ArgumentError, ~r/invalid option :timeout: .*got: -1/, fn ->
        Cluster.load(:nobody, :a, {:bytes, 1}, timeout: -1)
      end

      assert_raise ArgumentError, ~r/invalid option :pinned/, fn ->
        Cluster.load(:nobody, :a, {:bytes, 1}, pinned: :yes)
      end
    end

    test "a cluster without members says so" do
      assert Cluster.load({:empty, make_ref()}, :a, {:bytes, 1}) ==
               {:error, {:no_member, %{}}}

      assert Cluster.usage({:empty, make_ref()}) == []
    end
  end

  describe "ModelManager start options" do
    test ":labels must be a map" do
      assert_raise ArgumentError, ~r/invalid option :labels: expected a map, got: \[:x\]/, fn ->
        ModelManager.start_link(cluster: :c, labels: [:x])
      end
    end

    test "a local member is a member on its own node, and leaves when it stops" do
      cluster = {:local, make_ref()}

      {:ok, manager} =
        ModelManager.start_link(cluster: cluster, labels: %{a: 1}, memory_budget: 100)

      ModelBudget.Test.ClusterPeers.await("the view", fn -> Cluster.usage(cluster) != [] end)

      assert [%{manager: ^manager, labels: %{a: 1}, budget: %{mode: :combined, limit: 100}}] =
               Cluster.usage(cluster)

      assert {:ok, %{manager: ^manager, node: node}} =
               Cluster.load(cluster, :m, {:bytes, 10}, mode: :direct, n_gpus: 0)

      assert node == node()
      # A view process that restarts finds its node's members again, and
      # they publish to it.
      view = Process.whereis(ModelBudget.Cluster.View)
      Process.exit(view, :kill)

      ModelBudget.Test.ClusterPeers.await("the view back", fn ->
        match?([%{manager: ^manager}], Cluster.usage(cluster)) and
          Process.whereis(ModelBudget.Cluster.View) != view
      end)

      {:ok, _} = ModelManager.load(manager, :after, {:bytes, 20}, mode: :direct, n_gpus: 0)

      ModelBudget.Test.ClusterPeers.await("the load seen", fn ->
        match?([%{usage: %{ram: 30}}], Cluster.usage(cluster))
      end)

      GenServer.stop(manager)

      ModelBudget.Test.ClusterPeers.await("the member gone", fn ->
        Cluster.usage(cluster) == []
      end)

      assert Cluster.load(cluster, :n, {:bytes, 10}) == {:error, {:no_member, %{}}}
    end
  end
end
