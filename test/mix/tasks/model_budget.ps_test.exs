defmodule Mix.Tasks.ModelBudget.PsTest.MeasuredBackend do
  # Reservation's sizing, and a measurement of 90% of what was reserved.
  @behaviour ModelBudget.Backend

  @impl true
  def footprint(source, opts), do: ModelBudget.Backend.Reservation.footprint(source, opts)

  @impl true
  def load(_source, placement, _opts), do: {:ok, placement}

  @impl true
  def unload(_handle), do: :ok

  @impl true
  def measured(%{ram: ram, vram: vram}),
    do: {:ok, %{ram: div(ram * 9, 10), vram: Map.new(vram, fn {i, b} -> {i, div(b * 9, 10)} end)}}
end

defmodule Mix.Tasks.ModelBudget.PsTest do
  # Runs the task itself, as `mix model_budget.ps` does, with its output
  # captured and its exit caught. Not async: the task lists every manager
  # of this node, so no other test's may run meanwhile.
  use ExUnit.Case, async: false

  alias Mix.Tasks.ModelBudget.PsTest.MeasuredBackend
  alias ModelBudget.{ModelManager, TestClock}
  alias ModelBudget.Test.ClusterPeers

  @ram [mode: :direct, n_gpus: 0]

  # Distributed from the start: a --connect on a VM that is not would make
  # it a hidden node, which the peers below could not cluster with.
  setup_all do
    ClusterPeers.ensure_distributed("ps_test")
  end

  # {exit status, stdout, stderr}
  defp ps(args), do: ModelBudget.Test.MixTask.run(Mix.Tasks.ModelBudget.Ps, args)

  # The output's lines, each split into its cells (columns are 2 or more
  # spaces apart; no cell holds two spaces).
  defp rows(out) do
    assert String.ends_with?(out, "\n")

    out
    |> String.trim_trailing("\n")
    |> String.split("\n")
    |> Enum.map(fn
      "" -> []
      line -> String.split(line, ~r/\s{2,}/)
    end)
  end

  defp json(args) do
    {0, out, ""} = ps(["--json" | args])
    {:ok, report} = ModelBudget.JSON.decode(out)
    report
  end

  # The clock the peers' managers read: set on each peer by the test.
  {:module, PeerClock, binary, _} =
    defmodule PeerClock do
      def now, do: :persistent_term.get({__MODULE__, :now}, 0)
    end

  @peer_clock binary

  @model_header ~w(MANAGER NODE ID STATUS DEVICES RESERVED MEASURED LEASES IDLE EXPIRES PROFILE)
  @manager_header ["MANAGER", "NODE", "MODELS", "USED / BUDGET"]

  # Three managers: a combined budget with three models (one leased, one
  # pinned, one with a keep-alive and a runtime profile), a per-device
  # budget whose backend measures, with a model on GPU 0, and an unlimited
  # one without a name or models. Loaded at 0 by the test clock, read at
  # 250 s.
  defp start_managers(_context) do
    {clock, advance} = TestClock.new()

    a =
      start_supervised!(
        {ModelManager, name: :ps_test_a, memory_budget: 10_000, clock: clock},
        id: :a
      )

    b =
      start_supervised!(
        {ModelManager,
         name: :ps_test_b,
         memory_budget: %{ram: 10_000, vram: [8_000]},
         backend: MeasuredBackend,
         clock: clock},
        id: :b
      )

    c = start_supervised!({ModelManager, memory_budget: :infinity, clock: clock}, id: :c)

    opts = @ram ++ [keep_alive: 600_000, cpu_buffers: :x86_avx2]
    {:ok, _} = ModelManager.load(a, "llama", {:bytes, 600}, opts)
    {:ok, _} = ModelManager.load(a, :pinned_one, {:bytes, 1_000}, @ram ++ [pinned: true])
    {:ok, _} = ModelManager.load(a, :leased, {:bytes, 400}, @ram ++ [keep_alive: 60_000])
    {:ok, _lease} = ModelManager.checkout(a, :leased)
    {:ok, _} = ModelManager.load(b, :gpu_model, {:bytes, 2_000}, mode: :direct, n_gpus: 1)
    advance.(250_000)
    %{a: a, b: b, c: c}
  end

  describe "this node's managers" do
    setup :start_managers

    test "a row per model, then a row per manager with its usage against its budget", ctx do
      {0, out, ""} = ps([])
      node = "#{node()}"

      assert rows(out) == [
               @model_header,
               [":ps_test_a", node, ":leased", "ready", "ram 400 B", "400 B", "-", "1"] ++
                 ["in use", "paused", "-"],
               [":ps_test_a", node, ":pinned_one", "ready, pinned", "ram 1000 B", "1000 B"] ++
                 ["-", "0", "4m 10s", "never", "-"],
               [":ps_test_a", node, "llama", "ready", "ram 600 B", "600 B", "-", "0"] ++
                 ["4m 10s", "5m 50s", "x86_avx2"],
               [":ps_test_b", node, ":gpu_model", "ready", "gpu0 1.95 KiB", "1.95 KiB"] ++
                 ["1.76 KiB", "0", "4m 10s", "never", "-"],
               [],
               @manager_header,
               [":ps_test_a", node, "3", "total 1.95 KiB / 9.77 KiB (20%)"],
               [
                 ":ps_test_b",
                 node,
                 "1",
                 "ram 0 B / 9.77 KiB (0%), gpu0 1.95 KiB / 7.81 KiB (25%)"
               ],
               [inspect(ctx.c), node, "0", "ram 0 B / unlimited"]
             ]
    end

    test "--json: the same, field by field", ctx do
      report = json([])
      node = "#{node()}"
      assert report["cluster"] == nil

      assert [a, b, c] = report["managers"]

      assert a == %{
               "manager" => ":ps_test_a",
               "name" => ":ps_test_a",
               "pid" => inspect(ctx.a),
               "node" => node,
               "labels" => nil,
               "budget" => %{"mode" => "combined", "limit" => 10_000},
               "usage" => %{"ram" => 2_000, "vram" => %{}, "total" => 2_000},
               "devices" => [
                 %{
                   "device" => "total",
                   "gpu" => nil,
                   "used" => 2_000,
                   "limit" => 10_000,
                   "used_percent" => 20
                 }
               ],
               "models" => 3,
               "error" => nil
             }

      assert b["budget"] == %{"mode" => "per_device", "ram" => 10_000, "vram" => %{"0" => 8_000}}
      assert b["usage"] == %{"ram" => 0, "vram" => %{"0" => 2_000}, "total" => 2_000}

      assert b["devices"] == [
               %{"device" => "ram", "gpu" => nil, "used" => 0, "limit" => 10_000} |> pct(0),
               %{"device" => "gpu", "gpu" => 0, "used" => 2_000, "limit" => 8_000} |> pct(25)
             ]

      assert {c["manager"], c["name"], c["pid"], c["models"]} ==
               {inspect(ctx.c), nil, inspect(ctx.c), 0}

      assert c["budget"] == %{"mode" => "unlimited"}

      assert c["devices"] == [
               %{"device" => "ram", "gpu" => nil, "used" => 0, "limit" => nil} |> pct(nil)
             ]

      assert Enum.map(report["models"], &{&1["manager"], &1["id"]}) == [
               {":ps_test_a", ":leased"},
               {":ps_test_a", ":pinned_one"},
               {":ps_test_a", "llama"},
               {":ps_test_b", ":gpu_model"}
             ]

      [leased, pinned, llama, gpu] = report["models"]

      assert llama == %{
               "manager" => ":ps_test_a",
               "node" => node,
               "id" => "llama",
               "status" => "ready",
               "reserved" => %{"ram" => 600, "vram" => %{}, "total" => 600},
               "measured" => nil,
               "bytes" => 600,
               "leases" => 0,
               "pinned" => false,
               "keep_alive_ms" => 600_000,
               "idle_ms" => 250_000,
               "expires_in_ms" => 350_000,
               "cpu_buffers" => "x86_avx2",
               "loads" => 1,
               "evictions" => 0,
               "source" => "{:bytes, 600}"
             }

      assert {leased["leases"], leased["keep_alive_ms"], leased["expires_in_ms"]} ==
               {1, 60_000, nil}

      assert {pinned["pinned"], pinned["keep_alive_ms"], pinned["expires_in_ms"]} ==
               {true, nil, nil}

      assert gpu["reserved"] == %{"ram" => 0, "vram" => %{"0" => 2_000}, "total" => 2_000}
      assert gpu["measured"] == %{"ram" => 0, "vram" => %{"0" => 1_800}, "total" => 1_800}
      assert {gpu["node"], gpu["idle_ms"], gpu["cpu_buffers"]} == {node, 250_000, nil}
    end
  end

  defp pct(device, percent), do: Map.put(device, "used_percent", percent)

  describe "nothing loaded" do
    test "no managers: one clear line, and exit 0" do
      assert ps([]) == {0, "no models loaded\nno model managers on #{node()}\n", ""}
      assert json([]) == %{"cluster" => nil, "managers" => [], "models" => []}
    end

    test "managers without models: the line, then the managers" do
      start_supervised!({ModelManager, name: :ps_test_empty, memory_budget: 10_000})
      {0, out, ""} = ps([])

      assert rows(out) == [
               ["no models loaded"],
               [],
               @manager_header,
               [":ps_test_empty", "#{node()}", "0", "total 0 B / 9.77 KiB (0%)"]
             ]
    end
  end

  describe "--connect and --cluster" do
    test "a peer node's managers, then every member of its cluster" do
      peers = ClusterPeers.start("ps_#{System.pid()}_#{System.unique_integer([:positive])}_", 2)
      on_exit(fn -> ClusterPeers.stop(peers) end)
      [n1, n2] = nodes = Enum.map(peers, &elem(&1, 1))
      cluster = :"ps_cluster_#{System.unique_integer([:positive])}"

      # The clock's module, compiled with this file, loaded on the peers.
      for node <- nodes do
        {:module, PeerClock} =
          :erpc.call(node, :code, :load_binary, [PeerClock, ~c"ps_test", @peer_clock])
      end

      m1 =
        ClusterPeers.start_manager(n1,
          name: :ps_peer,
          memory_budget: 10_000,
          clock: &PeerClock.now/0,
          cluster: cluster,
          labels: %{gpu: "l4"}
        )

      m2 =
        ClusterPeers.start_manager(n2,
          memory_budget: 5_000,
          clock: &PeerClock.now/0,
          cluster: cluster
        )

      load = @ram ++ [keep_alive: 600_000]
      {:ok, _} = :erpc.call(n1, ModelManager, :load, [m1, "peer-model", {:bytes, 700}, load])
      {:ok, _} = :erpc.call(n2, ModelManager, :load, [m2, :other, {:bytes, 300}, @ram])

      for node <- nodes,
          do: :ok = :erpc.call(node, :persistent_term, :put, [{PeerClock, :now}, 250_000])

      # One node's managers.
      {0, out, ""} = ps(["--connect", "#{n1}", "--timeout", "10000"])

      assert rows(out) == [
               @model_header,
               [":ps_peer", "#{n1}", "peer-model", "ready", "ram 700 B", "700 B", "-", "0"] ++
                 ["4m 10s", "5m 50s", "-"],
               [],
               @manager_header,
               [":ps_peer", "#{n1}", "1", "total 700 B / 9.77 KiB (7%)"]
             ]

      # The cluster, as n1 sees it.
      ClusterPeers.await_view(n1, cluster, 2)
      {0, out, ""} = ps(["--cluster", "#{cluster}", "--connect", "#{n1}"])

      assert rows(out) == [
               @model_header,
               [":ps_peer", "#{n1}", "peer-model", "ready", "ram 700 B", "700 B", "-", "0"] ++
                 ["4m 10s", "5m 50s", "-"],
               [inspect(m2), "#{n2}", ":other", "ready", "ram 300 B", "300 B", "-", "0"] ++
                 ["4m 10s", "never", "-"],
               [],
               ["MANAGER", "NODE", "LABELS", "MODELS", "USED / BUDGET"],
               [":ps_peer", "#{n1}", "gpu=l4", "1", "total 700 B / 9.77 KiB (7%)"],
               [inspect(m2), "#{n2}", "-", "1", "total 300 B / 4.88 KiB (6%)"]
             ]

      report = json(["--cluster", "#{cluster}", "--connect", "#{n1}"])
      assert report["cluster"] == "#{cluster}"
      assert Enum.map(report["managers"], & &1["labels"]) == [%{"gpu" => "l4"}, %{}]

      assert Enum.map(report["models"], &{&1["node"], &1["id"]}) == [
               {"#{n1}", "peer-model"},
               {"#{n2}", ":other"}
             ]

      # A cluster the node has no member of.
      assert ps(["--cluster", "ps_nobody", "--connect", "#{n1}"]) ==
               {2, "", "mix model_budget.ps: cluster ps_nobody has no members seen from #{n1}\n"}
    end
  end

  describe "--help" do
    test "prints the usage, as mix help model_budget.ps does" do
      {0, out, ""} = ps(["--help"])

      assert out =~
               ~r/\Amix model_budget.ps\n\nShows what the `ModelBudget.ModelManager`s hold now/

      assert out =~ "## Options"
      assert {0, ^out, ""} = ps(["-h"])
    end
  end

  describe "bad input" do
    unreachable = :"ps_nobody_#{System.unique_integer([:positive])}@127.0.0.1"

    for {args, message} <- [
          {["--frobnicate"], "unknown option --frobnicate"},
          {["--json=yes"], "--json: expected no value, got: yes"},
          {["--timeout", "soon"], "--timeout: expected an integer, got: soon"},
          {["--timeout", "0"], "--timeout: expected a positive number of milliseconds, got: 0"},
          {["--connect"], "--connect: expected a value"},
          {["--connect", "nohost"], "--connect: expected name@host, got: nohost"},
          {["--cluster", ""], "--cluster: expected a name"},
          {["--name", "a", "--sname", "b", "--connect", "x@y"],
           "give --name or --sname, not both"},
          {["stray"], "unexpected argument: stray"},
          {["--connect", "#{unreachable}"],
           "cannot reach #{unreachable} (not running, not reachable, or another cookie: see --cookie)"}
        ] do
      test "#{Enum.join(args, " ")}" do
        assert ps(unquote(args)) == {2, "", "mix model_budget.ps: " <> unquote(message) <> "\n"}
      end
    end

    test "--cluster NAME with no member" do
      assert ps(["--cluster", "ps_no_such_cluster"]) ==
               {2, "",
                "mix model_budget.ps: cluster ps_no_such_cluster has no members seen from " <>
                  "#{node()}\n"}
    end
  end
end
