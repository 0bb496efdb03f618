defmodule ModelBudget.ModelManager.ConcurrencyTest do
  # 100 processes lease, load (some waiting for room), unload (some with a
  # timeout) and take leases in processes that get killed, at random, over
  # shared ids, for a bounded time; an observer samples the ledger and the
  # bytes the backend really holds the whole while.
  use ExUnit.Case, async: true

  import ModelBudget.Test.Eventually

  alias ModelBudget.ModelManager
  alias ModelBudget.TestBackend

  @moduletag :capture_log

  @budget 4 * 2 ** 20
  @workers 100
  @ids 20
  # How long the workers run: a bound on the test's length, not a measure.
  @run_ms 2_500

  test "the budget is never exceeded, no model is unloaded while leased or twice, nothing is left" do
    manager =
      start_supervised!(
        {ModelManager, memory_budget: @budget, backend: TestBackend, sweep_ms: 50}
      )

    counter = :counters.new(2, [:atomics])
    violations = :counters.new(1, [:atomics])
    collector = spawn_link(&TestBackend.collect_holders/0)
    observer = Task.async(fn -> TestBackend.observe(manager, counter, 1) end)
    deadline = System.monotonic_time(:millisecond) + @run_ms
    opts = [counter: counter, notify: collector, mode: :direct, n_gpus: 0]

    outcomes =
      1..@workers
      |> Enum.map(fn _ -> Task.async(fn -> work(manager, opts, violations, deadline, []) end) end)
      |> Task.await_many(@run_ms + 30_000)
      |> List.flatten()
      |> Enum.frequencies()

    send(observer.pid, :stop)
    {samples, max_usage, max_held} = Task.await(observer)
    assert samples >= 100
    assert max_usage <= @budget
    assert max_held <= @budget
    assert :counters.get(violations, 1) == 0

    assert outcomes[{:lease, :ok}] > 0 and outcomes[{:load, :ok}] > 0
    assert outcomes[{:unload, :ok}] > 0 and outcomes[{:unload, :busy}] > 0
    assert outcomes[{:load, :refused}] > 0

    # Every lease ended (checked in, or with its killed holder: each unload
    # waits for the leases), every load was answered: nothing waits.
    for %{id: id} <- ModelManager.list(manager), do: :ok = ModelManager.unload(manager, id)
    state = :sys.get_state(manager)
    assert state.ledger.queue == []
    assert ModelManager.list(manager) == []
    assert ModelManager.usage(manager) == ModelBudget.empty_usage()
    eventually(fn -> TestBackend.held(counter) == {0, 0} end)

    # No model was unloaded twice (and, above, none is left holding memory:
    # every model loaded, or returned by a load cancelled as it finished,
    # was unloaded).
    send(collector, {:holders, self()})
    assert_receive {:holders, holders}, 2_000
    unloads = Enum.map(holders, &TestBackend.unloads/1)
    assert Enum.all?(unloads, &(&1 <= 1))
    assert Enum.sum(unloads) >= ModelManager.stats(manager).loads
  end

  defp work(manager, opts, violations, deadline, outcomes) do
    if System.monotonic_time(:millisecond) >= deadline do
      outcomes
    else
      id = :rand.uniform(@ids)

      outcome =
        case :rand.uniform(20) do
          n when n <= 9 -> {:lease, lease(manager, id, violations)}
          n when n <= 13 -> {:load, load(manager, id, opts)}
          n when n <= 15 -> {:unload, unload(manager, id)}
          n when n <= 17 -> {:killed_holder, killed_holder(manager, id)}
          _ -> {:checkout, checkout_checkin(manager, id)}
        end

      # Leave the manager some room to load what is missing.
      if elem(outcome, 1) in [:not_loaded, :already_loaded], do: Process.sleep(1)
      work(manager, opts, violations, deadline, [outcome | outcomes])
    end
  end

  # The model's backend holder must stay alive for the whole lease: an
  # unload under a lease would have stopped it.
  defp lease(manager, id, violations) do
    result =
      ModelManager.with_model(manager, id, fn %{handle: holder} ->
        unless Process.alive?(holder), do: :counters.add(violations, 1, 1)
        Process.sleep(:rand.uniform(3) - 1)
        unless Process.alive?(holder), do: :counters.add(violations, 1, 1)
      end)

    if result == {:error, :not_loaded}, do: :not_loaded, else: :ok
  end

  defp load(manager, id, opts) do
    bytes = Enum.random(64..512) * 1_024
    timeout = Enum.random([0, 0, 10, 50])

    case ModelManager.load(manager, id, {:test, bytes}, [timeout: timeout] ++ opts) do
      {:ok, %{status: :ready}} -> :ok
      {:error, {:insufficient_memory, [device: :total, required: _, available: _]}} -> :refused
      {:error, :already_loaded} -> :already_loaded
      {:error, {:load_failed, :cancelled}} -> :cancelled
    end
  end

  defp unload(manager, id) do
    case ModelManager.unload(manager, id, timeout: Enum.random([0, 5, :infinity])) do
      :ok -> :ok
      {:error, reason} when reason in [:busy, :not_loaded] -> reason
    end
  end

  defp killed_holder(manager, id) do
    test = self()

    pid =
      spawn(fn ->
        # Only the outcome comes back: a copy of the lease here would keep it.
        result = ModelManager.checkout(manager, id)
        send(test, {:took, self()})
        Process.sleep(:infinity)
        with {:ok, lease} <- result, do: ModelManager.checkin(manager, lease)
      end)

    receive do
      {:took, ^pid} -> :ok
    end

    Process.sleep(:rand.uniform(3) - 1)
    Process.exit(pid, :kill)
    :ok
  end

  defp checkout_checkin(manager, id) do
    case ModelManager.checkout(manager, id) do
      {:ok, lease} -> ModelManager.checkin(manager, lease)
      {:error, :not_loaded} -> :not_loaded
    end
  end
end
