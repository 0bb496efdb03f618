# Eviction in ModelManager, with the reservation-only backend: the latency
# of a load/4 that evicts 10 models out of 1,000 resident (plan, 10 backend
# unloads, then the load), against one that evicts nothing next to the same
# 1,000, and the cost of the plan alone (ModelManager.Eviction.plan/3 over
# 1,000 candidates, with the default rule evaluated at each step). The
# manager runs with `evict_when: []` so that refilling it between rounds
# evicts nothing (the default rule holds whenever a filler takes over 70% of
# what is left); the cost of compiling and evaluating rules is in
# bench/constraint.exs.
#
#     mix run bench/eviction.exs
Code.require_file("support/timing.exs", __DIR__)
alias Bench.Timing
alias ModelBudget.ModelManager
alias ModelBudget.ModelManager.Eviction

Logger.configure(level: :warning)

defmodule Bench.Eviction do
  @opts [mode: :direct, n_gpus: 0]
  @model 1_000
  @resident 1_000

  def opts, do: @opts

  # A manager holding 1,000 models of 1,000 bytes, `headroom` bytes to spare.
  def full_manager(headroom) do
    {:ok, manager} =
      ModelManager.start_link(memory_budget: @resident * @model + headroom, evict_when: [])

    fill(manager, @resident)
    manager
  end

  def fill(manager, n) do
    for _ <- 1..n do
      {:ok, _} = ModelManager.load(manager, make_ref(), {:bytes, @model}, @opts)
    end
  end

  # Latency in ns of `rounds` loads of `bytes`; after each, the new model is
  # unloaded and the evicted ones replaced, unmeasured.
  def loads(manager, bytes, evicting, rounds) do
    for _ <- 1..rounds do
      id = make_ref()
      t0 = System.monotonic_time(:nanosecond)
      {:ok, %{evicted: evicted}} = ModelManager.load(manager, id, {:bytes, bytes}, @opts)
      t1 = System.monotonic_time(:nanosecond)
      ^evicting = length(evicted)
      :ok = ModelManager.unload(manager, id)
      if evicting > 0, do: fill(manager, evicting)
      t1 - t0
    end
  end

  # The ledger of the full manager, as the planner sees it.
  def ledger do
    %{
      budget: %{mode: :combined, limit: @resident * @model},
      rules: Eviction.compile!(Eviction.default_rules()),
      usage: %{ram: @resident * @model, vram: %{}},
      resident_count: @resident,
      free: nil
    }
  end

  def candidates, do: for(i <- 1..@resident, do: {i, %{ram: @model, vram: %{}}})
end

IO.puts("ModelManager eviction, #{Timing.machine()}")
rounds = 301

# 10,000 bytes into a full budget: 10 models of 1,000 make room.
evicting = Bench.Eviction.full_manager(0)
Bench.Eviction.loads(evicting, 10_000, 10, 20)
with_evictions = Timing.summary(Bench.Eviction.loads(evicting, 10_000, 10, rounds))

# 1,000 bytes into 100,000 spare: nothing is evicted.
spare = Bench.Eviction.full_manager(100_000)
Bench.Eviction.loads(spare, 1_000, 0, 20)
without = Timing.summary(Bench.Eviction.loads(spare, 1_000, 0, rounds))

IO.puts("load/4 with 1,000 resident (#{rounds} loads each, after 20 warm-up loads)")
IO.puts(Timing.line("  evicting 10 (plan, 10 unloads, load)", with_evictions))
IO.puts(Timing.line("  evicting none", without))

# 7,000 bytes with the default rule: 7,000 > 0.7 * 9,000 after 9 evictions,
# 7,000 <= 0.7 * 10,000 after 10.
ledger = Bench.Eviction.ledger()
candidates = Bench.Eviction.candidates()
placement = %{ram: 7_000, vram: %{}}
{:ok, planned, _} = Eviction.plan(ledger, placement, candidates)
10 = length(planned)

IO.puts("Eviction.plan/3 alone, 1,000 candidates")

IO.puts(
  Timing.line(
    "  planning 10 evictions",
    Timing.per_call(fn -> Eviction.plan(ledger, placement, candidates) end, 31, 200)
  )
)

IO.puts(
  Timing.line(
    "  planning none (the rule evaluated once)",
    Timing.per_call(
      fn -> Eviction.plan(%{ledger | usage: %{ram: 0, vram: %{}}}, placement, candidates) end,
      31,
      2_000
    )
  )
)
