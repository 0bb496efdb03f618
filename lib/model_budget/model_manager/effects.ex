defmodule ModelBudget.ModelManager.Effects do
  @moduledoc false
  # The one place where the manager's steps act on the world. A step that is
  # pure returns `{state, effects}`; `run/2` performs the effects in order,
  # in the manager's process, and keeps what they leave behind in the
  # state: the ref of every monitor, task and timer, found again by the tag
  # the step gave it (a step names what it watches, never a ref).
  #
  # The vocabulary:
  #
  #   * `{:reply, from, answer}` - GenServer.reply/2 (`from` nil: nobody).
  #   * `{:monitor, pid, tag}` / `{:demonitor, tag}` - a monitor; its :DOWN
  #     comes back to the manager as `tag` (`down/2`).
  #   * `{:start_task, tag, {m, f, a}}` / `{:kill_task, tag}` - a supervised
  #     task (Task.Supervisor.async_nolink/4); its reply or :DOWN comes back
  #     as `tag` (`down/2`); a killed task's :DOWN still comes.
  #   * `{:timer, ms, message}` / `{:cancel_timer, message}` - a timer that
  #     sends the manager `{:timeout, ref, {ModelManager, message}}`; the
  #     message names it (one timer per message at a time).
  #   * `{:log, level, message}` - Logger, the manager's name before it.
  #   * `{:call, {:load, id, now} | {:unload, id}, {m, f, a}}` - an inline
  #     backend's load or unload, called here; its outcome goes to
  #     Lifecycle.Load.finished_load/4 or Lifecycle.Unload.finished_unload/3
  #     and that step's effects run at once (a task whose reply comes now).
  #   * The readers' view: `{:bump, counter}` (Table.bump/2),
  #     `{:table_put, usage, entries}`, `{:table_put_info, usage, info,
  #     gate}`, `{:table_delete, usage, id, changed}`, `{:drop_history,
  #     id}`, `{:count_eviction, id}`, `{:estimate_error, error}`; the lease
  #     gates: `{:drop_gate, gate}`, `{:open_gate, gate}`, `{:gate_used,
  #     gate, now}`.

  require Logger

  alias ModelBudget.ModelManager
  alias ModelBudget.ModelManager.Lifecycle.{Books, Load, Unload}
  alias ModelBudget.ModelManager.{Leases, Table}

  @type tag :: term()

  @type t ::
          {:reply, GenServer.from() | nil, term()}
          | {:monitor, pid(), tag()}
          | {:demonitor, tag()}
          | {:start_task, tag(), {module(), atom(), [term()]}}
          | {:kill_task, tag()}
          | {:timer, non_neg_integer(), term()}
          | {:cancel_timer, term()}
          | {:log, Logger.level(), String.t()}
          | {:bump, atom()}
          | {:call, tag(), {module(), atom(), [term()]}}
          | {:table_put, ModelBudget.placement(), [ModelManager.Entry.t()]}
          | {:table_put_info, ModelBudget.placement(), map(), Leases.gate()}
          | {:estimate_error, term()}
          | {:gate_used, Leases.gate(), integer()}
          | {:table_delete, ModelBudget.placement(), term(), [ModelManager.Entry.t()]}
          | {:drop_history, term()}
          | {:count_eviction, term()}
          | {:drop_gate, Leases.gate()}
          | {:open_gate, Leases.gate()}

  @doc "Performs `effects` in order; answers the state they leave."
  @spec run(state, [t()]) :: state when state: map()
  def run(state, []), do: state
  def run(state, [effect | rest]), do: run(perform(state, effect), rest)

  @doc "`run/2` on a step's `{state, effects}`."
  @spec run({state, [t()]}) :: state when state: map()
  def run({state, effects}), do: run(state, effects)

  @doc """
  A monitor or task `ref` came back (its :DOWN, or the task's reply): the
  tag it was watched under, or nil, and the state without it.
  """
  @spec down(state, reference()) :: {tag() | nil, state} when state: map()
  def down(state, ref) do
    case Map.pop(state.refs, ref) do
      {nil, _} ->
        {nil, state}

      {tag, refs} ->
        {tag,
         %{
           state
           | refs: refs,
             monitors: Map.delete(state.monitors, tag),
             tasks: Map.delete(state.tasks, tag)
         }}
    end
  end

  defp perform(state, {:reply, nil, _answer}), do: state

  defp perform(state, {:reply, from, answer}) do
    GenServer.reply(from, answer)
    state
  end

  defp perform(state, {:monitor, pid, tag}) do
    ref = Process.monitor(pid)
    %{state | refs: Map.put(state.refs, ref, tag), monitors: Map.put(state.monitors, tag, ref)}
  end

  defp perform(state, {:demonitor, tag}) do
    case Map.pop(state.monitors, tag) do
      {nil, _} ->
        state

      {ref, monitors} ->
        Process.demonitor(ref, [:flush])
        %{state | refs: Map.delete(state.refs, ref), monitors: monitors}
    end
  end

  defp perform(state, {:start_task, tag, {m, f, a}}) do
    task = Task.Supervisor.async_nolink(state.task_sup, m, f, a)
    %{state | refs: Map.put(state.refs, task.ref, tag), tasks: Map.put(state.tasks, tag, task)}
  end

  defp perform(state, {:kill_task, tag}) do
    with %Task{pid: pid} <- Map.get(state.tasks, tag), do: Process.exit(pid, :kill)
    state
  end

  defp perform(state, {:timer, ms, message}) do
    timer = :erlang.start_timer(ms, self(), {ModelManager, message})
    %{state | timers: Map.put(state.timers, message, timer)}
  end

  defp perform(state, {:cancel_timer, message}) do
    case Map.pop(state.timers, message) do
      {nil, _} ->
        state

      {timer, timers} ->
        :erlang.cancel_timer(timer, async: true, info: false)
        %{state | timers: timers}
    end
  end

  defp perform(state, {:log, level, message}) do
    Logger.log(level, fn ->
      "#{inspect(ModelManager)} #{inspect(state.name || self())}: " <> message
    end)

    state
  end

  defp perform(state, {:bump, counter}) do
    Table.bump(state.table, counter)
    state
  end

  defp perform(state, {:call, {:load, id, now}, {m, f, a}}) do
    outcome = Books.run_inline(fn -> apply(m, f, a) end)
    run(Load.finished_load(state, id, outcome, now))
  end

  defp perform(state, {:call, {:unload, id}, {m, f, a}}) do
    outcome = Books.run_inline(fn -> apply(m, f, a) end)
    run(Unload.finished_unload(state, id, outcome))
  end

  defp perform(state, {:table_put, usage, entries}) do
    Table.put(state.table, usage, entries)
    state
  end

  defp perform(state, {:table_put_info, usage, info, gate}) do
    Table.put_info(state.table, usage, info, gate)
    state
  end

  defp perform(state, {:estimate_error, error}) do
    Table.estimate_error(state.table, error)
    state
  end

  defp perform(state, {:gate_used, gate, now}) do
    Leases.used(gate, now)
    state
  end

  defp perform(state, {:table_delete, usage, id, changed}) do
    Table.delete(state.table, usage, id, changed)
    state
  end

  defp perform(state, {:drop_history, id}) do
    Table.drop_history(state.table, id)
    state
  end

  defp perform(state, {:count_eviction, id}) do
    Table.count_eviction(state.table, id)
    state
  end

  defp perform(state, {:drop_gate, gate}) do
    Leases.drop(gate)
    state
  end

  defp perform(state, {:open_gate, gate}) do
    Leases.open(gate)
    state
  end
end
