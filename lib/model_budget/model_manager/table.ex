defmodule ModelBudget.ModelManager.Table do
  @moduledoc false
  # The manager's ETS table: what readers see without calling the manager.
  # The manager writes it (protected); info/2, list/1, usage/1, stats/1 and
  # checkout read it. Only this module knows the rows' shapes:
  #
  #   * usage_row(placement): the folded usage, rewritten in the same insert
  #     as the entries that change it, so a reader never sees one without
  #     the other.
  #   * stats_row(...): the manager's totals, bumped with update_counter.
  #   * {{:model, id}, info, gate}: an entry's public fields (Entry.info/1)
  #     and its lease gate ({inc, resource}, read alone by checkout).
  #   * {{:history, id}, loads, evictions}: per id, kept while it is loaded
  #     and for the :history_limit ids most recently gone (History).

  require Record

  alias ModelBudget.ModelManager.Entry

  # Rows whose key is their tag.
  Record.defrecordp(:usage_row, :usage, placement: nil)

  Record.defrecordp(:stats_row, :stats,
    loads: 0,
    evictions: 0,
    refused: 0,
    fences: 0,
    expired: 0,
    raised: 0,
    max_estimate_error: 0
  )

  # update_counter positions (1-based) in {{:history, id}, loads, evictions}.
  @history_loads 2
  @history_evictions 3

  @stat_names [:loads, :evictions, :refused, :fences, :expired, :raised]

  @typedoc "A total of `stats/1`."
  @type stat :: :loads | :evictions | :refused | :fences | :expired | :raised

  @doc "A new table, its usage empty and its totals 0."
  @spec new() :: :ets.tid()
  def new do
    table = :ets.new(ModelBudget.ModelManager, [:set, :protected, read_concurrency: true])
    :ets.insert(table, [usage_row(placement: ModelBudget.empty_usage()), stats_row()])
    table
  end

  ## Writes (the manager only)

  @doc "Writes entries and the usage in one insert."
  @spec put(:ets.tid(), ModelBudget.placement(), [Entry.t()]) :: true
  def put(table, usage, entries) do
    rows = for %Entry{gate: gate} = entry <- entries, do: model_row(Entry.info(entry), gate)
    :ets.insert(table, [usage_row(placement: usage) | rows])
  end

  @doc "Writes one entry, its public fields `info` already made, and the usage in one insert."
  @spec put_info(:ets.tid(), ModelBudget.placement(), map(), term()) :: true
  def put_info(table, usage, info, gate) do
    :ets.insert(table, [usage_row(placement: usage), model_row(info, gate)])
  end

  defp model_row(%{id: id} = info, gate), do: {{:model, id}, info, gate}

  @doc """
  Removes an entry, then writes the usage without it and the entries
  `changed` with it in one insert.
  """
  @spec delete(:ets.tid(), ModelBudget.placement(), term(), [Entry.t()]) :: true
  def delete(table, usage, id, changed \\ []) do
    :ets.delete(table, {:model, id})
    put(table, usage, changed)
  end

  @doc "Bumps a total of stats/1."
  @spec bump(:ets.tid(), stat()) :: integer()
  def bump(table, name),
    do: :ets.update_counter(table, :stats, {stat_position(name), 1})

  @doc "Keeps `error` as the largest estimate error if its magnitude is larger."
  @spec estimate_error(:ets.tid(), integer()) :: true
  def estimate_error(table, error) do
    # Read, then write: safe, the manager is the table's only writer.
    [row] = :ets.lookup(table, :stats)

    if abs(error) > abs(stats_row(row, :max_estimate_error)),
      do: :ets.update_element(table, :stats, {stats_row(:max_estimate_error) + 1, error})

    true
  end

  @doc "Counts a finished load of `id`: its history `{loads, evictions}`, loads bumped."
  @spec count_load(:ets.tid(), term()) :: {pos_integer(), non_neg_integer()}
  def count_load(table, id) do
    [loads, evictions] =
      :ets.update_counter(
        table,
        {:history, id},
        [{@history_loads, 1}, {@history_evictions, 0}],
        {{:history, id}, 0, 0}
      )

    {loads, evictions}
  end

  @doc "Counts an eviction of `id`; returns its evictions so far."
  @spec count_eviction(:ets.tid(), term()) :: pos_integer()
  def count_eviction(table, id),
    do:
      :ets.update_counter(table, {:history, id}, {@history_evictions, 1}, {{:history, id}, 0, 0})

  @doc "Forgets the history of `id` (a model long gone: see History)."
  @spec drop_history(:ets.tid(), term()) :: true
  def drop_history(table, id), do: :ets.delete(table, {:history, id})

  @doc "An id's `{loads, evictions}` so far."
  @spec history_of(:ets.tid(), term()) :: {non_neg_integer(), non_neg_integer()}
  def history_of(table, id) do
    case :ets.lookup(table, {:history, id}) do
      [{_key, loads, evictions}] -> {loads, evictions}
      [] -> {0, 0}
    end
  end

  ## Reads (any process on the manager's node)

  @doc "The public fields of model `id`, without the live lease fields."
  @spec info(:ets.tid(), term()) :: {:ok, map()} | :error
  def info(table, id) do
    case :ets.lookup(table, {:model, id}) do
      [{_key, info, _gate}] -> {:ok, info}
      [] -> :error
    end
  end

  @doc "Every model's public fields, in no order."
  @spec infos(:ets.tid()) :: [map()]
  def infos(table),
    do: :ets.select(table, [{{{:model, :_}, :"$1", :_}, [], [:"$1"]}])

  @doc "Whether model `id` is listed."
  @spec member?(:ets.tid(), term()) :: boolean()
  def member?(table, id), do: :ets.member(table, {:model, id})

  @doc "The lease gate of model `id`: `{inc, resource}` (see Leases)."
  @spec gate(:ets.tid(), term()) :: {:ok, {pos_integer(), reference()}} | :error
  def gate(table, id) do
    {:ok, :ets.lookup_element(table, {:model, id}, 3)}
  rescue
    # No such row (a missing table raises the same; readers check it first).
    ArgumentError -> :error
  end

  @doc "The folded usage."
  @spec usage(:ets.tid()) :: ModelBudget.placement()
  def usage(table) do
    [usage_row(placement: placement)] = :ets.lookup(table, :usage)
    placement
  end

  @doc "The totals, by name, and the largest estimate error."
  @spec stats(:ets.tid()) :: %{atom() => integer()}
  def stats(table) do
    [row] = :ets.lookup(table, :stats)

    Map.new(@stat_names, &{&1, elem(row, stat_position(&1) - 1)})
    |> Map.put(:max_estimate_error, stats_row(row, :max_estimate_error))
  end

  # update_counter positions are 1-based, the record's tag first.
  for name <- @stat_names do
    defp stat_position(unquote(name)), do: stats_row(unquote(name)) + 1
  end
end
