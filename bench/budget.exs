# Per-call cost of the budget engine against an empty NIF call (the floor).
# Target (issue 2): each call within 3x of the floor.
#
#     mix run bench/budget.exs
Code.require_file("support/timing.exs", __DIR__)
alias Bench.Timing

gib = 2 ** 30
IO.puts("budget engine, #{Timing.machine()}")
floor = Timing.per_call(fn -> ModelBudget.Native.noop() end)
IO.puts(Timing.line("empty NIF (floor)", floor))

for n <- [1, 2, 8] do
  gpus = for i <- 0..(n - 1), do: %{gpu_index: i, memory_free: 24 * gib}
  budget = ModelBudget.resolve(%{ram: 64 * gib, vram: :auto}, gpus)
  opts = [split_mode: :layer, tensor_split: Enum.to_list(1..n), n_ctx: 4096, n_parallel: 2]
  placement = ModelBudget.distribute(20 * gib, opts, n)
  used = ModelBudget.fold(ModelBudget.empty_usage(), placement)

  IO.puts("-- #{n} GPU(s)")

  for {name, fun} <- [
        {"check/3", fn -> ModelBudget.check(budget, placement, used) end},
        {"distribute/3 (layer split)", fn -> ModelBudget.distribute(20 * gib, opts, n) end},
        {"fold/2", fn -> ModelBudget.fold(used, placement) end},
        {"release/2", fn -> ModelBudget.release(used, placement) end},
        {"resolve/2 (%{ram: bytes, vram: :auto})",
         fn -> ModelBudget.resolve(%{ram: 64 * gib, vram: :auto}, gpus) end}
      ] do
    IO.puts(Timing.line("#{name}, #{n} GPU(s)", Timing.per_call(fun), floor))
  end
end
