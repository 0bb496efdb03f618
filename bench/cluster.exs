# ModelBudget.Cluster (issue 16):
#
#   * a placement decision over a simulated cluster of 100 members with 8
#     GPUs each (views only, no nodes): sizing, placing and ranking, as
#     Cluster.load/4 does before it calls the chosen manager;
#   * with 3 real :peer nodes on this host (Reservation backend, {:bytes, n}
#     loads): Cluster.load/4 placed on a member on this node, and on a peer,
#     against ModelManager.load/4 on a local manager and :erpc.call of it
#     on a peer. Each load is unloaded (untimed) before the next.
#
#     mix run bench/cluster.exs
Code.require_file("support/timing.exs", __DIR__)
# ClusterPeers waits with Test.Eventually.
Code.require_file("../test/support/eventually.ex", __DIR__)
# Compiled here, not required: its bytecode is loaded on the peers too, where
# ClusterPeers.start_manager/2 starts each manager.
peer_modules = Code.compile_file("../test/support/cluster_peers.ex", __DIR__)
alias Bench.Timing
alias ModelBudget.{Cluster, ModelManager}
alias ModelBudget.Test.ClusterPeers

Logger.configure(level: :warning)

defmodule Bench.Cluster do
  @gib 2 ** 30

  # 100 members, 8 GPUs of 80 GiB and 1 TiB of RAM each, every GPU 0-80 GiB
  # used (seeded), half of them labelled zone "a".
  def views do
    :rand.seed(:exsss, {16, 16, 16})

    for i <- 1..100 do
      used = Map.new(0..7, &{&1, :rand.uniform(80) * @gib - @gib})

      %{
        cluster: :sim,
        node: :"member#{i}@127.0.0.1",
        manager: self(),
        labels: %{zone: if(rem(i, 2) == 0, do: "a", else: "b")},
        budget: ModelBudget.resolve(%{ram: 1024 * @gib, vram: List.duplicate(80 * @gib, 8)}),
        backend: ModelBudget.Backend.Reservation,
        n_gpus: 8,
        usage: %{ram: 0, vram: used}
      }
    end
  end

  # Per-load latencies (ns) of `n` loads by `load_fun.(i)`, each unloaded by
  # `unload_fun.(i, result)` outside the timing.
  def latencies(n, load_fun, unload_fun) do
    for i <- 1..n do
      t0 = System.monotonic_time(:nanosecond)
      result = load_fun.(i)
      t1 = System.monotonic_time(:nanosecond)
      unload_fun.(i, result)
      t1 - t0
    end
  end

  def row(name, samples) do
    %{median: m, p10: lo, p90: hi} = Timing.summary(samples)
    us = fn ns -> :erlang.float_to_binary(ns / 1000, decimals: 1) end
    IO.puts("| #{name} | #{us.(m)} µs (#{us.(lo)}–#{us.(hi)}) |")
    m
  end
end

IO.puts("machine: #{Timing.machine()}")

views = Bench.Cluster.views()
source = {:bytes, 30 * 2 ** 30}

for {name, policy, where} <- [
      {"decision, 100 members x 8 GPUs, binpack", :binpack, %{}},
      {"decision, 100 members x 8 GPUs, spread", :spread, %{}},
      {"decision, 100 members x 8 GPUs, binpack, where: zone a (50)", :binpack, %{zone: "a"}}
    ] do
  {:ok, {ranked, _}} = Cluster.decide(views, source, [], policy, where)
  true = ranked != []
  timing = Timing.per_call(fn -> Cluster.decide(views, source, [], policy, where) end, 51, 20)
  IO.puts(Timing.line(name, timing) <> "  (#{length(ranked)} fit)")
end

# Real nodes.
ClusterPeers.ensure_distributed("cluster_bench")
peers = ClusterPeers.start("mb_bench_#{System.pid()}_", 3)
cluster = :bench
opts = [mode: :direct, n_gpus: 0]

for {_peer, node} <- peers, {module, binary} <- peer_modules do
  {:module, ^module} =
    :erpc.call(node, :code, :load_binary, [module, ~c"cluster_peers.ex", binary])
end

# Started unlinked (start_manager_here/1): the manager traps exits, so the
# exit of the process that started it would stop it.
for {{_peer, node}, i} <- Enum.with_index(peers) do
  ClusterPeers.start_manager(node,
    memory_budget: 2 ** 40 + i,
    cluster: cluster,
    labels: %{remote: true},
    min_idle_ms: :infinity
  )
end

# The smallest budget: binpack picks it when :where allows it.
{:ok, local} =
  ModelManager.start_link(
    memory_budget: 2 ** 39,
    cluster: cluster,
    labels: %{remote: false},
    min_idle_ms: :infinity
  )

members = ClusterPeers.await_view(node(), cluster, 4)
[%{node: peer_node, manager: peer_manager} | _] = Enum.filter(members, & &1.labels.remote)
n = 2_000

unload_placed = fn i, {:ok, %{node: node, manager: manager}} ->
  :ok = :erpc.call(node, ModelManager, :unload, [manager, {:c, i}])
end

IO.puts("\n| 3 peers + this node, #{n} loads each, unloaded between | median (p10–p90) |")
IO.puts("|---|---|")

# A warm-up of every path.
for i <- 1..200 do
  {:ok, r} = Cluster.load(cluster, {:c, i}, {:bytes, 1_000}, opts)
  unload_placed.(i, {:ok, r})
end

local_ms =
  Bench.Cluster.row(
    "`ModelManager.load/4`, local manager",
    Bench.Cluster.latencies(
      n,
      fn i -> ModelManager.load(local, {:l, i}, {:bytes, 1_000}, opts) end,
      fn i, {:ok, _} -> :ok = ModelManager.unload(local, {:l, i}) end
    )
  )

cluster_local =
  Bench.Cluster.row(
    "`Cluster.load/4`, placed on this node's member",
    Bench.Cluster.latencies(
      n,
      fn i ->
        {:ok, %{manager: ^local}} = Cluster.load(cluster, {:c, i}, {:bytes, 1_000}, opts)
      end,
      unload_placed
    )
  )

erpc_remote =
  Bench.Cluster.row(
    "`:erpc.call` of `ModelManager.load/4` on a peer",
    Bench.Cluster.latencies(
      n,
      fn i ->
        :erpc.call(peer_node, ModelManager, :load, [peer_manager, {:e, i}, {:bytes, 1_000}, opts])
      end,
      fn i, {:ok, _} ->
        :ok = :erpc.call(peer_node, ModelManager, :unload, [peer_manager, {:e, i}])
      end
    )
  )

cluster_remote =
  Bench.Cluster.row(
    "`Cluster.load/4`, placed on a peer (`where: %{remote: true}`)",
    Bench.Cluster.latencies(
      n,
      fn i ->
        Cluster.load(cluster, {:c, i}, {:bytes, 1_000}, [where: %{remote: true}] ++ opts)
      end,
      unload_placed
    )
  )

ratio = fn a, b -> :erlang.float_to_binary(a / b, decimals: 2) end

IO.puts(
  "\nCluster.load on this node's member / local ModelManager.load: #{ratio.(cluster_local, local_ms)}x"
)

IO.puts(
  "Cluster.load on a peer / :erpc.call of ModelManager.load: #{ratio.(cluster_remote, erpc_remote)}x"
)

IO.puts("Cluster.load on a peer / local ModelManager.load: #{ratio.(cluster_remote, local_ms)}x")

ClusterPeers.stop(peers)
