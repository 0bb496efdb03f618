# Cost of constraint expressions: compiling them (once, at start-up) and
# evaluating them (on every admission). Run with `mix run bench/constraint.exs`.
#
# Each case runs in 31 batches (bench/support/timing.exs); prints the median
# per call and the 10th-90th percentile spread.

alias ModelBudget.Constraint

Code.require_file("support/timing.exs", __DIR__)

run = fn label, batch, fun ->
  IO.puts(Bench.Timing.line(label, Bench.Timing.per_call(fun, 31, batch)))
end

# The variables and default rule of the ModelManager's :evict_when.
variables = ModelBudget.Eviction.variables()
default = ModelBudget.Eviction.default_rules()

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

run.("compile/2 default rule", 2_000, fn ->
  Constraint.compile(default, variables)
end)

run.("compile/2 20 rules", 500, fn ->
  Constraint.compile(twenty, variables)
end)

run.("met?/2 default rule", 20_000, fn ->
  Constraint.met?(default_c, values)
end)

run.("met?/2 20 rules, none met (all evaluated)", 5_000, fn ->
  Constraint.met?(twenty_c, values)
end)

run.("met?/2 20 rules, the first met", 20_000, fn ->
  Constraint.met?(twenty_c, met_first)
end)
