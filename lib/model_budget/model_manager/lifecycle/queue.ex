defmodule ModelBudget.ModelManager.Lifecycle.Queue do
  @moduledoc false
  # Loads waiting for room (admitted as it frees, refused at their
  # deadline, gone with their callers) and fences. Each step returns
  # `{state, effects}` (ModelManager.Effects performs them), settle/1
  # excepted: it drives admit_waiting/3, arming the lease flag first (a
  # write that must come before the admissions read the leases).

  import ModelBudget.ModelManager.Lifecycle.Books

  alias ModelBudget.ModelManager.{Effects, Leases, Ledger, Lifecycle}
  alias ModelBudget.ModelManager.Lifecycle.{Load, Unload}

  @type t :: Lifecycle.t()

  ## Fences

  @doc """
  fence/3: makes room, answered once the evicted models are unloaded. The
  admission claims the models it evicts (a write to their gates, in this
  step); the rest is effects.
  """
  @spec fence(t(), ModelBudget.placement(), GenServer.from()) :: {t(), [Effects.t()]}
  def fence(state, placement, from) do
    case admit(state, placement, [], state.clock.(), :fence) do
      {:ok, %{evictions: []}, state} ->
        {state, [{:bump, :fences}, {:reply, from, {:ok, []}}]}

      {:ok, %{evictions: evictions} = admission, state} ->
        ref = make_ref()
        # Nothing takes the evicted models' memory over: they count in full
        # until their unloads return, and the fence answers then.
        {ledger, evicted} = Ledger.hand_over(state.ledger, nil, admission, {:fence, ref})
        ids = Enum.map(evictions, & &1.id)
        fence = %{from: from, pending: MapSet.new(ids), evicted: ids}
        state = %{state | ledger: ledger, fences: Map.put(state.fences, ref, fence)}
        {state, evicting} = Unload.evict(state, evictions, evicted, {:fence, ref})
        {state, [{:bump, :fences} | evicting]}

      {:error, _} = refused ->
        {state, refuse(from, refused)}
    end
  end

  ## Waiting loads

  @doc """
  A load that does not fit now waits for room, up to `timeout` ms: its
  caller is watched (`{:waiter, ref}`) and its deadline set
  (`{:load_timeout, ref}`).
  """
  @spec enqueue(t(), GenServer.from(), map(), timeout()) :: {t(), [Effects.t()]}
  def enqueue(state, {caller, _} = from, request, timeout) do
    ref = make_ref()

    waiter = %{
      ref: ref,
      id: request.id,
      placement: request.placement,
      request: request,
      from: from
    }

    monitor = {:monitor, caller, {:waiter, ref}}

    effects =
      if timeout == :infinity,
        do: [monitor],
        else: [monitor, {:timer, timeout, {:load_timeout, ref}}]

    {%{state | ledger: Ledger.enqueue(state.ledger, waiter)}, effects}
  end

  @doc """
  Tries the waiting loads again, first come first served: each is admitted
  as soon as it fits with the loads before it counted as held. Called after
  every step of the manager; the next checkin tells the manager while any
  load waits. It drives `admit_waiting/3`, one waiting load at a time, and
  performs each one's effects before the next is tried (an admitted load
  is in the books, from its start, when the next one is admitted).
  """
  @spec settle(t()) :: t()
  def settle(%Lifecycle{ledger: %Ledger{queue: []}} = state), do: state

  def settle(%Lifecycle{} = state) do
    # Armed before the leases are looked at: a lease that ends after this
    # point tells the manager (its end counts down, then reads the flag),
    # one that ended before is seen by the admissions below.
    Leases.arm(state.flags, true)
    now = state.clock.()

    state =
      Enum.reduce(state.ledger.queue, state, fn waiter, state ->
        Effects.run(admit_waiting(state, waiter, now))
      end)

    if state.ledger.queue == [], do: Leases.arm(state.flags, false)
    state
  end

  @doc """
  One waiting load tried at `now`: admitted (it leaves the queue and
  starts) if it fits with the loads ahead of it counted as held, else
  nothing. The admission claims the models it evicts (their gates).
  """
  @spec admit_waiting(t(), Ledger.waiter(), integer()) :: {t(), [Effects.t()]}
  def admit_waiting(state, waiter, now) do
    ahead = Ledger.ahead(state.ledger, waiter.ref)

    case admit(state, waiter.placement, ahead, now, :load) do
      {:ok, admission, state} -> admit_waiter(state, waiter, admission, now)
      {:error, _} -> {state, []}
    end
  end

  defp admit_waiter(state, waiter, admission, now) do
    {_, ledger} = Ledger.dequeue(state.ledger, waiter.ref)

    {state, started} =
      Load.start_load(%{state | ledger: ledger}, waiter.from, waiter.request, admission, now)

    {state,
     [{:cancel_timer, {:load_timeout, waiter.ref}}, {:demonitor, {:waiter, waiter.ref}} | started]}
  end

  @doc "A waiting load's deadline: one last try, else the usual refusal."
  @spec load_timeout(t(), reference()) :: {t(), [Effects.t()]}
  def load_timeout(state, ref) do
    case Enum.find(state.ledger.queue, &(&1.ref == ref)) do
      nil ->
        {state, []}

      waiter ->
        now = state.clock.()
        ahead = Ledger.ahead(state.ledger, ref)

        case admit(state, waiter.placement, ahead, now, :load) do
          {:ok, admission, state} ->
            admit_waiter(state, waiter, admission, now)

          {:error, _} = refused ->
            {_, ledger} = Ledger.dequeue(state.ledger, ref)

            {%{state | ledger: ledger},
             [
               {:cancel_timer, {:load_timeout, ref}},
               {:demonitor, {:waiter, ref}} | refuse(waiter.from, refused)
             ]}
        end
    end
  end

  @doc "A waiting load's caller died: it leaves the queue."
  @spec waiter_died(t(), reference()) :: {t(), [Effects.t()]}
  def waiter_died(state, ref) do
    case Ledger.dequeue(state.ledger, ref) do
      {nil, _} -> {state, []}
      {_waiter, ledger} -> {%{state | ledger: ledger}, [{:cancel_timer, {:load_timeout, ref}}]}
    end
  end
end
