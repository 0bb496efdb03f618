defmodule ModelBudget.Application do
  @moduledoc false
  # What every node running the library has: the directory where managers
  # started with `cluster:` announce themselves
  # (`ModelBudget.ModelManager.Directory`), the `:pg` scope that cluster
  # members join (`ModelBudget.Cluster`) and the node's view of the
  # members' ledgers (`ModelBudget.Cluster.View`), which watches the
  # directory, joins the managers to the scope and subscribes to their
  # usage. All are idle until a manager starts with `cluster:`.

  use Application

  @impl true
  def start(_type, _args) do
    children = [
      ModelBudget.ModelManager.Directory,
      %{id: :pg, start: {:pg, :start_link, [ModelBudget.Cluster]}},
      ModelBudget.Cluster.View
    ]

    Supervisor.start_link(children, strategy: :rest_for_one, name: ModelBudget.Supervisor)
  end
end
