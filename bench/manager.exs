# ModelManager with the reservation-only backend:
#
#   * checkout/2 + checkin/2 pairs per second from 100 concurrent processes
#     on one model while 4 other processes load and unload, and the pair's
#     median and 99th percentile latency;
#   * admissions per second (load + unload) with 1 and 100 concurrent
#     callers, and the median and 99th percentile latency of load/4;
#   * where an admission's time goes: the manager's own step (load and
#     unload handled in this process, no message), the NIF calls it and the
#     caller make, and a bare GenServer round trip;
#   * the cost of reads (info/2, usage/1) and touch/2, idle and while
#     loads run;
#   * floors measured in the same run, so that a shared machine's load
#     cancels out of the ratios: a bare ETS insert + delete on an
#     ordered_set (what a lease wrote before leases became NIF resources;
#     kept as a yardstick of the machine) from the same 100 processes, and two
#     bare GenServer round trips per admission (what an admission's messages
#     cost) from the same callers.
#
#     mix run bench/manager.exs
Code.require_file("support/timing.exs", __DIR__)
alias Bench.Timing
alias ModelBudget.ModelManager

Logger.configure(level: :warning)

defmodule Bench.Manager do
  @opts [mode: :direct, n_gpus: 0]

  # One caller's load + unload cycles over its own ids; load/4 latencies in ns.
  def cycles(manager, caller, n) do
    for i <- 1..n do
      id = {caller, i}
      t0 = System.monotonic_time(:nanosecond)
      {:ok, _} = ModelManager.load(manager, id, {:bytes, 1_000}, @opts)
      t1 = System.monotonic_time(:nanosecond)
      :ok = ModelManager.unload(manager, id)
      t1 - t0
    end
  end

  # The VM's CPU time (all schedulers) in µs: what a round costs, whatever
  # else the machine runs.
  def cpu_us do
    {ms, _} = :erlang.statistics(:runtime)
    ms * 1000
  end

  # Admissions per second, CPU µs per admission and every load latency of
  # one round.
  def round(manager, callers, per_caller) do
    cpu0 = cpu_us()
    t0 = System.monotonic_time(:nanosecond)

    latencies =
      1..callers
      |> Enum.map(fn c -> Task.async(fn -> cycles(manager, c, per_caller) end) end)
      |> Task.await_many(:infinity)
      |> List.flatten()

    seconds = (System.monotonic_time(:nanosecond) - t0) / 1.0e9
    n = callers * per_caller
    {n / seconds, latencies, (cpu_us() - cpu0) / n}
  end

  # One process's checkout + checkin pairs on `id`; pair latencies in ns.
  def pairs(manager, id, n) do
    for _ <- 1..n do
      t0 = System.monotonic_time(:nanosecond)
      {:ok, lease} = ModelManager.checkout(manager, id)
      :ok = ModelManager.checkin(manager, lease)
      System.monotonic_time(:nanosecond) - t0
    end
  end

  # Pairs per second, CPU µs per pair and every pair latency of one round
  # of `procs` processes.
  def lease_round(manager, id, procs, per_proc) do
    cpu0 = cpu_us()
    t0 = System.monotonic_time(:nanosecond)

    latencies =
      1..procs
      |> Enum.map(fn _ -> Task.async(fn -> pairs(manager, id, per_proc) end) end)
      |> Task.await_many(:infinity)
      |> List.flatten()

    seconds = (System.monotonic_time(:nanosecond) - t0) / 1.0e9
    n = procs * per_proc
    {n / seconds, latencies, (cpu_us() - cpu0) / n}
  end

  # The lease floor: one process's bare insert + delete pairs on an
  # ordered_set like the lease table, keys as a lease's.
  def ets_pairs(table, n) do
    for _ <- 1..n do
      key = {1, make_ref()}
      :ets.insert(table, {key, self()})
      :ets.delete(table, key)
    end
  end

  # The admission floor: two bare round trips per "admission".
  def echo_cycles(echo, n) do
    for _ <- 1..n do
      :ok = GenServer.call(echo, :load)
      :ok = GenServer.call(echo, :unload)
    end
  end

  # Operations per second and CPU µs per operation of `procs` processes
  # running `fun.(per_proc)`.
  def floor_round(procs, per_proc, fun) do
    cpu0 = cpu_us()
    t0 = System.monotonic_time(:nanosecond)

    1..procs
    |> Enum.map(fn _ -> Task.async(fn -> fun.(per_proc) end) end)
    |> Task.await_many(:infinity)

    seconds = (System.monotonic_time(:nanosecond) - t0) / 1.0e9
    n = procs * per_proc
    {n / seconds, (cpu_us() - cpu0) / n}
  end

  # Callers cycling loads and unloads until told to stop, to measure against.
  def background(manager, callers) do
    for c <- 1..callers do
      spawn_link(fn -> loop(manager, {:bg, c}, 0) end)
    end
  end

  defp loop(manager, caller, i) do
    receive do
      :stop -> :ok
    after
      0 ->
        {:ok, _} = ModelManager.load(manager, {caller, i}, {:bytes, 1_000}, @opts)
        :ok = ModelManager.unload(manager, {caller, i})
        loop(manager, caller, i + 1)
    end
  end

  def percentile(sorted, q), do: Enum.at(sorted, round(q * (length(sorted) - 1)))

  def us(ns), do: :erlang.float_to_binary(ns / 1000, decimals: 1)
