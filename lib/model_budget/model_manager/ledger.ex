defmodule ModelBudget.ModelManager.Ledger do
  @moduledoc """
  A manager's books, as pure data: its entries, the usage they imply, the
  loads waiting for room, and the rules that decide admission. Every
  function here is pure (what a manager reads from leases, the clock or the
  device probe comes in as a `t:probe/0`), so the rules can be tested
  without a process.

  What it decides:

    * **Admission** (`admit/5`): one call to the core
      (`ModelBudget.Eviction.admit/4`) with the books' snapshot, the
      placement and the idle models, least recently used first (listed
      only when the load needs room), answering the evictions, what each
      evicted model still counts until its unload returns, and the usage
      afterwards; the loads waiting ahead count as if they were held.
    * **Possible at all** (`possible?/2`): whether a load would fit with
      every unpinned model gone; a waiting load must be.
    * **The hand-over** (`hand_over/4`): the admission applied to the
      books, so the usage never exceeds the budget nor undercounts what
      backends hold; and a load cancelled while it waits for its evicted
      models (`cancel/2`), in one step.
    * **Keep-alive** (`expired/2`): the models whose keep-alive ran out.
  """

  alias ModelBudget.Eviction
  alias ModelBudget.ModelManager.Entry

  defstruct [:budget, :rules, :min_idle_ms, entries: %{}, usage: nil, queue: []]

  @typedoc """
  A load waiting for room, first in first out: `:ref` names it, `:id` and
  `:placement` are the load's; the manager keeps what it needs to answer.
  """
  @type waiter :: %{
          required(:ref) => reference(),
          required(:id) => term(),
          required(:placement) => ModelBudget.placement(),
          optional(atom()) => term()
        }

  @typedoc "A ledger."
  @type t :: %__MODULE__{
          budget: ModelBudget.budget(),
          rules: Eviction.rules(),
          min_idle_ms: non_neg_integer() | :infinity,
          entries: %{term() => Entry.t()},
          usage: ModelBudget.placement(),
          queue: [waiter()]
        }

  @typedoc """
  What the ledger reads from outside, at one instant:

    * `:now` - the manager's clock, in ms.
    * `:last_use` - an entry's `{lru, used_at}`: its position in the LRU
      order (any term; greater is more recent) and the clock at its last
      use.
    * `:leased?` - whether an entry holds leases; asked of the models
      an admission chooses.
    * `:free` - the live free bytes per device, for rules that read `free`
      (`ModelBudget.Eviction.probe_free/3`), else `nil`.
    * `:exclude` - ids not to evict (found leased by a claim).
  """
  @type probe :: %{
          now: integer(),
          last_use: (Entry.t() -> {term(), integer()}),
          leased?: (Entry.t() -> boolean()),
          free: map() | nil,
          exclude: MapSet.t()
        }

  @doc "An empty ledger."
  @spec new(ModelBudget.budget(), Eviction.rules(), non_neg_integer() | :infinity) :: t()
  def new(budget, rules, min_idle_ms),
    do: %__MODULE__{
      budget: budget,
      rules: rules,
      min_idle_ms: min_idle_ms,
      usage: ModelBudget.empty_usage()
    }

  @doc "The entry of `id`."
  @spec fetch(t(), term()) :: {:ok, Entry.t()} | :error
  def fetch(ledger, id), do: Map.fetch(ledger.entries, id)

  @doc "The entry of `id`; raises if there is none."
  @spec fetch!(t(), term()) :: Entry.t()
  def fetch!(ledger, id), do: Map.fetch!(ledger.entries, id)

  @doc "Whether `id` is listed or waiting."
  @spec taken?(t(), term()) :: boolean()
  def taken?(ledger, id),
    do: Map.has_key?(ledger.entries, id) or Enum.any?(ledger.queue, &(&1.id == id))

  @doc "Replaces an entry whose `:held` did not change."
  @spec put(t(), Entry.t()) :: t()
  def put(ledger, %Entry{id: id} = entry),
    do: %{ledger | entries: Map.put(ledger.entries, id, entry)}

  @doc "Adds a new entry, its `:held` folded into the usage."
  @spec add(t(), Entry.t()) :: t()
  def add(ledger, %Entry{} = entry),
    do: put(%{ledger | usage: ModelBudget.fold(ledger.usage, entry.held)}, entry)

  @doc "Removes an entry and releases what it held."
  @spec release(t(), term()) :: {Entry.t(), t()}
  def release(ledger, id) do
    {entry, entries} = Map.pop!(ledger.entries, id)
    {entry, %{ledger | entries: entries, usage: ModelBudget.release(ledger.usage, entry.held)}}
  end

  @doc """
  Admits `placement`, counting the `ahead` placements (loads waiting
  before it) as held: `{:ok, admission}` (`ModelBudget.Eviction.admit/4`:
  the evictions, their residuals and the usage afterwards, the loads ahead
  not included; `hand_over/4` applies it), or check's `{:error,
  {:insufficient_memory, ...}}` against the usage and the loads ahead, when
  even evicting every idle model would not make room. A model is idle
  when it is ready, not pinned, not used within `:min_idle_ms`, not
  excluded and not leased. `intent` is `:load`, or `:fence` for room that
  nothing takes over.
  """
  @spec admit(t(), ModelBudget.placement(), [ModelBudget.placement()], probe(), :load | :fence) ::
          {:ok, Eviction.admission()} | {:error, ModelBudget.insufficient()}
  def admit(ledger, placement, ahead, probe, intent \\ :load) do
    snapshot = %{
      budget: ledger.budget,
      rules: ledger.rules,
      usage: ledger.usage,
      ahead: ahead,
      resident_count: map_size(ledger.entries),
      free: probe.free
    }

    # The core's admission leaves room for the placement (its proptests
    # hold it to `check/3`): no second check. The idle models are listed
    # only when it says the load needs room.
    listed = if ledger.min_idle_ms == :infinity, do: [], else: fn -> candidates(ledger, probe) end

    opts = if intent == :load, do: [], else: [intent: intent]

    case Eviction.admit(snapshot, placement, listed, opts) do
      {:ok, %{evictions: []}} = admitted ->
        admitted

      # The leases are asked of the models chosen, not of every one listed
      # (a read of each gate): one found leased is excluded, and the
      # admission made again.
      {:ok, %{evictions: evictions}} = admitted ->
        case for(%{id: id} <- evictions, probe.leased?.(fetch!(ledger, id)), do: id) do
          [] ->
            admitted

          leased ->
            exclude = MapSet.union(probe.exclude, MapSet.new(leased))
            admit(ledger, placement, ahead, %{probe | exclude: exclude}, intent)
        end

      refused ->
        refused
    end
  end

  @doc """
  The models an admission may evict, least recently used first, as
  `{id, placement}`: the idle entries (see `admit/5`; the leases are asked
  of the ones it chooses), their order read from the probe.
  """
  @spec candidates(t(), probe()) :: [{term(), ModelBudget.placement()}]
  def candidates(%__MODULE__{min_idle_ms: :infinity}, _probe), do: []

  def candidates(ledger, probe) do
    for {_lru, entry} <- idle(ledger, probe), do: {entry.id, entry.placement}
  end

  # One pass over the entries and a key sort: the order comes from the
  # gates, which requests stamp without telling the manager.
  defp idle(ledger, probe) do
    idle_since = probe.now - ledger.min_idle_ms

    ready =
      :maps.fold(
        fn
          id, %Entry{status: :ready, pinned: false} = entry, acc ->
            {lru, used_at} = probe.last_use.(entry)

            if used_at <= idle_since and not excluded?(probe.exclude, id),
              do: [{lru, entry} | acc],
              else: acc

          _id, _entry, acc ->
            acc
        end,
        [],
        ledger.entries
      )

    :lists.keysort(1, ready)
  end

  # Nothing is excluded but after a claim found a candidate leased.
  defp excluded?(exclude, id), do: MapSet.size(exclude) > 0 and MapSet.member?(exclude, id)

  @doc """
  Whether `placement` would fit with every unpinned model gone (pinned
  models count, unless they are being unloaded).
  """
  @spec possible?(t(), ModelBudget.placement()) :: boolean()
  def possible?(ledger, placement) do
    pinned =
      for {_id, %Entry{pinned: true, status: status, held: held}} <- ledger.entries,
          status != :unloading,
          reduce: ModelBudget.empty_usage(),
          do: (usage -> ModelBudget.fold(usage, held))

    ModelBudget.check(ledger.budget, placement, pinned) == :ok
  end

  @doc """
  Applies `admission` (`admit/5`'s, on these same books) for `entry`, or
  for a fence when `entry` is `nil`: the usage becomes the admission's;
  each evicted entry now counts its residual (what it holds beyond the new
  placement; its whole placement for a fence), is marked as evicted for
  `for`, and the new entry awaits their unloads. Returns the ledger and
  the evicted entries, in order.
  """
  @spec hand_over(t(), Entry.t() | nil, Eviction.admission(), Entry.evicted_for()) ::
          {t(), [Entry.t()]}
  def hand_over(ledger, entry, %{evictions: [], usage: usage}, _for) do
    ledger = %{ledger | usage: usage}
    {if(entry, do: put(ledger, entry), else: ledger), []}
  end

  def hand_over(ledger, entry, admission, for) do
    %{evictions: evictions, residuals: residuals, usage: usage} = admission

    {evicted, entries} =
      evictions
      |> Enum.zip(residuals)
      |> Enum.map_reduce(ledger.entries, fn {%{id: id}, held}, entries ->
        old = Map.fetch!(entries, id)
        evicted = %{old | held: held, evicted_for: for, evictions: old.evictions + 1}
        {evicted, Map.put(entries, id, evicted)}
      end)

    ledger = %{ledger | usage: usage, entries: entries}

    ledger =
      if entry do
        ids = Enum.map(evictions, & &1.id)
        put(ledger, %{entry | evicted: ids, awaiting: MapSet.new(ids)})
      else
        ledger
      end

    {ledger, evicted}
  end

  @doc """
  Cancels the load `id` while it still awaits its evicted models' unloads:
  its entry leaves the books, and each evicted model it awaits counts its
  whole placement again (it holds its memory until its unload returns).
  Returns the load's entry and the ledger.

  One step, because only the two changes together stay within the budget:
  the evicted models' placements fit beside the rest only once the load's
  own placement is released (what evicting them made room for).
  """
  @spec cancel(t(), term()) :: {Entry.t(), t()}
  def cancel(ledger, id) do
    {entry, ledger} = release(ledger, id)
    {entry, Enum.reduce(entry.awaiting, ledger, &restore(&2, &1))}
  end

  defp restore(ledger, id) do
    entry = fetch!(ledger, id)
    usage = ledger.usage |> ModelBudget.release(entry.held) |> ModelBudget.fold(entry.placement)
    put(%{ledger | usage: usage}, %{entry | held: entry.placement, evicted_for: nil})
  end

  @doc "The ready models whose keep-alive has run out at `probe.now` (leases not asked)."
  @spec expired(t(), probe()) :: [Entry.t()]
  def expired(ledger, probe) do
    for {_id, %Entry{status: :ready, keep_alive: keep_alive} = entry} <- ledger.entries,
        keep_alive != :infinity,
        {_lru, used_at} = probe.last_use.(entry),
        probe.now - used_at >= keep_alive,
        do: entry
  end

  ## Waiting loads

  @doc "Queues a waiting load, last."
  @spec enqueue(t(), waiter()) :: t()
  def enqueue(ledger, waiter), do: %{ledger | queue: ledger.queue ++ [waiter]}

  @doc "Takes the waiting load `ref` out of the queue."
  @spec dequeue(t(), reference()) :: {waiter() | nil, t()}
  def dequeue(ledger, ref) do
    case Enum.split_with(ledger.queue, &(&1.ref == ref)) do
      {[waiter], rest} -> {waiter, %{ledger | queue: rest}}
      {[], _} -> {nil, ledger}
    end
  end

  @doc "The placements of the loads waiting before `ref` (all of them for `nil`)."
  @spec ahead(t(), reference() | nil) :: [ModelBudget.placement()]
  def ahead(%__MODULE__{queue: []}, _ref), do: []

  def ahead(ledger, ref) do
    ledger.queue |> Enum.take_while(&(&1.ref != ref)) |> Enum.map(& &1.placement)
  end
end
