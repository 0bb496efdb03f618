defmodule ModelBudget.Cluster.View do
  @moduledoc false
  # The node's view of every cluster member's ledger: one process per node
  # (started by ModelBudget.Application, registered under this module's
  # name), owning a public ETS table of the same name that
  # ModelBudget.Cluster reads without a message to anyone.
  #
  # It plays two parts:
  #
  #   * Publisher, for the managers on its node: a manager that joins tells
  #     it (join/3, in the manager's init), and then, through its table's
  #     watcher row, after every usage write. Changes are coalesced: the
  #     first marks the manager dirty and sends this process :flush, which
  #     arrives after the changes already queued; the flush reads each
  #     dirty manager's usage once and sends the view to the view process
  #     of every connected node (this one included).
  #   * Subscriber: it keeps the views it receives, one row per manager,
  #     and monitors their managers: a manager that stops, or whose node
  #     goes down, is deleted from the table.
  #
  # A node that connects later gets every local view when either side's
  # view process sees the other: on :nodeup it sends the local views there,
  # and a view process that starts asks every connected node for theirs
  # ({:hello, node}), since its :nodeup may have come before it was started.
  # Messages between two processes keep their order, so a newer view never
  # arrives before an older one.

  use GenServer

  alias ModelBudget.ModelManager.Table

  @typedoc "One member's ledger as the view holds it."
  @type view :: %{
          cluster: term(),
          node: node(),
          manager: pid(),
          labels: map(),
          budget: ModelBudget.budget(),
          backend: module(),
          n_gpus: non_neg_integer(),
          usage: ModelBudget.placement()
        }

  @doc false
  def child_spec(_), do: %{id: __MODULE__, start: {__MODULE__, :start_link, []}}

  @doc "Starts the node's view process."
  @spec start_link() :: GenServer.on_start()
  def start_link, do: GenServer.start_link(__MODULE__, nil, name: __MODULE__)

  @doc """
  Joins the calling manager to `cluster` (its `:pg` group) and has its
  ledger published from now on. Called from the manager's init/1 with its
  shared config (table, budget, backend, n_gpus).
  """
  @spec join(term(), map(), map()) :: :ok
  def join(cluster, labels, shared) do
    unless Process.whereis(__MODULE__) do
      raise ArgumentError,
            "invalid option :cluster: the :model_budget application is not started on " <>
              "#{inspect(node())}, so #{inspect(cluster)} cannot be joined"
    end

    manager = self()

    member = %{
      cluster: cluster,
      labels: labels,
      budget: shared.budget,
      backend: shared.backend,
      n_gpus: shared.n_gpus,
      table: shared.table
    }

    # Kept apart from this process, so a view process that restarts finds
    # its node's members again (init/1).
    :persistent_term.put({__MODULE__, manager}, member)
    :ok = :pg.join(ModelBudget.Cluster, {ModelBudget.Cluster, cluster}, manager)
    Table.watch(shared.table, __MODULE__)
    GenServer.cast(__MODULE__, {__MODULE__, :joined, manager, member})
  end

  @doc "The views of `managers` that this node holds, in their order; unknown ones left out."
  @spec views([pid()]) :: [view()]
  def views(managers) do
    Enum.flat_map(managers, fn manager ->
      case :ets.lookup(__MODULE__, manager) do
        [{^manager, view}] -> [view]
        [] -> []
      end
    end)
  rescue
    # No table: the view process is restarting (or the application stopped).
    ArgumentError -> []
  end

  ## Server

  @impl true
  def init(nil) do
    :ets.new(__MODULE__, [:named_table, :set, :protected, read_concurrency: true])
    :ok = :net_kernel.monitor_nodes(true)
    for node <- Node.list(), do: send({__MODULE__, node}, {__MODULE__, :hello, node()})
    # local: manager => member; monitored: manager => monitor ref; dirty: managers to publish.
    state = %{local: %{}, monitored: %{}, dirty: MapSet.new()}

    {:ok,
     Enum.reduce(rejoin(), state, fn {manager, member}, state ->
       joined(state, manager, member)
     end)}
  end

  # The members on this node when this process (re)starts: their :pg
  # membership too, in case the scope restarted with it.
  defp rejoin do
    for {{__MODULE__, manager}, member} <- :persistent_term.get(),
        is_pid(manager),
        alive?(manager) do
      group = {ModelBudget.Cluster, member.cluster}

      unless manager in :pg.get_local_members(ModelBudget.Cluster, group),
        do: :pg.join(ModelBudget.Cluster, group, manager)

      {manager, member}
    end
  end

  # A member that died while no view process was running leaves its term.
  defp alive?(manager) do
    Process.alive?(manager) or :persistent_term.erase({__MODULE__, manager}) == :never
  end

  @impl true
  def handle_cast({__MODULE__, :joined, manager, member}, state),
    do: {:noreply, joined(state, manager, member)}

  @impl true
  def handle_info({__MODULE__, :changed, manager}, state),
    do: {:noreply, changed(state, manager)}

  def handle_info({__MODULE__, :flush}, state) do
    views = for manager <- state.dirty, view = local_view(state, manager), do: view
    for node <- [node() | Node.list()], do: send_views(node, views)
    {:noreply, %{state | dirty: MapSet.new()}}
  end

  def handle_info({__MODULE__, :view, view}, state) do
    manager = view.manager
    :ets.insert(__MODULE__, {manager, view})

    if Map.has_key?(state.monitored, manager) do
      {:noreply, state}
    else
      ref = Process.monitor(manager)
      {:noreply, %{state | monitored: Map.put(state.monitored, manager, ref)}}
    end
  end

  def handle_info({__MODULE__, :hello, node}, state) do
    send_views(node, local_views(state))
    {:noreply, state}
  end

  def handle_info({:nodeup, node}, state) do
    send_views(node, local_views(state))
    {:noreply, state}
  end

  # Remote managers' rows go with their :DOWN (:noconnection for a lost node).
  def handle_info({:nodedown, _node}, state), do: {:noreply, state}

  def handle_info({:DOWN, _ref, :process, manager, _reason}, state) do
    :ets.delete(__MODULE__, manager)
    if Map.has_key?(state.local, manager), do: :persistent_term.erase({__MODULE__, manager})

    {:noreply,
     %{
       state
       | monitored: Map.delete(state.monitored, manager),
         local: Map.delete(state.local, manager),
         dirty: MapSet.delete(state.dirty, manager)
     }}
  end

  defp joined(state, manager, member),
    do: changed(%{state | local: Map.put(state.local, manager, member)}, manager)

  # Only the flush sends views: a change marks its manager dirty, and the
  # first one since the last flush schedules the next.
  defp changed(state, manager) do
    if MapSet.size(state.dirty) == 0, do: send(self(), {__MODULE__, :flush})
    %{state | dirty: MapSet.put(state.dirty, manager)}
  end

  defp local_views(state),
    do: for({manager, _} <- state.local, view = local_view(state, manager), do: view)

  # nil for a manager that has stopped (its table is gone, its :DOWN on the way).
  defp local_view(state, manager) do
    case Map.fetch(state.local, manager) do
      {:ok, member} ->
        %{
          cluster: member.cluster,
          node: node(),
          manager: manager,
          labels: member.labels,
          budget: member.budget,
          backend: member.backend,
          n_gpus: member.n_gpus,
          usage: Table.usage(member.table)
        }

      :error ->
        nil
    end
  rescue
    ArgumentError -> nil
  end

  defp send_views(node, views),
    do: for(view <- views, do: send({__MODULE__, node}, {__MODULE__, :view, view}))
end
