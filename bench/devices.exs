# Cost of the device probes: the one-off first call (which starts NVML and
# reads the machine's memory), then many calls after it.
#
#     mix run bench/devices.exs
#
# Prints median, p10, p90 and max per call, in microseconds.

defmodule Bench.Devices do
  @runs 20_000

  def run do
    {first_us, budget} = :timer.tc(fn -> ModelBudget.resolve(:auto) end)

    IO.puts(
      "machine: #{:erlang.system_info(:system_architecture)}, #{System.schedulers_online()} schedulers"
    )

    IO.puts("gpu_status: #{inspect(ModelBudget.gpu_status())}")

    IO.puts(
      "first resolve(:auto) (starts NVML, reads memory): #{first_us} µs -> #{inspect(budget)}"
    )

    measure("resolve(:auto)", fn -> ModelBudget.resolve(:auto) end)
    measure("devices()", &ModelBudget.devices/0)
    measure("gpu_status()", &ModelBudget.gpu_status/0)
    measure("system_memory()", &ModelBudget.system_memory/0)

    measure("resolve(map, []) (no probe, for comparison)", fn ->
      ModelBudget.resolve(%{ram: 1, vram: [1]}, [])
    end)

    # A restart of NVML costs what the first call's GPU part cost.
    measure("refresh_devices() (restarts NVML)", &ModelBudget.refresh_devices/0, 20)
  end

  defp measure(label, fun, runs \\ @runs) do
    # Warm the code path before timing it.
    fun.()

    times =
      for _ <- 1..runs do
        start = System.monotonic_time(:nanosecond)
        fun.()
        System.monotonic_time(:nanosecond) - start
      end
      |> Enum.sort()
      |> List.to_tuple()

    at = fn q -> elem(times, div((tuple_size(times) - 1) * q, 100)) / 1000 end

    IO.puts(
      :io_lib.format("~-46s x~-6B median ~10.2f us  p10 ~10.2f  p90 ~10.2f  max ~10.2f", [
        label,
        runs,
        at.(50),
        at.(10),
        at.(90),
        at.(100)
      ])
    )
  end
end

Bench.Devices.run()
