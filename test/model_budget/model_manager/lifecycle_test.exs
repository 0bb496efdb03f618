defmodule ModelBudget.ModelManager.LifecycleTest do
  # The manager's steps without a manager: a state built by hand (a fake
  # clock, real lease gates and an ETS table made by this process: a few
  # steps read the table or a gate), a step called directly,
  # and its effects and books asserted on. Nothing here starts a process.
  use ExUnit.Case, async: true

  alias ModelBudget.Eviction
  alias ModelBudget.ModelManager.{Entry, History, Leases, Ledger, Lifecycle}
  alias ModelBudget.ModelManager.Lifecycle.{Expiry, Load, Queue, Unload}
  alias ModelBudget.ModelManager.Table

  defp ram(bytes), do: %{ram: bytes, vram: %{}}

  defp state(limit, now, entries \\ []) do
    flags = Leases.new_flags()
    ledger = Ledger.new(%{mode: :combined, limit: limit}, Eviction.compile!([]), 0)

    ledger =
      Enum.reduce(entries, ledger, fn {id, bytes, opts}, ledger ->
        Ledger.add(ledger, entry(flags, id, bytes, opts))
      end)

    %Lifecycle{
      table: Table.new(),
      flags: flags,
      task_sup: nil,
      clock: fn -> now end,
      backend: ModelBudget.Backend.Reservation,
      sweep_ms: 1_000,
      ledger: ledger,
      history: History.new(10)
    }
  end

  # A ready model, last used at `opts[:used]`, its gate open.
  defp entry(flags, id, bytes, opts) do
    request = %{id: id, source: {:bytes, bytes}, opts: opts, bytes: bytes, placement: ram(bytes)}
    gate = Leases.new_gate(flags, self(), Keyword.get(opts, :used, 0))
    Leases.open(gate)
    %{Entry.new(request, gate, {0, 0}) | status: :ready, handle: {:handle, id}}
  end

  defp request(id, bytes, opts \\ []),
    do: %{
      id: id,
      source: {:bytes, bytes},
      opts: opts,
      bytes: bytes,
      placement: ram(bytes),
      manager: nil,
      gate: nil
    }

  defp from, do: {self(), make_ref()}

  describe "Expiry.sweep/1" do
    test "a model whose keep-alive ran out is logged, counted and unloaded" do
      state = state(1_000, 150, [{:a, 100, keep_alive: 100, used: 20}, {:b, 100, []}])

      backend = state.backend

      assert {state,
              [
                {:log, :info, message},
                {:bump, :expired},
                {:demonitor, {:handle, :a}},
                {:start_task, {:unload, :a}, {^backend, :unload, [{:handle, :a}]}},
                {:table_put, _usage, [%Entry{id: :a, status: :unloading}]}
              ]} = Expiry.sweep(state)

      assert Ledger.fetch!(state.ledger, :b).status == :ready

      assert message =~ ":a: its keep-alive of 100 ms ran out (no lease for 130 ms)"
      # Claimed: no checkout can take it any more.
      gate = Ledger.fetch!(state.ledger, :a).gate
      assert Leases.reserve(%{lease_clock: nil}, :a, gate) == {:error, :not_loaded}
    end

    test "nothing while the keep-alive runs" do
      state = state(1_000, 50, [{:a, 100, keep_alive: 100, used: 0}])
      assert Expiry.sweep(state) == {state, []}
    end

    test "a leased model does not expire" do
      state = state(1_000, 500, [{:a, 100, keep_alive: 100, used: 0}])
      gate = Ledger.fetch!(state.ledger, :a).gate
      assert {:ok, _lease} = Leases.reserve(%{lease_clock: nil}, :a, gate)
      assert Expiry.sweep(state) == {state, []}
    end
  end

  describe "Queue" do
    test "enqueue/4 watches the caller and sets the deadline" do
      {caller, _} = from = from()
      {state, effects} = Queue.enqueue(state(100, 0), from, request(:w, 200), 5_000)

      assert [%{ref: ref, id: :w, from: ^from}] = state.ledger.queue

      assert effects == [
               {:monitor, caller, {:waiter, ref}},
               {:timer, 5_000, {:load_timeout, ref}}
             ]
    end

    test "enqueue/4 without a deadline sets no timer" do
      {caller, _} = from = from()
      {state, effects} = Queue.enqueue(state(100, 0), from, request(:w, 200), :infinity)
      assert [%{ref: ref}] = state.ledger.queue
      assert effects == [{:monitor, caller, {:waiter, ref}}]
    end

    test "load_timeout/2 refuses a load that still does not fit" do
      from = from()

      {state, _} =
        Queue.enqueue(state(100, 0, [{:a, 80, pinned: true}]), from, request(:w, 50), 10)

      [%{ref: ref}] = state.ledger.queue

      assert {state,
              [
                {:cancel_timer, {:load_timeout, ^ref}},
                {:demonitor, {:waiter, ^ref}},
                {:bump, :refused},
                {:reply, ^from, {:error, _}}
              ]} = Queue.load_timeout(state, ref)

      assert state.ledger.queue == []
      assert Map.keys(state.ledger.entries) == [:a]
    end

    test "load_timeout/2 admits a load that fits by then" do
      {caller, _} = from = from()
      request = request(:w, 50)
      {state, _} = Queue.enqueue(state(100, 7), from, request, 10)
      [%{ref: ref}] = state.ledger.queue

      assert {state,
              [
                {:cancel_timer, {:load_timeout, ^ref}},
                {:demonitor, {:waiter, ^ref}},
                {:monitor, ^caller, {:caller, :w}},
                {:table_put, _, [%Entry{id: :w, status: :loading}]},
                {:start_task, {:load, :w}, _},
                {:table_put, _, [%Entry{id: :w, running: true}]}
              ]} = Queue.load_timeout(state, ref)

      assert state.ledger.queue == []
    end

    test "load_timeout/2 of a load no longer waiting does nothing" do
      state = state(100, 0)
      assert Queue.load_timeout(state, make_ref()) == {state, []}
    end

    test "admit_waiting/3 counts the loads ahead as held, first come first served" do
      state = state(100, 0)
      {state, _} = Queue.enqueue(state, from(), request(:first, 60), :infinity)
      {state, _} = Queue.enqueue(state, from(), request(:second, 60), :infinity)
      [first, second] = state.ledger.queue

      assert Queue.admit_waiting(state, second, 0) == {state, []}

      assert {%{ledger: %{queue: [^second]}}, [_, _, {:monitor, _, {:caller, :first}} | _]} =
               Queue.admit_waiting(state, first, 0)
    end

    test "waiter_died/2 takes the load out of the queue and cancels its deadline" do
      {state, _} = Queue.enqueue(state(100, 0), from(), request(:w, 200), 10)
      [%{ref: ref}] = state.ledger.queue

      assert {%{ledger: %{queue: []}}, [{:cancel_timer, {:load_timeout, ^ref}}]} =
               Queue.waiter_died(state, ref)

      assert Queue.waiter_died(state, make_ref()) == {state, []}
    end

    test "fence/3 answers at once when nothing needs to go" do
      from = from()
      state = state(100, 0)

      assert Queue.fence(state, ram(50), from) ==
               {state, [{:bump, :fences}, {:reply, from, {:ok, []}}]}
    end

    test "fence/3 evicts the idle models in the way and waits for them" do
      from = from()
      state = state(100, 0, [{:a, 80, used: 0}])

      assert {state,
              [
                {:bump, :fences},
                {:log, :info, "evicting :a (idle 0 ms) to make room on :total for a fence" <> _},
                {:bump, :evictions},
                {:count_eviction, :a},
                {:demonitor, {:handle, :a}},
                {:start_task, {:unload, :a}, _},
                {:table_put, _, [%Entry{id: :a, status: :unloading}]}
              ]} = Queue.fence(state, ram(50), from)

      assert [%{from: ^from, evicted: [:a]}] = Map.values(state.fences)
    end

    test "fence/3 refuses what cannot fit" do
      from = from()
      state = state(100, 0, [{:a, 80, pinned: true}])

      assert {^state, [{:bump, :refused}, {:reply, ^from, {:error, _}}]} =
               Queue.fence(state, ram(50), from)
    end
  end

  describe "Unload" do
    @opts %{timeout: :infinity, force: false}

    test "unload/4 of a model not loaded answers at once" do
      from = from()
      state = state(100, 0)

      assert Unload.unload(state, :x, @opts, from) ==
               {state, [{:reply, from, {:error, :not_loaded}}]}
    end

    test "unload/4 of an unleased model starts its unload task" do
      from = from()
      state = state(100, 0, [{:a, 60, []}])
      backend = state.backend

      assert {state,
              [
                {:demonitor, {:handle, :a}},
                {:start_task, {:unload, :a}, {^backend, :unload, [{:handle, :a}]}},
                {:table_put, _usage, [%Entry{id: :a, status: :unloading}]}
              ]} = Unload.unload(state, :a, @opts, from)

      assert %Entry{status: :unloading, unload_waiters: [{^from, nil}]} =
               Ledger.fetch!(state.ledger, :a)
    end

    test "an inline backend's unload is called in the step, and nobody sees it unloading" do
      state = %{state(100, 0, [{:a, 60, []}]) | inline: true}

      assert {state, [{:demonitor, {:handle, :a}}, {:call, {:unload, :a}, {_, :unload, _}}]} =
               Unload.unload(state, :a, %{@opts | force: true}, from())
               |> then(fn {state, [{:drop_gate, _} | effects]} -> {state, effects} end)

      assert Ledger.fetch!(state.ledger, :a).status == :unloading
    end

    test "a leased model drains; its timeout gives up and the model serves again" do
      from = from()
      state = state(100, 0, [{:a, 60, []}])
      gate = Ledger.fetch!(state.ledger, :a).gate
      assert {:ok, _lease} = Leases.reserve(%{lease_clock: nil}, :a, gate)

      assert {state, [{:timer, 50, {:unload_timeout, :a, _} = timer}, {:table_put, _, _}]} =
               Unload.unload(state, :a, %{@opts | timeout: 50}, from)

      assert %Entry{draining: true, unload_waiters: [{^from, ^timer}]} =
               Ledger.fetch!(state.ledger, :a)

      # The lease has not ended: a lease_ended for its gate changes nothing.
      assert Unload.lease_ended(state, elem(gate, 0)) == {state, []}

      assert {state,
              [
                {:cancel_timer, ^timer},
                {:reply, ^from, {:error, :busy}},
                {:table_put, _, [%Entry{id: :a, status: :ready}]},
                {:open_gate, ^gate}
              ]} = Unload.unload_timeout(state, timer)

      assert %Entry{status: :ready, draining: false, unload_waiters: []} =
               Ledger.fetch!(state.ledger, :a)
    end

    test "finished_unload/3 releases the memory, answers the waiters and the fence" do
      fence_from = from()
      state = state(100, 0, [{:a, 80, []}])
      {state, _} = Queue.fence(state, ram(50), fence_from)
      waiter = from()
      {state, _} = Unload.unload(state, :a, @opts, waiter)

      assert {state,
              [
                {:log, :error, crashed},
                {:table_delete, usage, :a, []},
                {:drop_gate, _},
                {:demonitor, {:handle, :a}},
                {:reply, ^waiter, :ok},
                {:reply, ^fence_from, {:ok, [:a]}}
              ]} = Unload.finished_unload(state, :a, {:exit, :boom})

      assert crashed =~ "unloading :a crashed (:boom)"
      assert usage == ModelBudget.empty_usage()
      assert state.ledger.entries == %{} and state.fences == %{}
    end
  end

  describe "Load" do
    test "load/3 of an id already taken answers at once" do
      from = from()
      state = state(100, 0, [{:a, 10, []}])

      assert Load.load(state, request(:a, 10), from) ==
               {state, [{:reply, from, {:error, :already_loaded}}]}
    end

    test "load/3 of what cannot fit, without a timeout, is refused" do
      from = from()
      state = state(100, 0, [{:a, 80, pinned: true}])

      assert {^state, [{:bump, :refused}, {:reply, ^from, {:error, {:insufficient_memory, _}}}]} =
               Load.load(state, request(:b, 50), from)
    end

    test "load/3 with a timeout waits for room" do
      {caller, _} = from = from()
      state = state(100, 0, [{:a, 80, []}])
      gate = Ledger.fetch!(state.ledger, :a).gate
      assert {:ok, _lease} = Leases.reserve(%{lease_clock: nil}, :a, gate)
      {state, effects} = Load.load(state, request(:b, 50, timeout: 100), from)
      assert [%{ref: ref, id: :b}] = state.ledger.queue
      assert effects == [{:monitor, caller, {:waiter, ref}}, {:timer, 100, {:load_timeout, ref}}]
    end

    test "an inline load is called in the step and finishes ready" do
      from = from()
      state = %{state(100, 5) | inline: true}
      backend = state.backend

      assert {state, [{:call, {:load, :b, 5}, {ModelBudget.Backend, :call_load, [^backend | _]}}]} =
               Load.load(state, request(:b, 50), from)

      assert %Entry{status: :loading} = Ledger.fetch!(state.ledger, :b)
      gate = Ledger.fetch!(state.ledger, :b).gate

      assert {state,
              [
                {:demonitor, {:caller, :b}},
                {:gate_used, ^gate, 5},
                {:table_put_info, %{ram: 50}, %{id: :b, status: :ready}, ^gate},
                {:open_gate, ^gate},
                {:bump, :loads},
                {:reply, ^from, {:ok, %{id: :b, status: :ready, handle: :h, leases: 0}}}
              ]} = Load.finished_load(state, :b, {:ok, {:ok, :h}}, 5)

      assert %Entry{status: :ready, handle: :h, loaded_at: 5, loads: 1} =
               Ledger.fetch!(state.ledger, :b)
    end

    test "a load that evicts watches its caller, evicts, and waits for the unloads" do
      {caller, _} = from = from()
      state = state(100, 0, [{:a, 80, []}])

      assert {state,
              [
                {:monitor, ^caller, {:caller, :b}},
                {:table_put, _usage, [%Entry{id: :b}, %Entry{id: :a}]},
                {:log, :info, "evicting :a" <> _},
                {:bump, :evictions},
                {:count_eviction, :a},
                {:demonitor, {:handle, :a}},
                {:start_task, {:unload, :a}, _},
                {:table_put, _, [%Entry{id: :a, status: :unloading}]}
              ]} = Load.load(state, request(:b, 50), from)

      assert %Entry{status: :loading, awaiting: awaiting} = Ledger.fetch!(state.ledger, :b)
      assert MapSet.to_list(awaiting) == [:a]

      # The unload returns: the load's task starts.
      assert {_state, effects} = Unload.finished_unload(state, :a, {:ok, :ok})

      assert [{:start_task, {:load, :b}, {_, :load, _}}, {:table_put, _, [%Entry{running: true}]}] =
               Enum.take(effects, -2)
    end

    test "cancel_load/3 of a running load kills its task and answers its caller" do
      from = from()
      state = state(100, 0)
      {state, _} = Load.load(state, request(:b, 50), from)
      entry = Ledger.fetch!(state.ledger, :b)
      waiter = from()

      assert {state,
              [
                {:kill_task, {:load, :b}},
                {:demonitor, {:caller, :b}},
                {:reply, ^from, {:error, {:load_failed, :cancelled}}},
                {:table_put, _, [%Entry{status: :unloading, cancelled: true}]}
              ]} = Load.cancel_load(state, entry, [{waiter, nil}])

      # Its task's :DOWN: the memory is released and the waiter answered.
      assert {state, [{:demonitor, {:caller, :b}}, {:table_delete, _, :b, []} | rest]} =
               Load.finished_load(state, :b, {:exit, :killed})

      assert {:reply, waiter, :ok} in rest
      assert state.ledger.entries == %{}
    end

    test "a failed load releases its memory and answers why" do
      from = from()
      state = state(100, 0)
      {state, _} = Load.load(state, request(:b, 50), from)

      assert {state, effects} = Load.finished_load(state, :b, {:ok, {:error, :enoent}})
      assert List.last(effects) == {:reply, from, {:error, {:load_failed, :enoent}}}
      assert state.ledger.usage == ModelBudget.empty_usage()
    end
  end
end
