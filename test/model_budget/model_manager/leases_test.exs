defmodule ModelBudget.ModelManager.LeasesTest do
  # The lease gate without a manager process: this test process owns the
  # tables and plays the manager's part.
  use ExUnit.Case, async: true

  alias ModelBudget.ModelManager.{Entry, Leases, Table}

  # The gate's state slot and the claiming state (see Leases).
  @state 1
  @claiming 2

  defp setup_gate(id \\ :m) do
    table = Table.new()
    gate = Leases.new_gate(0)
    placement = %{ram: 1, vram: %{}}
    request = %{id: id, source: nil, opts: [], bytes: 1, placement: placement}
    Table.put(table, placement, [Entry.new(request, gate, {0, 0})])

    shared = %{
      table: table,
      leases: Leases.new_table(),
      flags: Leases.new_flags(),
      clock: fn -> 0 end,
      manager: self()
    }

    {shared, gate}
  end

  test "a loading gate refuses checkouts; an open one leases, counts and checks in" do
    {shared, gate} = setup_gate()
    assert Leases.checkout(shared, :m) == {:error, :not_loaded}
    Leases.open(gate)
    assert {:ok, lease} = Leases.checkout(shared, :m)
    assert Leases.count(shared.leases, gate) == 1 and Leases.leased?(shared.leases, gate)
    assert Leases.checkin(lease) == :ok
    assert Leases.count(shared.leases, gate) == 0 and not Leases.leased?(shared.leases, gate)
  end

  test "a checkout waits while the gate is claimed, and gets the verdict" do
    {shared, {_inc, atomics} = gate} = setup_gate()
    Leases.open(gate)

    :atomics.put(atomics, @state, @claiming)
    kept = Task.async(fn -> Leases.checkout(shared, :m) end)
    assert Task.yield(kept, 50) == nil
    Leases.open(gate)
    assert {:ok, lease} = Task.await(kept)
    Leases.checkin(lease)

    :atomics.put(atomics, @state, @claiming)
    evicted = Task.async(fn -> Leases.checkout(shared, :m) end)
    assert Task.yield(evicted, 50) == nil
    :atomics.put(atomics, @state, 3)
    assert Task.await(evicted) == {:error, :not_loaded}
    assert Leases.count(shared.leases, gate) == 0
  end

  test "closing races checkouts: a checkout that succeeds is always seen by the close" do
    for _ <- 1..500 do
      {shared, gate} = setup_gate()
      Leases.open(gate)
      checkouts = for _ <- 1..4, do: Task.async(fn -> Leases.checkout(shared, :m) end)
      leased? = Leases.close(shared.leases, gate)
      results = Task.await_many(checkouts)

      if Enum.any?(results, &match?({:ok, _}, &1)), do: assert(leased?)
      # Failed checkouts took their rows back.
      ok = Enum.count(results, &match?({:ok, _}, &1))
      assert Leases.count(shared.leases, gate) == ok
      :ets.delete(shared.table)
      :ets.delete(shared.leases)
    end
  end

  test "a checkin on a closed gate tells the manager; a dead holder's leases are reaped" do
    {shared, {inc, _} = gate} = setup_gate()
    Leases.open(gate)
    {:ok, lease} = Leases.checkout(shared, :m)
    true = Leases.close(shared.leases, gate)
    :ok = Leases.checkin(lease)
    assert_received {ModelBudget.ModelManager, :lease_ended, :m, ^inc}

    Leases.open(gate)
    test = self()

    holder =
      spawn(fn ->
        send(test, {:took, Leases.checkout(shared, :m)})
        Process.sleep(:infinity)
      end)

    assert_receive {:took, {:ok, _}}
    assert Leases.holders(shared.leases) == [holder]
    assert Leases.reap(shared.leases, holder) == 1
    assert Leases.count(shared.leases, gate) == 0
  end

  test "armed flags: the next checkin tells the manager once" do
    {shared, gate} = setup_gate()
    Leases.open(gate)
    Leases.arm(shared.flags, true)

    for _ <- 1..3 do
      {:ok, lease} = Leases.checkout(shared, :m)
      :ok = Leases.checkin(lease)
    end

    assert_received {ModelBudget.ModelManager, :lease_ended, nil, nil}
    refute_received {ModelBudget.ModelManager, :lease_ended, nil, nil}
  end
end
