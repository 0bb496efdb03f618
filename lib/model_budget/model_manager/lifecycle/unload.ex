defmodule ModelBudget.ModelManager.Lifecycle.Unload do
  @moduledoc false
  # Unloads: drained of their leases (with a timeout), forced, run in a task
  # (or inline), finished; evictions, and what waited for an evicted model.
  # Each step returns `{state, effects}` (ModelManager.Effects performs
  # them). What a step still reads or writes itself: the lease gates whose
  # answer decides it (Leases.close/1 in a drain, Leases.leased?/1 once a
  # drain's last lease ended, Leases.last_use/1 for an eviction's log).

  import ModelBudget.ModelManager.Lifecycle.Books

  alias ModelBudget.ModelManager.{Effects, Entry, Leases, Ledger, Lifecycle}
  alias ModelBudget.ModelManager.Lifecycle.Load

  @type t :: Lifecycle.t()
  @type step :: {t(), [Effects.t()]}

  @doc "unload/3: drains leases (with a timeout), forces, joins or cancels."
  @spec unload(t(), term(), %{timeout: timeout(), force: boolean()}, GenServer.from()) :: step()
  def unload(state, id, opts, from) do
    case Ledger.fetch(state.ledger, id) do
      :error ->
        {state, [{:reply, from, {:error, :not_loaded}}]}

      {:ok, %Entry{status: :loading} = entry} ->
        Load.cancel_load(state, entry, [{from, nil}])

      {:ok, %Entry{status: :ready} = entry} ->
        if opts.force do
          {state, effects} = begin_unload(state, %{entry | unload_waiters: [{from, nil}]})
          {state, [{:drop_gate, entry.gate} | effects]}
        else
          drain(state, entry, from, opts.timeout)
        end

      {:ok, %Entry{draining: true} = entry} ->
        if opts.force do
          {state, effects} = begin_unload(state, add_waiter(entry, from, nil))
          {state, [{:drop_gate, entry.gate} | effects]}
        else
          {timer, effects} = unload_timer(id, opts.timeout)
          {state, put_effects} = put(state, add_waiter(entry, from, timer))
          {state, effects ++ put_effects}
        end

      # Unloading already: answered when it is done.
      {:ok, %Entry{status: :unloading} = entry} ->
        put(state, add_waiter(entry, from, nil))
    end
  end

  defp add_waiter(entry, from, timer),
    do: %{entry | unload_waiters: [{from, timer} | entry.unload_waiters]}

  # The timer of one unload/3 caller: its message names it.
  defp unload_timer(_id, :infinity), do: {nil, []}

  defp unload_timer(id, ms) do
    message = {:unload_timeout, id, make_ref()}
    {message, timer(ms, message)}
  end

  # Closes the gate (checkouts fail from now on) and unloads once no lease
  # is left; the end of its last lease (a checkin, or its last term gone)
  # tells the manager when.
  defp drain(state, entry, from, timeout) do
    if Leases.close(entry.gate) do
      {timer, effects} = unload_timer(entry.id, timeout)
      entry = %{entry | status: :unloading, draining: true, unload_waiters: [{from, timer}]}
      {state, put_effects} = put(state, entry)
      {state, effects ++ put_effects}
    else
      begin_unload(state, %{entry | unload_waiters: [{from, nil}]})
    end
  end

  @doc """
  A lease ended on the closed gate of incarnation `inc`: a drained model
  unloads. `nil`: loads wait for room (settle/1 tries them again).
  """
  @spec lease_ended(t(), pos_integer() | nil) :: step()
  def lease_ended(state, nil), do: {state, []}

  def lease_ended(state, inc) do
    case Enum.find(state.ledger.entries, fn {_id, entry} -> elem(entry.gate, 0) == inc end) do
      {id, %Entry{draining: true}} -> drained(state, id)
      _ -> {state, []}
    end
  end

  # A draining model unloads once its last lease is gone.
  defp drained(state, id) do
    with {:ok, %Entry{draining: true} = entry} <- Ledger.fetch(state.ledger, id),
         false <- Leases.leased?(entry.gate) do
      cancels = Enum.flat_map(entry.unload_waiters, &cancel_timer(elem(&1, 1)))
      waiters = for {from, _timer} <- entry.unload_waiters, do: {from, nil}
      {state, effects} = begin_unload(state, %{entry | draining: false, unload_waiters: waiters})
      {state, cancels ++ effects}
    else
      _ -> {state, []}
    end
  end

  @doc """
  An unload/3 timeout (`timer` is its message): that caller gets
  `{:error, :busy}`; the model serves again if nobody else waits.
  """
  @spec unload_timeout(t(), {:unload_timeout, term(), reference()}) :: step()
  def unload_timeout(state, {:unload_timeout, id, _} = timer) do
    with {:ok, %Entry{draining: true} = entry} <- Ledger.fetch(state.ledger, id),
         {[{from, ^timer}], rest} <-
           Enum.split_with(entry.unload_waiters, &(elem(&1, 1) == timer)) do
      # The timer fired: forgotten (cancelling a fired timer does nothing).
      answer = [{:cancel_timer, timer}, {:reply, from, {:error, :busy}}]

      if rest == [] do
        entry = %{entry | status: :ready, draining: false, unload_waiters: []}
        {state, effects} = put(state, entry)
        {state, answer ++ effects ++ [{:open_gate, entry.gate}]}
      else
        {state, effects} = put(state, %{entry | unload_waiters: rest})
        {state, answer ++ effects}
      end
    else
      _ -> {state, []}
    end
  end

  @doc """
  An unload begins: in a task (`{:unload, id}`), or called in the step
  where the backend is inline. The memory stays reserved until the
  backend's unload returns: a runtime frees it only then.
  """
  @spec begin_unload(t(), Entry.t()) :: step()
  def begin_unload(state, entry) do
    entry = %{entry | status: :unloading, draining: false}
    demonitor = {:demonitor, {:handle, entry.id}}
    unload = {{:unload, entry.id}, {state.backend, :unload, [entry.handle]}}

    if inline?(state) do
      # Released within this step: readers never see it unloading.
      state = %{state | ledger: Ledger.put(state.ledger, entry)}
      {state, [demonitor, Tuple.insert_at(unload, 0, :call)]}
    else
      {state, effects} = put(state, entry)
      {state, [demonitor, Tuple.insert_at(unload, 0, :start_task) | effects]}
    end
  end

  @doc "An unload's outcome: the memory is released, and what waited for it goes on."
  @spec finished_unload(t(), term(), {:ok, term()} | {:exit, term()}) :: step()
  def finished_unload(state, id, outcome),
    do: unloaded(state, Ledger.fetch!(state.ledger, id), outcome)

  defp unloaded(state, entry, outcome) do
    logged =
      case outcome do
        {:exit, reason} ->
          [
            {:log, :error,
             "unloading #{inspect(entry.id)} crashed (#{inspect(reason)}); " <>
               "its memory is released anyway"}
          ]

        _ ->
          []
      end

    {state, released} = release(state, entry)
    {state, next} = evicted(state, entry)
    {state, logged ++ released ++ reply_waiters(entry, :ok) ++ next}
  end

  # An evicted model is unloaded: what waited for it may go on.
  defp evicted(state, %Entry{evicted_for: nil}), do: {state, []}

  defp evicted(state, %Entry{evicted_for: {:load, load_id}, id: id}) do
    entry = Ledger.fetch!(state.ledger, load_id)
    awaiting = MapSet.delete(entry.awaiting, id)
    {state, effects} = put(state, %{entry | awaiting: awaiting})

    if MapSet.size(awaiting) == 0 do
      {state, running} = Load.run_load(state, load_id, state.clock.())
      {state, effects ++ running}
    else
      {state, effects}
    end
  end

  defp evicted(state, %Entry{evicted_for: {:fence, ref}, id: id}) do
    fence = Map.fetch!(state.fences, ref)
    pending = MapSet.delete(fence.pending, id)

    if MapSet.size(pending) == 0 do
      {%{state | fences: Map.delete(state.fences, ref)},
       [{:reply, fence.from, {:ok, fence.evicted}}]}
    else
      {%{state | fences: Map.put(state.fences, ref, %{fence | pending: pending})}, []}
    end
  end

  @doc """
  The claimed models start unloading, logged with the reason; `for` says
  what for (the evicted entries' :evicted_for).
  """
  @spec evict(t(), [map()], [Entry.t()], Entry.evicted_for()) :: step()
  def evict(state, evictions, evicted, for) do
    {state, effects} =
      Enum.zip(evictions, evicted)
      |> Enum.reduce({state, []}, fn {eviction, entry}, {state, effects} ->
        {state, unload} = begin_unload(state, entry)

        evict = [
          {:log, :info, eviction_message(state, entry, eviction, for)},
          {:bump, :evictions},
          {:count_eviction, entry.id}
        ]

        {state, [unload, evict | effects]}
      end)

    {state, effects |> Enum.reverse() |> Enum.concat()}
  end

  defp eviction_message(state, entry, eviction, for) do
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

    "evicting #{inspect(entry.id)} (idle #{idle_ms(state, entry)} ms) " <>
      "to make room on #{inspect(eviction.device)} for #{target}: #{reason}"
  end

  defp idle_ms(state, entry) do
    {_lru, used_at} = Leases.last_use(entry.gate)
    state.clock.() - used_at
  end
end
