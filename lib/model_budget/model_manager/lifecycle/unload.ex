defmodule ModelBudget.ModelManager.Lifecycle.Unload do
  @moduledoc false
  # Unloads: drained of their leases (with a timeout), forced, run in a task
  # (or inline), finished; evictions, and what waited for an evicted model.

  require Logger

  import ModelBudget.ModelManager.Lifecycle.Books

  alias ModelBudget.ModelManager.Lifecycle
  alias ModelBudget.ModelManager.Lifecycle.Load
  alias ModelBudget.ModelManager.{Entry, Leases, Ledger, Table}

  @type t :: Lifecycle.t()

  @doc "unload/3: drains leases (with a timeout), forces, joins or cancels."
  @spec unload(t(), term(), %{timeout: timeout(), force: boolean()}, GenServer.from()) :: t()
  def unload(state, id, opts, from) do
    case Ledger.fetch(state.ledger, id) do
      :error ->
        reply(from, {:error, :not_loaded})
        state

      {:ok, %Entry{status: :loading} = entry} ->
        Load.cancel_load(state, entry, [{from, nil}])

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
  def begin_unload(state, entry) do
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
    if MapSet.size(awaiting) == 0, do: Load.run_load(state, load_id, state.clock.()), else: state
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
  def evict(state, evictions, evicted, for) do
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
end
