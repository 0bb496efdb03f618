defmodule ModelBudget.ModelManager.EffectsTest do
  # The interpreter: what it does with each effect, and what it keeps in
  # the state (refs by tag). It acts on the world, so this test does start
  # processes (a watched process, a task supervisor).
  use ExUnit.Case, async: true

  alias ModelBudget.ModelManager.Effects

  defp state(extra \\ %{}),
    do: Map.merge(%{name: :test, refs: %{}, monitors: %{}, tasks: %{}, timers: %{}}, extra)

  test "replies, in order" do
    ref = make_ref()

    Effects.run(state(), [
      {:reply, {self(), ref}, 1},
      {:reply, nil, 2},
      {:reply, {self(), ref}, 3}
    ])

    assert_received {^ref, 1}
    assert_received {^ref, 3}
  end

  test "a monitor is kept by its tag; its :DOWN comes back as the tag" do
    pid = spawn(fn -> receive do: (:stop -> :ok) end)
    state = Effects.run(state(), [{:monitor, pid, {:waiter, :w}}])
    assert %{{:waiter, :w} => ref} = state.monitors
    send(pid, :stop)
    assert_receive {:DOWN, ^ref, :process, ^pid, :normal}
    assert {{:waiter, :w}, state} = Effects.down(state, ref)
    assert state.monitors == %{} and state.refs == %{}
    assert Effects.down(state, ref) == {nil, state}
  end

  test "a demonitor by tag flushes; an unknown tag is nothing" do
    pid = spawn(fn -> receive do: (:stop -> :ok) end)
    state = Effects.run(state(), [{:monitor, pid, :t}, {:demonitor, :t}, {:demonitor, :other}])
    assert state.monitors == %{} and state.refs == %{}
    send(pid, :stop)
    refute_receive {:DOWN, _, _, _, _}, 50
  end

  test "a timer is kept by its message and cancelled by it" do
    state = Effects.run(state(), [{:timer, 0, :soon}, {:timer, 60_000, :later}])
    assert_receive {:timeout, _, {ModelBudget.ModelManager, :soon}}
    state = Effects.run(state, [{:cancel_timer, :later}, {:cancel_timer, :soon}])
    assert state.timers == %{}
  end

  test "a task's reply comes back as its tag; a killed task's :DOWN too" do
    sup = start_supervised!(Task.Supervisor)
    state = state(%{task_sup: sup})

    state =
      Effects.run(state, [
        {:start_task, {:unload, :a}, {Kernel, :+, [1, 2]}},
        {:start_task, {:load, :b}, {Process, :sleep, [:infinity]}}
      ])

    assert_receive {ref, 3}
    assert {{:unload, :a}, state} = Effects.down(state, ref)
    state = Effects.run(state, [{:kill_task, {:load, :b}}])
    assert_receive {:DOWN, ref, :process, _, :killed}
    assert {{:load, :b}, state} = Effects.down(state, ref)
    assert state.tasks == %{} and state.refs == %{}
  end
end