end

IO.puts("ModelManager, #{Timing.machine()}")
{:ok, manager} = ModelManager.start_link(memory_budget: 2 ** 40)
rounds = 7

# Leases first: 100 processes on one model while 4 callers load and unload.
{:ok, _} = ModelManager.load(manager, :served, {:bytes, 1_000}, mode: :direct, n_gpus: 0)
loaders = Bench.Manager.background(manager, 4)
per_proc = 2_000
Bench.Manager.lease_round(manager, :served, 100, per_proc)
ets_floor = :ets.new(:floor, [:ordered_set, :public, write_concurrency: true])

# Rounds of ours and of the floor alternate, so both see the same machine.
{results, floors} =
  Enum.unzip(
    for _ <- 1..rounds do
      ours = Bench.Manager.lease_round(manager, :served, 100, per_proc)
      floor = Bench.Manager.floor_round(100, per_proc, &Bench.Manager.ets_pairs(ets_floor, &1))
      {ours, floor}
    end
  )

for pid <- loaders, do: send(pid, :stop)
rates = Timing.summary(Enum.map(results, &elem(&1, 0)))
cpu = Timing.summary(Enum.map(results, &elem(&1, 2)))
floor_rates = Timing.summary(Enum.map(floors, &elem(&1, 0)))
floor_cpu = Timing.summary(Enum.map(floors, &elem(&1, 1)))
latencies = results |> Enum.flat_map(&elem(&1, 1)) |> Enum.sort()

IO.puts(
  "checkout+checkin, 100 processes on one model, 4 callers loading: " <>
    "#{round(rates.median)} pairs/s (p10 #{round(rates.p10)}, p90 #{round(rates.p90)}) " <>
    "over #{rounds} rounds of #{100 * per_proc}; pair latency median " <>
    "#{Bench.Manager.us(Bench.Manager.percentile(latencies, 0.5))} µs, " <>
    "p99 #{Bench.Manager.us(Bench.Manager.percentile(latencies, 0.99))} µs; " <>
    "VM CPU per pair (loaders included) #{Float.round(cpu.median, 2)} µs"
)

IO.puts(
  "  floor, bare ETS insert+delete from 100 processes, same conditions: " <>
    "#{round(floor_rates.median)} pairs/s (p10 #{round(floor_rates.p10)}, " <>
    "p90 #{round(floor_rates.p90)}), VM CPU #{Float.round(floor_cpu.median, 2)} µs; " <>
    "ours/floor: rate #{Float.round(rates.median / floor_rates.median, 2)}, " <>
    "CPU #{Float.round(cpu.median / floor_cpu.median, 2)}"
)

