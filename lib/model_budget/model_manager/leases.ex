defmodule ModelBudget.ModelManager.Leases do
  @moduledoc false
  # Leases: the request path of a model server, which never sends the manager
  # a message in the ordinary case. The logic is the Rust core's
  # (model_budget_core::gate); this module holds the Elixir side of it.
  #
  # ## The pieces
  #
  #   * A gate per loaded model: a NIF resource with atomics, `state`
  #     (loading, open, claiming, closed), the lease count, `lru` (the order
  #     of the last use) and `used_at` (the manager's clock, in ms, at the
  #     last use: keep-alive and :min_idle_ms). Its incarnation `inc` (a
  #     unique integer per admission) tells a model from an earlier load of
  #     the same id. It lives in the model's row of the readers' table.
  #   * A holder per process that takes leases: a NIF resource, kept in the
  #     process dictionary, that holds the process's leases by number and
  #     monitors the process (a NIF monitor, no message to anyone). A lease
  #     is its holder and a number: taking one allocates nothing the garbage
  #     collector must free. It ends once: at checkin (from any process), or
  #     when the process that took it exits, killed or not (the holder's
  #     `down` callback), whoever holds a copy of its term.
  #
  # ## Checkout, checkin
  #
  # checkout reads the gate (one ETS lookup of the manager's table, or the
  # process's last gate) and the holder (the process dictionary) and makes
  # one NIF call: the count goes
  # up, then the state is read: open means the lease stands, and the holder
  # numbers it. checkin (one NIF call) stamps the gate's `lru` and
  # `used_at`, ends the lease and reads the state: a message goes to the
  # manager only when the model is closed (an unload waits for its leases)
  # or when the manager armed its flag (loads wait for room). The holder's
  # `down` does the same, without the stamp.
  #
  # ## Closing a gate, race-free
  #
  # The manager closes a model (for an unload) by setting its state, then
  # reading its count; checkout counts, then reads the state; both SeqCst,
  # so either the manager counts the new lease or checkout sees the closed
  # state (and takes its count back). An eviction or a keep-alive expiry
  # must not fail a checkout of a model it then keeps, so it claims instead:
  # state `claiming`, count, then `closed` when nothing was counted, back to
  # `open` otherwise; a checkout that reads `claiming` backs off and asks
  # again once the manager has decided (within the same step of it).

  alias ModelBudget.ModelManager.{Lease, Table}
  alias ModelBudget.Native

  @typedoc "A model's gate: its incarnation and its resource."
  @type gate :: {pos_integer(), reference()}

  @doc "The manager's flag, armed while loads wait for room."
  @spec new_flags() :: reference()
  def new_flags, do: Native.gate_waiting_new()

  @doc "A gate for a model of `manager` (whose flag is `flags`): loading, used `now`."
  @spec new_gate(reference(), pid(), integer()) :: gate()
  def new_gate(flags, manager, now) do
    inc = :erlang.unique_integer([:positive, :monotonic])
    {inc, Native.gate_new(flags, manager, inc, now)}
  end

  ## The request path

  @holder {__MODULE__, :holder}

  # The gate of the model this process last checked out, `{table, id,
  # gate}`: one slot, so a process that serves one model skips the table's
  # lookup, and a process that serves many keeps one gate alive, not many.
  # An open gate is its model's current one (a gate never reopens for a
  # later load of its id), so a closed one is looked up again. A manager
  # that died leaves its gates open; the NIF finds them not open (it looks
  # the manager up in the process table: Process.alive?/1 would wait for a
  # busy manager's signals), and the table's lookup fails with it.
  @last {__MODULE__, :last_gate}

  @doc "Takes a lease on model `id` (see the module doc)."
  @spec checkout(map(), term()) :: {:ok, Lease.t()} | {:error, :not_loaded}
  def checkout(%{table: table} = shared, id) do
    with {^table, ^id, gate} <- Process.get(@last),
         {:ok, _lease} = taken <- take(shared, id, gate, holder()) do
      taken
    else
      _ -> look_up_and_take(shared, id)
    end
  end

  defp look_up_and_take(shared, id) do
    case Table.gate(shared.table, id) do
      {:ok, {_inc, gate}} ->
        Process.put(@last, {shared.table, id, gate})
        take(shared, id, gate, holder())

      :error ->
        {:error, :not_loaded}
    end
  end

  defp take(shared, id, gate, holder) do
    case Native.gate_checkout(gate, holder) do
      {:ok, number} ->
        {:ok, %Lease{id: id, holder: holder, number: number, clock: shared.lease_clock}}

      # The manager is deciding, in one step, whether to evict or expire it
      # (unless it died meanwhile: then nothing will be decided).
      :claiming ->
        :erlang.yield()

        if Process.alive?(shared.manager),
          do: take(shared, id, gate, holder),
          else: {:error, :not_loaded}

      :not_open ->
        {:error, :not_loaded}
    end
  end

  @doc """
  Takes a lease on the gate `gate` that this process made for its own load
  of `id` (`ModelBudget.ModelManager.load_request/5`), before the manager
  sees it: the model opens leased, so nothing can evict it in between.
  """
  @spec reserve(map(), term(), gate()) :: {:ok, Lease.t()} | {:error, :not_loaded}
  def reserve(shared, id, {_inc, gate}) do
    holder = holder()

    case Native.gate_reserve(gate, holder) do
      {:ok, number} ->
        {:ok, %Lease{id: id, holder: holder, number: number, clock: shared.lease_clock}}

      :not_open ->
        {:error, :not_loaded}
    end
  end

  # The calling process's holder, made at its first checkout.
  defp holder do
    with nil <- Process.get(@holder) do
      holder = Native.gate_holder_new()
      Process.put(@holder, holder)
      holder
    end
  end

  @doc "Ends a lease; a second checkin of the same lease does nothing."
  @spec checkin(Lease.t()) :: :ok
  def checkin(%Lease{holder: holder, number: number, clock: nil}),
    do: Native.gate_checkin(holder, number, nil)

  def checkin(%Lease{holder: holder, number: number, clock: clock}),
    do: Native.gate_checkin(holder, number, clock.())

  @doc """
  The clock a lease stamps its checkin with: `nil` for the default clock
  (the NIF reads the same runtime clock itself), else the manager's.
  """
  @spec lease_clock((() -> integer())) :: (() -> integer()) | nil
  def lease_clock(clock),
    do: if(clock == (&ModelBudget.ModelManager.Options.monotonic_ms/0), do: nil, else: clock)

  @doc "Marks model `id` as used now, unless it is closed or gone."
  @spec touch(map(), term()) :: :ok | {:error, :not_loaded}
  def touch(shared, id) do
    with {:ok, {_inc, gate}} <- Table.gate(shared.table, id),
         true <- Native.gate_touch(gate, shared.clock.()) do
      :ok
    else
      _ -> {:error, :not_loaded}
    end
  end

  ## The manager's side

  @doc "Stamps a use now: the LRU order and the clock."
  @spec used(gate(), integer()) :: :ok
  def used({_inc, gate}, now), do: Native.gate_used(gate, now)

  @doc "`{lru, used_at}` of a gate: the LRU position and the clock of the last use."
  @spec last_use(gate()) :: {integer(), integer()}
  def last_use({_inc, gate}), do: Native.gate_last_use(gate)

  @doc "Opens a gate: checkouts succeed."
  @spec open(gate()) :: :ok
  def open({_inc, gate}), do: Native.gate_set(gate, :open)

  @doc "Closes a gate for an unload; returns whether leases still hold it."
  @spec close(gate()) :: boolean()
  def close({_inc, gate}), do: Native.gate_close(gate)

  @doc """
  Claims unleased gates for eviction or expiry, all or none: `:ok` with
  every gate closed, or `{:leased, indexes}` (positions in `gates` that hold
  leases) with every gate open again.
  """
  @spec claim([gate()]) :: :ok | {:leased, [non_neg_integer()]}
  def claim(gates), do: Native.gate_claim(Enum.map(gates, &elem(&1, 1)))

  @doc "Whether any lease holds a gate."
  @spec leased?(gate()) :: boolean()
  def leased?(gate), do: count(gate) > 0

  @doc "How many leases hold a gate."
  @spec count(gate()) :: non_neg_integer()
  def count({_inc, gate}), do: Native.gate_count(gate)

  @doc "Ends every lease of a gate and closes it (a forced unload, or the model is gone)."
  @spec drop(gate()) :: :ok
  def drop({_inc, gate}), do: Native.gate_drop(gate)

  @doc "Asks the next lease end to tell the manager (loads wait for room), or stops asking."
  @spec arm(reference(), boolean()) :: :ok
  def arm(flags, on?), do: Native.gate_waiting_arm(flags, on?)
end
