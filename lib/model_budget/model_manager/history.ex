defmodule ModelBudget.ModelManager.History do
  @moduledoc false
  # Which ids' history rows ({loads, evictions}, in the readers' table) the
  # manager keeps once their models are gone: the `limit` most recently
  # forgotten, least recently forgotten first out. Pure: the manager drops
  # the rows this returns.
  #
  # A queue in forgetting order, with each id's latest place in `by_id`:
  # an id forgotten again, or loaded again, leaves a stale entry behind,
  # skipped when it comes out and swept once stale entries outnumber the
  # live ones. Amortized O(1) a step (a balanced tree rebalanced itself
  # every few hundred steps here, taking the manager's admissions from 60k
  # a second to 20k).

  defstruct limit: 10_000, seq: 0, by_id: %{}, queue: :queue.new(), queued: 0

  @type t :: %__MODULE__{
          limit: pos_integer() | :infinity,
          seq: non_neg_integer(),
          by_id: %{term() => non_neg_integer()},
          queue: :queue.queue({term(), non_neg_integer()}),
          queued: non_neg_integer()
        }

  @spec new(pos_integer() | :infinity) :: t()
  def new(limit), do: %__MODULE__{limit: limit}

  @doc """
  Notes that `id`'s model is gone: its history is the most recent now.
  Returns the ids whose history no longer fits, oldest first.
  """
  @spec forgotten(t(), term()) :: {t(), [term()]}
  def forgotten(%__MODULE__{} = h, id) do
    seq = h.seq + 1

    h = %{
      h
      | seq: seq,
        by_id: Map.put(h.by_id, id, seq),
        queue: :queue.in({id, seq}, h.queue),
        queued: h.queued + 1
    }

    h |> sweep() |> trim([])
  end

  @doc "Notes that `id` is loaded again: its row is the manager's, not a kept one."
  @spec loaded(t(), term()) :: t()
  def loaded(%__MODULE__{} = h, id), do: %{h | by_id: Map.delete(h.by_id, id)}

  defp trim(%{limit: limit, by_id: by_id} = h, dropped)
       when limit != :infinity and map_size(by_id) > limit do
    {{:value, {id, seq}}, queue} = :queue.out(h.queue)
    h = %{h | queue: queue, queued: h.queued - 1}

    case by_id do
      %{^id => ^seq} -> trim(%{h | by_id: Map.delete(by_id, id)}, [id | dropped])
      _stale -> trim(h, dropped)
    end
  end

  defp trim(h, dropped), do: {h, Enum.reverse(dropped)}

  defp sweep(%{queued: queued, by_id: by_id} = h) when queued > 2 * map_size(by_id) + 64 do
    queue = :queue.filter(fn {id, seq} -> Map.get(by_id, id) == seq end, h.queue)
    %{h | queue: queue, queued: :queue.len(queue)}
  end

  defp sweep(h), do: h
end
