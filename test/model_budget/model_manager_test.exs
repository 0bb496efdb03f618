defmodule ModelBudget.ModelManagerTest do
  use ExUnit.Case, async: true

  import ExUnit.CaptureLog

  alias ModelBudget.ModelManager
  alias ModelBudget.TestBackend

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

  defp eventually(fun, tries \\ 400) do
    cond do
      fun.() ->
        :ok

      tries == 0 ->
        flunk("condition not met in time")

      true ->
        Process.sleep(5)
        eventually(fun, tries - 1)
    end
  end

  defp total(%{ram: ram, vram: vram}), do: ram + Enum.sum(Map.values(vram))

  defp holds_binary?(pid, bytes) do
    {:binary, binaries} = Process.info(pid, :binary)
    Enum.any?(binaries, fn {_, size, _} -> size == bytes end)
  end

  describe "start_link/1" do
    test "starts with an empty ledger and says so in the log" do
      log = capture_log(fn -> start_manager(memory_budget: 1_000) end)
      assert log =~ "started with an empty ledger"
      assert log =~ "no longer accounted for"
    end

    test "raises ArgumentError for bad options before starting" do
      for {opts, message} <- [
            {:nope, "expected a keyword list of options, got: :nope"},
            {[size: 1], "unknown keys [:size]"},
            {[memory_budget: -1], "invalid memory budget"},
            {[backend: String], "invalid option :backend: expected a module implementing"},
            {[backend: "x"], "invalid option :backend"},
            {[models: :a], "invalid option :models: expected a list"},
            {[models: [:a]], "expected entries {id, source} or {id, source, opts}, got: :a"},
            {[models: [{:a, {:bytes, 1}, :x}]], "invalid load options: expected a keyword list"},
            {[models: [{:a, {:bytes, 1}, n_gpus: -1}]],
             "invalid option :n_gpus: expected a non-negative integer, got: -1"}
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

    test "a restarted manager starts with an empty ledger and logs it" do
      name = {:global, {__MODULE__, make_ref()}}
      old = start_manager(name: name, memory_budget: 1_000)
      assert {:ok, %{handle: holder}} = load(name, :a, {:test, 100})

      log =
        capture_log(fn ->
          Process.exit(old, :kill)
          eventually(fn -> GenServer.whereis(name) not in [nil, old] end)
          eventually(fn -> ModelManager.list(name) == [] end)
        end)

      assert log =~ "started with an empty ledger"
      assert ModelManager.usage(name) == ModelBudget.empty_usage()
      # What the log warns about: the old model is still resident, unaccounted for.
      assert Process.alive?(holder)
      TestBackend.unload(holder)
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
      manager = start_manager(memory_budget: 1_000_000)
      before = System.monotonic_time(:millisecond)

      assert {:ok, info} = load(manager, :a, {:test, 100_000}, pinned: true)

      assert %{
               id: :a,
               status: :ready,
               source: {:test, 100_000},
               placement: %{ram: 100_000, vram: %{}},
               bytes: 100_000,
               pinned: true,
               handle: holder,
               loaded_at: loaded_at,
               last_used: last_used
             } = info

      assert loaded_at >= before and last_used >= loaded_at
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
      refute Process.alive?(holder)

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
      refute Process.alive?(holder)
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
      refute Process.alive?(holder)
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

  describe "touch/2" do
    test "moves last_used forward" do
      manager = start_manager()
      assert {:ok, %{last_used: first}} = load(manager, :a, {:test, 1})
      Process.sleep(3)
      assert ModelManager.touch(manager, :a) == :ok
      assert {:ok, %{last_used: second}} = ModelManager.info(manager, :a)
      assert second > first
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
      starter = Task.async(fn -> ModelManager.start_link(name: name, backend: TestBackend) end)
      assert_receive {:registered, manager}, @wait

      reader = Task.async(fn -> ModelManager.list(name) end)
      # The reader found no table yet and called the manager, which is blocked.
      eventually(fn -> Process.info(manager, :message_queue_len) == {:message_queue_len, 1} end)
      send(manager, :go)

      assert Task.await(reader) == []
      assert {:ok, ^manager} = Task.await(starter)
      GenServer.stop(manager)
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
    test "are ignored" do
      manager = start_manager()
      send(manager, {:stray, make_ref()})
      send(manager, make_ref())
      assert {:ok, _} = load(manager, :a, {:test, 1})
      assert Process.alive?(manager)
    end
  end

  describe "concurrency" do
    @limit 4 * 2 ** 20

    # Loads that succeed, sleep, fail, crash or lose their caller, plus
    # unloads, all at once; an observer samples usage/1 the whole time.
    test "1,000 concurrent loads never exceed the budget and leave nothing behind" do
      manager = start_manager(memory_budget: @limit, min_idle_ms: :infinity)
      counter = :counters.new(2, [:atomics])
      observer = Task.async(fn -> observe(manager, 0, 0) end)

      results =
        1..1_000
        |> Enum.map(fn i -> Task.async(fn -> load_and_maybe_unload(manager, i, counter) end) end)
        |> Task.await_many(20_000)

      send(observer.pid, :stop)
      {samples, max_total} = Task.await(observer)
      assert max_total <= @limit
      assert samples >= 100

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
        # A caller that dies while its load may be running.
        caller = spawn(fn -> ModelManager.load(manager, i, {:test, bytes, {:sleep, 5}}, opts) end)
        Process.sleep(Enum.random(0..5))
        Process.exit(caller, :kill)
        :cancelled
      else
        result = load_retrying(manager, i, {:test, bytes, behaviour}, opts, 10)
        if match?({:ok, _}, result) and rem(i, 2) == 0, do: :ok = ModelManager.unload(manager, i)
        result
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

    defp observe(manager, samples, max_total) do
      receive do
        :stop -> {samples, max_total}
      after
        0 -> observe(manager, samples + 1, max(max_total, total(ModelManager.usage(manager))))
      end
    end

    defp outcome({:ok, %{status: :ready}}), do: :ok

    defp outcome({:error, {:insufficient_memory, [device: :total, required: _, available: _]}}),
      do: :refused

    defp outcome({:error, {:load_failed, :told_to_fail}}), do: :failed
    defp outcome({:error, {:load_crashed, {%RuntimeError{}, _}}}), do: :crashed
    defp outcome(:cancelled), do: :cancelled
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
