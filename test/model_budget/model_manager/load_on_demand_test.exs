defmodule ModelBudget.ModelManager.LoadOnDemandTest do
  # checkout/3 and with_model/4: a lease on a model, loading it if needed,
  # with no window for an eviction; the catalog; and GPUs that are not there.
  use ExUnit.Case, async: true

  alias ModelBudget.ModelManager
  alias ModelBudget.TestBackend

  @moduletag :capture_log

  @direct [mode: :direct, n_gpus: 0]

  defp start_manager(opts) do
    opts = Keyword.put_new(opts, :backend, TestBackend)
    start_supervised!(Supervisor.child_spec({ModelManager, opts}, id: make_ref()))
  end

  defp info!(manager, id) do
    {:ok, info} = ModelManager.info(manager, id)
    info
  end

  describe "checkout/3" do
    test "loads a model that is not loaded and returns a lease on it" do
      manager = start_manager(memory_budget: 1_000)
      assert {:ok, lease} = ModelManager.checkout(manager, :a, load: {{:test, 600}, @direct})
      assert %{status: :ready, leases: 1, loads: 1} = info!(manager, :a)

      # Loaded already: just leased.
      assert {:ok, lease2} = ModelManager.checkout(manager, :a, load: {{:test, 600}, @direct})
      assert %{leases: 2, loads: 1} = info!(manager, :a)
      :ok = ModelManager.checkin(manager, lease)
      :ok = ModelManager.checkin(manager, lease2)
      assert info!(manager, :a).leases == 0
    end

    test "many callers at once: one load, a lease each" do
      manager = start_manager(memory_budget: 10_000)
      test = self()
      source = {{:test, 100, :stall}, [notify: test] ++ @direct}

      callers =
        for _ <- 1..20 do
          Task.async(fn ->
            {:ok, lease} = ModelManager.checkout(manager, :m, load: source)
            send(test, {:leased, self()})
            # Hold it until told.
            receive do
              :release -> ModelManager.checkin(manager, lease)
            end
          end)
        end

      # Exactly one load reaches the backend; it stalls until released.
      assert_receive {TestBackend, :stalled, task}, 2_000
      refute_receive {TestBackend, :stalled, _}, 50
      send(task, :continue)

      for _ <- callers, do: assert_receive({:leased, _}, 2_000)
      assert %{leases: 20, loads: 1, status: :ready} = info!(manager, :m)

      for c <- callers, do: send(c.pid, :release)
      Enum.each(callers, &Task.await/1)
      assert info!(manager, :m).leases == 0
    end

    test "the model it loads is leased before any other load can evict it" do
      # Room for one of :a and :b: each load evicts the other unless it is
      # leased. checkout/3 must always come back with a lease on :a.
      manager = start_manager(memory_budget: 1_000)

      for _ <- 1..40 do
        other = Task.async(fn -> ModelManager.load(manager, :b, {:test, 600}, @direct) end)
        assert {:ok, lease} = ModelManager.checkout(manager, :a, load: {{:test, 600}, @direct})
        assert info!(manager, :a).status == :ready
        Task.await(other)
        # Held: a load of :b now cannot evict :a.
        assert {:error, {:insufficient_memory, _}} =
                 ModelManager.load(manager, :b, {:test, 600}, @direct)

        :ok = ModelManager.checkin(manager, lease)
        for id <- [:a, :b], do: ModelManager.unload(manager, id)
      end

      assert ModelManager.usage(manager) == %{ram: 0, vram: %{}}
    end

    test "waits for a load in progress up to :timeout" do
      manager = start_manager(memory_budget: 1_000)
      test = self()

      slow =
        Task.async(fn ->
          ModelManager.load(manager, :a, {:test, 100, :stall}, [notify: test] ++ @direct)
        end)

      assert_receive {TestBackend, :stalled, task}, 2_000
      source = {{:test, 100}, @direct}
      assert ModelManager.checkout(manager, :a, load: source, timeout: 30) == {:error, :timeout}

      waiter = Task.async(fn -> ModelManager.checkout(manager, :a, load: source) end)
      send(task, :continue)
      assert {:ok, _} = Task.await(slow)
      assert {:ok, _lease} = Task.await(waiter)
      assert info!(manager, :a).loads == 1
    end

    test "a load that fails answers as load/4 does and leaves nothing" do
      manager = start_manager(memory_budget: 1_000)

      assert {:error, {:load_failed, :told_to_fail}} =
               ModelManager.checkout(manager, :a, load: {{:test, 100, :fail}, @direct})

      assert {:error, {:insufficient_memory, _}} =
               ModelManager.checkout(manager, :a, load: {{:test, 5_000}, @direct})

      assert ModelManager.info(manager, :a) == {:error, :not_loaded}
      assert ModelManager.usage(manager) == %{ram: 0, vram: %{}}
    end

    test "bad options raise ArgumentError naming them" do
      manager = start_manager([])

      assert_raise ArgumentError,
                   ~r/invalid option :load: expected {source, opts}, got: :nope/,
                   fn ->
                     ModelManager.checkout(manager, :a, load: :nope)
                   end

      assert_raise ArgumentError, ~r/invalid option :timeout/, fn ->
        ModelManager.checkout(manager, :a, timeout: -1)
      end

      assert_raise ArgumentError, ~r/invalid checkout options: expected a keyword list/, fn ->
        ModelManager.checkout(manager, :a, :soon)
      end
    end
  end

  describe "the catalog" do
    test "checkout/3 loads a catalog model by its id, with its options" do
      manager =
        start_manager(
          memory_budget: 1_000,
          catalog: [{:small, {:test, 10}, [keep_alive: 60_000] ++ @direct}, {:other, {:test, 20}}]
        )

      assert ModelManager.checkout(manager, :small) == {:error, :not_loaded}
      assert {:ok, lease} = ModelManager.checkout(manager, :small, [])
      assert %{keep_alive: 60_000, leases: 1} = info!(manager, :small)
      :ok = ModelManager.checkin(manager, lease)
      assert ModelManager.checkout(manager, :unknown, []) == {:error, :not_loaded}
      # :load wins over the catalog.
      assert {:ok, _} = ModelManager.checkout(manager, :other, load: {{:test, 30}, @direct})
      assert info!(manager, :other).bytes == 30
    end

    test "with_model/4 loads from it and runs the function under a lease" do
      manager = start_manager(catalog: [{:a, {:test, 10}, @direct}])
      assert ModelManager.with_model(manager, :a, [], & &1.leases) == {:ok, 1}
      assert info!(manager, :a).leases == 0
    end

    test "an id given twice, or an entry of the wrong shape, is refused at start" do
      assert_raise ArgumentError, ~r/invalid option :catalog: id :a is given twice/, fn ->
        ModelManager.start_link(catalog: [{:a, {:test, 1}}, {:a, {:test, 2}}])
      end

      assert_raise ArgumentError, ~r/invalid option :catalog: expected entries/, fn ->
        ModelManager.start_link(catalog: [:a])
      end
    end
  end

  describe "GPUs that are not there" do
    test "a budget with :auto VRAM has room only on the GPUs found" do
      found = length(ModelBudget.devices())
      manager = start_manager(memory_budget: :auto, backend: ModelBudget.Backend.Reservation)
      asked = found + 1

      error =
        assert_raise ArgumentError, fn ->
          ModelManager.load(manager, :big, {:bytes, 10 ** 12}, mode: :direct, n_gpus: asked)
        end

      assert error.message =~
               "invalid option :n_gpus: #{asked} GPUs asked for, but this machine has #{found}"

      # The same for a :main_gpu or a :tensor_split beyond them.
      assert_raise ArgumentError,
                   ~r/invalid option :main_gpu: GPU #{found + 1} asked for, but this machine has #{found}/,
                   fn ->
                     ModelManager.load(manager, :big, {:bytes, 10},
                       mode: :direct,
                       main_gpu: found + 1
                     )
                   end

      split = List.duplicate(1, found + 1)

      assert_raise ArgumentError,
                   ~r/invalid option :tensor_split: #{found + 1} GPUs asked for/,
                   fn ->
                     ModelManager.load(manager, :big, {:bytes, 10},
                       mode: :direct,
                       tensor_split: split
                     )
                   end

      assert ModelManager.usage(manager) == %{ram: 0, vram: %{}}
    end

    test "a per-device budget that names its GPUs plans for them, whatever this machine has" do
      manager =
        start_manager(
          memory_budget: %{ram: 2 ** 30, vram: [1_000, 1_000]},
          backend: ModelBudget.Backend.Reservation
        )

      assert {:ok, info} =
               ModelManager.load(manager, :m, {:bytes, 1_500},
                 mode: :direct,
                 split_mode: :layer,
                 n_gpus: 2
               )

      assert info.placement == %{ram: 0, vram: %{0 => 750, 1 => 750}}
    end
  end
end
