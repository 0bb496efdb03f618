defmodule ModelBudget.ModelManager.History do
  @moduledoc false
  # Which ids' history rows ({loads, evictions}, in the readers' table) the
  # manager keeps once their models are gone: the `limit` most recently
  # forgotten, least recently forgotten first out. Pure: the manager drops
  # the rows this returns.

  defstruct limit: 10_000, seq: 0, by_id: %{}, by_seq: :gb_trees.empty()

  @type t :: %__MODULE__{
          limit: pos_integer() | :infinity,
          seq: non_neg_integer(),
          by_id: %{term() => non_neg_integer()},
          by_seq: :gb_trees.tree()
        }

  @spec new(pos_integer() | :infinity) :: t()
  def new(limit), do: %__MODULE__{limit: limit}

  @doc """
  Notes that `id`'s model is gone: its history is the most recent now.
  Returns the ids whose history no longer fits, oldest first.
  """
  @spec forgotten(t(), term()) :: {t(), [term()]}
  def forgotten(%__MODULE__{} = h, id) do
    by_seq =
      case Map.fetch(h.by_id, id) do
        {:ok, seq} -> :gb_trees.delete(seq, h.by_seq)
        :error -> h.by_seq
      end

    seq = h.seq + 1

    h = %{
      h
      | seq: seq,
        by_id: Map.put(h.by_id, id, seq),
        by_seq: :gb_trees.insert(seq, id, by_seq)
    }

    trim(h, [])
  end

  @doc "Notes that `id` is loaded again: its row is the manager's, not a kept one."
  @spec loaded(t(), term()) :: t()
  def loaded(%__MODULE__{} = h, id) do
    case Map.pop(h.by_id, id) do
      {nil, _} -> h
      {seq, by_id} -> %{h | by_id: by_id, by_seq: :gb_trees.delete(seq, h.by_seq)}
    end
  end

  defp trim(%{limit: limit, by_id: by_id} = h, dropped)
       when limit != :infinity and map_size(by_id) > limit do
    {_seq, id, by_seq} = :gb_trees.take_smallest(h.by_seq)
    trim(%{h | by_id: Map.delete(by_id, id), by_seq: by_seq}, [id | dropped])
  end

  defp trim(h, dropped), do: {h, Enum.reverse(dropped)}
end
