defmodule Mix.Tasks.ModelBudget.PlanClusterTest do
  # `mix model_budget.plan --cluster` against real nodes (:peer) on this
  # host: three members, and the report run on a fourth node that reaches
  # the cluster only through --connect. Few tests: peers are slow to start.
  use ExUnit.Case, async: false

  import ExUnit.CaptureIO
  alias ModelBudget.Test.{ClusterPeers, PlanFixtures}

  @moduletag :cluster
  @gib 2 ** 30

  setup_all do
    ClusterPeers.ensure_distributed("plan_cluster_test")
  end

  setup do
    prefix = "mbplan_#{System.pid()}_#{System.unique_integer([:positive])}_"
    peers = ClusterPeers.start(prefix, 3)
    on_exit(fn -> ClusterPeers.stop(peers) end)
    %{nodes: Enum.map(peers, &elem(&1, 1)), prefix: prefix}
  end

  defp start_managers(nodes, cluster, specs) do
    for {node, {budget, labels, backend}} <- Enum.zip(nodes, specs) do
      ClusterPeers.start_manager(node,
        memory_budget: budget,
        labels: labels,
        cluster: cluster,
        backend: backend
      )
    end

    ClusterPeers.await_view(node(), cluster, length(specs))
  end

  # A node that connects to no one but this one (its origin) and what it
  # is told to: without --connect's reach it would know one member.
  defp lone_node(prefix) do
    args =
      Enum.flat_map(:code.get_path(), &[~c"-pa", &1]) ++
        [~c"-setcookie", Atom.to_charlist(Node.get_cookie()), ~c"-connect_all", ~c"false"]

    {:ok, peer, node} =
      :peer.start_link(%{name: :"#{prefix}lone", host: ~c"127.0.0.1", longnames: true, args: args})

    on_exit(fn -> ClusterPeers.stop([{peer, node}]) end)
    :ok = :erpc.call(node, :logger, :set_primary_config, [:level, :error])
    {:ok, _} = :erpc.call(node, Application, :ensure_all_started, [:model_budget])
    node
  end

  # {exit status, stdout, stderr} of the task's main/2 on `node` (its output
  # comes here: the call's group leader is this process's).
  defp plan_on(node, args) do
    {{status, stdout}, stderr} =
      with_io(:stderr, fn ->
        with_io(fn -> :erpc.call(node, Mix.Tasks.ModelBudget.Plan, :main, [args, false]) end)
      end)

    {status, stdout, stderr}
  end

  test "every member, seen from a node that knows one; the local plan's options and --json",
       ctx do
    [n1, n2, n3] = ctx.nodes
    cluster = :"plan_#{System.unique_integer([:positive])}"

    start_managers(ctx.nodes, cluster, [
      {%{ram: 64 * @gib, vram: [24 * @gib]}, %{gpu: "l4"}, ModelBudget.Backend.Reservation},
      {%{ram: 64 * @gib, vram: [80 * @gib]}, %{gpu: "h100"}, ModelBudget.Backend.Reservation},
      {@gib, %{}, ModelBudget.Backend.Reservation}
    ])

    lone = lone_node(ctx.prefix)
    # Before the report it knows n1 alone: the other members are on nodes
    # it has not met.
    refute n2 in :erpc.call(lone, Node, :list, [])

    load = ~w(--ctx 4096 --parallel 1 --cache-ram 0 --no-repack)
    args = ["--cluster", "#{cluster}", "--connect", "#{n1}", "llama-3.1-8b" | load]

    {0, out, ""} = plan_on(lone, args)
    assert out =~ "cluster #{cluster}: 3 members\n"
    for node <- [n1, n2, n3], do: assert(out =~ "#{node}")
    # Binpack: the 24 GiB GPU, left with the least room.
    assert out =~ ~r/llama-3.1-8b -> #{n1} /

    {0, json, ""} = plan_on(lone, args ++ ["--json"])
    {:ok, report} = ModelBudget.JSON.decode(json)
    assert report["fits"] and report["unseen"] == 0
    assert report["cluster"] == "#{cluster}"
    assert Enum.map(report["members"], & &1["node"]) == Enum.map([n1, n2, n3], &"#{&1}")

    assert Enum.map(report["members"], & &1["budget"]) == [
             %{"mode" => "per_device", "ram" => 64 * @gib, "vram" => %{"0" => 24 * @gib}},
             %{"mode" => "per_device", "ram" => 64 * @gib, "vram" => %{"0" => 80 * @gib}},
             %{"mode" => "combined", "limit" => @gib}
           ]

    # Placed under the options given, as the members' backend places it.
    {:ok, model} = ModelBudget.Plan.Catalog.fetch("llama-3.1-8b")

    placement =
      ModelBudget.distribute(model, [n_ctx: 4096, n_parallel: 1, cache_ram: 0, repack: false], 1)

    assert [%{"name" => "llama-3.1-8b", "source" => "built-in", "node" => node} = placed] =
             report["models"]

    assert node == "#{n1}"

    assert placed["placement"] == %{
             "ram" => placement.ram,
             "vram" => Map.new(placement.vram, fn {i, b} -> {"#{i}", b} end)
           }

    # Each counted for the next: a 70B goes to the H100, and a second one
    # fits nowhere.
    {1, json, ""} = plan_on(lone, args ++ ["llama-3.1-70b", "llama-3.1-70b", "--json"])
    {:ok, report} = ModelBudget.JSON.decode(json)
    [_, first, big] = report["models"]
    assert first["node"] == "#{n2}"
    refute big["fits"]
    assert big["reason"] == "does not fit on any member"
    assert length(big["refused"]) == 3
    assert Enum.all?(big["refused"], &(&1["required"] > &1["available"]))
  end

  test "bad input is one line and exit 2, nothing half printed, never a stack trace", ctx do
    [n1 | _] = ctx.nodes
    cluster = :"plan_#{System.unique_integer([:positive])}"
    # llama-server's backend sizes GGUF files, not built-in models.
    start_managers([n1], cluster, [{64 * @gib, %{}, ModelBudget.Backend.LlamaServer}])
    dir = Path.join(System.tmp_dir!(), "model_budget_plan_cluster_#{System.unique_integer()}")
    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf!(dir) end)
    gguf = PlanFixtures.tiny_gguf!(Path.join(dir, "tiny.gguf")).path
    text = Path.join(dir, "notes.gguf")
    File.write!(text, "hello world")
    base = ["--cluster", "#{cluster}", "--connect", "#{n1}"]

    for {args, message} <- [
          {[gguf, "llama-3.1-8b"],
           "llama-3.1-8b: a built-in model, which the members' backend (ModelBudget.Backend.LlamaServer) cannot size: give the model's file"},
          {[text],
           "#{text}: not a GGUF or safetensors file: it starts with \"hello wo\" at byte 0"},
          {[gguf, "--ctx", "0"],
           "invalid --ctx-size: expected a positive integer below 2^64, got: 0"},
          {[gguf, "--ctx", "many"], "--ctx-size: expected an integer, got: many"},
          {[gguf, "--budget", "8GiB"], "--budget: each member of a cluster has its own budget"},
          {[gguf, "--wait", "-1"], "--wait: expected milliseconds (0 or more), got: -1"},
          {["nope"], "nope: no such file, and not a built-in model" <> ""}
        ] do
      {status, out, err} = plan_on(node(), base ++ args)
      assert {status, out} == {2, ""}, inspect({args, out, err})
      assert String.starts_with?(err, "mix model_budget.plan: " <> message), inspect({args, err})
      assert [_] = String.split(err, "\n", trim: true)
    end

    # The GGUF file alone is placed.
    {0, out, ""} = plan_on(node(), base ++ [gguf, "--cache-ram", "0"])
    assert out =~ ~r/#{Regex.escape(gguf)} -> #{n1} /
  end
end
