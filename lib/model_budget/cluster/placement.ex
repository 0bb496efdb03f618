defmodule ModelBudget.Cluster.Placement do
  @moduledoc false
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
  the devices the load uses, `:spread` the one left with the most; a device
  without a limit has unbounded room. Ties go by node, then manager, so the
  order is the same on every node.
  """
  @spec rank([view()], placements(), :binpack | :spread) ::
          {[{view(), ModelBudget.placement()}], [{node(), pid(), term()}]}
  def rank(views, placements, policy) do
    {fits, refused} =
      Enum.reduce(views, {[], []}, fn view, {fits, refused} ->
        placement = Map.fetch!(placements, {view.backend, view.n_gpus})

        case ModelBudget.check(view.budget, placement, view.usage) do
          :ok ->
            key =
              {order(room(view.budget, view.usage, placement), policy), view.node, view.manager}

            {[{key, view, placement} | fits], refused}

          {:error, reason} ->
            {fits, [{view.node, view.manager, reason} | refused]}
        end
      end)

    ranked = fits |> Enum.sort() |> Enum.map(fn {_key, view, placement} -> {view, placement} end)
    {ranked, Enum.reverse(refused)}
  end

  # Sort keys, ascending: binpack wants the least room first and unbounded
  # room last; spread the reverse.
  defp order(:infinity, :binpack), do: {1, 0}
  defp order(room, :binpack), do: {0, room}
  defp order(:infinity, :spread), do: {0, 0}
  defp order(room, :spread), do: {1, -room}

  @doc """
  The room left, once `placement` is added to `usage`, on the devices the
  placement puts bytes on (the pool of a combined budget), summed; or
  `:infinity` when one of them has no limit. Only called for a placement
  that `ModelBudget.check/3` found fits, so no term is negative.
  """
  @spec room(ModelBudget.budget(), ModelBudget.placement(), ModelBudget.placement()) ::
          non_neg_integer() | :infinity
  def room(%{mode: :unlimited}, _usage, _placement), do: :infinity

  def room(%{mode: :combined, limit: limit}, usage, placement),
    do: limit - total(usage) - total(placement)

  def room(%{mode: :per_device, ram: ram, vram: vram}, usage, placement) do
    gpus =
      for {gpu, bytes} <- placement.vram, bytes > 0 do
        left(gpu_limit(vram, gpu), Map.get(usage.vram, gpu, 0), bytes)
      end

    ram = if placement.ram > 0, do: [left(ram, usage.ram, placement.ram)], else: []
    Enum.reduce(ram ++ gpus, 0, &add/2)
  end

  defp gpu_limit(:infinity, _gpu), do: :infinity
  defp gpu_limit(vram, gpu), do: Map.get(vram, gpu, :infinity)

  defp left(:infinity, _used, _bytes), do: :infinity
  defp left(limit, used, bytes), do: limit - used - bytes

  defp add(:infinity, _), do: :infinity
  defp add(_, :infinity), do: :infinity
  defp add(a, b), do: a + b

  defp total(%{ram: ram, vram: vram}), do: Enum.reduce(vram, ram, fn {_, b}, sum -> sum + b end)
end
