# ModelManager with the reservation-only backend: admissions per second
# (load + unload) with 1 and 100 concurrent callers, the median and 99th
# percentile latency of load/4, and the cost of reads (info/2, usage/1)
# against a call through the manager (touch/2), idle and while loads run.
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

  # Admissions per second and every load latency of one round.
  def round(manager, callers, per_caller) do
    t0 = System.monotonic_time(:nanosecond)

    latencies =
      1..callers
      |> Enum.map(fn c -> Task.async(fn -> cycles(manager, c, per_caller) end) end)
      |> Task.await_many(:infinity)
      |> List.flatten()

    seconds = (System.monotonic_time(:nanosecond) - t0) / 1.0e9
    {callers * per_caller / seconds, latencies}
  end

  # Callers cycling until told to stop, to read against.
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
end

IO.puts("ModelManager, #{Timing.machine()}")
{:ok, manager} = ModelManager.start_link(memory_budget: 2 ** 40)
rounds = 7
total = 20_000

for callers <- [1, 100] do
  per_caller = div(total, callers)
  # Warm-up round, not counted.
  Bench.Manager.round(manager, callers, per_caller)
  results = for _ <- 1..rounds, do: Bench.Manager.round(manager, callers, per_caller)
  rates = Timing.summary(Enum.map(results, &elem(&1, 0)))
  latencies = results |> Enum.flat_map(&elem(&1, 1)) |> Enum.sort()

  IO.puts(
    "#{callers} caller(s): #{round(rates.median)} admissions/s " <>
      "(p10 #{round(rates.p10)}, p90 #{round(rates.p90)}) over #{rounds} rounds of #{total}; " <>
      "load/4 latency median #{round(Bench.Manager.percentile(latencies, 0.5) / 1000)} µs, " <>
      "p99 #{round(Bench.Manager.percentile(latencies, 0.99) / 1000)} µs"
  )
end

{:ok, _} = ModelManager.load(manager, :resident, {:bytes, 1_000}, mode: :direct, n_gpus: 0)

reads = [
  {"info/2 (ETS)", fn -> ModelManager.info(manager, :resident) end, 51, 2_000},
  {"usage/1 (ETS)", fn -> ModelManager.usage(manager) end, 51, 2_000},
  {"touch/2 (a call through the manager)", fn -> ModelManager.touch(manager, :resident) end, 21,
   200}
]

IO.puts("-- idle manager")
idle = for {name, fun, batches, per} <- reads, do: {name, Timing.per_call(fun, batches, per)}
for {name, t} <- idle, do: IO.puts(Timing.line(name, t))

IO.puts("-- while 100 callers load and unload")
busy_callers = Bench.Manager.background(manager, 100)

for {name, fun, batches, per} <- reads do
  IO.puts(Timing.line(name, Timing.per_call(fun, batches, per)))
end

for pid <- busy_callers, do: send(pid, :stop)
