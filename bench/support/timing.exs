defmodule Bench.Timing do
  @moduledoc """
  Small timing harness (no hex packages here, so no Benchee): runs a function
  in batches and reports per-call nanoseconds as the median over batches with
  the 10th-90th percentile spread.
  """

  @doc "Per-call ns of `fun`: %{median:, p10:, p90:} over `batches` batches of `per_batch` calls."
  def per_call(fun, batches \\ 51, per_batch \\ 2_000) do
    # Warm up: JIT, caches, first-call probes.
    for _ <- 1..per_batch, do: fun.()

    samples =
      for _ <- 1..batches do
        t0 = System.monotonic_time(:nanosecond)
        run(fun, per_batch)
        (System.monotonic_time(:nanosecond) - t0) / per_batch
      end

    summary(samples)
  end

  @doc """
  Per-call ns of each function in `funs`, timed in turns: batch `i` of every
  function runs before batch `i + 1` of any. On a shared machine the load
  drifts; in turns, every function sees the same drift, so ratios between
  them hold better than with one function timed after another.
  """
  def per_call_interleaved(funs, batches \\ 51, per_batch \\ 2_000) do
    for fun <- funs, _ <- 1..per_batch, do: fun.()

    funs
    |> Enum.map(fn _ -> [] end)
    |> then(fn empty ->
      Enum.reduce(1..batches, empty, fn _, acc ->
        Enum.zip_with(funs, acc, fn fun, samples ->
          t0 = System.monotonic_time(:nanosecond)
          run(fun, per_batch)
          [(System.monotonic_time(:nanosecond) - t0) / per_batch | samples]
        end)
      end)
    end)
    |> Enum.map(&summary/1)
  end

  @doc "Summary of a list of samples: median and the 10th/90th percentiles."
  def summary(samples) do
    sorted = Enum.sort(samples)
    %{median: pick(sorted, 0.5), p10: pick(sorted, 0.1), p90: pick(sorted, 0.9)}
  end

  defp pick(sorted, q), do: Enum.at(sorted, round(q * (length(sorted) - 1)))

  defp run(_fun, 0), do: :ok

  defp run(fun, n) do
    fun.()
    run(fun, n - 1)
  end

  @doc "One line: name, median, spread and, given a floor, the ratio to it."
  def line(name, %{median: m, p10: lo, p90: hi}, floor \\ nil) do
    ratio = if floor, do: "  #{fmt(m / floor.median, 2)}x floor", else: ""

    String.pad_trailing(name, 46) <>
      String.pad_leading(fmt(m, 0), 9) <>
      " ns  (p10 #{fmt(lo, 0)}, p90 #{fmt(hi, 0)})" <> ratio
  end

  @doc "The ratio of two medians, as text with two decimals."
  def ratio(%{median: a}, %{median: b}), do: fmt(a / b, 2)

  defp fmt(x, decimals), do: :erlang.float_to_binary(x * 1.0, decimals: decimals)

  @doc "The machine a benchmark ran on, for RESULTS.md."
  def machine do
    cpu =
      case File.read("/proc/cpuinfo") do
        {:ok, text} ->
          text
          |> String.split("\n")
          |> Enum.find("", &String.starts_with?(&1, "model name"))
          |> String.replace(~r/^model name\s*:\s*/, "")

        _ ->
          "unknown CPU"
      end

    "#{cpu}, #{System.schedulers_online()} schedulers, OTP #{System.otp_release()}, Elixir #{System.version()}"
  end
end
