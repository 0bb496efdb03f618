defmodule ModelBudget.ModelManager.LeasesTest do
  # The lease gate without a manager process: this test process owns the
  # table and plays the manager's part (its gates tell it).
  use ExUnit.Case, async: true

  import ModelBudget.Test.Eventually

  alias ModelBudget.ModelManager.{Entry, Leases, Table}
  alias ModelBudget.Native

  defp setup_gate(id \\ :m) do
    table = Table.new()
    flags = Leases.new_flags()
    gate = Leases.new_gate(flags, self(), 0)
    placement = %{ram: 1, vram: %{}}
    request = %{id: id, source: nil, opts: [], bytes: 1, placement: placement}
    Table.put(table, placement, [Entry.new(request, gate, {0, 0})])
    clock = fn -> 0 end
    shared = %{table: table, flags: flags, clock: clock, lease_clock: clock, manager: self()}
    {shared, gate}
  end

  test "a loading gate refuses checkouts; an open one leases, counts and checks in" do
    {shared, gate} = setup_gate()
    assert Leases.checkout(shared, :m) == {:error, :not_loaded}
    Leases.open(gate)
    assert {:ok, lease} = Leases.checkout(shared, :m)
    assert Leases.count(gate) == 1 and Leases.leased?(gate)
    assert Leases.checkin(lease) == :ok
    assert Leases.count(gate) == 0 and not Leases.leased?(gate)
    assert Leases.checkin(lease) == :ok
    assert Leases.count(gate) == 0
  end

  test "a checkout waits while the gate is claimed, and gets the verdict" do
    {shared, {_inc, ref} = gate} = setup_gate()
    Leases.open(gate)

    Native.gate_set(ref, :claiming)
    kept = Task.async(fn -> Leases.checkout(shared, :m) end)
    assert Task.yield(kept, 50) == nil
    Leases.open(gate)
    assert {:ok, lease} = Task.await(kept)
    Leases.checkin(lease)

    Native.gate_set(ref, :claiming)
    evicted = Task.async(fn -> Leases.checkout(shared, :m) end)
    assert Task.yield(evicted, 50) == nil
    Native.gate_set(ref, :closed)
    assert Task.await(evicted) == {:error, :not_loaded}
    assert Leases.count(gate) == 0
  end

  test "a claim is all or none: a leased gate keeps every gate open" do
    {shared, a} = setup_gate(:a)
    b = Leases.new_gate(shared.flags, self(), 0)
    Leases.open(a)
    Leases.open(b)
    {:ok, lease} = Leases.checkout(shared, :a)
    assert Leases.claim([b, a]) == {:leased, [1]}
    assert Native.gate_state(elem(a, 1)) == :open and Native.gate_state(elem(b, 1)) == :open
    Leases.checkin(lease)
    assert Leases.claim([b, a]) == :ok
    assert Leases.checkout(shared, :a) == {:error, :not_loaded}
  end

  test "closing races checkouts: a checkout that succeeds is always seen by the close" do
    for _ <- 1..500 do
      {shared, gate} = setup_gate()
      Leases.open(gate)
      test = self()

      # Each taker stays alive until told: its exit would end its lease.
      takers =
        for _ <- 1..4 do
          spawn_link(fn ->
            send(test, {self(), Leases.checkout(shared, :m)})
            receive do: (:done -> :ok)
          end)
        end

      leased? = Leases.close(gate)
      results = for taker <- takers, do: receive(do: ({^taker, result} -> result))

      if Enum.any?(results, &match?({:ok, _}, &1)), do: assert(leased?)
      # Failed checkouts took their counts back.
      ok = Enum.count(results, &match?({:ok, _}, &1))
      assert Leases.count(gate) == ok
      for {:ok, lease} <- results, do: Leases.checkin(lease)
      for taker <- takers, do: send(taker, :done)
      :ets.delete(shared.table)
    end
  end

  test "a lease ending on a closed gate tells the manager: at checkin, or with its holder" do
    {shared, {inc, _} = gate} = setup_gate()
    Leases.open(gate)
    {:ok, lease} = Leases.checkout(shared, :m)
    true = Leases.close(gate)
    :ok = Leases.checkin(lease)
    assert_received {ModelBudget.ModelManager, :lease_ended, ^inc}

    Leases.open(gate)
    test = self()

    holder =
      spawn(fn ->
        {:ok, lease} = Leases.checkout(shared, :m)
        send(test, :took)
        Process.sleep(:infinity)
        Leases.checkin(lease)
      end)

    assert_receive :took
    assert Leases.close(gate)
    Process.exit(holder, :kill)
    assert_receive {ModelBudget.ModelManager, :lease_ended, ^inc}, 2_000
    assert Leases.count(gate) == 0
  end

  test "a holder whose every term is gone before its process ends its leases" do
    {shared, gate} = setup_gate()
    Leases.open(gate)
    test = self()

    spawn_link(fn ->
      {:ok, _lease} = Leases.checkout(shared, :m)
      send(test, {:count, Leases.count(gate)})
      # The process lives on, but nothing refers to its holder any more.
      Process.delete({Leases, :holder})
      :erlang.garbage_collect()
      send(test, :collected)
      receive do: (:never -> :ok)
    end)

    assert_receive {:count, 1}
    assert_receive :collected
    # The runtime removes the holder's monitor first, then destroys it.
    eventually(fn -> Leases.count(gate) == 0 end)
  end

  test "a forced drop ends every lease out; their later ends count for nothing" do
    {shared, gate} = setup_gate()
    Leases.open(gate)
    {:ok, first} = Leases.checkout(shared, :m)
    {:ok, second} = Leases.checkout(shared, :m)
    Leases.drop(gate)
    assert Leases.count(gate) == 0
    Leases.checkin(first)
    assert Leases.count(gate) == 0
    assert Leases.checkout(shared, :m) == {:error, :not_loaded}
    Leases.checkin(second)
  end

  test "armed flags: the next lease end tells the manager once" do
    {shared, gate} = setup_gate()
    Leases.open(gate)
    Leases.arm(shared.flags, true)

    for _ <- 1..3 do
      {:ok, lease} = Leases.checkout(shared, :m)
      :ok = Leases.checkin(lease)
    end

    assert_received {ModelBudget.ModelManager, :lease_ended, nil}
    refute_received {ModelBudget.ModelManager, :lease_ended, nil}
  end

  test "touch stamps a use unless the gate is closed; checkin stamps the clock" do
    {shared, gate} = setup_gate()
    {lru, 0} = Leases.last_use(gate)
    shared = %{shared | clock: fn -> 42 end, lease_clock: fn -> 42 end}
    assert Leases.touch(shared, :m) == :ok
    assert {later, 42} = Leases.last_use(gate)
    assert later > lru
    Leases.open(gate)
    {:ok, lease} = Leases.checkout(shared, :m)
    Leases.checkin(%{lease | clock: fn -> 43 end})
    assert {_, 43} = Leases.last_use(gate)
    Leases.close(gate)
    assert Leases.touch(shared, :m) == {:error, :not_loaded}

    # The default clock: the NIF reads the runtime's monotonic milliseconds.
    assert Leases.lease_clock(&ModelBudget.ModelManager.Options.monotonic_ms/0) == nil
    Leases.open(gate)
    {:ok, lease} = Leases.checkout(%{shared | lease_clock: nil}, :m)
    before = :erlang.monotonic_time(:millisecond)
    Leases.checkin(lease)
    {_, stamped} = Leases.last_use(gate)
    assert stamped >= before and stamped <= :erlang.monotonic_time(:millisecond)
  end
end
