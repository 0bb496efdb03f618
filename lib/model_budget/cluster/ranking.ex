defmodule ModelBudget.Cluster.Ranking do
  @moduledoc false

  alias ModelBudget.Native
  require ModelBudget.Native.Errors, as: Errors
  # The placement decision of ModelBudget.Cluster.load/4, pure: given the
  # members' views and the load's placement on each kind of member, which
  # members to try, best first, and why the others cannot take it.

  @typedoc "A member's view: at least these keys (see ModelBudget.Cluster.View)."
  @type view :: %{
          required(:node) => node(),
          required(:manager) => pid(),
          required(:labels) => map(),
          required(:budget) => ModelBudget.budget(),
          required(:usage) => ModelBudget.placement(),
          required(:backend) => module(),
          required(:n_gpus) => non_neg_integer(),
          optional(atom()) => term()
        }

  @typedoc "The load's placement per `{backend, n_gpus}` of the members."
  @type placements :: %{{module(), non_neg_integer()} => ModelBudget.placement()}

  @doc "Whether `labels` contain every key and value of `where`."
  @spec where?(map(), map()) :: boolean()
  def where?(labels, where),
    do: Enum.all?(where, fn {key, value} -> Map.fetch(labels, key) == {:ok, value} end)

  @doc """
  The views where the load fits now (`ModelBudget.check/3` against the
  view's usage), best first by `policy`, and `{node, manager, reason}` for
  the others. `:binpack` puts first the member left with the least room on
  the devices the load uses (the pool of a combined budget), `:spread` the
  one left with the most (`room/3`). Ties go by node, then manager, so the order is the
  same on every node.
  """
  @spec rank([view()], placements(), :binpack | :spread) ::
          {[{view(), ModelBudget.placement()}], [{node(), pid(), term()}]}
  def rank(views, placements, policy) do
    {fits, refused} =
      Enum.reduce(views, {[], []}, fn view, {fits, refused} ->
        placement = Map.fetch!(placements, {view.backend, view.n_gpus})

        case room(view.budget, view.usage, placement) do
          {:ok, room} ->
            {[{{order(room, policy), view.node, view.manager}, view, placement} | fits], refused}

          {:error, reason} ->
            {fits, [{view.node, view.manager, reason} | refused]}
        end
      end)

    ranked = fits |> Enum.sort() |> Enum.map(fn {_key, view, placement} -> {view, placement} end)
    {ranked, Enum.reverse(refused)}
  end

  @doc """
  `ModelBudget.check/3` of `placement` on top of `usage` and, when it fits,
  the room it leaves on the devices it puts bytes on (the pool of a combined
  budget), summed: `{:ok, bytes}`, or `{:ok, :infinity}` when one of them
  has no limit; check's error when it does not fit.
  """
  @spec room(ModelBudget.budget(), ModelBudget.placement(), ModelBudget.placement()) ::
          {:ok, non_neg_integer() | :infinity} | {:error, term()}
  def room(budget, usage, placement), do: Errors.call(Native.room(budget, placement, usage))

  defp order(:infinity, :binpack), do: {1, 0}
  defp order(room, :binpack), do: {0, room}
  defp order(:infinity, :spread), do: {0, 0}
  defp order(room, :spread), do: {1, -room}
end