# The same pairs from as many processes as schedulers: what a pair costs
# when no process waits for another's time slice.
schedulers = System.schedulers_online()
per_sched = 100_000
Bench.Manager.lease_round(manager, :served, schedulers, per_sched)

results =
  for _ <- 1..rounds, do: Bench.Manager.lease_round(manager, :served, schedulers, per_sched)

rates = Timing.summary(Enum.map(results, &elem(&1, 0)))
latencies = results |> Enum.flat_map(&elem(&1, 1)) |> Enum.sort()

IO.puts(
  "checkout+checkin, #{schedulers} processes (one per scheduler), nothing else: " <>
    "#{round(rates.median)} pairs/s (p10 #{round(rates.p10)}, p90 #{round(rates.p90)}); " <>
    "pair latency median #{Bench.Manager.us(Bench.Manager.percentile(latencies, 0.5))} µs, " <>
    "p99 #{Bench.Manager.us(Bench.Manager.percentile(latencies, 0.99))} µs"
)

defmodule Bench.Echo do
  use GenServer
  def init(state), do: {:ok, state}
  def handle_call(_request, _from, state), do: {:reply, :ok, state}
end

{:ok, echo} = GenServer.start_link(Bench.Echo, nil)
total = 20_000

for callers <- [1, 100] do
  per_caller = div(total, callers)
  # Warm-up round, not counted.
  Bench.Manager.round(manager, callers, per_caller)

  {results, floors} =
    Enum.unzip(
      for _ <- 1..rounds do
        ours = Bench.Manager.round(manager, callers, per_caller)

        floor =
          Bench.Manager.floor_round(callers, per_caller, &Bench.Manager.echo_cycles(echo, &1))

        {ours, floor}
      end
    )

  rates = Timing.summary(Enum.map(results, &elem(&1, 0)))
  cpu = Timing.summary(Enum.map(results, &elem(&1, 2)))
  floor_rates = Timing.summary(Enum.map(floors, &elem(&1, 0)))
  latencies = results |> Enum.flat_map(&elem(&1, 1)) |> Enum.sort()

  IO.puts(
    "#{callers} caller(s): #{round(rates.median)} admissions/s " <>
      "(p10 #{round(rates.p10)}, p90 #{round(rates.p90)}) over #{rounds} rounds of #{total}; " <>
      "load/4 latency median #{Bench.Manager.us(Bench.Manager.percentile(latencies, 0.5))} µs, " <>
      "p99 #{Bench.Manager.us(Bench.Manager.percentile(latencies, 0.99))} µs; " <>
      "VM CPU per admission #{Float.round(cpu.median, 1)} µs"
  )

  IO.puts(
    "  floor, two bare GenServer round trips per admission, same callers: " <>
      "#{round(floor_rates.median)}/s; ours/floor #{Float.round(rates.median / floor_rates.median, 2)}"
  )
end

# The :priority option: the same 100-caller rounds against a manager at
# :high, in turns with the default one, so both see the same machine.
{:ok, high} = ModelManager.start_link(memory_budget: 2 ** 40, priority: :high)
Bench.Manager.round(high, 100, 200)

{normal_rates, high_rates} =
  Enum.unzip(
    for _ <- 1..rounds do
      {normal, _, _} = Bench.Manager.round(manager, 100, 200)
      {high, _, _} = Bench.Manager.round(high, 100, 200)
      {normal, high}
    end
  )

normal_rates = Timing.summary(normal_rates)
high_rates = Timing.summary(high_rates)

IO.puts(
  "100 callers, priority: :high #{round(high_rates.median)} admissions/s " <>
    "(p10 #{round(high_rates.p10)}, p90 #{round(high_rates.p90)}) against :normal " <>
    "#{round(normal_rates.median)}/s in turns; high/normal " <>
    "#{Float.round(high_rates.median / normal_rates.median, 2)}"
)

