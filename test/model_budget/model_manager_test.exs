defmodule ModelBudget.ModelManagerTest do
  use ExUnit.Case, async: true

  import ModelBudget.Test.Eventually

  import ExUnit.CaptureLog

  alias ModelBudget.Backend.Reservation
  alias ModelBudget.ModelManager
  alias ModelBudget.TestBackend
  alias ModelBudget.TestClock

  # Every manager logs its empty ledger when it starts.
  @moduletag :capture_log

  doctest ModelManager

  # Sizes are what they say: no KV estimate, everything in RAM.
  @direct [mode: :direct, n_gpus: 0]

  # Generous: the suite runs async next to a 1,000-process test.
  @wait 2_000

  defp start_manager(opts \\ []) do
    opts = Keyword.put_new(opts, :backend, TestBackend)
    start_supervised!(Supervisor.child_spec({ModelManager, opts}, id: make_ref()))
  end

  defp load(manager, id, source, opts \\ []),
    do: ModelManager.load(manager, id, source, Keyword.put_new(opts, :notify, self()) ++ @direct)

  # Starts a load of a stalling source in a task and waits until the
  # backend holds its memory and stalls; returns the task and the load's.
  defp stalled_load(manager, id, bytes, opts \\ []) do
    test = self()

    caller =
      Task.async(fn -> load(manager, id, {:test, bytes, :stall}, [notify: test] ++ opts) end)

    assert_receive {TestBackend, :stalled, load_task}, @wait
    {caller, load_task}
  end

  defp total(%{ram: ram, vram: vram}), do: ram + Enum.sum(Map.values(vram))

  defp holds_binary?(pid, bytes) do
    {:binary, binaries} = Process.info(pid, :binary)
    Enum.any?(binaries, fn {_, size, _} -> size == bytes end)
  end

  describe "start_link/1" do
    test "starts quietly: no log line at every start" do
      log = capture_log(fn -> start_manager(memory_budget: 1_000) end)
      assert log == ""
    end

    test "the manager keeps its messages off its heap and starts with a larger heap" do
      manager = start_manager([])
      assert Process.info(manager, :message_queue_data) == {:message_queue_data, :off_heap}
      assert {:min_heap_size, words} = Process.info(manager, :min_heap_size)
      assert words >= 20_000
    end

    test "the manager runs at normal priority, or at the :priority given; backends at normal" do
      assert Process.info(start_manager([]), :priority) == {:priority, :normal}
      manager = start_manager(priority: :high)
      assert Process.info(manager, :priority) == {:priority, :high}
      {_caller, load_task} = stalled_load(manager, :a, 10)
      assert Process.info(load_task, :priority) == {:priority, :normal}
    end

    test "raises ArgumentError for bad options before starting" do
      for {opts, message} <- [
            {:nope, "expected a keyword list of options, got: :nope"},
            {[size: 1], "unknown keys [:size]"},
            {[memory_budget: -1], "invalid memory budget"},
            {[backend: String], "invalid option :backend: expected a module implementing"},
            {[backend: "x"], "invalid option :backend"},
            {[models: :a], "invalid option :models: expected a list"},
            {[priority: :max], "invalid option :priority: expected :high or :normal, got: :max"},
            {[models: [:a]], "expected entries {id, source} or {id, source, opts}, got: :a"},
            {[models: [{:a, {:bytes, 1}, :x}]], "invalid load options: expected a keyword list"},
            {[models: [{:a, {:bytes, 1}, n_gpus: -1}]],
             "invalid option :n_gpus: expected a non-negative integer, got: -1"},
            {[evict_when: ["used > totl"]],
             ~s(invalid option :evict_when: "used > totl" does not compile at column 8: ) <>
               "expected a variable (memory_required, available, total, used, used_percent, " <>
               "free, model_size, resident_count, resident_bytes), got `totl`"},
            {[evict_when: ["used > 1", "used +"]],
             ~s("used +" does not compile at column 7: expected an operand)},
            {[evict_when: "used > 1"], "invalid option :evict_when: expected a list of strings"},
            {[min_idle_ms: -1],
             "invalid option :min_idle_ms: expected a non-negative integer or :infinity, got: -1"}
          ] do
        error = assert_raise ArgumentError, fn -> ModelManager.start_link(opts) end
        assert error.message =~ message
      end
    end

    test "takes any GenServer name, and several managers run side by side" do
      {:ok, _} = start_supervised({Registry, keys: :unique, name: __MODULE__.Registry})

      names = [
        __MODULE__.Atom,
        {:global, {__MODULE__, make_ref()}},
        {:via, Registry, {__MODULE__.Registry, :m}}
      ]

      for name <- names do
        start_manager(name: name, memory_budget: 1_000)
      end

      for {name, bytes} <- Enum.zip(names, [100, 200, 300]) do
        assert {:ok, %{status: :ready}} = load(name, :same_id, {:test, bytes})
        assert ModelManager.budget(name) == %{mode: :combined, limit: 1_000}
      end

      for {name, bytes} <- Enum.zip(names, [100, 200, 300]) do
        assert ModelManager.usage(name) == %{ram: bytes, vram: %{}}
        assert [%{id: :same_id, bytes: ^bytes}] = ModelManager.list(name)
      end

      assert :ok = ModelManager.unload(Enum.at(names, 1), :same_id)
      assert ModelManager.usage(Enum.at(names, 1)) == ModelBudget.empty_usage()
      assert ModelManager.usage(Enum.at(names, 0)) == %{ram: 100, vram: %{}}
      assert ModelManager.usage(Enum.at(names, 2)) == %{ram: 300, vram: %{}}
    end

    test "loads :models after init, in order, logging the ones that fail" do
      log =
        capture_log(fn ->
          manager =
            start_manager(
              memory_budget: 1_000,
              models: [
                {:a, {:test, 100}, @direct},
                {:fails, {:test, 100, :fail}, @direct},
                {:too_big, {:test, 2_000}, @direct},
                {:bad_option, {:test, 100}, [split_mode: :sideways] ++ @direct},
                {:slow, {:test, 100, :stall}, [notify: self()] ++ @direct},
                {:b, {:test, 100}, @direct}
              ]
            )

          # start_link returned while :slow still loads: it does not block.
          assert_receive {TestBackend, :stalled, slow_task}, @wait
          assert {:ok, %{status: :ready}} = ModelManager.info(manager, :a)
          assert {:ok, %{status: :loading}} = ModelManager.info(manager, :slow)
          send(slow_task, :continue)

          eventually(fn -> match?({:ok, %{status: :ready}}, ModelManager.info(manager, :b)) end)
          assert manager |> ModelManager.list() |> Enum.map(& &1.id) == [:a, :b, :slow]
          assert ModelManager.usage(manager) == %{ram: 300, vram: %{}}
        end)

      assert log =~ "could not load :fails at start-up: {:load_failed, :told_to_fail}"
      assert log =~ "could not load :too_big at start-up: {:insufficient_memory"
      assert log =~ "could not load :bad_option at start-up: \"invalid option :split_mode"
    end

    test "a restarted manager starts with an empty ledger" do
      name = {:global, {__MODULE__, make_ref()}}
      old = start_manager(name: name, memory_budget: 1_000)
      assert {:ok, %{handle: holder}} = load(name, :a, {:test, 100})

      capture_log(fn ->
        Process.exit(old, :kill)
        eventually(fn -> GenServer.whereis(name) not in [nil, old] end)
        eventually(fn -> ModelManager.list(name) == [] end)
      end)

      assert ModelManager.usage(name) == ModelBudget.empty_usage()
      # A kill skips terminate/2: a backend's process that does not watch
      # the manager itself (this test backend's holder) lives on, which is
      # why ModelBudget.Backend.LlamaServer's servers do watch it.
      assert Process.alive?(holder)
      TestBackend.unload(holder)
    end

    test "a clean stop unloads every model through the backend, most recent first" do
      test = self()
      manager = start_manager(memory_budget: 1_000)

      holders =
        for id <- [:a, :b, :c] do
          {:ok, %{handle: holder}} = load(manager, id, {:test, 100}, notify: test)
          holder
        end

      refs = Map.new(holders, &{Process.monitor(&1), &1})
      :ok = GenServer.stop(manager)

      # Every holder gone by the time stop/1 returned, newest first.
      down =
        for _ <- holders do
          assert_received {:DOWN, ref, :process, _, _}
          refs[ref]
        end

      assert down == Enum.reverse(holders)
      assert Enum.map(holders, &TestBackend.unloads/1) == [1, 1, 1]
    end
  end

  describe "history" do
    test "the counts of ids gone are kept for the :history_limit most recent ones" do
      manager = start_manager(memory_budget: 1_000, history_limit: 3, backend: Reservation)
      table = :sys.get_state(manager).table
      rows = fn -> :ets.select_count(table, [{{{:history, :_}, :_, :_}, [], [true]}]) end

      for i <- 1..50 do
        {:ok, _} = ModelManager.load(manager, i, {:bytes, 1}, @direct)
        :ok = ModelManager.unload(manager, i)
      end

      # 50 ids came and went: the table keeps 3 of them.
      assert rows.() == 3

      # A recent id keeps its count across a reload; an old one starts again.
      {:ok, again} = ModelManager.load(manager, 50, {:bytes, 1}, @direct)
      assert again.loads == 2
      {:ok, old} = ModelManager.load(manager, 1, {:bytes, 1}, @direct)
      assert old.loads == 1
      # Loaded ids are not counted against the limit.
      assert rows.() == 4
    end

    test "rejects a bad :history_limit" do
      assert_raise ArgumentError,
                   ~r/invalid option :history_limit: expected a positive integer or :infinity, got: 0/,
                   fn -> ModelManager.start_link(history_limit: 0) end
    end
  end

  describe "child_spec/1" do
    test "uses the name as the child id, so named managers share a supervisor" do
      assert %{id: :pool_a, start: {ModelManager, :start_link, [[name: :pool_a]]}} =
               ModelManager.child_spec(name: :pool_a)

      assert %{id: ModelManager} = ModelManager.child_spec([])

      children = [
        {ModelManager, name: __MODULE__.PoolA, memory_budget: 100},
        {ModelManager, name: __MODULE__.PoolB, memory_budget: 200}
      ]

      start_supervised!(%{
        id: :pools,
        start: {Supervisor, :start_link, [children, [strategy: :one_for_one]]},
        type: :supervisor
      })

      assert ModelManager.budget(__MODULE__.PoolA) == %{mode: :combined, limit: 100}
      assert ModelManager.budget(__MODULE__.PoolB) == %{mode: :combined, limit: 200}
    end
  end

  describe "load/4" do
    test "returns the ready model's info, its memory really held" do
      {clock, advance} = TestClock.new()
      manager = start_manager(memory_budget: 1_000_000, clock: clock)
      advance.(7)

      assert {:ok, info} = load(manager, :a, {:test, 100_000}, pinned: true)

      assert %{
               id: :a,
               status: :ready,
               source: {:test, 100_000},
               placement: %{ram: 100_000, vram: %{}},
               bytes: 100_000,
               pinned: true,
               handle: holder,
               loaded_at: 7,
               last_used: 7
             } = info

      assert holds_binary?(holder, 100_000)
      assert ModelManager.info(manager, :a) == {:ok, info}
      assert ModelManager.usage(manager) == %{ram: 100_000, vram: %{}}
    end

    test "refuses an id that is loading or loaded" do
      manager = start_manager()
      {caller, load_task} = stalled_load(manager, :a, 10)
      assert load(manager, :a, {:test, 10}) == {:error, :already_loaded}
      send(load_task, :continue)
      assert {:ok, _} = Task.await(caller)
      assert load(manager, :a, {:test, 10}) == {:error, :already_loaded}
    end

    test "refuses what does not fit with exactly check/3's error" do
      budget = %{ram: 1_000, vram: [500]}
      manager = start_manager(memory_budget: budget, min_idle_ms: :infinity)

      assert {:ok, _} =
               ModelManager.load(manager, :a, {:test, 400}, mode: :direct, n_gpu_layers: 0)

      for {opts, device} <- [{[n_gpu_layers: 0], :ram}, {[], {:gpu, 0}}] do
        opts = [mode: :direct] ++ opts
        placement = ModelBudget.distribute(700, opts, 1)

        expected =
          ModelBudget.check(ModelBudget.resolve(budget), placement, ModelManager.usage(manager))

        assert {:error, {:insufficient_memory, [device: ^device, required: 700, available: _]}} =
                 expected

        assert ModelManager.load(manager, :b, {:test, 700}, opts) == expected
      end

      assert ModelManager.usage(manager) == %{ram: 400, vram: %{}}
    end

    test "places over the GPUs a per-device budget names, else the probed ones; :n_gpus overrides" do
      opts = [mode: :direct, split_mode: :layer]

      for {budget, n_gpus} <- [
            {%{ram: 1_000, vram: [1_000, 1_000]}, 2},
            {%{ram: 1_000, vram: %{2 => 1_000}}, 3},
            {%{ram: 1_000, vram: :infinity}, length(ModelBudget.devices())},
            {1_000_000, length(ModelBudget.devices())}
          ] do
        manager = start_manager(memory_budget: budget)
        assert {:ok, %{placement: placement}} = ModelManager.load(manager, :a, {:test, 600}, opts)
        assert placement == ModelBudget.distribute(600, opts, n_gpus)

        assert {:ok, %{placement: placement}} =
                 ModelManager.load(manager, :b, {:test, 600}, [n_gpus: 1] ++ opts)

        assert placement == %{ram: 0, vram: %{0 => 600}}
      end
    end

    test "reserves before the slow load and keeps serving meanwhile" do
      manager = start_manager(memory_budget: 1_000)
      {caller, load_task} = stalled_load(manager, :slow, 600)

      assert {:ok, %{status: :loading, handle: nil, loaded_at: nil}} =
               ModelManager.info(manager, :slow)

      assert ModelManager.usage(manager) == %{ram: 600, vram: %{}}

      assert load(manager, :big, {:test, 600}) ==
               {:error, {:insufficient_memory, [device: :total, required: 600, available: 400]}}

      assert {:ok, %{status: :ready}} = load(manager, :small, {:test, 300})
      assert :ok = ModelManager.touch(manager, :slow)
      assert :ok = ModelManager.unload(manager, :small)

      send(load_task, :continue)
      assert {:ok, %{status: :ready, placement: %{ram: 600}}} = Task.await(caller)
      assert ModelManager.usage(manager) == %{ram: 600, vram: %{}}
    end

    test "admits only one of many concurrent loads when room fits one" do
      manager = start_manager(memory_budget: 1_000, min_idle_ms: :infinity)

      results =
        1..20
        |> Enum.map(fn i -> Task.async(fn -> load(manager, i, {:test, 600, {:sleep, 20}}) end) end)
        |> Task.await_many()

      assert [{:ok, _}] = Enum.filter(results, &match?({:ok, _}, &1))
      assert Enum.count(results, &match?({:error, {:insufficient_memory, _}}, &1)) == 19
      assert ModelManager.usage(manager) == %{ram: 600, vram: %{}}
    end

    test "a failed load releases its reservation" do
      manager = start_manager(memory_budget: 1_000)
      assert load(manager, :a, {:test, 600, :fail}) == {:error, {:load_failed, :told_to_fail}}

      assert load(manager, :a, {:test, 600, :no_footprint}) ==
               {:error, {:load_failed, :no_footprint}}

      assert_receive {TestBackend, :holder, holder}, @wait
      refute Process.alive?(holder)
      assert ModelManager.info(manager, :a) == {:error, :not_loaded}
      assert ModelManager.usage(manager) == ModelBudget.empty_usage()
      assert {:ok, _} = load(manager, :a, {:test, 1_000})
    end

    test "a crashed load releases its reservation and its memory" do
      manager = start_manager(memory_budget: 1_000)

      assert {:error, {:load_crashed, {%RuntimeError{message: "told to crash"}, _}}} =
               load(manager, :a, {:test, 600, :crash})

      assert_receive {TestBackend, :holder, holder}, @wait
      # The holder dies through its link to the task, a moment after it.
      eventually(fn -> not Process.alive?(holder) end)

      assert load(manager, :b, {:test, 600, :bad_return}) ==
               {:error, {:load_crashed, {:bad_return, :bad}}}

      assert ModelManager.list(manager) == []
      assert ModelManager.usage(manager) == ModelBudget.empty_usage()
    end

    test "a caller that dies cancels its load and frees the reservation" do
      manager = start_manager(memory_budget: 1_000)
      test = self()

      caller = spawn(fn -> load(manager, :a, {:test, 600, :stall}, notify: test) end)

      assert_receive {TestBackend, :holder, holder}, @wait
      assert_receive {TestBackend, :stalled, load_task}, @wait
      Process.exit(caller, :kill)

      eventually(fn -> ModelManager.info(manager, :a) == {:error, :not_loaded} end)
      assert ModelManager.usage(manager) == ModelBudget.empty_usage()
      refute Process.alive?(load_task)
      # The holder dies through its link to the task, a moment after it.
      eventually(fn -> not Process.alive?(holder) end)
    end

    test "raises ArgumentError for bad options and sources, in the caller" do
      manager = start_manager(memory_budget: 1_000)

      for {source, opts, message} <- [
            {{:test, 1}, :x, "invalid load options: expected a keyword list, got: :x"},
            {{:test, 1}, [n_gpus: -1],
             "invalid option :n_gpus: expected a non-negative integer, got: -1"},
            {{:test, 1}, [pinned: 1], "invalid option :pinned: expected a boolean, got: 1"},
            {{:test, 1}, [split_mode: :sideways], "invalid option :split_mode"},
            {{:test, 1}, [main_gpu: 3, n_gpus: 1], "invalid option :main_gpu"}
          ] do
        error = assert_raise ArgumentError, fn -> ModelManager.load(manager, :a, source, opts) end
        assert error.message =~ message
      end

      reservation = start_manager(backend: ModelBudget.Backend.Reservation)

      assert_raise ArgumentError, ~r/invalid source: expected \{:bytes, non_neg_integer\}/, fn ->
        ModelManager.load(reservation, :a, {:url, "http://x"})
      end

      assert ModelManager.list(manager) == [] and ModelManager.list(reservation) == []
    end

    test "with the default backend, reserves {:bytes, n} and the size of {:path, path}" do
      manager = start_manager(backend: ModelBudget.Backend.Reservation, memory_budget: 10_000)

      path =
        Path.join(System.tmp_dir!(), "model_manager_test_#{System.unique_integer([:positive])}")

      File.write!(path, :binary.copy(<<1>>, 1_234))
      on_exit(fn -> File.rm(path) end)

      assert {:ok, %{bytes: 1_234, handle: :reserved}} =
               ModelManager.load(manager, :file, {:path, path}, @direct)

      assert {:ok, %{bytes: 10}} = ModelManager.load(manager, :n, {:bytes, 10}, @direct)
      assert ModelManager.usage(manager) == %{ram: 1_244, vram: %{}}

      assert ModelManager.load(manager, :gone, {:path, path <> ".missing"}, @direct) ==
               {:error, {:load_failed, {:enoent, path <> ".missing"}}}
    end
  end

  describe "unload/2" do
    test "frees the model's share and its memory before returning" do
      manager = start_manager(memory_budget: 1_000)
      assert {:ok, %{handle: holder}} = load(manager, :a, {:test, 600})
      assert {:ok, _} = load(manager, :b, {:test, 100})

      assert ModelManager.unload(manager, :a) == :ok
      refute Process.alive?(holder)
      assert ModelManager.info(manager, :a) == {:error, :not_loaded}
      assert ModelManager.usage(manager) == %{ram: 100, vram: %{}}
      assert {:ok, _} = load(manager, :c, {:test, 900})
    end

    test "answers :not_loaded for an unknown id" do
      assert ModelManager.unload(start_manager(), :a) == {:error, :not_loaded}
    end

    test "cancels a model that is still loading" do
      manager = start_manager(memory_budget: 1_000)
      {caller, load_task} = stalled_load(manager, :a, 600)
      assert_receive {TestBackend, :holder, holder}, @wait

      assert ModelManager.unload(manager, :a) == :ok
      assert Task.await(caller) == {:error, {:load_failed, :cancelled}}
      refute Process.alive?(load_task)
      # The holder dies through its link to the task, a moment after it.
      eventually(fn -> not Process.alive?(holder) end)
      assert ModelManager.usage(manager) == ModelBudget.empty_usage()
    end

    test "keeps the memory reserved until the backend has unloaded" do
      manager = start_manager(memory_budget: 1_000)
      assert {:ok, %{handle: holder}} = load(manager, :a, {:test, 600, :slow_unload})

      first = Task.async(fn -> ModelManager.unload(manager, :a) end)
      assert_receive {TestBackend, :unloading, ^holder}, @wait
      second = Task.async(fn -> ModelManager.unload(manager, :a) end)

      assert {:ok, %{status: :unloading}} = ModelManager.info(manager, :a)
      assert ModelManager.usage(manager) == %{ram: 600, vram: %{}}
      assert {:error, {:insufficient_memory, _}} = load(manager, :b, {:test, 600})

      send(holder, :continue)
      assert Task.await_many([first, second]) == [:ok, :ok]
      assert ModelManager.usage(manager) == ModelBudget.empty_usage()
    end

    test "logs a backend unload that crashes and releases the memory anyway" do
      manager = start_manager(memory_budget: 1_000)
      assert {:ok, _} = load(manager, :a, {:test, 600, :crash_unload})

      log = capture_log(fn -> assert ModelManager.unload(manager, :a) == :ok end)
      assert log =~ "unloading :a crashed"
      assert ModelManager.usage(manager) == ModelBudget.empty_usage()
    end
  end

  describe "load/4 eviction" do
    # Every model of these tests holds its placement's bytes in RAM.
    defp ready?(manager, id), do: match?({:ok, %{status: :ready}}, ModelManager.info(manager, id))

    defp handle!(manager, id) do
      {:ok, %{handle: handle}} = ModelManager.info(manager, id)
      handle
    end

    test "evicts the least recently used idle models, as few as make room, and unloads them" do
      manager = start_manager(memory_budget: 1_000, evict_when: [])
      for id <- [:a, :b, :c], do: assert({:ok, %{evicted: []}} = load(manager, id, {:test, 300}))
      holders = Map.new([:a, :b, :c], &{&1, handle!(manager, &1)})
      assert :ok = ModelManager.touch(manager, :a)

      log =
        capture_log(fn -> assert {:ok, %{evicted: [:b]}} = load(manager, :d, {:test, 300}) end)

      assert log =~ "evicting :b (idle "

      assert log =~
               "to make room on :total for the load of :d: 300 bytes do not fit in the 100 available"

      refute Process.alive?(holders.b)
      assert TestBackend.unloads(holders.b) == 1
      assert ModelManager.info(manager, :b) == {:error, :not_loaded}

      # LRU now: c, a, d.
      assert {:ok, %{evicted: [:c, :a]}} = load(manager, :e, {:test, 600})
      assert manager |> ModelManager.list() |> Enum.map(& &1.id) == [:d, :e]
      assert ModelManager.usage(manager) == %{ram: 900, vram: %{}}
      assert Enum.map([:a, :c], &TestBackend.unloads(holders[&1])) == [1, 1]
    end

    test "a load needing 1 GiB evicts one 2 GiB model, not three" do
      gib = 2 ** 30

      manager =
        start_manager(
          backend: ModelBudget.Backend.Reservation,
          memory_budget: 6 * gib,
          evict_when: []
        )

      for id <- [:x, :y, :z],
          do: {:ok, _} = ModelManager.load(manager, id, {:bytes, 2 * gib}, @direct)

      assert {:ok, %{evicted: [:x]}} = ModelManager.load(manager, :new, {:bytes, gib}, @direct)
      assert ModelManager.usage(manager) == %{ram: 5 * gib, vram: %{}}
    end

    test "keeps pinned, loading and unloading models" do
      manager = start_manager(memory_budget: 1_000, evict_when: [])
      assert {:ok, %{pinned: true}} = load(manager, :pinned, {:test, 200}, pinned: true)
      {caller, load_task} = stalled_load(manager, :loading, 200)
      assert {:ok, _} = load(manager, :unloading, {:test, 200, :slow_unload})
      unloading = handle!(manager, :unloading)
      unloader = Task.async(fn -> ModelManager.unload(manager, :unloading) end)
      assert_receive {TestBackend, :unloading, ^unloading}, @wait
      assert {:ok, _} = load(manager, :idle, {:test, 200})

      # 200 free: a load of 300 takes the idle model, the only one it may.
      assert {:ok, %{evicted: [:idle]}} = load(manager, :new, {:test, 300}, pinned: true)

      assert {:error, {:insufficient_memory, [device: :total, required: 300, available: 100]}} =
               load(manager, :more, {:test, 300})

      assert ready?(manager, :pinned)
      assert {:ok, %{status: :loading}} = ModelManager.info(manager, :loading)
      assert {:ok, %{status: :unloading}} = ModelManager.info(manager, :unloading)

      send(load_task, :continue)
      assert {:ok, %{evicted: []}} = Task.await(caller)
      send(unloading, :continue)
      assert Task.await(unloader) == :ok
      assert TestBackend.unloads(unloading) == 1
    end

    test "keeps models used within :min_idle_ms" do
      {clock, advance} = TestClock.new()

      manager =
        start_manager(memory_budget: 1_000, evict_when: [], min_idle_ms: 500, clock: clock)

      assert {:ok, _} = load(manager, :old, {:test, 400})
      advance.(600)
      assert {:ok, _} = load(manager, :recent, {:test, 400})

      # Making room for 700 would take both; :recent is not idle yet.
      assert {:error, {:insufficient_memory, _}} = load(manager, :big, {:test, 700})
      assert ready?(manager, :old) and ready?(manager, :recent)
      assert {:ok, %{evicted: [:old]}} = load(manager, :small, {:test, 500})

      # A touch, or a checkin, makes a model recent again.
      advance.(600)
      assert :ok = ModelManager.touch(manager, :recent)
      assert {:error, {:insufficient_memory, _}} = load(manager, :other, {:test, 700})
      assert {:ok, %{evicted: [:small]}} = load(manager, :other, {:test, 300})
      advance.(600)
      {:ok, lease} = ModelManager.checkout(manager, :recent)
      :ok = ModelManager.checkin(manager, lease)
      assert {:ok, %{evicted: [:other]}} = load(manager, :more, {:test, 400})

      # :infinity turns eviction off.
      off = start_manager(memory_budget: 1_000, min_idle_ms: :infinity)
      assert {:ok, _} = load(off, :a, {:test, 600})

      assert load(off, :b, {:test, 600}) ==
               {:error, {:insufficient_memory, [device: :total, required: 600, available: 400]}}
    end

    test "a refused load evicts nothing" do
      manager = start_manager(memory_budget: 1_000)
      assert {:ok, _} = load(manager, :idle, {:test, 300})
      assert {:ok, _} = load(manager, :pinned, {:test, 400}, pinned: true)
      holder = handle!(manager, :idle)
      usage = ModelManager.usage(manager)
      expected = ModelBudget.check(ModelManager.budget(manager), %{ram: 700, vram: %{}}, usage)

      log = capture_log(fn -> assert load(manager, :big, {:test, 700}) == expected end)

      assert {:error, {:insufficient_memory, [device: :total, required: 700, available: 300]}} =
               expected

      # capture_log sees every process: only this manager's lines count.
      refute log =~ "#{inspect(manager)}: evicting"
      assert ready?(manager, :idle) and Process.alive?(holder)
      assert TestBackend.unloads(holder) == 0
      assert ModelManager.usage(manager) == usage
      assert %{evictions: 0, refused: 1} = ModelManager.stats(manager)
    end

    test "per device: making room on GPU 1 does not evict models only on GPU 0" do
      manager = start_manager(memory_budget: %{ram: 1_000, vram: [1_000, 1_000]}, evict_when: [])

      gpu = fn index -> [mode: :direct, n_gpus: 2, main_gpu: index] end
      assert {:ok, _} = ModelManager.load(manager, :gpu0, {:test, 600}, gpu.(0))
      assert {:ok, _} = ModelManager.load(manager, :gpu1, {:test, 600}, gpu.(1))
      assert {:ok, _} = ModelManager.load(manager, :ram, {:test, 600}, @direct)

      assert {:ok, %{evicted: [:gpu1]}} = ModelManager.load(manager, :new, {:test, 600}, gpu.(1))
      assert ready?(manager, :gpu0) and ready?(manager, :ram)
      assert ModelManager.usage(manager) == %{ram: 600, vram: %{0 => 600, 1 => 600}}
    end

    test "the default rule evicts when the load would take over 70% of what is left" do
      manager = start_manager(memory_budget: 1_000)
      assert {:ok, _} = load(manager, :a, {:test, 600})
      # 200 <= 0.7 * 400: fits, and the rule does not hold.
      assert {:ok, %{evicted: []}} = load(manager, :b, {:test, 200})
      # 150 > 0.7 * 200: the rule holds although 150 fits; the LRU model goes.
      log =
        capture_log(fn -> assert {:ok, %{evicted: [:a]}} = load(manager, :c, {:test, 150}) end)

      assert log =~
               "for the load of :c: the :evict_when rules hold (memory_required > available * 0.70)"

      assert ModelManager.usage(manager) == %{ram: 350, vram: %{}}
    end

    test "rules over resident_count and the live free memory" do
      keep_two = start_manager(evict_when: ["resident_count >= 2"])

      for id <- 1..4, do: {:ok, _} = load(keep_two, id, {:test, 10})
      assert keep_two |> ModelManager.list() |> Enum.map(& &1.id) == [3, 4]

      # RAM always has some free memory, never less than 1 byte.
      always = start_manager(evict_when: ["free > 0"])
      never = start_manager(evict_when: ["free < 1"])

      for manager <- [always, never], id <- [:a, :b, :c] do
        {:ok, _} = load(manager, id, {:test, 10})
      end

      assert always |> ModelManager.list() |> Enum.map(& &1.id) == [:c]
      assert never |> ModelManager.list() |> Enum.map(& &1.id) == [:a, :b, :c]
    end

    @tag :gpu
    test "free on a GPU is the probe's" do
      manager =
        start_manager(
          memory_budget: %{ram: :infinity, vram: :infinity},
          evict_when: ["free >= 1MiB"]
        )

      opts = [mode: :direct, n_gpus: 1]
      assert {:ok, _} = ModelManager.load(manager, :a, {:test, 10}, opts)
      assert {:ok, %{evicted: [:a]}} = ModelManager.load(manager, :b, {:test, 10}, opts)

      gone =
        start_manager(
          memory_budget: %{ram: :infinity, vram: :infinity},
          evict_when: ["free >= 1"]
        )

      # A GPU the probe does not see has no free memory.
      assert {:ok, _} =
               ModelManager.load(gone, :a, {:test, 10}, mode: :direct, n_gpus: 8, main_gpu: 7)

      assert {:ok, %{evicted: []}} =
               ModelManager.load(gone, :b, {:test, 10}, mode: :direct, n_gpus: 8, main_gpu: 7)
    end

    test "the load waits for its evicted models' unloads; meanwhile nothing is over-committed" do
      counter = :counters.new(2, [:atomics])
      manager = start_manager(memory_budget: 1_000, evict_when: [])
      assert {:ok, _} = load(manager, :a, {:test, 800, :slow_unload}, counter: counter)
      holder = handle!(manager, :a)
      assert_received {TestBackend, :holder, ^holder}

      loading = Task.async(fn -> load(manager, :b, {:test, 300}, counter: counter) end)
      assert_receive {TestBackend, :unloading, ^holder}, @wait

      # :b is admitted and waits; :a is still held. The ledger counts :b's 300
      # and the 500 that :a holds beyond them: what the backends hold, 800.
      assert {:ok, %{status: :loading, evicted: [:a]}} = ModelManager.info(manager, :b)
      assert {:ok, %{status: :unloading, evictions: 1}} = ModelManager.info(manager, :a)
      assert ModelManager.usage(manager) == %{ram: 800, vram: %{}}
      assert TestBackend.held(counter) == {1, 800}
      refute_received {TestBackend, :holder, _}

      # So a third load cannot start allocating next to :a.
      assert {:error, {:insufficient_memory, [device: :total, required: 300, available: 200]}} =
               load(manager, :c, {:test, 300}, counter: counter)

      send(holder, :continue)
      assert {:ok, %{status: :ready, evicted: [:a]}} = Task.await(loading)
      assert ModelManager.usage(manager) == %{ram: 300, vram: %{}}
      assert TestBackend.held(counter) == {1, 300}
      assert TestBackend.unloads(holder) == 1
    end

    test "a load cancelled while it waits gives its evicted models their full count back" do
      manager = start_manager(memory_budget: 1_000, evict_when: [])
      assert {:ok, _} = load(manager, :a, {:test, 400, :slow_unload})
      assert {:ok, _} = load(manager, :d, {:test, 400, :slow_unload})
      [a, d] = Enum.map([:a, :d], &handle!(manager, &1))

      # Cancelled by its caller's death: :a counts 400 again, not 100.
      test = self()
      caller = spawn(fn -> load(manager, :b, {:test, 300}, notify: test) end)
      assert_receive {TestBackend, :unloading, ^a}, @wait
      assert ModelManager.usage(manager) == %{ram: 800, vram: %{}}
      Process.exit(caller, :kill)
      eventually(fn -> ModelManager.info(manager, :b) == {:error, :not_loaded} end)
      assert ModelManager.usage(manager) == %{ram: 800, vram: %{}}

      # Cancelled by an unload: the same for :d.
      waiting = Task.async(fn -> load(manager, :c, {:test, 300}) end)
      assert_receive {TestBackend, :unloading, ^d}, @wait
      assert {:ok, %{status: :loading}} = ModelManager.info(manager, :c)
      assert ModelManager.unload(manager, :c) == :ok
      assert Task.await(waiting) == {:error, {:load_failed, :cancelled}}
      assert ModelManager.usage(manager) == %{ram: 800, vram: %{}}

      assert [%{id: :a, status: :unloading}, %{id: :d, status: :unloading}] =
               ModelManager.list(manager)

      send(a, :continue)
      send(d, :continue)
      eventually(fn -> ModelManager.list(manager) == [] end)
      assert ModelManager.usage(manager) == ModelBudget.empty_usage()
      assert TestBackend.unloads(a) == 1 and TestBackend.unloads(d) == 1
    end

    test "readers never see a cancelled load counted beside its evicted models" do
      manager = start_manager(memory_budget: 1_000, evict_when: [])
      assert {:ok, _} = load(manager, :a, {:test, 600, :slow_unload})
      a = handle!(manager, :a)
      waiting = Task.async(fn -> load(manager, :b, {:test, 700}) end)
      assert_receive {TestBackend, :unloading, ^a}, @wait
      # :b takes :a's memory over: :a counts nothing beyond it, and :c fills the budget.
      assert {:ok, _} = load(manager, :c, {:test, 300})
      assert ModelManager.usage(manager) == %{ram: 1_000, vram: %{}}

      usages = published_usages(manager, fn -> assert ModelManager.unload(manager, :b) == :ok end)
      assert Task.await(waiting) == {:error, {:load_failed, :cancelled}}
      assert usages != []
      assert Enum.all?(usages, &(&1.ram <= 1_000)), "published #{inspect(usages)}"
      assert ModelManager.usage(manager) == %{ram: 900, vram: %{}}

      send(a, :continue)
      eventually(fn -> ModelManager.usage(manager) == %{ram: 300, vram: %{}} end)
    end

    test "counts loads and evictions per id and in stats/1" do
      manager = start_manager(memory_budget: 1_000, evict_when: [])
      assert {:ok, %{loads: 1, evictions: 0}} = load(manager, :a, {:test, 600})
      assert {:ok, %{loads: 1, evicted: [:a]}} = load(manager, :b, {:test, 600})
      assert {:ok, %{loads: 2, evictions: 1, evicted: [:b]}} = load(manager, :a, {:test, 600})
      assert [%{id: :a, loads: 2, evictions: 1}] = ModelManager.list(manager)
      assert {:error, _} = load(manager, :c, {:test, 2_000})
      assert {:ok, [:a]} = ModelManager.fence(manager, :total, 500)

      assert ModelManager.stats(manager) == %{
               loads: 3,
               evictions: 3,
               refused: 1,
               fences: 1,
               expired: 0,
               raised: 0,
               max_estimate_error: 0
             }
    end

    test "counts loads and evictions per id with the reservation backend (loads within a step)" do
      manager =
        start_manager(
          memory_budget: 1_000,
          evict_when: [],
          backend: ModelBudget.Backend.Reservation
        )

      assert {:ok, %{loads: 1, evictions: 0}} = load(manager, :a, {:bytes, 600})
      assert {:ok, %{loads: 1, evicted: [:a]}} = load(manager, :b, {:bytes, 600})
      assert {:ok, %{loads: 2, evictions: 1, evicted: [:b]}} = load(manager, :a, {:bytes, 600})
      assert :ok = ModelManager.unload(manager, :a)
      assert {:ok, %{loads: 3, evictions: 1}} = load(manager, :a, {:bytes, 600})
      assert {:ok, %{loads: 2, evictions: 1, evicted: []}} = load(manager, :b, {:bytes, 300})
    end
  end

  # Every usage the manager writes to its readers' table while `fun` runs:
  # its :ets.insert/2 calls, traced (the manager only).
  defp published_usages(manager, fun) do
    :erlang.trace_pattern({:ets, :insert, 2}, true, [:global])
    :erlang.trace(manager, true, [:call, {:tracer, self()}])
    fun.()
    :erlang.trace(manager, false, [:call])
    ref = :erlang.trace_delivered(manager)
    assert_receive {:trace_delivered, ^manager, ^ref}, @wait
    collect_usages(manager, [])
  end

  defp collect_usages(manager, usages) do
    receive do
      {:trace, ^manager, :call, {:ets, :insert, [_table, rows]}} ->
        found = for {:usage, placement} <- List.wrap(rows), do: placement
        collect_usages(manager, usages ++ found)
    after
      0 -> usages
    end
  end

  describe "fence/3" do
    test "makes room by the same rules and returns once the evicted models are unloaded" do
      manager = start_manager(memory_budget: 1_000, evict_when: [])
      assert {:ok, _} = load(manager, :a, {:test, 300, :slow_unload})
      assert {:ok, _} = load(manager, :b, {:test, 300})
      assert {:ok, _} = load(manager, :pinned, {:test, 300}, pinned: true)
      holder = handle!(manager, :a)

      assert ModelManager.fence(manager, :total, 100) == {:ok, []}
      fence = Task.async(fn -> ModelManager.fence(manager, :ram, 200) end)
      assert_receive {TestBackend, :unloading, ^holder}, @wait
      assert Task.yield(fence, 50) == nil
      send(holder, :continue)
      assert Task.await(fence) == {:ok, [:a]}
      assert ModelManager.usage(manager) == %{ram: 600, vram: %{}}

      # Nothing reserved: the room is there for the next load.
      assert {:ok, %{evicted: []}} = load(manager, :c, {:test, 400})

      assert ModelManager.fence(manager, :total, 800) ==
               {:error, {:insufficient_memory, [device: :total, required: 800, available: 0]}}

      assert ready?(manager, :b)
    end

    test "on one GPU of a per-device budget, and with the rules" do
      manager = start_manager(memory_budget: %{ram: 1_000, vram: [1_000, 1_000]})
      gpu = fn index -> [mode: :direct, n_gpus: 2, main_gpu: index] end
      assert {:ok, _} = ModelManager.load(manager, :gpu0, {:test, 500}, gpu.(0))
      assert {:ok, _} = ModelManager.load(manager, :gpu1, {:test, 500}, gpu.(1))

      # 300 <= 0.7 * 500: room already, and the rule does not hold.
      assert ModelManager.fence(manager, {:gpu, 1}, 300) == {:ok, []}
      # 400 > 0.7 * 500.
      assert ModelManager.fence(manager, {:gpu, 1}, 400) == {:ok, [:gpu1]}
      assert ready?(manager, :gpu0)
      assert ModelManager.fence(manager, {:gpu, 1}, 0) == {:ok, []}

      assert ModelManager.fence(manager, {:gpu, 0}, 1_001) ==
               {:error,
                {:insufficient_memory, [device: {:gpu, 0}, required: 1001, available: 500]}}
    end

    test "raises ArgumentError for a bad device or byte count" do
      per_device = start_manager(memory_budget: %{ram: 1_000, vram: [1_000]})

      for {device, bytes, message} <- [
            {:total, 1, "invalid device: :total is the pool of a combined budget"},
            {:vram, 1, "invalid device: expected :total, :ram or {:gpu, index}, got: :vram"},
            {{:gpu, -1}, 1, "got: {:gpu, -1}"},
            {:ram, -1, "invalid bytes: expected a non-negative integer, got: -1"},
            {:ram, 1.5, "got: 1.5"}
          ] do
        error =
          assert_raise ArgumentError, fn -> ModelManager.fence(per_device, device, bytes) end

        assert error.message =~ message
      end

      assert_raise ArgumentError, ~r/:total is the pool/, fn ->
        ModelManager.fence(start_manager(), :total, 1)
      end
    end
  end

  describe "touch/2" do
    test "moves last_used forward to the clock's time" do
      {clock, advance} = TestClock.new()
      manager = start_manager(clock: clock)
      assert {:ok, %{last_used: 0}} = load(manager, :a, {:test, 1})
      advance.(3)
      assert ModelManager.touch(manager, :a) == :ok
      assert {:ok, %{last_used: 3, idle_ms: 0}} = ModelManager.info(manager, :a)
    end

    test "answers :not_loaded for an unknown id" do
      assert ModelManager.touch(start_manager(), :a) == {:error, :not_loaded}
    end
  end

  describe "info/2, list/1, usage/1 and budget/1" do
    test "read the table without calling the manager" do
      manager = start_manager(memory_budget: %{ram: 1_000, vram: [2_000]})
      assert {:ok, _} = load(manager, :b, {:test, 300}, n_gpus: 1, n_gpu_layers: 0)
      assert {:ok, _} = load(manager, :a, {:test, 200}, n_gpus: 1)

      # A suspended manager answers no calls; the reads still work.
      :sys.suspend(manager)

      try do
        assert {:ok, %{id: :a, placement: %{ram: 0, vram: %{0 => 200}}}} =
                 ModelManager.info(manager, :a)

        assert ModelManager.info(manager, :c) == {:error, :not_loaded}
        assert [%{id: :a}, %{id: :b}] = ModelManager.list(manager)
        assert ModelManager.usage(manager) == %{ram: 300, vram: %{0 => 200}}

        assert ModelManager.budget(manager) == %{
                 mode: :per_device,
                 ram: 1_000,
                 vram: %{0 => 2_000}
               }
      after
        :sys.resume(manager)
      end
    end

    test "wait for a manager that is registered but still in init/1" do
      name = {:via, __MODULE__.SlowRegistry, {self(), {__MODULE__, make_ref()}}}
      test = self()

      # The manager stops with its parent (it traps exits): the starter
      # lives until the test is done.
      starter =
        Task.async(fn ->
          send(test, {:started, ModelManager.start_link(name: name, backend: TestBackend)})

          receive do
            :done -> :ok
          end
        end)

      assert_receive {:registered, manager}, @wait

      reader = Task.async(fn -> ModelManager.list(name) end)
      # The reader found no table yet and called the manager, which is blocked.
      eventually(fn -> Process.info(manager, :message_queue_len) == {:message_queue_len, 1} end)
      send(manager, :go)

      assert Task.await(reader) == []
      assert_receive {:started, {:ok, ^manager}}, @wait
      GenServer.stop(manager)
      send(starter.pid, :done)
      Task.await(starter)
    end

    test "exit like a call when the manager is gone" do
      manager = start_manager()
      ref = Process.monitor(manager)
      Process.exit(manager, :kill)
      assert_receive {:DOWN, ^ref, :process, _, _}, @wait

      assert {:noproc, {ModelManager, :info, [^manager, :a]}} =
               catch_exit(ModelManager.info(manager, :a))

      assert {:noproc, {ModelManager, :usage, _}} = catch_exit(ModelManager.usage(manager))
      assert {:noproc, _} = catch_exit(ModelManager.list(:no_such_manager))
      assert {:noproc, _} = catch_exit(ModelManager.budget(manager))
    end
  end

  describe "subscribe/1 and unsubscribe/1" do
    # A call answered after every step before it: the usage messages of
    # those steps are in the mailbox by the time it returns.
    defp synced(manager), do: :ok = ModelManager.sweep(manager)

    test "the subscriber is sent the usage after a load and after an unload, once each" do
      manager = start_manager(memory_budget: 1_000, min_idle_ms: :infinity)
      assert ModelManager.subscribe(manager) == {:ok, ModelBudget.empty_usage()}

      assert {:ok, _} = load(manager, :a, {:test, 600})
      assert_receive {ModelManager, :usage, ^manager, %{ram: 600, vram: %{}}}, @wait

      # A refused load and a sweep change nothing: no message.
      assert {:error, {:insufficient_memory, _}} = load(manager, :b, {:test, 600})
      synced(manager)
      refute_received {ModelManager, :usage, _, _}

      assert :ok = ModelManager.unload(manager, :a)
      assert_receive {ModelManager, :usage, ^manager, %{ram: 0, vram: %{}}}, @wait
      synced(manager)
      refute_received {ModelManager, :usage, _, _}
    end

    test "a reservation is sent when it is made, before the backend has loaded" do
      manager = start_manager(memory_budget: 1_000)
      {:ok, _} = ModelManager.subscribe(manager)
      {caller, load_task} = stalled_load(manager, :a, 600)
      assert_receive {ModelManager, :usage, ^manager, %{ram: 600}}, @wait

      send(load_task, :continue)
      assert {:ok, %{status: :ready}} = Task.await(caller)
      synced(manager)
      refute_received {ModelManager, :usage, _, _}
    end

    test "subscribing twice sends each change once; unsubscribe ends the messages" do
      manager = start_manager()
      {:ok, _} = ModelManager.subscribe(manager)
      assert ModelManager.subscribe(manager) == {:ok, ModelBudget.empty_usage()}

      assert {:ok, _} = load(manager, :a, {:test, 10})
      synced(manager)
      assert_received {ModelManager, :usage, ^manager, %{ram: 10}}
      refute_received {ModelManager, :usage, _, _}

      assert ModelManager.unsubscribe(manager) == :ok
      assert ModelManager.unsubscribe(manager) == :ok
      assert {:ok, _} = load(manager, :b, {:test, 10})
      synced(manager)
      refute_received {ModelManager, :usage, _, _}
    end

    test "a subscriber that exits is dropped, quietly" do
      manager = start_manager()
      test = self()

      subscriber =
        spawn(fn ->
          send(test, {:subscribed, ModelManager.subscribe(manager)})
          Process.sleep(:infinity)
        end)

      assert_receive {:subscribed, {:ok, _}}, @wait
      assert Map.keys(:sys.get_state(manager).subscribers.pids) == [subscriber]

      log =
        capture_log(fn ->
          Process.exit(subscriber, :kill)

          eventually("the subscriber dropped", fn ->
            :sys.get_state(manager).subscribers.pids == %{}
          end)
        end)

      refute log =~ "unexpected"
      # The manager goes on, and tells its other subscribers.
      {:ok, _} = ModelManager.subscribe(manager)
      assert {:ok, _} = load(manager, :a, {:test, 10})
      assert_receive {ModelManager, :usage, ^manager, %{ram: 10}}, @wait
    end
  end

  describe "a model process that dies" do
    test "is logged, and its memory released" do
      manager = start_manager(memory_budget: 1_000)
      assert {:ok, %{handle: holder}} = load(manager, :a, {:test, 600})

      log =
        capture_log(fn ->
          Process.exit(holder, :kill)
          eventually(fn -> ModelManager.info(manager, :a) == {:error, :not_loaded} end)
        end)

      assert log =~ "the process of model :a exited (:killed); releasing its memory"
      assert ModelManager.usage(manager) == ModelBudget.empty_usage()
    end
  end

  describe "unexpected messages" do
    test "are logged, and the manager goes on" do
      manager = start_manager()

      log =
        capture_log(fn ->
          send(manager, {:stray, make_ref()})
          send(manager, {make_ref(), :a_reply_nobody_waits_for})
          assert {:ok, _} = load(manager, :a, {:test, 1})
        end)

      assert log =~ "got an unexpected message: {:stray, #Reference<"
      assert log =~ "got an unexpected reply: {#Reference<"
      assert Process.alive?(manager)
    end
  end

  describe "concurrency" do
    @limit 4 * 2 ** 20

    # Loads that succeed, sleep, fail, crash or lose their caller, plus
    # unloads, all at once; each process samples usage/1 after each of its
    # steps, and an observer samples it between them the whole time.
    test "1,000 concurrent loads never exceed the budget and leave nothing behind" do
      manager = start_manager(memory_budget: @limit, min_idle_ms: :infinity)
      counter = :counters.new(2, [:atomics])
      observer = Task.async(fn -> observe(manager, 0) end)

      {results, seen} =
        1..1_000
        |> Enum.map(fn i -> Task.async(fn -> load_and_maybe_unload(manager, i, counter) end) end)
        |> Task.await_many(20_000)
        |> Enum.unzip()

      send(observer.pid, :stop)
      assert Enum.max([Task.await(observer) | seen]) <= @limit

      counts = Enum.frequencies_by(results, &outcome/1)
      assert Map.keys(counts) -- [:ok, :refused, :failed, :crashed, :cancelled] == []

      assert counts[:ok] > 0 and counts[:refused] > 0 and counts[:failed] > 0 and
               counts[:crashed] > 0

      for %{id: id} <- ModelManager.list(manager), do: :ok = ModelManager.unload(manager, id)
      assert ModelManager.list(manager) == []
      assert ModelManager.usage(manager) == ModelBudget.empty_usage()
      # Every holder, loaded, failed, crashed or cancelled, is gone.
      eventually(fn -> TestBackend.held(counter) == {0, 0} end)
    end

    defp load_and_maybe_unload(manager, i, counter) do
      bytes = Enum.random(16..64) * 1_024

      behaviour =
        case rem(i, 10) do
          7 -> :fail
          8 -> :crash
          _ -> {:sleep, Enum.random(0..3)}
        end

      opts = [counter: counter] ++ @direct

      if rem(i, 10) == 9 do
        # A caller that dies while its load may be running: half of them
        # at once, the other half once the manager has admitted the load
        # (its backend load takes 5 ms) or answered it.
        caller = spawn(fn -> ModelManager.load(manager, i, {:test, bytes, {:sleep, 5}}, opts) end)

        if rem(i, 20) == 19 do
          eventually("the load of #{i} admitted or answered", 10_000, fn ->
            match?({:ok, _}, ModelManager.info(manager, i)) or not Process.alive?(caller)
          end)
        end

        Process.exit(caller, :kill)
        {:cancelled, total(ModelManager.usage(manager))}
      else
        result = load_retrying(manager, i, {:test, bytes, behaviour}, opts, 10)
        seen = total(ModelManager.usage(manager))
        if match?({:ok, _}, result) and rem(i, 2) == 0, do: :ok = ModelManager.unload(manager, i)
        {result, max(seen, total(ModelManager.usage(manager)))}
      end
    end

    # Refused loads retry a few times, so the ledger keeps turning over.
    defp load_retrying(manager, id, source, opts, tries) do
      case ModelManager.load(manager, id, source, opts) do
        {:error, {:insufficient_memory, _}} when tries > 1 ->
          Process.sleep(Enum.random(1..3))
          load_retrying(manager, id, source, opts, tries - 1)

        result ->
          result
      end
    end

    defp observe(manager, max_total) do
      receive do
        :stop -> max_total
      after
        0 -> observe(manager, max(max_total, total(ModelManager.usage(manager))))
      end
    end

    defp outcome({:ok, %{status: :ready}}), do: :ok

    defp outcome({:error, {:insufficient_memory, [device: :total, required: _, available: _]}}),
      do: :refused

    defp outcome({:error, {:load_failed, :told_to_fail}}), do: :failed
    defp outcome({:error, {:load_crashed, {%RuntimeError{}, _}}}), do: :crashed
    defp outcome(:cancelled), do: :cancelled
  end

  describe "concurrency with eviction" do
    @budget 4 * 2 ** 20

    # 100 processes load, touch, unload and fence at once while eviction
    # runs, with the default rule and with none (tighter packing); each
    # samples the ledger and the bytes the backend really holds after each
    # of its steps, and an observer between them.
    # Unloads take 0-2 ms, so a load that did not wait for its evicted
    # models, or a ledger that let go of their memory early, would show.
    test "the budget is never exceeded and no model is unloaded twice" do
      for rules <- [ModelBudget.Eviction.default_rules(), []] do
        eviction_round(start_manager(memory_budget: @budget, evict_when: rules))
      end
    end

    defp eviction_round(manager) do
      counter = :counters.new(2, [:atomics])
      collector = spawn_link(&TestBackend.collect_holders/0)
      observer = Task.async(fn -> TestBackend.observe(manager, counter, 0) end)

      {outcomes, seen} =
        1..100
        |> Enum.map(fn w -> Task.async(fn -> work(manager, w, counter, collector) end) end)
        |> Task.await_many(30_000)
        |> List.flatten()
        |> Enum.unzip()

      outcomes = Enum.frequencies(outcomes)
      send(observer.pid, :stop)
      {_samples, max_usage, max_held} = Task.await(observer)
      assert max_usage <= @budget and max_held <= @budget
      assert Enum.all?(seen, fn {usage, held} -> usage <= @budget and held <= @budget end)

      expected =
        for(result <- [:ok, :refused, :failed, :already_loaded], do: {:load, result}) ++
          [touch: :ok, touch: :not_loaded, unload: :ok, unload: :not_loaded] ++
          [fence: :ok, fence: :refused]

      assert Map.keys(outcomes) -- expected == []
      assert outcomes[{:load, :ok}] > 0 and outcomes[{:unload, :ok}] > 0
      assert outcomes[{:fence, :ok}] > 0
      assert %{loads: loads, evictions: evictions} = ModelManager.stats(manager)
      assert evictions > 0

      for %{id: id} <- ModelManager.list(manager), do: :ok = ModelManager.unload(manager, id)
      assert ModelManager.usage(manager) == ModelBudget.empty_usage()
      eventually(fn -> TestBackend.held(counter) == {0, 0} end)

      # Every model that loaded was unloaded exactly once (evicted or not);
      # holders of failed loads were never unloaded.
      send(collector, {:holders, self()})
      assert_receive {:holders, holders}, @wait
      unloads = Enum.map(holders, &TestBackend.unloads/1)
      assert Enum.all?(unloads, &(&1 <= 1))
      assert Enum.sum(unloads) == loads
    end

    defp work(manager, w, counter, collector) do
      opts = [counter: counter, notify: collector, unload_ms: :rand.uniform(3) - 1] ++ @direct

      for k <- 1..25 do
        # Four ids per process: only it loads and unloads them, so an unload
        # never cancels a load whose holder would then free its memory late.
        id = {w, :rand.uniform(4)}

        case :rand.uniform(10) do
          n when n <= 5 ->
            behaviour = if rem(k, 9) == 0, do: :fail, else: {:sleep, :rand.uniform(3) - 1}
            bytes = Enum.random(16..160) * 1_024
            pinned = w <= 2 and n == 1
            opts = [pinned: pinned] ++ opts
            {:load, ModelManager.load(manager, id, {:test, bytes, behaviour}, opts)}

          n when n <= 7 ->
            {:touch, ModelManager.touch(manager, {Enum.random(1..100), :rand.uniform(4)})}

          n when n <= 9 ->
            {:unload, ModelManager.unload(manager, id)}

          10 ->
            {:fence, ModelManager.fence(manager, :total, Enum.random(16..256) * 1_024)}
        end
        |> then(fn {op, result} ->
          %{ram: ram, vram: vram} = ModelManager.usage(manager)
          {_, held} = TestBackend.held(counter)
          {{op, work_outcome(result)}, {ram + Enum.sum(Map.values(vram)), held}}
        end)
      end
    end

    defp work_outcome(:ok), do: :ok
    defp work_outcome({:ok, %{status: :ready}}), do: :ok
    defp work_outcome({:ok, ids}) when is_list(ids), do: :ok

    defp work_outcome(
           {:error, {:insufficient_memory, [device: :total, required: _, available: _]}}
         ),
         do: :refused

    defp work_outcome({:error, {:load_failed, :told_to_fail}}), do: :failed
    defp work_outcome({:error, reason}) when reason in [:already_loaded, :not_loaded], do: reason
  end

  defmodule SlowRegistry do
    import Kernel, except: [send: 2]

    # A :via registry whose registration returns only once told to, so a
    # test can act while the registered manager has not reached init/1.
    def register_name({test, name}, pid) do
      :yes = :global.register_name(name, pid)
      Kernel.send(test, {:registered, pid})

      receive do
        :go -> :yes
      end
    end

    def whereis_name({_test, name}), do: :global.whereis_name(name)
    def unregister_name({_test, name}), do: :global.unregister_name(name)
    def send({_test, name}, message), do: :global.send(name, message)
  end
end
