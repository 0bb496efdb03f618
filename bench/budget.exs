# Per-call cost of the budget calls, side by side in one run on the same
# inputs: ModelBudget (the NIF, through the public API), a pure-Elixir
# implementation of the same contract (bench/support/pure_budget.exs), and
# the floor: a NIF that only reads the same argument terms and returns :ok.
# Target (issue 13): every call within 1.25x of its floor.
#
#     mix run bench/budget.exs
Code.require_file("support/timing.exs", __DIR__)
Code.require_file("support/pure_budget.exs", __DIR__)
alias Bench.{PureBudget, Timing}
alias ModelBudget.Native

gib = 2 ** 30
IO.puts("budget calls, #{Timing.machine()}")
IO.puts(Timing.line("empty NIF", Timing.per_call(fn -> Native.noop() end)))
# The smallest placement result, %{ram: 0, vram: %{}}, built in the NIF.
IO.puts(Timing.line("empty_usage/0 (NIF)", Timing.per_call(fn -> Native.empty_usage() end)))

# One case: the timings and the ratios, and where the call's time beyond
# its floor goes. `decode` is the call's decoding step alone (the NIF's
# codecs with their validation, then :ok); `compute`, where the call builds
# a result, is the decoding step plus the core's work, then :ok. So:
# decode - floor is validation, compute - decode the core's work, and
# ours - compute the result term and the Elixir wrapper (ours - decode
# where there is no `compute`). `result`, where the call builds a result,
# is the floor that also answers the call's result term, the public map
# built by the call's own encoder (Native.floor_result_*): no
# implementation can take less, so result / floor is the part of the
# 1.25x target the result alone takes, and ours / result ("x floor+result")
# is the target itself (check/3's result is :ok, so there its floor is
# the target). All are timed in turns
# (Timing.per_call_interleaved), so that the shared machine's changing load
# falls on each alike.
measure = fn name, ours, pure, floor, decode, compute, result ->
  funs = [floor, decode, ours, pure] ++ List.wrap(compute) ++ List.wrap(result)
  [f, d, o, p | rest] = Timing.per_call_interleaved(funs)
  {c, r} = Enum.split(rest, length(List.wrap(compute)))
  IO.puts("-- #{name}")
  IO.puts(Timing.line("  floor (read the terms)", f))
  for r <- r, do: IO.puts(Timing.line("  floor + the result term", r, f))
  IO.puts(Timing.line("  decoding step alone", d, f))
  for c <- c, do: IO.puts(Timing.line("  decoding + core work, no result", c, f))
  IO.puts(Timing.line("  pure Elixir", p, f))
  target = for r <- r, do: "  #{Timing.ratio(o, r)}x floor+result"
  IO.puts(Timing.line("  ModelBudget", o, f) <> "  #{Timing.ratio(o, p)}x pure#{target}")
end

for n <- [1, 8] do
  gpus = for i <- 0..(n - 1), do: %{gpu_index: i, memory_free: 24 * gib}
  spec = %{ram: 64 * gib, vram: :auto}
  per_device = ModelBudget.resolve(spec, gpus)
  combined = ModelBudget.resolve((64 + 24 * n) * gib)
  opts = [split_mode: :layer, tensor_split: Enum.to_list(1..n), n_ctx: 4096, n_parallel: 2]
  placement = ModelBudget.distribute(6 * gib, opts, n)
  # Two models resident: the new one still fits.
  used = ModelBudget.fold(placement, placement)
  ^used = PureBudget.fold(placement, placement)
  :ok = ModelBudget.check(per_device, placement, used)
  :ok = PureBudget.check(per_device, placement, used)
  ^placement = PureBudget.distribute(6 * gib, opts, n)

  for {budget, label} <- [{per_device, "per-device"}, {combined, "combined"}] do
    measure.(
      "check/3, #{label}, #{n} GPU(s)",
      fn -> ModelBudget.check(budget, placement, used) end,
      fn -> PureBudget.check(budget, placement, used) end,
      fn -> Native.floor_check(budget, placement, used) end,
      fn -> Native.decode_only_check(budget, placement, used) end,
      nil,
      nil
    )
  end

  measure.(
    "distribute/3, layer split, #{n} GPU(s)",
    fn -> ModelBudget.distribute(6 * gib, opts, n) end,
    fn -> PureBudget.distribute(6 * gib, opts, n) end,
    fn -> Native.floor_distribute(6 * gib, opts, n) end,
    fn -> Native.decode_only_distribute(6 * gib, opts, n) end,
    fn -> Native.compute_only_distribute(6 * gib, opts, n) end,
    fn -> Native.floor_result_distribute(6 * gib, opts, n) end
  )

  measure.(
    "fold/2, #{n} GPU(s)",
    fn -> ModelBudget.fold(used, placement) end,
    fn -> PureBudget.fold(used, placement) end,
    fn -> Native.floor_usage(used, placement) end,
    fn -> Native.decode_only_usage(used, placement) end,
    fn -> Native.compute_only_usage(used, placement, false) end,
    fn -> Native.floor_result_usage(used, placement) end
  )

  measure.(
    "release/2, #{n} GPU(s)",
    fn -> ModelBudget.release(used, placement) end,
    fn -> PureBudget.release(used, placement) end,
    fn -> Native.floor_usage(used, placement) end,
    fn -> Native.decode_only_usage(used, placement) end,
    fn -> Native.compute_only_usage(used, placement, true) end,
    fn -> Native.floor_result_usage(used, placement) end
  )

  measure.(
    "resolve/2 on %{ram: bytes, vram: :auto}, #{n} GPU(s)",
    fn -> ModelBudget.resolve(spec, gpus) end,
    fn -> PureBudget.resolve(spec, gpus) end,
    fn -> Native.floor_resolve(spec, gpus, nil) end,
    fn -> Native.decode_only_resolve(spec, gpus) end,
    fn -> Native.compute_only_resolve(spec, gpus) end,
    fn -> Native.floor_result_resolve(spec, gpus) end
  )
end

# The manager's admission path (ModelBudget.Eviction.admit/4 against a
# pure-Elixir check/3 + fold/2) is timed in bench/eviction.exs.

# :auto probes this machine: GPUs through NVML on a dirty scheduler, unless
# NVML is known to be missing, and the cached memory limit. The pure-Elixir
# baseline reads /proc/meminfo. Target: at least 8x faster than it.
[auto, meminfo] =
  Timing.per_call_interleaved([
    fn -> ModelBudget.resolve(:auto) end,
    fn -> PureBudget.resolve(:auto, []) end
  ])

IO.puts("-- resolve/1 on :auto (this machine: #{inspect(ModelBudget.gpu_status())})")
IO.puts(Timing.line("  pure Elixir (reads /proc/meminfo)", meminfo))
IO.puts(Timing.line("  ModelBudget", auto) <> "  #{Timing.ratio(meminfo, auto)}x faster")
