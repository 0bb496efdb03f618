# Header read time and peak memory of ModelBudget.Model.read/1.
#
#   mix run bench/model.exs
#
# 1. Reads the Llama-3.1-8B-like GGUF of the test suite (a sparse file: an
#    8.8 MB header with the 128,256-token tokenizer arrays, then a 4.8 GiB
#    hole) with ModelBudget.Model.read/1, and with the `gguf` Python package
#    (llama.cpp's own reader) on the same file in the same run. Both read a
#    warm page cache; Python's time is GGUFReader(path) alone, measured
#    inside the interpreter (no start-up, no import).
# 2. Peak memory: a small Rust runner (examples/model_header.rs) reads the
#    header of a 4.8 GiB and a 41.9 GiB sparse file, each in a fresh process,
#    and reports the process's peak resident set (VmHWM) before and after
#    the read. The BEAM's own figures (:erlang.memory) cannot see a NIF's
#    malloc, hence a separate process.

for file <- ~w(json sparse gguf_writer safetensors_writer model_fixtures) do
  Code.require_file("../test/support/#{file}.ex", __DIR__)
end

alias ModelBudget.Test.ModelFixtures

defmodule Bench.Model do
  def time_us(fun, runs) do
    fun.()

    samples =
      for _ <- 1..runs do
        {us, _} = :timer.tc(fun)
        us
      end
      |> Enum.sort()

    %{
      median: Enum.at(samples, div(runs, 2)),
      min: hd(samples),
      max: List.last(samples),
      runs: runs
    }
  end

  def fmt(%{median: med, min: lo, max: hi, runs: n}),
    do: "median #{med} us (min #{lo}, max #{hi}, #{n} runs)"
end

dir = Path.join(System.tmp_dir!(), "model_budget_bench_#{System.unique_integer([:positive])}")
File.mkdir_p!(dir)

try do
  small = ModelFixtures.llama_gguf!(Path.join(dir, "llama-3.1-8b.gguf"), :"8b")
  big = ModelFixtures.llama_gguf!(Path.join(dir, "llama-3.1-70b.gguf"), :"70b")
  {:ok, m} = ModelBudget.Model.read(small)
  header_mb = Float.round((m.file_bytes - m.weight_bytes) / 1.0e6, 1)

  IO.puts(
    "Llama-3.1-8B-like GGUF: #{m.file_bytes} bytes, #{header_mb} MB header, #{m.n_tensors} tensors"
  )

  ours = Bench.Model.time_us(fn -> {:ok, _} = ModelBudget.Model.read(small) end, 30)
  IO.puts("  ModelBudget.Model.read/1:   #{Bench.Model.fmt(ours)}")

  script = Path.join([__DIR__, "..", "scripts", "gguf_crosscheck.py"])

  case System.find_executable("python3") &&
         System.cmd("python3", [script, "time", small, "5"], stderr_to_stdout: true) do
    {out, 0} ->
      {py, _} = Code.eval_string(out)
      theirs = %{median: py["median_us"], min: py["min_us"], max: py["max_us"], runs: py["runs"]}
      IO.puts("  gguf.GGUFReader (Python):   #{Bench.Model.fmt(theirs)}")
      IO.puts("  speed-up (median/median):   #{Float.round(theirs.median / ours.median, 1)}x")

    other ->
      IO.puts("  gguf Python package unavailable (pip install gguf): #{inspect(other)}")
  end

  {_, 0} =
    System.cmd("cargo", ~w(build --release --quiet -p model_budget_core --example model_header),
      stderr_to_stdout: true
    )

  target = System.get_env("CARGO_TARGET_DIR") || Path.join(File.cwd!(), "target")
  runner = Path.join([target, "release", "examples", "model_header"])

  IO.puts("Peak resident memory of a fresh process reading one header (VmHWM):")

  for {label, path} <- [{"8B, Q4_K_M-like", small}, {"70B, Q4_K_M-like", big}] do
    peaks =
      for _ <- 1..5 do
        {out, 0} = System.cmd(runner, [path])
        fields = for kv <- String.split(out), into: %{}, do: List.to_tuple(String.split(kv, "="))

        {String.to_integer(fields["peak_after_kib"]),
         String.to_integer(fields["peak_before_kib"]), String.to_integer(fields["file_bytes"])}
      end

    {after_kib, before_kib, bytes} = Enum.sort(peaks) |> Enum.at(2)
    gib = Float.round(bytes / 2 ** 30, 1)

    IO.puts(
      "  #{label} (#{gib} GiB file): #{after_kib} KiB peak, #{after_kib - before_kib} KiB above the process's start (median of 5)"
    )
  end
after
  File.rm_rf!(dir)
end
