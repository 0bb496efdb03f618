defmodule ModelBudget.TestBackend do
  @moduledoc """
  A `ModelBudget.Backend` for tests whose loads really occupy memory: each
  load starts a holder process keeping a binary of the placement's RAM bytes,
  and the holder pid is the handle.

  Sources are `{:test, bytes}` or `{:test, bytes, behaviour}`:

    * `:ok` - loads at once.
    * `{:sleep, ms}` - loads after `ms` milliseconds.
    * `:fail` - stops its holder and returns `{:error, :told_to_fail}`.
    * `:crash` - raises; the holder, linked to the loading task, dies with it.
    * `:stall` - sends `{ModelBudget.TestBackend, :stalled, task_pid}` to the
      `:notify` process and loads only once the task receives `:continue`.
    * `:bad_return` - stops its holder and returns `:bad`.
    * `:no_footprint` - its footprint is `{:error, :no_footprint}`.
    * `:slow_unload` - on unload, the holder sends
      `{ModelBudget.TestBackend, :unloading, holder}` to `:notify` and waits for
      `:continue` before freeing its memory.
    * `:crash_unload` - unload frees the memory, then raises.

  Every call of `unload/1` is counted per handle (`unloads/1`) in a public
  table that `count_unloads/0` creates, from test_helper.exs.

  Load options (besides the manager's):

    * `:notify` - a pid told `{ModelBudget.TestBackend, :holder, holder}` when
      a holder starts, and the events above.
    * `:counter` - a `:counters` ref of 2 slots: live holders and bytes held.
    * `:unload_ms` - how long an unload takes before the memory is freed.
  """

  @behaviour ModelBudget.Backend

  @unloads Module.concat(__MODULE__, Unloads)

  @impl true
  def footprint({:test, _bytes, :no_footprint}, _opts), do: {:error, :no_footprint}
  def footprint({:test, bytes, _behaviour}, _opts), do: {:ok, bytes}
  def footprint({:test, bytes}, _opts), do: {:ok, bytes}

  @impl true
  def load({:test, bytes}, placement, opts), do: load({:test, bytes, :ok}, placement, opts)

  def load({:test, _bytes, behaviour}, placement, opts) do
    holder = hold(placement.ram, behaviour, opts)

    case behaviour do
      {:sleep, ms} ->
        Process.sleep(ms)
        {:ok, holder}

      :fail ->
        stop(holder)
        {:error, :told_to_fail}

      :crash ->
        raise "told to crash"

      :stall ->
        notify(opts, {:stalled, self()})

        receive do
          :continue -> {:ok, holder}
        end

      :bad_return ->
        stop(holder)
        :bad

      _ ->
        {:ok, holder}
    end
  end

  @impl true
  def unload(holder) do
    if :ets.whereis(@unloads) != :undefined,
      do: :ets.update_counter(@unloads, holder, 1, {holder, 0})

    case stop(holder) do
      :ok -> :ok
      :crash -> raise "told to crash on unload"
    end
  end

  @doc "Creates the table that counts unload calls; its owner must outlive the tests."
  def count_unloads, do: :ets.new(@unloads, [:public, :named_table, write_concurrency: true])

  @doc "How many times `unload/1` was called with `holder`."
  def unloads(holder) do
    case :ets.lookup(@unloads, holder) do
      [{_, n}] -> n
      [] -> 0
    end
  end

  @doc "Live holders and bytes they hold, from a `:counter` ref."
  def held(counter), do: {:counters.get(counter, 1), :counters.get(counter, 2)}

  @doc """
  Run in a process of its own, the `:notify` target of many loads: gathers
  the holders announced to it until asked `{:holders, pid}`, then sends
  `{:holders, holders}` to `pid`.
  """
  def collect_holders(holders \\ []) do
    receive do
      {__MODULE__, :holder, holder} -> collect_holders([holder | holders])
      {:holders, to} -> send(to, {:holders, holders})
    end
  end

  @doc """
  Run in a task beside a stress test: samples the manager's usage (all
  devices summed) and the bytes the holders of `counter` hold, every
  `every_ms`, until it gets `:stop`; returns `{samples, max_usage,
  max_held}`.
  """
  def observe(manager, counter, every_ms, {samples, max_usage, max_held} \\ {0, 0, 0}) do
    receive do
      :stop -> {samples, max_usage, max_held}
    after
      every_ms ->
        %{ram: ram, vram: vram} = ModelBudget.ModelManager.usage(manager)
        usage = ram + Enum.sum(Map.values(vram))
        {_, held} = held(counter)
        acc = {samples + 1, max(max_usage, usage), max(max_held, held)}
        observe(manager, counter, every_ms, acc)
    end
  end

  # Linked to the loading task: it dies with a task that crashes or is killed,
  # and outlives one that returns.
  defp hold(bytes, behaviour, opts) do
    task = self()
    counter = opts[:counter]

    holder =
      spawn_link(fn ->
        Process.flag(:trap_exit, true)
        data = :binary.copy(<<0>>, bytes)
        count(counter, 1, bytes)
        send(task, {:held, self()})
        hold_loop(%{task: task, data: data, counter: counter, behaviour: behaviour, opts: opts})
      end)

    receive do
      {:held, ^holder} -> notify(opts, {:holder, holder})
    end

    holder
  end

  defp hold_loop(%{task: task} = s) do
    receive do
      {:stop, from, ref} ->
        if s.behaviour == :slow_unload do
          notify(s.opts, {:unloading, self()})

          receive do
            :continue -> :ok
          end
        end

        Process.sleep(Keyword.get(s.opts, :unload_ms, 0))

        free(s)
        send(from, {ref, if(s.behaviour == :crash_unload, do: :crash, else: :ok)})

      {:EXIT, ^task, :normal} ->
        hold_loop(s)

      {:EXIT, _, reason} ->
        free(s)
        exit(reason)
    end
  end

  defp free(%{counter: counter, data: data}), do: count(counter, -1, -byte_size(data))

  defp stop(holder) do
    ref = Process.monitor(holder)
    send(holder, {:stop, self(), ref})

    receive do
      {^ref, answer} ->
        receive do
          {:DOWN, ^ref, :process, _, _} -> answer
        end

      # Already gone (a test killed it): nothing left to free.
      {:DOWN, ^ref, :process, _, _} ->
        :ok
    end
  end

  defp count(nil, _, _), do: :ok

  defp count(counter, holders, bytes) do
    :counters.add(counter, 1, holders)
    :counters.add(counter, 2, bytes)
  end

  defp notify(opts, event) do
    if pid = opts[:notify], do: send(pid, {__MODULE__, elem(event, 0), elem(event, 1)})
  end
end