# Where an admission's time goes, one piece at a time (no concurrency).
# The manager's init/1 and callbacks, called in this process: its own step,
# without the messages.
{:ok, step_state} = ModelManager.init(ModelManager.Options.start!(memory_budget: 2 ** 40))
# The config init/1 published for this process, as load/4 reads it.
step_config = :persistent_term.get({ModelManager, self()})
placement = %{ram: 1_000, vram: %{}}

# What load/4 sends, made by the caller (its lease gate included).
request = fn id ->
  ModelManager.load_request(step_config, id, {:bytes, 1_000}, [], {1_000, placement})
end

# The step makes its request: the caller's share, timed alone below. (Made
# beforehand, tens of thousands of gates held by this process slowed every
# step 2-3x.)
counter = :counters.new(1, [])

manager_step = fn ->
  :counters.add(counter, 1, 1)
  id = :counters.get(counter, 1)
  from = {self(), make_ref()}
  {:noreply, s} = ModelManager.handle_call({ModelManager, :load, request.(id)}, from, step_state)

  {:noreply, _} =
    ModelManager.handle_call(
      {ModelManager, :unload, id, %{timeout: :infinity, force: false}},
      from,
      s
    )

  # The two replies GenServer.reply/2 sent here.
  receive do: ({_, {:ok, _}} -> :ok)
  receive do: ({_, :ok} -> :ok)
end

rules = ModelBudget.Eviction.compile!(ModelBudget.Eviction.default_rules())
budget = ModelManager.budget(manager)

pieces = [
  {"manager step: load + unload, no message, its request included", manager_step},
  {"the caller's request: load_request/5 (its lease gate)", fn -> request.(:x) end},
  {"GenServer.call round trip (echo)", fn -> GenServer.call(echo, :x) end},
  {"ModelBudget.distribute/3 (caller)",
   fn -> ModelBudget.distribute(1_000, [mode: :direct], 0) end},
  {"ModelBudget.check/3", fn -> ModelBudget.check(budget, placement, placement) end},
  {"ModelBudget.fold/2", fn -> ModelBudget.fold(placement, placement) end},
  {"ModelBudget.Eviction.admit/4 (the step's one admission call, default rule)",
   fn ->
     ModelBudget.Eviction.admit(
       %{
         budget: budget,
         rules: rules,
         usage: placement,
         ahead: [],
         resident_count: 1,
         free: nil
       },
       placement,
       fn -> [] end
     )
   end},
  {"ModelBudget.release/2", fn -> ModelBudget.release(placement, placement) end},
  {"Constraint.met?/2 (default rule)",
   fn ->
     ModelBudget.Constraint.met?(rules.constraint, %{memory_required: 1_000, available: 2 ** 40})
   end}
]

IO.puts("-- where an admission's time goes (one process)")
for {name, fun} <- pieces, do: IO.puts(Timing.line(name, Timing.per_call(fun, 21, 1_000)))

cpu0 = Bench.Manager.cpu_us()
for _ <- 1..20_000, do: manager_step.()

IO.puts(
  "manager step, VM CPU time: #{Float.round((Bench.Manager.cpu_us() - cpu0) / 20_000, 1)} µs"
)

reads = [
  {"info/2 (ETS + atomics)", fn -> ModelManager.info(manager, :served) end, 51, 2_000},
  {"usage/1 (ETS)", fn -> ModelManager.usage(manager) end, 51, 2_000},
  {"touch/2 (atomics)", fn -> ModelManager.touch(manager, :served) end, 51, 2_000},
  {"checkout/2 + checkin/2, one process",
   fn ->
     {:ok, lease} = ModelManager.checkout(manager, :served)
     ModelManager.checkin(manager, lease)
   end, 51, 2_000}
]

IO.puts("-- idle manager")

for {name, fun, batches, per} <- reads,
    do: IO.puts(Timing.line(name, Timing.per_call(fun, batches, per)))

IO.puts("-- while 100 callers load and unload")
busy_callers = Bench.Manager.background(manager, 100)

for {name, fun, batches, per} <- reads do
  IO.puts(Timing.line(name, Timing.per_call(fun, batches, per)))
end

for pid <- busy_callers, do: send(pid, :stop)
