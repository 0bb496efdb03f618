defmodule ModelBudget.ModelManager.Lifecycle.Load do
  @moduledoc false
  # Loads: admitted (claiming the models the admission evicts), run in a
  # supervised task (or inline), finished, cancelled; a pid handle's death.

  require Logger

  import ModelBudget.ModelManager.Lifecycle.Books

  alias ModelBudget.Backend
  alias ModelBudget.ModelManager.Lifecycle
  alias ModelBudget.ModelManager.Lifecycle.{Queue, Unload}
  alias ModelBudget.ModelManager.{Effects, Entry, History, Leases, Ledger, Measured, Table}

  @type t :: Lifecycle.t()

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
            else: Effects.run(Queue.enqueue(state, from, request, timeout))
      end
    end
  end

  # The admission, then a claim of the models it evicts: one taken by a
  # lease since is excluded and the admission made again.

  # them, then its backend load runs.
  def start_load(state, from, request, admission, now) do
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
      state = Effects.run(update(state, entry.id, &%{&1 | caller_ref: caller_ref}))
      state = Effects.run(save(state, Enum.map(evicted, & &1.id)))
      state = Effects.run(Unload.evict(state, evictions, evicted, {:load, entry.id}))
      if evictions == [], do: run_load(state, entry.id, now), else: state
    end
  end

  # The backend load receives the whole decision (Entry.decision/1) where
  # it takes one (c:ModelBudget.Backend.load/4).
  def run_load(state, id, now) do
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
      Effects.run(update(state, id, &%{&1 | task: task}))
    end
  end

  # A backend that does nothing in a load or an unload says so
  # (c:ModelBudget.Backend.inline?/0): the manager calls it in its own step

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
        Effects.run(
          Unload.begin_unload(state, %{entry | task: nil, caller_ref: nil, handle: handle})
        )

      {true, _failed} ->
        Effects.run(drop(state, id))

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

        state = Effects.run(drop(state, id))
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

  defp monitor_handle(state, %Entry{id: id} = entry, pid),
    do: {Effects.run(state, [{:monitor, pid, {:handle, id}}]), entry}

  @doc "A model's pid handle exited: its memory is released without an unload."
  @spec handle_died(t(), term(), term()) :: t()
  def handle_died(state, id, reason) do
    Logger.warning(
      "#{prefix(state)}: the process of model #{inspect(id)} exited (#{inspect(reason)}); " <>
        "releasing its memory"
    )

    Effects.run(drop(state, id))
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
    state = Effects.run(forget(%{state | ledger: ledger}, cancelled, restored))
    state = Effects.run(state, reply_waiters(cancelled, :ok))
    state = Effects.run(state, reply_waiters(%{entry | unload_waiters: waiters}, :ok))
    reply(entry.caller, {:error, {:load_failed, :cancelled}})
    state
  end

  # Its task is killed; its outcome (a handle returned just before, or the
  # :DOWN) finishes the cancellation in finished_load/3: no waiting here.
  def cancel_load(state, %Entry{task: %Task{pid: pid}} = entry, waiters) do
    Process.exit(pid, :kill)
    state = demonitor(state, entry.caller_ref)
    reply(entry.caller, {:error, {:load_failed, :cancelled}})

    state
    |> update(entry.id, fn entry ->
      %{
        entry
        | status: :unloading,
          cancelled: true,
          caller: nil,
          caller_ref: nil,
          unload_waiters: waiters ++ entry.unload_waiters
      }
    end)
    |> Effects.run()
  end
end
