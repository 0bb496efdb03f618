defmodule ModelBudget.ModelManager.ConcurrencyTest do
  # 100 processes lease, load (some waiting for room), unload (some with a
  # timeout) and take leases in processes that get killed, at random, over
  # shared ids: each for @rounds operations, and on until every outcome the
  # test asserts has happened at least once. After each operation a worker
  # samples the ledger and the bytes the backend really holds, and an
  # observer samples them between operations the whole while. Nothing is
  # measured against the clock: it only ends a run that would hang.
  use ExUnit.Case, async: true

  import ModelBudget.Test.Eventually

  alias ModelBudget.ModelManager
  alias ModelBudget.TestBackend

  @moduletag :capture_log

  @budget 4 * 2 ** 20
  @workers 100
  @ids 20
  # Operations each worker runs at least.
  @rounds 100
  # The outcomes a run must have seen before its workers stop.
  @required [
    {:lease, :ok},
    {:load, :ok},
    {:load, :refused},
    {:unload, :ok},
    {:unload, :busy}
  ]
  # A hang guard, not a measure: a run that has not seen every required
  # outcome by then stops, and fails naming the ones missing (within
  # ExUnit's 60 s per test, which would fail it less clearly).
  @hang_guard_ms 40_000

  test "the budget is never exceeded, no model is unloaded while leased or twice, nothing is left" do
    manager =
      start_supervised!(
        {ModelManager, memory_budget: @budget, backend: TestBackend, sweep_ms: 50}
      )

    counter = :counters.new(2, [:atomics])
    violations = :counters.new(1, [:atomics])
    # How many times each required outcome happened, in @required's order.
    seen = :counters.new(length(@required), [:atomics])
    collector = spawn_link(&TestBackend.collect_holders/0)
    observer = Task.async(fn -> TestBackend.observe(manager, counter, 1) end)
    guard = System.monotonic_time(:millisecond) + @hang_guard_ms
    opts = [counter: counter, notify: collector, mode: :direct, n_gpus: 0]
    run = %{manager: manager, opts: opts, violations: violations, seen: seen, guard: guard}

    results =
      1..@workers
      |> Enum.map(fn _ -> Task.async(fn -> work(run, 0, [], {0, 0, 0}) end) end)
      |> Task.await_many(@hang_guard_ms + 10_000)

    send(observer.pid, :stop)
    {_, observed_usage, observed_held} = Task.await(observer)

    outcomes = results |> Enum.flat_map(&elem(&1, 0)) |> Enum.frequencies()
    {samples, max_usage, max_held} = results |> Enum.map(&elem(&1, 1)) |> merge_samples()

    missing = for outcome <- @required, not Map.has_key?(outcomes, outcome), do: outcome
    assert missing == [], "not seen before the hang guard: #{inspect(missing)}"
    # Every operation was sampled, while the others ran.
    assert samples == Enum.sum(Map.values(outcomes))
    assert samples >= @workers * @rounds
    assert max(max_usage, observed_usage) <= @budget
    assert max(max_held, observed_held) <= @budget
    assert :counters.get(violations, 1) == 0

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

  # A worker: its outcomes and its samples `{count, max usage, max held}`,
  # once it has run @rounds operations and every required outcome has been
  # seen (by any worker), or the hang guard has passed.
  defp work(run, round, outcomes, samples) do
    if done?(run, round) do
      {outcomes, samples}
    else
      outcome = operation(run)
      count_required(run.seen, outcome)
      samples = sample(run, samples)
      # Leave the manager some room to load what is missing.
      if elem(outcome, 1) in [:not_loaded, :already_loaded], do: Process.sleep(1)
      work(run, round + 1, [outcome | outcomes], samples)
    end
  end

  defp done?(run, round) do
    (round >= @rounds and all_seen?(run.seen)) or
      System.monotonic_time(:millisecond) > run.guard
  end

  defp all_seen?(seen),
    do: Enum.all?(1..length(@required), &(:counters.get(seen, &1) > 0))

  for {outcome, i} <- Enum.with_index(@required, 1) do
    defp count_required(seen, unquote(outcome)), do: :counters.add(seen, unquote(i), 1)
  end

  defp count_required(_seen, _outcome), do: :ok

  defp operation(%{manager: manager} = run) do
    id = :rand.uniform(@ids)

    case :rand.uniform(20) do
      n when n <= 9 -> {:lease, lease(manager, id, run.violations)}
      n when n <= 13 -> {:load, load(manager, id, run.opts)}
      n when n <= 15 -> {:unload, unload(manager, id)}
      n when n <= 17 -> {:killed_holder, killed_holder(manager, id)}
      _ -> {:checkout, checkout_checkin(manager, id)}
    end
  end

  # The ledger (all devices summed) and the bytes the holders hold now.
  defp sample(run, {count, max_usage, max_held}) do
    %{ram: ram, vram: vram} = ModelManager.usage(run.manager)
    {_, held} = TestBackend.held(run.opts[:counter])
    {count + 1, max(max_usage, ram + Enum.sum(Map.values(vram))), max(max_held, held)}
  end

  defp merge_samples(samples) do
    Enum.reduce(samples, {0, 0, 0}, fn {n, usage, held}, {n_acc, usage_acc, held_acc} ->
      {n_acc + n, max(usage_acc, usage), max(held_acc, held)}
    end)
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
