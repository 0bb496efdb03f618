# ModelBudget's side of bench/fit_params.py (`make bench-fit`): for each GGUF
# file given, the estimate ModelBudget.breakdown/3 makes for llama-server's
# load on the CPU, and its time per answer.
#
#   mix run bench/support/fit_params_budget.exs CALLS FILE...
#
# Prints one line per file, for the Python driver to read:
#
#   BUDGET <file> <term>=<bytes>... read_us=<median>,<min>,<max> breakdown_us=<median>,<min>,<max>
#
# read_us: ModelBudget.Model.read/1 of the file (the header), 1 call per sample
# (CALLS / 20 samples, at least 5); breakdown_us: breakdown/3 of the model
# read once, per-call over batches of 100 calls (CALLS / 100 batches, at
# least 5). Both after a warm-up. Not under bench/*.exs: `make bench` runs
# those, and this one needs its files.

defmodule Bench.FitParamsBudget do
  # llama-server's load in bench/fit_params.py: -c 4096 -np 1 --no-kv-unified
  # -fa on --cache-ram 0 -ngl 0, mmap, the default batch sizes, a native
  # AVX2 build (this machine's CPU has no AVX-512 nor AMX).
  @opts [
    n_ctx: 4096,
    n_parallel: 1,
    kv_unified: false,
    flash_attn: true,
    cache_ram: 0,
    n_gpu_layers: 0,
    n_batch: 2048,
    n_ubatch: 512,
    mmap: true
  ]
  @terms ~w(weights amx kleidiai repack kv_cache compute output prompt_cache overhead total)a
  @batch 100

  def opts(model) do
    with_profile = @opts ++ [cpu_buffers: :x86_avx2]

    try do
      ModelBudget.breakdown(model, with_profile, 0)
      with_profile
    rescue
      # :cpu_buffers is newer than :repack; the older name means the same here.
      ArgumentError -> @opts ++ [repack: true]
    end
  end

  def run(calls, paths) do
    {:ok, probe} = ModelBudget.Model.read(hd(paths))
    opts = opts(probe)
    IO.puts("OPTS #{inspect(opts)}")

    for path <- paths do
      {:ok, model} = ModelBudget.Model.read(path)
      b = ModelBudget.breakdown(model, opts, 0)

      read_us =
        samples(max(div(calls, 20), 5), 1, fn ->
          {:ok, _} = ModelBudget.Model.read(path)
        end)

      breakdown_us =
        samples(max(div(calls, @batch), 5), @batch, fn ->
          ModelBudget.breakdown(model, opts, 0)
        end)

      terms = Enum.map_join(@terms, " ", fn t -> "#{t}=#{Map.get(b.ram, t, 0)}" end)

      IO.puts(
        "BUDGET #{Path.basename(path, ".gguf")} #{terms} n_ctx=#{b.n_ctx} " <>
          "read_us=#{summary(read_us)} breakdown_us=#{summary(breakdown_us)}"
      )
    end
  end

  # Per-call microseconds of `fun`, one sample per batch of `per` calls.
  defp samples(n, per, fun) do
    for _ <- 1..per, do: fun.()

    for _ <- 1..n do
      t0 = System.monotonic_time(:nanosecond)
      for _ <- 1..per, do: fun.()
      (System.monotonic_time(:nanosecond) - t0) / per / 1000
    end
  end

  defp summary(samples) do
    sorted = Enum.sort(samples)
    median = Enum.at(sorted, div(length(sorted), 2))

    Enum.map_join(
      [median, hd(sorted), List.last(sorted)],
      ",",
      &:erlang.float_to_binary(&1, decimals: 2)
    )
  end
end

case System.argv() do
  [calls | [_ | _] = paths] -> Bench.FitParamsBudget.run(String.to_integer(calls), paths)
  _ -> raise "usage: mix run bench/support/fit_params_budget.exs CALLS FILE..."
end
