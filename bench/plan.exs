# What `mix model_budget.plan` costs beyond starting the VM: Plan.fit_search/3
# (every answer found by placing the model again) and a whole Plan.run/1.
#
#     mix run bench/plan.exs
Code.require_file("support/timing.exs", __DIR__)
alias Bench.Timing
alias ModelBudget.Plan

gib = 2 ** 30
{:ok, big} = Plan.Catalog.fetch("llama-3.1-70b")
empty = ModelBudget.empty_usage()

ram_only = %{budget: ModelBudget.resolve(%{ram: 64 * gib, vram: []}), used: empty, n_gpus: 0}
# Short on both GPUs: the search scans n_gpu_layers 81..0 and tries q8_0/q4_0.
two_gpus = %{
  budget: ModelBudget.resolve(%{ram: 64 * gib, vram: [16 * gib, 16 * gib]}),
  used: empty,
  n_gpus: 2
}

machine = %{
  memory: %{total: 64 * gib, available: 60 * gib, limit: 64 * gib},
  gpus: [],
  gpu_status: {:unavailable, "bench"}
}

IO.puts("plan, #{Timing.machine()}")

for {name, fun, batches, per_batch} <- [
      {"fit_search/3, 70B fits in RAM (context search)",
       fn -> Plan.fit_search(big, [], ram_only) end, 31, 200},
      {"fit_search/3, 70B short on 2 GPUs (all searches)",
       fn -> Plan.fit_search(big, [split_mode: :layer], two_gpus) end, 31, 20},
      {"run/1, the 5 built-in models, RAM only",
       fn -> Plan.run(budget: %{ram: 16 * gib, vram: []}, machine: machine) end, 31, 20}
    ] do
  IO.puts(Timing.line(name, Timing.per_call(fun, batches, per_batch)))
end
