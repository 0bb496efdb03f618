defmodule ModelBudget.ModelManager.ServingTest do
  # Leases, keep-alive and loads that wait: what a model server leans on.
  use ExUnit.Case, async: true

  import ModelBudget.Test.Eventually

  import ExUnit.CaptureLog

  alias ModelBudget.ModelManager
  alias ModelBudget.TestBackend
  alias ModelBudget.TestClock

  @moduletag :capture_log

  @direct [mode: :direct, n_gpus: 0]
  @wait 2_000

  defp start_manager(opts) do
    opts = Keyword.put_new(opts, :backend, TestBackend)
    start_supervised!(Supervisor.child_spec({ModelManager, opts}, id: make_ref()))
  end

  defp load(manager, id, bytes, opts \\ []),
    do: ModelManager.load(manager, id, {:test, bytes}, opts ++ @direct)

  defp info!(manager, id) do
    {:ok, info} = ModelManager.info(manager, id)
    info
  end

  # The loads waiting in the manager's queue, by id.
  defp waiting(manager), do: Enum.map(:sys.get_state(manager).ledger.queue, & &1.id)

  # A process that takes a lease on `id` and holds it until killed. Only
  # the outcome comes back: a copy of the lease here would keep it alive.
  defp holder(manager, id) do
    test = self()

    pid =
      spawn(fn ->
        {:ok, lease} = ModelManager.checkout(manager, id)
        send(test, {:leased, self()})
        Process.sleep(:infinity)
        ModelManager.checkin(manager, lease)
      end)

    assert_receive {:leased, ^pid}, @wait
    pid
  end

  # Kills `pid` and waits until its exit is done (its heap, leases
  # included, is freed before its monitors fire).
  defp kill(pid) do
    ref = Process.monitor(pid)
    Process.exit(pid, :kill)
    assert_receive {:DOWN, ^ref, :process, ^pid, :killed}, @wait
  end

  describe "checkout/2 and checkin/2" do
    test "a leased model survives an eviction that would take it; the next idle one goes" do
      manager = start_manager(memory_budget: 1_000, evict_when: [])
      for id <- [:a, :b, :c], do: {:ok, _} = load(manager, id, 300)
      assert {:ok, lease} = ModelManager.checkout(manager, :a)
      assert %{leases: 1, status: :ready} = info!(manager, :a)

      assert {:ok, %{evicted: [:b]}} = load(manager, :d, 300)
      assert %{leases: 1, status: :ready} = info!(manager, :a)

      # Checked in, :a is the most recently used: :c goes before it.
      assert ModelManager.checkin(manager, lease) == :ok
      assert %{leases: 0} = info!(manager, :a)
      assert {:ok, %{evicted: [:c]}} = load(manager, :e, 300)
    end

    test "a load that only a leased model could make room for is refused" do
      manager = start_manager(memory_budget: 1_000, evict_when: [])
      {:ok, _} = load(manager, :a, 600)
      {:ok, lease} = ModelManager.checkout(manager, :a)

      assert load(manager, :b, 600) ==
               {:error, {:insufficient_memory, [device: :total, required: 600, available: 400]}}

      assert ModelManager.checkin(manager, lease) == :ok
    end

    test "answers :not_loaded while the model loads, unloads, or is unknown" do
      manager = start_manager(memory_budget: 1_000)
      test = self()

      loading =
        Task.async(fn ->
          ModelManager.load(manager, :a, {:test, 10, :stall}, [notify: test] ++ @direct)
        end)

      assert_receive {TestBackend, :stalled, task}, @wait
      assert ModelManager.checkout(manager, :a) == {:error, :not_loaded}
      send(task, :continue)
      assert {:ok, _} = Task.await(loading)

      {:ok, _} =
        ModelManager.load(manager, :b, {:test, 10, :slow_unload}, [notify: test] ++ @direct)

      unloading = Task.async(fn -> ModelManager.unload(manager, :b) end)
      assert_receive {TestBackend, :unloading, holder}, @wait
      assert ModelManager.checkout(manager, :b) == {:error, :not_loaded}
      send(holder, :continue)
      assert Task.await(unloading) == :ok

      assert ModelManager.checkout(manager, :nope) == {:error, :not_loaded}
    end

    test "never send the manager a message: they work while it is suspended" do
      manager = start_manager([])
      {:ok, _} = load(manager, :a, 10)
      :sys.suspend(manager)

      try do
        assert {:ok, lease} = ModelManager.checkout(manager, :a)
        assert ModelManager.touch(manager, :a) == :ok
        assert %{leases: 1} = info!(manager, :a)
        assert ModelManager.checkin(manager, lease) == :ok
        assert %{leases: 0} = info!(manager, :a)
      after
        :sys.resume(manager)
      end
    end

    test "a process's checkouts follow its models through unloads, reloads and turns" do
      manager = start_manager([])
      {:ok, _} = load(manager, :a, 10)
      {:ok, _} = load(manager, :b, 10)
      {:ok, lease} = ModelManager.checkout(manager, :a)
      :ok = ModelManager.checkin(manager, lease)
      :ok = ModelManager.unload(manager, :a)
      # The gate this process used last closed with its model.
      assert ModelManager.checkout(manager, :a) == {:error, :not_loaded}

      # A new load of the id has a new gate: the lease is on it.
      {:ok, _} = load(manager, :a, 10)
      assert {:ok, lease} = ModelManager.checkout(manager, :a)
      assert %{leases: 1} = info!(manager, :a)
      assert ModelManager.unload(manager, :a, timeout: 0) == {:error, :busy}

      # From one model to another and back.
      assert {:ok, lease_b} = ModelManager.checkout(manager, :b)
      assert {:ok, lease_a} = ModelManager.checkout(manager, :a)
      assert %{leases: 2} = info!(manager, :a)
      assert %{leases: 1} = info!(manager, :b)
      for lease <- [lease, lease_a, lease_b], do: :ok = ModelManager.checkin(manager, lease)
      assert %{leases: 0} = info!(manager, :a)
      assert %{leases: 0} = info!(manager, :b)
    end

    test "a second checkin of the same lease does nothing" do
      manager = start_manager([])
      {:ok, _} = load(manager, :a, 10)
      {:ok, first} = ModelManager.checkout(manager, :a)
      {:ok, second} = ModelManager.checkout(manager, :a)
      assert ModelManager.checkin(manager, first) == :ok
      assert ModelManager.checkin(manager, first) == :ok
      assert %{leases: 1} = info!(manager, :a)
      assert ModelManager.checkin(manager, second) == :ok
    end

    test "a lease dropped without a checkin lasts until its process exits, copies or not" do
      manager = start_manager([])
      {:ok, _} = load(manager, :a, 10)
      test = self()

      taker =
        spawn(fn ->
          {:ok, lease} = ModelManager.checkout(manager, :a)
          # A copy lives on in the test process; this one is dropped.
          send(test, {:lease, lease})
          :erlang.garbage_collect()
          send(test, :collected)
          Process.sleep(:infinity)
        end)

      assert_receive {:lease, copy}, @wait
      assert_receive :collected, @wait
      assert %{leases: 1} = info!(manager, :a)

      Process.exit(taker, :kill)
      eventually(fn -> info!(manager, :a).leases == 0 end)
      # The copy's checkin, after the lease ended with its process, does nothing.
      assert ModelManager.checkin(manager, copy) == :ok
      assert %{leases: 0} = info!(manager, :a)
      assert ModelManager.unload(manager, :a, timeout: 0) == :ok
    end

    test "a lease may be checked in by another process" do
      manager = start_manager([])
      {:ok, _} = load(manager, :a, 10)
      {:ok, lease} = ModelManager.checkout(manager, :a)
      assert Task.await(Task.async(fn -> ModelManager.checkin(manager, lease) end)) == :ok
      assert %{leases: 0} = info!(manager, :a)
    end

    test "a lease holder killed with :kill frees its lease, before or after it is watched" do
      manager = start_manager(memory_budget: 1_000)
      {:ok, _} = load(manager, :a, 10)
      {:ok, _} = load(manager, :b, 10)

      # Killed before the unload: its lease ends with its heap, whenever the
      # runtime frees it; the unload waits for that.
      Process.exit(holder(manager, :a), :kill)
      assert ModelManager.unload(manager, :a) == :ok

      # Killed while the unload waits for it: its lease's end tells the manager.
      pid = holder(manager, :b)
      unloading = Task.async(fn -> ModelManager.unload(manager, :b) end)
      eventually(fn -> info!(manager, :b).status == :unloading end)
      assert Task.yield(unloading, 50) == nil
      kill(pid)
      assert Task.await(unloading) == :ok
      assert ModelManager.list(manager) == []
    end

    test "a dead holder's lease does not keep its model from being evicted" do
      manager = start_manager(memory_budget: 1_000, evict_when: [])
      {:ok, _} = load(manager, :a, 600)
      kill(holder(manager, :a))
      assert {:ok, %{evicted: [:a]}} = load(manager, :b, 600)
    end

    test "checkin/2 of a lease from a manager that is gone returns :ok" do
      manager = start_manager([])
      {:ok, _} = load(manager, :a, 10)
      {:ok, lease} = ModelManager.checkout(manager, :a)
      Process.unlink(manager)
      ref = Process.monitor(manager)
      Process.exit(manager, :kill)
      assert_receive {:DOWN, ^ref, :process, _, :killed}, @wait
      assert ModelManager.checkin(manager, lease) == :ok
      # A checkout of a manager that is gone exits like a call to it.
      assert {:noproc, {ModelManager, :checkout, [^manager, :a]}} =
               catch_exit(ModelManager.checkout(manager, :a))
    end

    test "checkin/2 raises ArgumentError for something that is not a lease" do
      manager = start_manager([])

      assert_raise ArgumentError,
                   "invalid lease: expected a lease from checkout/2, got: :a",
                   fn ->
                     ModelManager.checkin(manager, :a)
                   end
    end
  end

  describe "with_model/3" do
    test "runs fun under a lease and returns its result" do
      manager = start_manager([])
      {:ok, _} = load(manager, :a, 10)
      assert {:ok, {:a, 1}} = ModelManager.with_model(manager, :a, &{&1.id, &1.leases})
      assert %{leases: 0} = info!(manager, :a)

      assert ModelManager.with_model(manager, :b, fn _ -> flunk("called") end) ==
               {:error, :not_loaded}
    end

    test "checks in when fun raises, then raises" do
      manager = start_manager([])
      {:ok, _} = load(manager, :a, 10)

      assert_raise RuntimeError, "boom", fn ->
        ModelManager.with_model(manager, :a, fn _ -> raise "boom" end)
      end

      assert %{leases: 0} = info!(manager, :a)
      assert ModelManager.unload(manager, :a, timeout: 0) == :ok
    end
  end

  describe "unload/3 and leases" do
    test "unload/2 waits for checkin; checkouts fail meanwhile" do
      manager = start_manager([])
      {:ok, _} = load(manager, :a, 10)
      {:ok, lease} = ModelManager.checkout(manager, :a)

      unloading = Task.async(fn -> ModelManager.unload(manager, :a) end)
      eventually(fn -> info!(manager, :a).status == :unloading end)
      assert ModelManager.checkout(manager, :a) == {:error, :not_loaded}
      assert Task.yield(unloading, 50) == nil

      assert ModelManager.checkin(manager, lease) == :ok
      assert Task.await(unloading) == :ok
      assert ModelManager.info(manager, :a) == {:error, :not_loaded}
    end

    test "timeout: gives up with :busy and the model serves again" do
      manager = start_manager([])
      {:ok, _} = load(manager, :a, 10)
      {:ok, lease} = ModelManager.checkout(manager, :a)

      assert ModelManager.unload(manager, :a, timeout: 20) == {:error, :busy}
      assert %{status: :ready, leases: 1} = info!(manager, :a)
      assert {:ok, other} = ModelManager.checkout(manager, :a)

      for l <- [lease, other], do: :ok = ModelManager.checkin(manager, l)
      assert ModelManager.unload(manager, :a, timeout: 0) == :ok
    end

    test "force: true unloads at once; the old lease's checkin then does nothing" do
      manager = start_manager([])
      {:ok, %{handle: holder}} = load(manager, :a, 10)
      {:ok, lease} = ModelManager.checkout(manager, :a)

      assert ModelManager.unload(manager, :a, force: true) == :ok
      refute Process.alive?(holder)

      # A new load of the same id: the stale lease cannot end its leases.
      {:ok, _} = load(manager, :a, 10)
      {:ok, fresh} = ModelManager.checkout(manager, :a)
      assert ModelManager.checkin(manager, lease) == :ok
      assert %{leases: 1} = info!(manager, :a)
      assert ModelManager.checkin(manager, fresh) == :ok
    end

    test "raises ArgumentError for bad options" do
      manager = start_manager([])

      assert_raise ArgumentError,
                   ~r/invalid option :timeout: expected a non-negative integer or :infinity, got: -1/,
                   fn ->
                     ModelManager.unload(manager, :a, timeout: -1)
                   end

      assert_raise ArgumentError, ~r/unknown keys \[:forse\]/, fn ->
        ModelManager.unload(manager, :a, forse: true)
      end
    end
  end

  describe "keep-alive" do
    test "a model without a lease for :keep_alive ms is unloaded, logged and counted" do
      {clock, advance} = TestClock.new()
      manager = start_manager(clock: clock)
      {:ok, %{handle: holder}} = load(manager, :a, 10, keep_alive: 1_000)
      {:ok, _} = load(manager, :forever, 10)

      advance.(999)
      :ok = ModelManager.sweep(manager)
      assert %{status: :ready} = info!(manager, :a)

      # A lease stops the clock; its checkin starts it again.
      {:ok, lease} = ModelManager.checkout(manager, :a)
      advance.(5_000)
      :ok = ModelManager.sweep(manager)
      assert %{status: :ready} = info!(manager, :a)
      :ok = ModelManager.checkin(manager, lease)
      advance.(999)
      :ok = ModelManager.sweep(manager)
      assert %{status: :ready} = info!(manager, :a)

      log =
        capture_log(fn ->
          advance.(1)
          :ok = ModelManager.sweep(manager)
          eventually(fn -> ModelManager.info(manager, :a) == {:error, :not_loaded} end)
        end)

      assert log =~ "unloading :a: its keep-alive of 1000 ms ran out (no lease for 1000 ms)"
      assert TestBackend.unloads(holder) == 1
      assert %{expired: 1} = ModelManager.stats(manager)
      assert %{status: :ready, keep_alive: :infinity} = info!(manager, :forever)
    end

    test "info/2 says how long a model has been idle and when its keep-alive runs out" do
      {clock, advance} = TestClock.new()
      manager = start_manager(memory_budget: 1_000, clock: clock)
      {:ok, _} = load(manager, :a, 10, keep_alive: 1_000)
      {:ok, _} = load(manager, :b, 10)
      advance.(300)
      assert %{idle_ms: 300, expires_in_ms: 700} = info!(manager, :a)
      assert %{idle_ms: 300, expires_in_ms: :infinity} = info!(manager, :b)

      # A lease stops the countdown; its checkin starts it again.
      {:ok, lease} = ModelManager.checkout(manager, :a)
      assert %{expires_in_ms: :infinity} = info!(manager, :a)
      advance.(100)
      :ok = ModelManager.checkin(manager, lease)
      assert %{idle_ms: 0, expires_in_ms: 1_000} = info!(manager, :a)
      advance.(5_000)
      assert %{idle_ms: 5_000, expires_in_ms: 0} = info!(manager, :a)
    end

    test "rejects a bad :keep_alive" do
      manager = start_manager([])

      assert_raise ArgumentError,
                   ~r/invalid option :keep_alive: expected a non-negative integer or :infinity, got: :soon/,
                   fn ->
                     load(manager, :a, 10, keep_alive: :soon)
                   end
    end
  end

  describe "loads that wait" do
    test "are admitted in order as room frees, and not overtaken" do
      manager = start_manager(memory_budget: 1_000, evict_when: [])
      {:ok, _} = load(manager, :a, 600)
      {:ok, lease} = ModelManager.checkout(manager, :a)

      first = Task.async(fn -> load(manager, :b, 600, timeout: :infinity) end)
      eventually(fn -> waiting(manager) == [:b] end)
      # 300 would fit in the 400 left, but :b waits first and needs them.
      second = Task.async(fn -> load(manager, :c, 300, timeout: :infinity) end)
      eventually(fn -> waiting(manager) == [:b, :c] end)

      assert load(manager, :d, 300) ==
               {:error, {:insufficient_memory, [device: :total, required: 300, available: 0]}}

      assert Task.yield(second, 50) == nil

      :ok = ModelManager.checkin(manager, lease)
      assert {:ok, %{evicted: [:a], status: :ready}} = Task.await(first)
      assert {:ok, %{evicted: [], status: :ready}} = Task.await(second)
      assert waiting(manager) == []
      assert ModelManager.usage(manager) == %{ram: 900, vram: %{}}
    end

    test "a keep-alive that runs out, or an unload, makes room" do
      {clock, advance} = TestClock.new()

      manager =
        start_manager(memory_budget: 1_000, evict_when: [], clock: clock, min_idle_ms: :infinity)

      {:ok, _} = load(manager, :a, 600, keep_alive: 100)
      {:ok, _} = load(manager, :b, 300)

      waiting_load = Task.async(fn -> load(manager, :c, 600, timeout: :infinity) end)
      eventually(fn -> waiting(manager) == [:c] end)
      advance.(100)
      :ok = ModelManager.sweep(manager)
      assert {:ok, %{status: :ready}} = Task.await(waiting_load)

      waiting_load = Task.async(fn -> load(manager, :d, 300, timeout: :infinity) end)
      eventually(fn -> waiting(manager) == [:d] end)
      assert ModelManager.unload(manager, :b) == :ok
      assert {:ok, %{status: :ready}} = Task.await(waiting_load)
    end

    test "at the deadline, get the refusal a load without timeout gets" do
      manager = start_manager(memory_budget: 1_000, evict_when: [])
      {:ok, _} = load(manager, :a, 600)
      {:ok, lease} = ModelManager.checkout(manager, :a)

      assert load(manager, :b, 700, timeout: 30) ==
               {:error, {:insufficient_memory, [device: :total, required: 700, available: 400]}}

      assert waiting(manager) == []
      assert %{refused: 1} = ModelManager.stats(manager)
      assert ModelManager.info(manager, :b) == {:error, :not_loaded}
      :ok = ModelManager.checkin(manager, lease)
    end

    test "are refused at once when they would not fit with every unpinned model gone" do
      manager = start_manager(memory_budget: 1_000, evict_when: [])
      {:ok, _} = load(manager, :pinned, 600, pinned: true)
      {:ok, _} = load(manager, :other, 300)
      {:ok, lease} = ModelManager.checkout(manager, :other)

      # Would wait forever otherwise.
      assert load(manager, :b, 500, timeout: :infinity) ==
               {:error, {:insufficient_memory, [device: :total, required: 500, available: 100]}}

      assert load(manager, :c, 1_001, timeout: :infinity) ==
               {:error, {:insufficient_memory, [device: :total, required: 1001, available: 100]}}

      assert waiting(manager) == []
      :ok = ModelManager.checkin(manager, lease)
    end

    test "a waiting caller that dies leaves the queue" do
      manager = start_manager(memory_budget: 1_000, evict_when: [])
      {:ok, _} = load(manager, :a, 600)
      {:ok, lease} = ModelManager.checkout(manager, :a)

      caller = spawn(fn -> load(manager, :b, 600, timeout: :infinity) end)
      eventually(fn -> waiting(manager) == [:b] end)
      Process.exit(caller, :kill)
      eventually(fn -> waiting(manager) == [] end)

      # Nothing claims :b's room any more.
      assert {:ok, _} = load(manager, :c, 300)
      :ok = ModelManager.checkin(manager, lease)
      assert ModelManager.info(manager, :b) == {:error, :not_loaded}
      assert ModelManager.usage(manager) == %{ram: 900, vram: %{}}
    end

    test "a second load of a waiting id is :already_loaded" do
      manager = start_manager(memory_budget: 1_000, evict_when: [])
      {:ok, _} = load(manager, :a, 600)
      {:ok, lease} = ModelManager.checkout(manager, :a)
      _waiting = Task.async(fn -> load(manager, :b, 600, timeout: :infinity) end)
      eventually(fn -> waiting(manager) == [:b] end)
      assert load(manager, :b, 10, timeout: :infinity) == {:error, :already_loaded}
      :ok = ModelManager.checkin(manager, lease)
    end
  end
end
