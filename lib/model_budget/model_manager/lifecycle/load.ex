defmodule ModelBudget.ModelManager.Lifecycle.Load do
  @moduledoc false
  # Loads: admitted (claiming the models the admission evicts), run in a
  # supervised task (`{:load, id}`) or called in the step where the backend
  # is inline, finished, cancelled; a pid handle's death. Each step returns
  # `{state, effects}` (ModelManager.Effects performs them). What a step
  # still does itself: the admission's claim of the models it evicts (their
  # gates), a new load's gate (Leases.new_gate/3), and a finished load's
  # history count (Table.count_load/2, an ETS counter whose value the entry
  # keeps).

  import ModelBudget.ModelManager.Lifecycle.Books

  alias ModelBudget.Backend
  alias ModelBudget.ModelManager.Lifecycle.{Queue, Unload}
  alias ModelBudget.ModelManager.{Effects, Entry, History, Leases, Ledger, Lifecycle}
  alias ModelBudget.ModelManager.{Measured, Table}

  @type t :: Lifecycle.t()
  @type step :: {t(), [Effects.t()]}

  @doc "A load request: admitted, queued or refused."
  @spec load(t(), map(), GenServer.from()) :: step()
  def load(state, %{id: id, placement: placement} = request, from) do
    if Ledger.taken?(state.ledger, id) do
      {state, [{:reply, from, {:error, :already_loaded}}]}
    else
      # One clock reading for the whole step.
      now = state.clock.()

      case admit(state, placement, Ledger.ahead(state.ledger, nil), now, :load) do
        {:ok, admission, state} ->
          start_load(state, from, request, admission, now)

        {:error, _} = refused ->
          timeout = Keyword.get(request.opts, :timeout, 0)

          if timeout == 0 or not Ledger.possible?(state.ledger, placement),
            do: {state, refuse(from, refused)},
            else: Queue.enqueue(state, from, request, timeout)
      end
    end
  end

  @doc """
  An admitted load starts: the evicted models (already claimed) start
  unloading; the load waits for them, then its backend load runs.
  """
  @spec start_load(t(), GenServer.from(), map(), map(), integer()) :: step()
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
      {state, saved} = save(state, [entry.id | Enum.map(evicted, & &1.id)])
      {state, evicting} = Unload.evict(state, evictions, evicted, {:load, entry.id})
      effects = [{:monitor, caller, {:caller, entry.id}} | saved] ++ evicting

      if evictions == [] do
        {state, running} = run_load(state, entry.id, now)
        {state, effects ++ running}
      else
        {state, effects}
      end
    end
  end

  @doc """
  The backend load starts, in a task, or called in the step where the
  backend is inline. It receives the whole decision (Entry.decision/1)
  where it takes one (c:ModelBudget.Backend.load/4).
  """
  @spec run_load(t(), term(), integer()) :: step()
  def run_load(state, id, now) do
    %Entry{source: source, placement: placement, opts: opts} =
      entry = Ledger.fetch!(state.ledger, id)

    backend = state.backend
    decision = Entry.decision(entry)

    if inline?(state) do
      call = {Backend, :call_load, [backend, source, placement, opts, decision]}
      {state, [{:call, {:load, id, now}, call}]}
    else
      # The task also asks what the model really holds (Measured.load/5).
      task = {Measured, :load, [backend, source, placement, opts, decision]}
      {state, effects} = put(state, %{entry | running: true})
      {state, [{:start_task, {:load, id}, task} | effects]}
    end
  end

  @doc """
  A load's outcome: `{:ok, result}` from its backend, or `{:exit, reason}`;
  `now` is the clock, when the step read it already.
  """
  @spec finished_load(t(), term(), {:ok, term()} | {:exit, term()}, integer() | nil) :: step()
  def finished_load(state, id, outcome, now \\ nil) do
    {measured, outcome} = Measured.unwrap(outcome)
    entry = Ledger.fetch!(state.ledger, id)
    demonitor = {:demonitor, {:caller, id}}

    case {entry.cancelled, outcome} do
      # Its caller was answered when it was cancelled; a handle it returned
      # just before is unloaded, so nothing is lost.
      {true, {:ok, {:ok, handle}}} ->
        {state, effects} = Unload.begin_unload(state, %{entry | running: false, handle: handle})
        {state, [demonitor | effects]}

      {true, _failed} ->
        {state, effects} = drop(state, id)
        {state, [demonitor | effects]}

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
            running: false
        }

        {state, ready, raised} = reserve_measured(state, ready)
        info = Entry.info(ready)
        ledger = Ledger.put(state.ledger, ready)

        # No lease can have been taken yet: the gate opens in this step.
        answer =
          {:ok,
           Map.merge(info, %{
             leases: 0,
             last_used: now,
             idle_ms: 0,
             expires_in_ms: ready.keep_alive
           })}

        # The row first, then the gate: a checkout that sees the gate open
        # must find the ready row (with_model/3 reads it).
        effects =
          [demonitor | raised] ++
            monitor_handle(ready) ++
            [
              {:gate_used, ready.gate, now},
              {:table_put_info, ledger.usage, info, ready.gate},
              {:open_gate, ready.gate},
              {:bump, :loads},
              {:reply, entry.caller, answer}
            ]

        {%{state | ledger: ledger}, effects}

      {false, failed} ->
        reason =
          case failed do
            {:ok, {:error, reason}} -> {:load_failed, reason}
            {:ok, other} -> {:load_crashed, {:bad_return, other}}
            {:exit, reason} -> {:load_crashed, reason}
          end

        {state, effects} = drop(state, id)
        {state, [demonitor | effects] ++ [{:reply, entry.caller, {:error, reason}}]}
    end
  end

  # More measured than reserved on a device: the reservation grows to it, so
  # the ledger covers what the backend really holds.
  defp reserve_measured(state, %Entry{measured: nil} = entry), do: {state, entry, []}

  defp reserve_measured(state, entry) do
    {placement, raised, error} = Measured.compare(entry.placement, entry.measured)
    counted = {:estimate_error, error}

    if raised == [] do
      {state, entry, [counted]}
    else
      # Within the estimate's bounds (rounding, a few KiB of compute) the
      # raise is routine; beyond them someone should know.
      logged =
        case Enum.filter(raised, &Measured.beyond_bounds?/1) do
          [] ->
            []

          beyond ->
            [
              {:log, :warning,
               "model #{inspect(entry.id)} holds more than was reserved: " <>
                 Measured.describe(beyond) <>
                 "; the reservation is raised to the measured bytes"}
            ]
        end

      {_, ledger} = Ledger.release(state.ledger, entry.id)
      entry = %{entry | placement: placement, held: placement}
      {%{state | ledger: Ledger.add(ledger, entry)}, entry, [counted, {:bump, :raised} | logged]}
    end
  end

  defp monitor_handle(%Entry{id: id, handle: handle}) do
    case handle do
      pid when is_pid(pid) -> [{:monitor, pid, {:handle, id}}]
      %{pid: pid} when is_pid(pid) -> [{:monitor, pid, {:handle, id}}]
      _ -> []
    end
  end

  @doc "A model's pid handle exited: its memory is released without an unload."
  @spec handle_died(t(), term(), term()) :: step()
  def handle_died(state, id, reason) do
    message =
      "the process of model #{inspect(id)} exited (#{inspect(reason)}); releasing its memory"

    {state, effects} = drop(state, id)
    {state, [{:log, :warning, message} | effects]}
  end

  @doc """
  Cancels a load (its caller died, or an unload asked): answers its caller
  `{:error, {:load_failed, :cancelled}}`; `waiters` are answered once its
  memory is released.
  """
  @spec cancel_load(t(), Entry.t(), [Entry.unload_waiter()]) :: step()
  # Still waiting for its evicted models: they hold their memory until their
  # unloads return, so they count in full again.
  def cancel_load(state, %Entry{running: false} = entry, waiters) do
    # The books change in one step and readers see them once: the evicted
    # models' placements alone beside the load's would exceed the budget.
    {cancelled, ledger} = Ledger.cancel(state.ledger, entry.id)
    restored = Enum.map(entry.awaiting, &Ledger.fetch!(ledger, &1))
    {state, forgotten} = forget(%{state | ledger: ledger}, cancelled, restored)

    {state,
     [{:demonitor, {:caller, entry.id}} | forgotten] ++
       reply_waiters(cancelled, :ok) ++
       reply_waiters(%{entry | unload_waiters: waiters}, :ok) ++
       [{:reply, entry.caller, {:error, {:load_failed, :cancelled}}}]}
  end

  # Its task is killed; its outcome (a handle returned just before, or the
  # :DOWN) finishes the cancellation in finished_load/3: no waiting here.
  def cancel_load(state, %Entry{running: true} = entry, waiters) do
    cancelled = %{
      entry
      | status: :unloading,
        cancelled: true,
        caller: nil,
        unload_waiters: waiters ++ entry.unload_waiters
    }

    {state, effects} = put(state, cancelled)

    {state,
     [
       {:kill_task, {:load, entry.id}},
       {:demonitor, {:caller, entry.id}},
       {:reply, entry.caller, {:error, {:load_failed, :cancelled}}} | effects
     ]}
  end
end
