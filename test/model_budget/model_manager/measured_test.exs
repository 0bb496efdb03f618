defmodule ModelBudget.ModelManager.MeasuredTest do
  use ExUnit.Case, async: true

  import ExUnit.CaptureLog

  alias ModelBudget.ModelManager

  # A backend that reports, as measured, what its `:measured` load option
  # says (a placement-shaped map), or nothing when the option is absent. Its
  # handle is a holder process, monitored by the manager.
  defmodule Measuring do
    @behaviour ModelBudget.Backend

    @impl true
    def footprint({:bytes, n}, _opts), do: {:ok, n}

    @impl true
    def load(_source, _placement, opts) do
      holder = spawn(fn -> receive(do: (:stop -> :ok)) end)
      {:ok, %{pid: holder, measured: Keyword.get(opts, :measured)}}
    end

    @impl true
    def unload(%{pid: holder}), do: send(holder, :stop) && :ok

    @impl true
    def measured(%{measured: nil}), do: {:error, :not_measured}
    def measured(%{measured: measured}), do: {:ok, measured}
  end

  defp manager!(opts \\ []) do
    opts = Keyword.merge([backend: Measuring, memory_budget: 10_000], opts)
    start_supervised!({ModelManager, opts})
  end

  @load [mode: :direct, n_gpus: 0]

  describe "measured memory" do
    test "info/2 shows what the backend measured beside the placement" do
      manager = manager!()
      measured = %{ram: 600, vram: %{}, rss: 4096}
      {:ok, info} = ModelManager.load(manager, :a, {:bytes, 800}, [measured: measured] ++ @load)

      assert info.measured == measured
      assert info.placement == %{ram: 800, vram: %{}}
      assert {:ok, %{measured: ^measured}} = ModelManager.info(manager, :a)
      # Below the reservation: nothing changes.
      assert ModelManager.usage(manager) == %{ram: 800, vram: %{}}
      assert ModelManager.stats(manager).max_estimate_error == -200
    end

    test "a backend that measures nothing shows :measured nil" do
      manager = manager!()
      {:ok, info} = ModelManager.load(manager, :a, {:bytes, 800}, @load)
      assert info.measured == nil
      assert ModelManager.stats(manager).max_estimate_error == 0

      manager = start_supervised!({ModelManager, memory_budget: 10_000}, id: :reservation)
      {:ok, info} = ModelManager.load(manager, :a, {:bytes, 800}, @load)
      assert info.measured == nil
    end

    test "within the calibration bounds a raise is counted, not logged" do
      manager = manager!(memory_budget: %{ram: 10_000_000})
      # 1% above the reservation: within the estimate's 2%.
      measured = %{ram: 1_010_000, vram: %{}}

      log =
        capture_log(fn ->
          {:ok, _} =
            ModelManager.load(manager, :a, {:bytes, 1_000_000},
              mode: :direct,
              n_gpus: 0,
              measured: measured
            )
        end)

      # Not `log == ""`: the capture holds what every process logs meanwhile
      # (the async tests' managers log their evictions).
      refute log =~ "holds more than was reserved"
      assert {:ok, %{placement: %{ram: 1_010_000}}} = ModelManager.info(manager, :a)
      assert %{raised: 1, max_estimate_error: 10_000} = ModelManager.stats(manager)
    end

    test "more measured than reserved raises the reservation, with a warning" do
      manager = manager!(memory_budget: %{ram: 100_000, vram: [100_000, 100_000]})
      measured = %{ram: 15_000, vram: %{1 => 15_000}}

      log =
        capture_log(fn ->
          {:ok, info} =
            ModelManager.load(manager, :a, {:bytes, 10_000},
              mode: :direct,
              n_gpus: 2,
              split_mode: :layer,
              measured: measured
            )

          send(self(), {:info, info})
        end)

      assert_received {:info, info}
      # Placed 5000 + 5000 on the GPUs, none in RAM; RAM and GPU 1 grow.
      assert info.placement == %{ram: 15_000, vram: %{0 => 5_000, 1 => 15_000}}
      assert ModelManager.usage(manager) == info.placement
      assert log =~ "measured 15000 bytes in :ram, 15000 more than the 0 reserved"
      assert log =~ "measured 15000 bytes on {:gpu, 1}, 10000 more than the 5000 reserved"
      assert ModelManager.stats(manager).max_estimate_error == 15_000

      # The raised reservation is what an unload releases.
      assert :ok = ModelManager.unload(manager, :a)
      assert ModelManager.usage(manager) == %{ram: 0, vram: %{}}
    end

    test "the largest error is kept, by magnitude, across loads" do
      manager = manager!()

      {:ok, _} =
        ModelManager.load(manager, :a, {:bytes, 800}, [measured: %{ram: 900, vram: %{}}] ++ @load)

      {:ok, _} =
        ModelManager.load(manager, :b, {:bytes, 800}, [measured: %{ram: 300, vram: %{}}] ++ @load)

      {:ok, _} =
        ModelManager.load(manager, :c, {:bytes, 800}, [measured: %{ram: 850, vram: %{}}] ++ @load)

      assert ModelManager.stats(manager).max_estimate_error == -500
    end
  end
end
