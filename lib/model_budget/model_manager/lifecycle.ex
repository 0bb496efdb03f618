defmodule ModelBudget.ModelManager.Lifecycle do
  @moduledoc false
  # The steps the manager's callbacks take, one model's life at a time:
  # admit (claiming the models a plan evicts), load in a supervised task,
  # drain leases, unload in a task, cancel, hand memory over to the loads
  # and fences that wait for evicted models, admit waiting loads as room
  # frees, expire keep-alives. Every function takes and returns the
  # manager's state and answers callers itself (GenServer.reply/2); none
  # blocks. The books are kept by Ledger (pure), the readers' view by Table,
  # the request path by Leases.

  require Logger

  alias ModelBudget.{Backend, Eviction}
  alias ModelBudget.ModelManager
  alias ModelBudget.ModelManager.{Entry, History, Leases, Ledger, Measured, Table}

  @enforce_keys [:table, :flags, :task_sup, :backend, :clock, :sweep_ms, :ledger, :history]
  defstruct @enforce_keys ++ [:name, :subscribers, inline: false, refs: %{}, fences: %{}]

  @typedoc """
  The manager's state. `:refs` maps every monitor and task ref to what it
  watches: `{:load | :unload, id}` tasks, `{:caller, id}` callers of
  admitted loads, `{:waiter, ref}` callers of waiting loads, `{:handle, id}`
  pid handles; `:fences` fences waiting for their evicted models;
  `:subscribers` the processes told of usage changes (ModelManager's
  callbacks keep it, not these steps); `:inline` whether the backend loads
  and unloads in the manager's step (`c:ModelBudget.Backend.inline?/0`,
  asked once).
  """
  @type t :: %__MODULE__{
          name: term(),
          table: :ets.tid(),
          flags: reference(),
          task_sup: pid(),
          backend: module(),
          inline: boolean(),
          clock: (() -> integer()),
          sweep_ms: pos_integer(),
          ledger: Ledger.t(),
          history: History.t(),
          refs: %{reference() => term()},
          fences: %{reference() => map()},
          subscribers: ModelBudget.ModelManager.Subscribers.t()
        }

  ## Loads

  @doc "A load request: admitted, queued or refused."
  @spec load(t(), map(), GenServer.from()) :: t()
  def load(state, %{id: id, placement: placement} = request, from) do
    if Ledger.taken?(state.ledger, id) do
      reply(from, {:error, :already_loaded})
      state
    else
      # One clock reading for the whole step.
      now = state.clock.()

      case admit(state, placement, Ledger.ahead(state.ledger, nil), now, :load) do
        {:ok, admission, state} ->
          start_load(state, from, request, admission, now)

        {:error, _} = refused ->
          timeout = Keyword.get(request.opts, :timeout, 0)

          if timeout == 0 or not Ledger.possible?(state.ledger, placement),
            do: refuse(state, from, refused),
            else: enqueue(state, from, request, timeout)
      end
    end
  end

  # The admission, then a claim of the models it evicts: one taken by a
  # lease since is excluded and the admission made again.
  defp admit(state, placement, ahead, now, intent, exclude \\ MapSet.new()) do
    ledger = state.ledger

    probe = %{
      now: now,
      last_use: &lru_order/1,
      leased?: &Leases.leased?(&1.gate),
      free: Eviction.probe_free(ledger.rules, ledger.budget, placement),
      exclude: exclude
    }

    case Ledger.admit(ledger, placement, ahead, probe, intent) do
      {:ok, %{evictions: []} = admission} ->
        {:ok, admission, state}

      {:ok, %{evictions: evictions} = admission} ->
        gates = Enum.map(evictions, &Ledger.fetch!(ledger, &1.id).gate)

        case Leases.claim(gates) do
          :ok ->
            {:ok, admission, state}

          {:leased, indexes} ->
            leased = MapSet.new(indexes, &Enum.at(evictions, &1).id)
            admit(state, placement, ahead, now, intent, MapSet.union(exclude, leased))
        end

      {:error, _} = refused ->
        refused
    end
  end

  # The LRU position, ties (a coarse clock) broken by admission order.
  defp lru_order(%Entry{gate: {inc, _} = gate}) do
    {lru, used_at} = Leases.last_use(gate)
    {{lru, inc}, used_at}
  end

  defp refuse(state, from, refused) do
    Table.bump(state.table, :refused)
    reply(from, refused)
    state
  end

  # The evicted models (already claimed) start unloading; the load waits for
  # them, then its backend load runs.
  defp start_load(state, from, request, admission, now) do
    evictions = admission.evictions

    gate =
      if request.manager == self(),
        do: request.gate,
        else: Leases.new_gate(state.flags, self(), now)

    within_step? = evictions == [] and inline?(state)
    state = %{state | history: History.loaded(state.history, request.id)}

    # A load finished within this step is seen first ready, with the
    # history counted then.
    history = if within_step?, do: {0, 0}, else: Table.history_of(state.table, request.id)
    entry = Entry.new(request, gate, history, from)
    {ledger, evicted} = Ledger.hand_over(state.ledger, entry, admission, {:load, entry.id})
    state = %{state | ledger: ledger}

    if within_step? do
      # Loaded within this step: nothing to cancel, no one sees it loading.
      run_load(state, entry.id, now)
    else
      # The caller is watched while it waits: its death cancels the load.
      {caller, _} = from
      caller_ref = Process.monitor(caller)
      state = %{state | refs: Map.put(state.refs, caller_ref, {:caller, entry.id})}
      state = update(state, entry.id, &%{&1 | caller_ref: caller_ref})
      state = save(state, Enum.map(evicted, & &1.id))
      state = evict(state, evictions, evicted, {:load, entry.id})
      if evictions == [], do: run_load(state, entry.id, now), else: state
    end
  end

  # The backend load receives the whole decision (Entry.decision/1) where
  # it takes one (c:ModelBudget.Backend.load/4).
  defp run_load(state, id, now) do
    %Entry{source: source, placement: placement, opts: opts} =
      entry = Ledger.fetch!(state.ledger, id)

    backend = state.backend
    decision = Entry.decision(entry)

    if inline?(state) do
      outcome =
        run_inline(fn -> Backend.call_load(backend, source, placement, opts, decision) end)

      finished_load(state, id, outcome, now)
    else
      # The task also asks what the model really holds (Measured.load/5).
      task =
        Task.Supervisor.async_nolink(state.task_sup, Measured, :load, [
          backend,
          source,
          placement,
          opts,
          decision
        ])

      state = %{state | refs: Map.put(state.refs, task.ref, {:load, id})}
      update(state, id, &%{&1 | task: task})
    end
  end

  # A backend that does nothing in a load or an unload says so
  # (c:ModelBudget.Backend.inline?/0): the manager calls it in its own step
  # instead of a task (admissions at a fraction of the cost); any other may
  # block, so it runs in a task.
  defp inline?(state), do: state.inline

  defp run_inline(fun) do
    {:ok, fun.()}
  catch
    kind, reason -> {:exit, if(kind == :exit, do: reason, else: {reason, __STACKTRACE__})}
  end

  @doc """
  A load's outcome: `{:ok, result}` from its backend, or `{:exit, reason}`;
  `now` is the clock, when the step read it already.
  """
  @spec finished_load(t(), term(), {:ok, term()} | {:exit, term()}, integer() | nil) :: t()
  def finished_load(state, id, outcome, now \\ nil) do
    {measured, outcome} = Measured.unwrap(outcome)
    entry = Ledger.fetch!(state.ledger, id)
    state = demonitor(state, entry.caller_ref)

    case {entry.cancelled, outcome} do
      # Its caller was answered when it was cancelled; a handle it returned
      # just before is unloaded, so nothing is lost.
      {true, {:ok, {:ok, handle}}} ->
        begin_unload(state, %{entry | task: nil, caller_ref: nil, handle: handle})

      {true, _failed} ->
        drop(state, id)

      {false, {:ok, {:ok, handle}}} ->
        {loads, evictions} = Table.count_load(state.table, id)
        now = now || state.clock.()

        ready = %{
          entry
          | status: :ready,
            handle: handle,
            measured: measured,
            loaded_at: now,
            loads: loads,
            evictions: evictions,
            caller: nil,
            task: nil,
            caller_ref: nil
        }

        {state, ready} = reserve_measured(state, ready)
        {state, ready} = monitor_handle(state, ready)
        Leases.used(ready.gate, now)
        # The row first, then the gate: a checkout that sees the gate open
        # must find the ready row (with_model/3 reads it).
        info = Entry.info(ready)
        ledger = Ledger.put(state.ledger, ready)
        Table.put_info(state.table, ledger.usage, info, ready.gate)
        Leases.open(ready.gate)
        Table.bump(state.table, :loads)
        # No lease can have been taken yet: the gate opened in this step.
        reply(
          entry.caller,
          {:ok,
           Map.merge(info, %{
             leases: 0,
             last_used: now,
             idle_ms: 0,
             expires_in_ms: ready.keep_alive
           })}
        )

        %{state | ledger: ledger}

      {false, failed} ->
        reason =
          case failed do
            {:ok, {:error, reason}} -> {:load_failed, reason}
            {:ok, other} -> {:load_crashed, {:bad_return, other}}
            {:exit, reason} -> {:load_crashed, reason}
          end

        state = drop(state, id)
        reply(entry.caller, {:error, reason})
        state
    end
  end

  # More measured than reserved on a device: the reservation grows to it, so
  # the ledger covers what the backend really holds.
  defp reserve_measured(state, %Entry{measured: nil} = entry), do: {state, entry}

  defp reserve_measured(state, entry) do
    {placement, raised, error} = Measured.compare(entry.placement, entry.measured)
    Table.estimate_error(state.table, error)

    if raised == [] do
      {state, entry}
    else
      Table.bump(state.table, :raised)

      # Within the estimate's bounds (rounding, a few KiB of compute) the
      # raise is routine; beyond them someone should know.
      case Enum.filter(raised, &Measured.beyond_bounds?/1) do
        [] ->
          :ok

        beyond ->
          Logger.warning(
            "#{prefix(state)}: model #{inspect(entry.id)} holds more than was reserved: " <>
              Measured.describe(beyond) <> "; the reservation is raised to the measured bytes"
          )
      end

      {_, ledger} = Ledger.release(state.ledger, entry.id)
      entry = %{entry | placement: placement, held: placement}
      {%{state | ledger: Ledger.add(ledger, entry)}, entry}
    end
  end

  defp monitor_handle(state, %Entry{handle: handle} = entry) do
    case handle do
      pid when is_pid(pid) -> monitor_handle(state, entry, pid)
      %{pid: pid} when is_pid(pid) -> monitor_handle(state, entry, pid)
      _ -> {state, entry}
    end
  end

  defp monitor_handle(state, %Entry{id: id} = entry, pid) do
    ref = Process.monitor(pid)
    {%{state | refs: Map.put(state.refs, ref, {:handle, id})}, %{entry | handle_ref: ref}}
  end

  @doc "A model's pid handle exited: its memory is released without an unload."
  @spec handle_died(t(), term(), term()) :: t()
  def handle_died(state, id, reason) do
    Logger.warning(
      "#{prefix(state)}: the process of model #{inspect(id)} exited (#{inspect(reason)}); " <>
        "releasing its memory"
    )

    drop(state, id)
  end

  @doc """
  Cancels a load (its caller died, or an unload asked): answers its caller
  `{:error, {:load_failed, :cancelled}}`; `waiters` are answered once its
  memory is released.
  """
  @spec cancel_load(t(), Entry.t(), [Entry.unload_waiter()]) :: t()
  # Still waiting for its evicted models: they hold their memory until their
  # unloads return, so they count in full again.
  def cancel_load(state, %Entry{task: nil} = entry, waiters) do
    state = demonitor(state, entry.caller_ref)
    # The books change in one step and readers see them once: the evicted
    # models' placements alone beside the load's would exceed the budget.
    {cancelled, ledger} = Ledger.cancel(state.ledger, entry.id)
    restored = Enum.map(entry.awaiting, &Ledger.fetch!(ledger, &1))
    state = forget(%{state | ledger: ledger}, cancelled, restored)
    reply_waiters(cancelled, :ok)
    reply_waiters(%{entry | unload_waiters: waiters}, :ok)
    reply(entry.caller, {:error, {:load_failed, :cancelled}})
    state
  end

  # Its task is killed; its outcome (a handle returned just before, or the
  # :DOWN) finishes the cancellation in finished_load/3: no waiting here.
  def cancel_load(state, %Entry{task: %Task{pid: pid}} = entry, waiters) do
    Process.exit(pid, :kill)
    state = demonitor(state, entry.caller_ref)
    reply(entry.caller, {:error, {:load_failed, :cancelled}})

    update(state, entry.id, fn entry ->
      %{
        entry
        | status: :unloading,
          cancelled: true,
          caller: nil,
          caller_ref: nil,
          unload_waiters: waiters ++ entry.unload_waiters
      }
    end)
  end

  ## Unloads

  @doc "unload/3: drains leases (with a timeout), forces, joins or cancels."
  @spec unload(t(), term(), %{timeout: timeout(), force: boolean()}, GenServer.from()) :: t()
  def unload(state, id, opts, from) do
    case Ledger.fetch(state.ledger, id) do
      :error ->
        reply(from, {:error, :not_loaded})
        state

      {:ok, %Entry{status: :loading} = entry} ->
        cancel_load(state, entry, [{from, nil}])

      {:ok, %Entry{status: :ready} = entry} ->
        if opts.force do
          Leases.drop(entry.gate)
          begin_unload(state, %{entry | unload_waiters: [{from, nil}]})
        else
          drain(state, entry, from, opts.timeout)
        end

      {:ok, %Entry{draining: true} = entry} ->
        if opts.force do
          Leases.drop(entry.gate)
          begin_unload(state, add_waiter(entry, from, nil))
        else
          put(state, add_waiter(entry, from, timer(opts.timeout, {:unload_timeout, id})))
        end

      # Unloading already: answered when it is done.
      {:ok, %Entry{status: :unloading} = entry} ->
        put(state, add_waiter(entry, from, nil))
    end
  end

  defp add_waiter(entry, from, timer),
    do: %{entry | unload_waiters: [{from, timer} | entry.unload_waiters]}

  # Closes the gate (checkouts fail from now on) and unloads once no lease
  # is left; the end of its last lease (a checkin, or its last term gone)
  # tells the manager when.
  defp drain(state, entry, from, timeout) do
    if Leases.close(entry.gate) do
      timer = timer(timeout, {:unload_timeout, entry.id})
      entry = %{entry | status: :unloading, draining: true, unload_waiters: [{from, timer}]}
      put(state, entry)
    else
      begin_unload(state, %{entry | unload_waiters: [{from, nil}]})
    end
  end

  @doc """
  A lease ended on the closed gate of incarnation `inc`: a drained model
  unloads. `nil`: loads wait for room (settle/1 tries them again).
  """
  @spec lease_ended(t(), pos_integer() | nil) :: t()
  def lease_ended(state, nil), do: state

  def lease_ended(state, inc) do
    case Enum.find(state.ledger.entries, fn {_id, entry} -> elem(entry.gate, 0) == inc end) do
      {id, %Entry{draining: true}} -> drained(state, id)
      _ -> state
    end
  end

  # A draining model unloads once its last lease is gone.
  defp drained(state, id) do
    with {:ok, %Entry{draining: true} = entry} <- Ledger.fetch(state.ledger, id),
         false <- Leases.leased?(entry.gate) do
      waiters = for {from, timer} <- entry.unload_waiters, do: {from, cancel_timer(timer)}
      begin_unload(state, %{entry | draining: false, unload_waiters: waiters})
    else
      _ -> state
    end
  end

  @doc "An unload/3 timeout: that caller gets `{:error, :busy}`; the model serves again if nobody else waits."
  @spec unload_timeout(t(), term(), reference()) :: t()
  def unload_timeout(state, id, timer) do
    with {:ok, %Entry{draining: true} = entry} <- Ledger.fetch(state.ledger, id),
         {[{from, ^timer}], rest} <-
           Enum.split_with(entry.unload_waiters, &(elem(&1, 1) == timer)) do
      reply(from, {:error, :busy})

      if rest == [] do
        state = put(state, %{entry | status: :ready, draining: false, unload_waiters: []})
        Leases.open(entry.gate)
        state
      else
        put(state, %{entry | unload_waiters: rest})
      end
    else
      _ -> state
    end
  end

  # The memory stays reserved until the backend's unload returns: a runtime
  # frees it only then.
  defp begin_unload(state, entry) do
    state = demonitor(state, entry.handle_ref)
    entry = %{entry | status: :unloading, draining: false, handle_ref: nil}

    if inline?(state) do
      # Released within this step: readers never see it unloading.
      unloaded(state, entry, run_inline(fn -> state.backend.unload(entry.handle) end))
    else
      task = Task.Supervisor.async_nolink(state.task_sup, state.backend, :unload, [entry.handle])
      state = %{state | refs: Map.put(state.refs, task.ref, {:unload, entry.id})}
      put(state, %{entry | task: task})
    end
  end

  @doc "An unload's outcome: the memory is released, and what waited for it goes on."
  @spec finished_unload(t(), term(), {:ok, term()} | {:exit, term()}) :: t()
  def finished_unload(state, id, outcome),
    do: unloaded(state, Ledger.fetch!(state.ledger, id), outcome)

  defp unloaded(state, entry, outcome) do
    with {:exit, reason} <- outcome do
      Logger.error(
        "#{prefix(state)}: unloading #{inspect(entry.id)} crashed (#{inspect(reason)}); " <>
          "its memory is released anyway"
      )
    end

    state = release(state, entry)
    reply_waiters(entry, :ok)
    evicted(state, entry)
  end

  # An evicted model is unloaded: what waited for it may go on.
  defp evicted(state, %Entry{evicted_for: nil}), do: state

  defp evicted(state, %Entry{evicted_for: {:load, load_id}, id: id}) do
    entry = Ledger.fetch!(state.ledger, load_id)
    awaiting = MapSet.delete(entry.awaiting, id)
    state = put(state, %{entry | awaiting: awaiting})
    if MapSet.size(awaiting) == 0, do: run_load(state, load_id, state.clock.()), else: state
  end

  defp evicted(state, %Entry{evicted_for: {:fence, ref}, id: id}) do
    fence = Map.fetch!(state.fences, ref)
    pending = MapSet.delete(fence.pending, id)

    if MapSet.size(pending) == 0 do
      reply(fence.from, {:ok, fence.evicted})
      %{state | fences: Map.delete(state.fences, ref)}
    else
      %{state | fences: Map.put(state.fences, ref, %{fence | pending: pending})}
    end
  end

  # The claimed models start unloading, logged with the reason; `for` says
  # what for (the evicted entries' :evicted_for).
  defp evict(state, evictions, evicted, for) do
    Enum.zip(evictions, evicted)
    |> Enum.reduce(state, fn {eviction, entry}, state ->
      log_eviction(state, entry, eviction, for)
      Table.bump(state.table, :evictions)
      Table.count_eviction(state.table, entry.id)
      begin_unload(state, entry)
    end)
  end

  defp log_eviction(state, entry, eviction, for) do
    target =
      case for do
        {:load, id} -> "the load of #{inspect(id)}"
        {:fence, _ref} -> "a fence"
      end

    reason =
      case eviction.reason do
        :constraint ->
          "the :evict_when rules hold (#{Enum.join(state.ledger.rules.constraint.expressions, " or ")})"

        {:does_not_fit, required, available} ->
          "#{required} bytes do not fit in the #{available} available"
      end

    Logger.info(
      "#{prefix(state)}: evicting #{inspect(entry.id)} (idle #{idle_ms(state, entry)} ms) " <>
        "to make room on #{inspect(eviction.device)} for #{target}: #{reason}"
    )
  end

  defp idle_ms(state, entry) do
    {_lru, used_at} = Leases.last_use(entry.gate)
    state.clock.() - used_at
  end

  ## Fences

  @doc "fence/3: makes room, answered once the evicted models are unloaded."
  @spec fence(t(), ModelBudget.placement(), GenServer.from()) :: t()
  def fence(state, placement, from) do
    case admit(state, placement, [], state.clock.(), :fence) do
      {:ok, %{evictions: []}, state} ->
        Table.bump(state.table, :fences)
        reply(from, {:ok, []})
        state

      {:ok, %{evictions: evictions} = admission, state} ->
        Table.bump(state.table, :fences)
        ref = make_ref()
        # Nothing takes the evicted models' memory over: they count in full
        # until their unloads return, and the fence answers then.
        {ledger, evicted} = Ledger.hand_over(state.ledger, nil, admission, {:fence, ref})
        ids = Enum.map(evictions, & &1.id)
        fence = %{from: from, pending: MapSet.new(ids), evicted: ids}
        state = %{state | ledger: ledger, fences: Map.put(state.fences, ref, fence)}
        evict(state, evictions, evicted, {:fence, ref})

      {:error, _} = refused ->
        refuse(state, from, refused)
    end
  end

  ## Waiting loads

  defp enqueue(state, {caller, _} = from, request, timeout) do
    ref = make_ref()
    caller_ref = Process.monitor(caller)
    timer = timer(timeout, {:load_timeout, ref})

    waiter = %{
      ref: ref,
      id: request.id,
      placement: request.placement,
      request: request,
      from: from,
      caller_ref: caller_ref,
      timer: timer
    }

    ledger = Ledger.enqueue(state.ledger, waiter)
    %{state | ledger: ledger, refs: Map.put(state.refs, caller_ref, {:waiter, ref})}
  end

  @doc """
  Tries the waiting loads again, first come first served: each is admitted
  as soon as it fits with the loads before it counted as held. Called after
  every step of the manager; the next checkin tells the manager while any
  load waits.
  """
  @spec settle(t()) :: t()
  def settle(%__MODULE__{ledger: %Ledger{queue: []}} = state), do: state

  def settle(%__MODULE__{} = state) do
    # Armed before the leases are looked at: a lease that ends after this
    # point tells the manager (its end counts down, then reads the flag),
    # one that ended before is seen by the admissions below.
    Leases.arm(state.flags, true)
    now = state.clock.()

    state =
      Enum.reduce(state.ledger.queue, state, fn waiter, state ->
        ahead = Ledger.ahead(state.ledger, waiter.ref)

        case admit(state, waiter.placement, ahead, now, :load) do
          {:ok, admission, state} -> admit_waiter(state, waiter, admission, now)
          {:error, _} -> state
        end
      end)

    if state.ledger.queue == [], do: Leases.arm(state.flags, false)
    state
  end

  defp admit_waiter(state, waiter, admission, now) do
    {_, ledger} = Ledger.dequeue(state.ledger, waiter.ref)
    cancel_timer(waiter.timer)
    state = demonitor(%{state | ledger: ledger}, waiter.caller_ref)
    start_load(state, waiter.from, waiter.request, admission, now)
  end

  @doc "A waiting load's deadline: one last try, else the usual refusal."
  @spec load_timeout(t(), reference()) :: t()
  def load_timeout(state, ref) do
    ahead = Ledger.ahead(state.ledger, ref)

    case Enum.find(state.ledger.queue, &(&1.ref == ref)) do
      nil ->
        state

      waiter ->
        now = state.clock.()

        case admit(state, waiter.placement, ahead, now, :load) do
          {:ok, admission, state} ->
            admit_waiter(state, %{waiter | timer: nil}, admission, now)

          {:error, _} = refused ->
            {_, ledger} = Ledger.dequeue(state.ledger, ref)
            state = demonitor(%{state | ledger: ledger}, waiter.caller_ref)
            refuse(state, waiter.from, refused)
        end
    end
  end

  @doc "A waiting load's caller died: it leaves the queue."
  @spec waiter_died(t(), reference()) :: t()
  def waiter_died(state, ref) do
    {waiter, ledger} = Ledger.dequeue(state.ledger, ref)
    if waiter, do: cancel_timer(waiter.timer)
    %{state | ledger: ledger}
  end

  ## Lease holders and keep-alive

  @doc """
  Housekeeping, every `:sweep_ms` and on `sweep/1`: models whose keep-alive
  ran out unload. (Leases of dead holders end with their holders' heaps.)
  """
  @spec sweep(t()) :: t()
  def sweep(state) do
    now = state.clock.()

    probe = %{now: now, last_use: &Leases.last_use(&1.gate)}

    state.ledger
    |> Ledger.expired(probe)
    |> Enum.reduce(state, fn entry, state ->
      case Leases.claim([entry.gate]) do
        :ok -> expire(state, entry, now)
        {:leased, _} -> state
      end
    end)
  end

  defp expire(state, entry, now) do
    {_lru, used_at} = Leases.last_use(entry.gate)

    Logger.info(
      "#{prefix(state)}: unloading #{inspect(entry.id)}: its keep-alive of " <>
        "#{entry.keep_alive} ms ran out (no lease for #{now - used_at} ms)"
    )

    Table.bump(state.table, :expired)
    begin_unload(state, entry)
  end

  ## Books and answers

  @doc "A model's public view: its entry's fields, its lease count and last use."
  @spec view(map(), map()) :: map()
  def view(shared, info) do
    case Table.gate(shared.table, info.id) do
      {:ok, gate} ->
        {_lru, used_at} = Leases.last_use(gate)
        durations(shared, Map.merge(info, %{leases: Leases.count(gate), last_used: used_at}))

      :error ->
        durations(shared, Map.merge(info, %{leases: 0, last_used: info.loaded_at}))
    end
  end

  # The raw clock readings as durations a person reads: how long the model
  # has been idle, and how long its keep-alive has left (while unleased).
  defp durations(shared, %{last_used: last_used} = info) when is_integer(last_used) do
    idle = max(shared.clock.() - last_used, 0)

    expires =
      case info.keep_alive do
        :infinity -> :infinity
        _ when info.leases > 0 -> :infinity
        keep_alive -> max(keep_alive - idle, 0)
      end

    Map.merge(info, %{idle_ms: idle, expires_in_ms: expires})
  end

  defp durations(_shared, info), do: Map.merge(info, %{idle_ms: 0, expires_in_ms: :infinity})

  defp put(state, entry), do: save(%{state | ledger: Ledger.put(state.ledger, entry)}, [entry.id])

  defp update(state, id, fun), do: put(state, fun.(Ledger.fetch!(state.ledger, id)))

  # The entries `ids` and the usage, to the readers' table in one insert.
  defp save(state, ids) do
    Table.put(state.table, state.ledger.usage, Enum.map(ids, &Ledger.fetch!(state.ledger, &1)))
    state
  end

  # `entry` as it is now: the ledger's, or one not written back yet.
  defp release(state, entry) do
    {_, ledger} = Ledger.release(state.ledger, entry.id)
    forget(%{state | ledger: ledger}, entry, [])
  end

  # An entry gone from the ledger leaves the readers' table, in the write
  # that also carries the usage and the `changed` entries.
  defp forget(state, entry, changed) do
    Table.delete(state.table, state.ledger.usage, entry.id, changed)
    Leases.drop(entry.gate)
    {history, dropped} = History.forgotten(state.history, entry.id)
    Enum.each(dropped, &Table.drop_history(state.table, &1))
    demonitor(%{state | history: history}, entry.handle_ref)
  end

  defp drop(state, id) do
    entry = Ledger.fetch!(state.ledger, id)
    state = release(state, entry)
    reply_waiters(entry, :ok)
    state
  end

  defp reply_waiters(entry, answer) do
    for {from, timer} <- entry.unload_waiters do
      cancel_timer(timer)
      reply(from, answer)
    end

    :ok
  end

  defp demonitor(state, nil), do: state

  defp demonitor(state, ref) do
    Process.demonitor(ref, [:flush])
    %{state | refs: Map.delete(state.refs, ref)}
  end

  defp timer(:infinity, _message), do: nil
  defp timer(ms, message), do: :erlang.start_timer(ms, self(), {ModelManager, message})

  defp cancel_timer(nil), do: nil

  defp cancel_timer(timer) do
    :erlang.cancel_timer(timer, async: true, info: false)
    nil
  end

  defp reply(nil, _answer), do: :ok
  defp reply(from, answer), do: GenServer.reply(from, answer)

  defp prefix(state), do: "#{inspect(ModelManager)} #{inspect(state.name || self())}"
end
