defmodule ModelBudget.ModelManager.Leases do
  @moduledoc false
  # Leases: the request path of a model server, which never sends the manager
  # a message in the ordinary case.
  #
  # ## The pieces
  #
  #   * A gate per loaded model: an `:atomics` array of three slots, `state`
  #     (loading, open, claiming, closed), `lru` (the runtime's monotonic
  #     time of the last use: the LRU order) and `used_at` (the manager's
  #     clock, in ms, at the last use: keep-alive and :min_idle_ms). Its
  #     incarnation `inc` (a unique integer per admission) tells a model from
  #     an earlier load of the same id.
  #   * The lease table, one per manager: a public ordered_set of
  #     `{{inc, lease_ref}, holder_pid}`, one row per lease. The rows are the
  #     truth: a model's lease count is the number of rows under its `inc`
  #     (a range count, the key's first element being bound).
  #
  # ## Checkout, checkin
  #
  # checkout reads the gate (one ETS lookup of the manager's table), inserts
  # its row, then reads the gate's state again: open means the lease stands.
  # checkin deletes the row, stamps the gate's `lru` and `used_at`, and reads
  # the state: a message goes to the manager only when the model is closed
  # (an unload waits for its leases) or when the manager armed the flags
  # (loads wait for room). Inserting or deleting one row is atomic, so a
  # holder killed at any instant leaves either a row (a lease, ended by the
  # sweep below) or none: never a count without its holder.
  #
  # ## Closing a gate, race-free
  #
  # The manager closes a model (for an unload) by setting its state, then
  # counting its rows; checkout inserts its row, then reads the state. Each
  # side writes before it reads, and atomics operations are mutually ordered
  # (full barriers), so either the manager counts the new row or checkout
  # sees the closed state (and deletes its row again). An eviction or a
  # keep-alive expiry must not fail a checkout of a model it then keeps, so
  # it claims instead: state `claiming`, count, then `closed` when no row was
  # counted, back to `open` otherwise; a checkout that reads `claiming`
  # yields until the manager has decided, within the same step.
  #
  # ## A holder that dies
  #
  # Leases end with their holder without a message per checkout: the manager
  # sweeps the table (every :sweep_ms, when an unload waits for leases or a
  # load waits for room, and before refusing a load): it deletes the rows of
  # holders that are dead and monitors the live ones it does not monitor yet
  # (and demonitors those that hold nothing), so a later death arrives as a
  # :DOWN and its rows go then. A lease holder is monitored at most once,
  # whatever it checks out.

  alias ModelBudget.ModelManager.{Lease, Table}

  @state 1
  @lru 2
  @used_at 3

  @loading 0
  @open 1
  @claiming 2
  @closed 3

  # The manager's flags: 1 while loads wait for room (a checkin tells it).
  @waiting 1

  @typedoc "A model's gate: its incarnation and its atomics."
  @type gate :: {pos_integer(), :atomics.atomics_ref()}

  @doc "A new lease table (public: checkout and checkin write it)."
  @spec new_table() :: :ets.tid()
  def new_table,
    do: :ets.new(__MODULE__, [:ordered_set, :public, write_concurrency: true])

  @doc "The manager's flags."
  @spec new_flags() :: :atomics.atomics_ref()
  def new_flags, do: :atomics.new(1, signed: true)

  @doc "A gate for a model just admitted: loading, used now."
  @spec new_gate(integer()) :: gate()
  def new_gate(now) do
    gate = :atomics.new(3, signed: true)
    :atomics.put(gate, @lru, :erlang.monotonic_time())
    :atomics.put(gate, @used_at, now)
    {:erlang.unique_integer([:positive, :monotonic]), gate}
  end

  ## The request path

  @doc "Takes a lease on model `id` (see the module doc)."
  @spec checkout(map(), term()) :: {:ok, Lease.t()} | {:error, :not_loaded}
  def checkout(shared, id) do
    # A claimed gate may stay open: confirm/1 waits for the verdict.
    with {:ok, {inc, gate}} <- Table.gate(shared.table, id),
         state when state in [@open, @claiming] <- :atomics.get(gate, @state) do
      key = {inc, make_ref()}
      :ets.insert(shared.leases, {key, self()})

      lease = %Lease{
        id: id,
        key: key,
        gate: gate,
        manager: shared.manager,
        leases: shared.leases,
        flags: shared.flags,
        clock: shared.clock
      }

      confirm(lease)
    else
      _ -> {:error, :not_loaded}
    end
  end

  defp confirm(lease) do
    case :atomics.get(lease.gate, @state) do
      @open ->
        {:ok, lease}

      # The manager is deciding, in one step, whether to evict or expire it
      # (unless it died meanwhile: then nothing will be decided).
      @claiming ->
        :erlang.yield()

        if Process.alive?(lease.manager) do
          confirm(lease)
        else
          :ets.delete(lease.leases, lease.key)
          {:error, :not_loaded}
        end

      _closed ->
        :ets.delete(lease.leases, lease.key)
        tell_manager(lease)
        {:error, :not_loaded}
    end
  end

  @doc "Ends a lease; a second checkin of the same lease does nothing."
  @spec checkin(Lease.t()) :: :ok
  def checkin(%Lease{} = lease) do
    :ets.delete(lease.leases, lease.key)
    used(lease.gate, lease.clock.())
    tell_manager(lease)
  rescue
    # The manager is gone, and its lease table with it: so is the lease.
    ArgumentError -> :ok
  end

  @doc "Marks model `id` as used now, unless it is closed or gone."
  @spec touch(map(), term()) :: :ok | {:error, :not_loaded}
  def touch(shared, id) do
    with {:ok, {_inc, gate}} <- Table.gate(shared.table, id),
         state when state in [@loading, @open, @claiming] <- :atomics.get(gate, @state) do
      used(gate, shared.clock.())
    else
      _ -> {:error, :not_loaded}
    end
  end

  # A checkin the manager waits for: its model closed (an unload waits for
  # the leases to end), or loads waiting for room (one message until the
  # manager rearms the flag).
  defp tell_manager(%Lease{key: {inc, _}} = lease) do
    if :atomics.get(lease.gate, @state) == @closed,
      do: send(lease.manager, {ModelBudget.ModelManager, :lease_ended, lease.id, inc})

    if :atomics.get(lease.flags, @waiting) == 1 and
         :atomics.compare_exchange(lease.flags, @waiting, 1, 0) == :ok,
       do: send(lease.manager, {ModelBudget.ModelManager, :lease_ended, nil, nil})

    :ok
  end

  ## The manager's side

  @doc "Stamps a use now: the LRU order and the clock."
  @spec used(:atomics.atomics_ref(), integer()) :: :ok
  def used(gate, now) do
    :atomics.put(gate, @lru, :erlang.monotonic_time())
    :atomics.put(gate, @used_at, now)
  end

  @doc "`{lru, used_at}` of a gate: the LRU position and the clock of the last use."
  @spec last_use(gate()) :: {integer(), integer()}
  def last_use({_inc, gate}), do: {:atomics.get(gate, @lru), :atomics.get(gate, @used_at)}

  @doc "Opens a gate: checkouts succeed."
  @spec open(gate()) :: :ok
  def open({_inc, gate}), do: :atomics.put(gate, @state, @open)

  @doc "Closes a gate for an unload; returns whether leases still hold it."
  @spec close(:ets.tid(), gate()) :: boolean()
  def close(leases, {_inc, gate} = g) do
    :atomics.put(gate, @state, @closed)
    leased?(leases, g)
  end

  @doc """
  Claims unleased gates for eviction or expiry, all or none: `:ok` with
  every gate closed, or `{:leased, indexes}` (positions in `gates` that hold
  leases) with every gate open again.
  """
  @spec claim(:ets.tid(), [gate()]) :: :ok | {:leased, [non_neg_integer()]}
  def claim(leases, gates) do
    for {_inc, gate} <- gates, do: :atomics.put(gate, @state, @claiming)

    leased = for {gate, index} <- Enum.with_index(gates), leased?(leases, gate), do: index

    state = if leased == [], do: @closed, else: @open
    for {_inc, gate} <- gates, do: :atomics.put(gate, @state, state)
    if leased == [], do: :ok, else: {:leased, leased}
  end

  @doc """
  Whether any lease holds a gate: the first key after `{inc, 0}` (numbers
  sort before the references of lease keys) is one of its leases.
  """
  @spec leased?(:ets.tid(), gate()) :: boolean()
  def leased?(leases, {inc, _gate}), do: match?({^inc, _}, :ets.next(leases, {inc, 0}))

  @doc "How many leases hold a gate."
  @spec count(:ets.tid(), gate()) :: non_neg_integer()
  def count(leases, {inc, _gate}),
    do: :ets.select_count(leases, [{{{inc, :_}, :_}, [], [true]}])

  @doc "Ends every lease of a gate (a forced unload, or the model is gone)."
  @spec drop(:ets.tid(), gate()) :: :ok
  def drop(leases, {inc, gate} = g) do
    :atomics.put(gate, @state, @closed)
    if leased?(leases, g), do: :ets.select_delete(leases, [{{{inc, :_}, :_}, [], [true]}])
    :ok
  end

  @doc "Ends every lease `pid` holds; returns how many."
  @spec reap(:ets.tid(), pid()) :: non_neg_integer()
  def reap(leases, pid), do: :ets.select_delete(leases, [{{:_, pid}, [], [true]}])

  @doc "The distinct processes holding leases."
  @spec holders(:ets.tid()) :: [pid()]
  def holders(leases), do: leases |> :ets.select([{{:_, :"$1"}, [], [:"$1"]}]) |> Enum.uniq()

  @doc "Asks the next checkin to tell the manager (loads wait for room), or stops asking."
  @spec arm(:atomics.atomics_ref(), boolean()) :: :ok
  def arm(flags, on?), do: :atomics.put(flags, @waiting, if(on?, do: 1, else: 0))
end
