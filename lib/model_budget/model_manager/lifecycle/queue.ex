defmodule ModelBudget.ModelManager.Lifecycle.Queue do
  @moduledoc false
  # Loads waiting for room (admitted as it frees, refused at their
  # deadline, gone with their callers) and fences.

  import ModelBudget.ModelManager.Lifecycle.Books

  alias ModelBudget.ModelManager.Lifecycle
  alias ModelBudget.ModelManager.Lifecycle.{Load, Unload}
  alias ModelBudget.ModelManager.{Leases, Ledger, Table}

  @type t :: Lifecycle.t()

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
        Unload.evict(state, evictions, evicted, {:fence, ref})

      {:error, _} = refused ->
        refuse(state, from, refused)
    end
  end

  ## Waiting loads

  def enqueue(state, {caller, _} = from, request, timeout) do
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
  def settle(%Lifecycle{ledger: %Ledger{queue: []}} = state), do: state

  def settle(%Lifecycle{} = state) do
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
    Load.start_load(state, waiter.from, waiter.request, admission, now)
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
end
