# Eviction in ModelManager, with the reservation-only backend: the latency
# of a load/4 that evicts 10 models out of 1,000 resident (the admission,
# 10 backend unloads, then the load), against one that evicts nothing next
# to the same 1,000; the cost of the admission alone
# (ModelBudget.Eviction.admit/4, one NIF call, over 1,000 candidates, with
# the default rule evaluated at each step); and the admission path against
# a pure-Elixir check/3 + fold/2 (what an admission that evicts nothing must
# not exceed). The manager runs with `evict_when: []` so that refilling it
# between rounds evicts nothing (the default rule holds whenever a filler
# takes over 70% of what is left); the cost of compiling and evaluating
# rules is in bench/constraint.exs.
#
#     mix run bench/eviction.exs
Code.require_file("support/timing.exs", __DIR__)
Code.require_file("support/pure_budget.exs", __DIR__)
alias Bench.{PureBudget, Timing}
alias ModelBudget.Eviction
alias ModelBudget.ModelManager

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

  # The snapshot of the full manager, as its admission sends it.
  def snapshot do
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
IO.puts(Timing.line("  evicting 10 (admission, 10 unloads, load)", with_evictions))
IO.puts(Timing.line("  evicting none", without))

# 7,000 bytes with the default rule: 7,000 > 0.7 * 9,000 after 9 evictions,
# 7,000 <= 0.7 * 10,000 after 10.
snapshot = Bench.Eviction.snapshot()
candidates = Bench.Eviction.candidates()
placement = %{ram: 7_000, vram: %{}}
{:ok, %{evictions: planned}} = Eviction.admit(snapshot, placement, candidates)
10 = length(planned)

IO.puts("Eviction.admit/4 alone, 1,000 candidates (one NIF call)")

IO.puts(
  Timing.line(
    "  evicting 10",
    Timing.per_call(fn -> Eviction.admit(snapshot, placement, candidates) end, 31, 200)
  )
)

IO.puts(
  Timing.line(
    "  evicting none (the rule evaluated once)",
    Timing.per_call(
      fn ->
        Eviction.admit(%{snapshot | usage: %{ram: 0, vram: %{}}}, placement, candidates)
      end,
      31,
      2_000
    )
  )
)

# The admission path of a load that evicts nothing, as the manager makes
# it (the candidates a function it does not call), against the pure-Elixir
# check/3 + fold/2 on the same usage: without rules, and with the default
# rule (which the pure path does not evaluate). The budget is large enough
# that every admission fits. Timed in turns, so the shared machine's load
# falls on each alike.
gib = 2 ** 30
default = Eviction.compile!(Eviction.default_rules())

for n <- [1, 8] do
  huge = 2 ** 62
  budget = %{mode: :per_device, ram: huge, vram: Map.new(0..(n - 1), &{&1, huge})}
  opts = [split_mode: :layer, tensor_split: Enum.to_list(1..n), n_ctx: 4096]
  placement = ModelBudget.distribute(6 * gib, opts, n)
  used = ModelBudget.fold(placement, placement)

  snapshot = %{
    budget: budget,
    rules: nil,
    usage: used,
    ahead: [],
    resident_count: 2,
    free: nil
  }

  with_rule = %{snapshot | rules: default}
  unlisted = fn -> raise "listed" end

  [pure, ours, ours_rule] =
    Timing.per_call_interleaved([
      fn ->
        :ok = PureBudget.check(budget, placement, used)
        PureBudget.fold(used, placement)
      end,
      fn -> {:ok, _} = Eviction.admit(snapshot, placement, unlisted) end,
      fn -> {:ok, _} = Eviction.admit(with_rule, placement, unlisted) end
    ])

  IO.puts("-- admission that evicts nothing, #{n} GPU(s)")
  IO.puts(Timing.line("  pure Elixir check/3 + fold/2", pure))

  IO.puts(
    Timing.line("  Eviction.admit/4, no rules", ours) <> "  #{Timing.ratio(ours, pure)}x pure"
  )

  IO.puts(
    Timing.line("  Eviction.admit/4, default rule", ours_rule) <>
      "  #{Timing.ratio(ours_rule, pure)}x pure"
  )
end
