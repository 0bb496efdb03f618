# Cost of constraint expressions: compiling them (once, at start-up) and
# evaluating them (on every admission). Run with `mix run bench/constraint.exs`.
#
# Each case runs in batches; a sample is the mean time per call within one
# batch. Prints the median and the 10th-90th percentile spread of the samples.

alias ModelBudget.Constraint

defmodule Bench.Constraint.Timing do
  @samples 31

  def run(label, batch, fun) do
    loop(batch, fun)

    samples =
      for _ <- 1..@samples do
        started = System.monotonic_time(:nanosecond)
        loop(batch, fun)
        (System.monotonic_time(:nanosecond) - started) / batch
      end
      |> Enum.sort()

    at = fn q -> Enum.at(samples, round(q * (@samples - 1))) end

    IO.puts(
      String.pad_trailing(label, 44) <>
        "median #{format(at.(0.5))}   p10-p90 #{format(at.(0.1))} - #{format(at.(0.9))}" <>
        "   (#{@samples} x #{batch} calls)"
    )
  end

  defp loop(0, _fun), do: :ok

  defp loop(n, fun) do
    fun.()
    loop(n - 1, fun)
  end

  defp format(ns) when ns >= 1000, do: :io_lib.format("~.2f us", [ns / 1000]) |> to_string()
  defp format(ns), do: "#{round(ns)} ns"
end

# The variables and default rule of the ModelManager's :evict_when.
variables = ModelBudget.ModelManager.Eviction.variables()
default = ModelBudget.ModelManager.Eviction.default_rules()

# Twenty rules, none met by `values` below, so that met?/2 evaluates them all.
twenty = [
  "memory_required > available * 0.70",
  "used_percent >= 95",
  "free < 512MiB",
  "free < memory_required + 1GiB",
  "resident_count > 16",
  "resident_bytes > total * 0.9",
  "model_size > 2 * available",
  "used + memory_required > total - 256MiB",
  "memory_required / total > 0.5",
  "available < gib(1.5)",
  "not (free > 2GiB and available > 2GiB)",
  "min(free, available) < memory_required * 2",
  "max(used, resident_bytes) > total * 0.8",
  "abs(free - available) > 8GiB",
  "resident_count >= 4 and resident_bytes / resident_count < 100MiB",
  "memory_required > free - 1.5GB",
  "0 < available < memory_required",
  "used_percent > 80 or resident_count > 12",
  "(used + memory_required) / total >= 0.95",
  "model_size * 3 > total and resident_count > 1"
]

gib = 2 ** 30

values = %{
  memory_required: 2 * gib,
  available: 20 * gib,
  total: 24 * gib,
  used: 4 * gib,
  used_percent: 16,
  free: 19 * gib,
  model_size: 2 * gib,
  resident_count: 3,
  resident_bytes: 4 * gib
}

{:ok, default_c} = Constraint.compile(default, variables)
{:ok, twenty_c} = Constraint.compile(twenty, variables)
false = Constraint.met?(default_c, values)
false = Constraint.met?(twenty_c, values)
met_first = Map.put(values, :memory_required, 19 * gib)
true = Constraint.met?(twenty_c, met_first)

IO.puts("constraint expressions (#{System.schedulers_online()} schedulers)")

Bench.Constraint.Timing.run("compile/2 default rule", 2_000, fn ->
  Constraint.compile(default, variables)
end)

Bench.Constraint.Timing.run("compile/2 20 rules", 500, fn ->
  Constraint.compile(twenty, variables)
end)

Bench.Constraint.Timing.run("met?/2 default rule", 20_000, fn ->
  Constraint.met?(default_c, values)
end)

Bench.Constraint.Timing.run("met?/2 20 rules, none met (all evaluated)", 5_000, fn ->
  Constraint.met?(twenty_c, values)
end)

Bench.Constraint.Timing.run("met?/2 20 rules, the first met", 20_000, fn ->
  Constraint.met?(twenty_c, met_first)
end)
