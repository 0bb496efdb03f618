defmodule ModelBudget.Application do
  @moduledoc false
  # What every node running the library has: the `:pg` scope that cluster
  # members join (`ModelBudget.Cluster`) and the node's view of the
  # members' ledgers (`ModelBudget.Cluster.View`). Both are idle until a
  # manager starts with `cluster:`.

  use Application

  @impl true
  def start(_type, _args) do
    children = [
      %{id: :pg, start: {:pg, :start_link, [ModelBudget.Cluster]}},
      ModelBudget.Cluster.View
    ]

    Supervisor.start_link(children, strategy: :rest_for_one, name: ModelBudget.Supervisor)
  end
end
