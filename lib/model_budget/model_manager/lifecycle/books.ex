defmodule ModelBudget.ModelManager.Lifecycle.Books do
  @moduledoc false
  # What every concern of the lifecycle shares: the admission with its
  # claim of the evicted models (the one write a step makes itself: the
  # claim's answer decides the admission), the refusal, the writes of the
  # books to the readers' table, the release of an entry, the answers to
  # unload/3 callers, timers. All pure but admit/6 and run_inline/1 (which
  # ModelManager.Effects calls).

  alias ModelBudget.Eviction
  alias ModelBudget.ModelManager.{Entry, History, Leases, Ledger}

  def admit(state, placement, ahead, now, intent, exclude \\ MapSet.new()) do
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
  def lru_order(%Entry{gate: {inc, _} = gate}) do
    {lru, used_at} = Leases.last_use(gate)
    {{lru, inc}, used_at}
  end

  def refuse(from, refused), do: [{:bump, :refused}, {:reply, from, refused}]

  # The evicted models (already claimed) start unloading; the load waits for

  # instead of a task (admissions at a fraction of the cost); any other may
  # block, so it runs in a task.
  def inline?(state), do: state.inline

  def run_inline(fun) do
    {:ok, fun.()}
  catch
    kind, reason -> {:exit, if(kind == :exit, do: reason, else: {reason, __STACKTRACE__})}
  end

  # The helpers below are pure: each answers `{state, effects}` (or the
  # effects alone), ModelManager.Effects performs them.

  def put(state, entry), do: save(%{state | ledger: Ledger.put(state.ledger, entry)}, [entry.id])

  # The entries `ids` and the usage, to the readers' table in one insert.
  def save(state, ids) do
    entries = Enum.map(ids, &Ledger.fetch!(state.ledger, &1))
    {state, [{:table_put, state.ledger.usage, entries}]}
  end

  # `entry` as it is now: the ledger's, or one not written back yet.
  def release(state, entry) do
    {_, ledger} = Ledger.release(state.ledger, entry.id)
    forget(%{state | ledger: ledger}, entry, [])
  end

  # An entry gone from the ledger leaves the readers' table, in the write
  # that also carries the usage and the `changed` entries.
  def forget(state, entry, changed) do
    {history, dropped} = History.forgotten(state.history, entry.id)

    effects =
      [{:table_delete, state.ledger.usage, entry.id, changed}, {:drop_gate, entry.gate}] ++
        Enum.map(dropped, &{:drop_history, &1}) ++ [{:demonitor, {:handle, entry.id}}]

    {%{state | history: history}, effects}
  end

  def drop(state, id) do
    entry = Ledger.fetch!(state.ledger, id)
    {state, effects} = release(state, entry)
    {state, effects ++ reply_waiters(entry, :ok)}
  end

  # The unload/3 callers waiting on `entry`: their timers cancelled, answered.
  def reply_waiters(entry, answer) do
    for {from, timer} <- entry.unload_waiters,
        effect <- cancel_timer(timer) ++ [{:reply, from, answer}],
        do: effect
  end

  def timer(:infinity, _message), do: []
  def timer(ms, message), do: [{:timer, ms, message}]

  def cancel_timer(nil), do: []
  def cancel_timer(message), do: [{:cancel_timer, message}]
end
