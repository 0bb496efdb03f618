defmodule ModelBudget.ModelManager.Lifecycle do
  @moduledoc false
  # The manager's state, and the entry points its callbacks call. The steps
  # themselves live by concern: Load (admit, start, finish, cancel, a
  # handle's death), Unload (unload/3, drains, timeouts, evictions, what
  # waited for an evicted model), Queue (waiting loads, fences), Expiry
  # (keep-alive); Books holds what they share. Each step is a function of
  # the state that answers `{state, effects}` and performs nothing itself
  # but the few reads and writes whose answer decides it (the admission's
  # claim of gates, a drain's close, a new gate, the ETS history counters;
  # see each module); the entry points below hand the effects to
  # ModelManager.Effects, the one interpreter. settle/1 drives
  # Queue.admit_waiting/3, one waiting load at a time. The books are kept
  # by Ledger (pure), the readers' view by Table, the request path by
  # Leases.

  alias ModelBudget.ModelManager.{Effects, History, Leases, Ledger, Table}
  alias __MODULE__.{Expiry, Load, Queue, Unload}

  @enforce_keys [:table, :flags, :task_sup, :backend, :clock, :sweep_ms, :ledger, :history]
  defstruct @enforce_keys ++
              [
                :name,
                :subscribers,
                inline: false,
                refs: %{},
                monitors: %{},
                tasks: %{},
                timers: %{},
                fences: %{}
              ]

  @typedoc """
  The manager's state. `:refs` maps every monitor and task ref to what it
  watches: `{:load | :unload, id}` tasks, `{:caller, id}` callers of
  admitted loads, `{:waiter, ref}` callers of waiting loads, `{:handle, id}`
  pid handles; `:monitors`, `:tasks` and `:timers` the monitor refs, tasks
  and timer refs that ModelManager.Effects made, by the tag (or timer
  message) a step gave them; `:fences` fences waiting for their evicted models;
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
          monitors: %{term() => reference()},
          tasks: %{term() => Task.t()},
          timers: %{term() => reference()},
          fences: %{reference() => map()},
          subscribers: ModelBudget.ModelManager.Subscribers.t()
        }

  ## Steps, by concern

  defdelegate settle(state), to: __MODULE__.Queue

  # Each step's effects, performed in order.
  def load(state, request, from), do: Effects.run(Load.load(state, request, from))
  def finished_load(state, id, outcome), do: Effects.run(Load.finished_load(state, id, outcome))
  def handle_died(state, id, reason), do: Effects.run(Load.handle_died(state, id, reason))
  def cancel_load(state, entry, waiters), do: Effects.run(Load.cancel_load(state, entry, waiters))
  def fence(state, placement, from), do: Effects.run(Queue.fence(state, placement, from))
  def load_timeout(state, ref), do: Effects.run(Queue.load_timeout(state, ref))
  def waiter_died(state, ref), do: Effects.run(Queue.waiter_died(state, ref))
  def sweep(state), do: Effects.run(Expiry.sweep(state))
  def unload(state, id, opts, from), do: Effects.run(Unload.unload(state, id, opts, from))
  def lease_ended(state, inc), do: Effects.run(Unload.lease_ended(state, inc))
  def unload_timeout(state, timer), do: Effects.run(Unload.unload_timeout(state, timer))

  def finished_unload(state, id, outcome),
    do: Effects.run(Unload.finished_unload(state, id, outcome))

  ## The public view

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
end
