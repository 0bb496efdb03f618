defmodule ModelBudget.Cluster.View do
  @moduledoc false
  # The node's view of every cluster member's ledger: one process per node
  # (started by ModelBudget.Application, registered under this module's
  # name), owning a public ETS table of the same name that
  # ModelBudget.Cluster reads without a message to anyone.
  #
  # It plays two parts:
  #
  #   * Member keeper, for the managers on its node: a manager started with
  #     `cluster:` announces itself in the node's directory of managers
  #     (ModelManager.Directory, which this process watches) with its
  #     cluster, labels, budget, backend and GPU count. This process joins
  #     it to its cluster's :pg group and subscribes to its usage
  #     (ModelManager.subscribe/1), keeping its own copy of the usage: it
  #     reads nothing of the manager's. Changes are coalesced: the first
  #     marks the manager dirty and sends this process :flush, which
  #     arrives after the changes already queued; the flush sends the view
  #     of each dirty manager to the view process of every connected node
  #     (this one included).
  #   * Subscriber to the other nodes: it keeps the views it receives, one
  #     row per manager, and monitors their managers: a manager that stops,
  #     or whose node goes down, is deleted from the table.
  #
  # A view process that restarts finds its node's managers in the directory
  # again and subscribes anew (the old subscription went with the old
  # process). A node that connects later gets every local view when either
  # side's view process sees the other: on :nodeup it sends the local views
  # there, and a view process that starts asks every connected node for
  # theirs ({:hello, node}), since its :nodeup may have come before it was
  # started. Messages between two processes keep their order, so a newer
  # view never arrives before an older one.

  use GenServer

  alias ModelBudget.ModelManager
  alias ModelBudget.ModelManager.Directory

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
    # local: manager => its card and usage; monitored: manager => monitor
    # ref; dirty: local managers to publish.
    state = %{local: %{}, monitored: %{}, dirty: MapSet.new()}

    {:ok,
     Enum.reduce(Directory.watch(), state, fn {manager, card}, state ->
       adopt(state, manager, card)
     end)}
  end

  @impl true
  def handle_info({Directory, :announced, manager, card}, state),
    do: {:noreply, adopt(state, manager, card)}

  def handle_info({ModelManager, :usage, manager, usage}, state) do
    case Map.fetch(state.local, manager) do
      {:ok, member} ->
        {:noreply, changed(put_member(state, manager, %{member | usage: usage}), manager)}

      # From a manager this process does not hold: one whose subscribe
      # exited as it died (its :DOWN cleans up).
      :error ->
        {:noreply, state}
    end
  end

  def handle_info({__MODULE__, :flush}, state) do
    views = for manager <- state.dirty, do: local_view(state, manager)
    for node <- [node() | Node.list()], do: send_views(node, views)
    {:noreply, %{state | dirty: MapSet.new()}}
  end

  def handle_info({__MODULE__, :view, view}, state) do
    :ets.insert(__MODULE__, {view.manager, view})
    {:noreply, monitor(state, view.manager)}
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

    {:noreply,
     %{
       state
       | monitored: Map.delete(state.monitored, manager),
         local: Map.delete(state.local, manager),
         dirty: MapSet.delete(state.dirty, manager)
     }}
  end

  # A manager of this node, announced or listed in the directory (once,
  # though both may tell of it): monitored, joined to its cluster's group
  # (unless it is a member already, the :pg scope having outlived an
  # earlier view process), subscribed to. A manager answers between its
  # steps, which never block, so the call is short; one that stopped
  # meanwhile is left to its :DOWN.
  defp adopt(state, manager, _card) when is_map_key(state.local, manager), do: state

  defp adopt(state, manager, card) do
    state = monitor(state, manager)
    group = {ModelBudget.Cluster, card.cluster}

    unless manager in :pg.get_local_members(ModelBudget.Cluster, group),
      do: :ok = :pg.join(ModelBudget.Cluster, group, manager)

    try do
      {:ok, usage} = ModelManager.subscribe(manager)
      changed(put_member(state, manager, Map.put(card, :usage, usage)), manager)
    catch
      :exit, _ -> state
    end
  end

  defp put_member(state, manager, member),
    do: %{state | local: Map.put(state.local, manager, member)}

  defp monitor(state, manager) do
    if Map.has_key?(state.monitored, manager),
      do: state,
      else: %{state | monitored: Map.put(state.monitored, manager, Process.monitor(manager))}
  end

  # Only the flush sends views: a change marks its manager dirty, and the
  # first one since the last flush schedules the next.
  defp changed(state, manager) do
    if MapSet.size(state.dirty) == 0, do: send(self(), {__MODULE__, :flush})
    %{state | dirty: MapSet.put(state.dirty, manager)}
  end

  defp local_views(state), do: for({manager, _} <- state.local, do: local_view(state, manager))

  defp local_view(state, manager) do
    member = Map.fetch!(state.local, manager)

    %{
      cluster: member.cluster,
      node: node(),
      manager: manager,
      labels: member.labels,
      budget: member.budget,
      backend: member.backend,
      n_gpus: member.n_gpus,
      usage: member.usage
    }
  end

  defp send_views(node, views),
    do: for(view <- views, do: send({__MODULE__, node}, {__MODULE__, :view, view}))
end
