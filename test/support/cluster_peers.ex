defmodule ModelBudget.Test.ClusterPeers do
  @moduledoc """
  Real BEAM nodes for the `ModelBudget.Cluster` tests and benchmark, started
  with OTP's `:peer` on this host, with this node's code path (the NIF loads
  from priv) and the `:model_budget` application started.

  The functions that end in `_here` run on the peers (through `:erpc`), so
  they live in this compiled module, not in a test.
  """

  alias ModelBudget.ModelManager

  @doc """
  Makes this node distributed (`name@127.0.0.1`, long names), starting epmd
  when it is not running; does nothing on a node that is already alive.
  """
  def ensure_distributed(name) do
    unless Node.alive?() do
      {_, 0} = System.cmd("epmd", ["-daemon"])
      # Unique per run: another checkout's tests on this machine may be
      # distributed under the same prefix at the same time.
      start_node(:"#{name}_#{System.pid()}_#{System.unique_integer([:positive])}@127.0.0.1", 50)
    end

    :ok
  end

  # `epmd -daemon` returns before epmd listens: a node started at once can
  # fail with :nodistribution, so it is tried again for up to 5 s.
  defp start_node(name, tries) do
    case Node.start(name, :longnames) do
      {:ok, _} ->
        :ok

      {:error, _reason} when tries > 1 ->
        Process.sleep(100)
        start_node(name, tries - 1)

      {:error, reason} ->
        raise "could not start distribution as #{name}: #{inspect(reason)}"
    end
  end

  @doc """
  Starts `count` peers named `prefix1`, `prefix2`, ... in parallel; returns
  `[{peer, node}]`. Each is linked to the calling process (a test's: it goes
  with the test) and stopped by `stop/1`.
  """
  def start(prefix, count) do
    args =
      Enum.flat_map(:code.get_path(), &[~c"-pa", &1]) ++
        [~c"-setcookie", Atom.to_charlist(Node.get_cookie())]

    1..count
    |> Enum.map(fn i ->
      {:ok, peer, node} =
        :peer.start_link(%{
          name: :"#{prefix}#{i}",
          host: ~c"127.0.0.1",
          longnames: true,
          args: args
        })

      {peer, node}
    end)
    |> tap(fn peers ->
      for {_peer, node} <- peers do
        :ok = :erpc.call(node, :logger, :set_primary_config, [:level, :error])
        {:ok, _} = :erpc.call(node, Application, :ensure_all_started, [:model_budget])
      end
    end)
  end

  @doc "Stops peers that are still running."
  def stop(peers) do
    for {peer, _node} <- peers, Process.alive?(peer) do
      try do
        :peer.stop(peer)
      catch
        :exit, _ -> :ok
      end
    end

    :ok
  end

  @doc "Starts a manager on `node`, not linked to the call that starts it."
  def start_manager(node, opts), do: :erpc.call(node, __MODULE__, :start_manager_here, [opts])

  @doc false
  def start_manager_here(opts) do
    {:ok, pid} = ModelManager.start_link(opts)
    Process.unlink(pid)
    pid
  end

  @doc "`ModelBudget.Test.Eventually.eventually/3`, waiting up to 5 s by default."
  def await(what, ms \\ 5_000, fun), do: ModelBudget.Test.Eventually.eventually(what, ms, fun)

  @doc """
  Waits until `node`'s view of `cluster` has `count` members, each with
  the usage its manager has now; returns the view.
  """
  def await_view(node, cluster, count) do
    await("#{count} members of #{inspect(cluster)} seen from #{node}", fn ->
      members = :erpc.call(node, ModelBudget.Cluster, :usage, [cluster])

      current? =
        Enum.all?(members, fn m ->
          :erpc.call(m.node, ModelManager, :usage, [m.manager]) == m.usage
        end)

      length(members) == count and current? and members
    end)
  end

  @doc """
  `ModelBudget.Cluster.load/4` for every `{id, source}` of `loads`, from
  `node`, at most `concurrency` at a time; returns `[{id, result}]`.
  """
  def load_many(node, cluster, loads, opts, concurrency),
    do: :erpc.call(node, __MODULE__, :load_many_here, [cluster, loads, opts, concurrency])

  @doc false
  def load_many_here(cluster, loads, opts, concurrency) do
    loads
    |> Task.async_stream(
      fn {id, source} -> {id, ModelBudget.Cluster.load(cluster, id, source, opts)} end,
      max_concurrency: concurrency,
      timeout: :infinity
    )
    |> Enum.map(fn {:ok, result} -> result end)
  end
end

defmodule ModelBudget.Test.StallBackend do
  @moduledoc """
  A backend whose loads never finish (they wait for a message that never
  comes): `{:bytes, n}` sources, sized like `ModelBudget.Backend.Reservation`.
  """

  @behaviour ModelBudget.Backend

  @impl true
  def footprint(source, opts), do: ModelBudget.Backend.Reservation.footprint(source, opts)

  @impl true
  def load(_source, _placement, _opts) do
    receive do
      :never -> {:ok, nil}
    end
  end

  @impl true
  def unload(_handle), do: :ok
end

defmodule ModelBudget.Test.SlowBackend do
  @moduledoc """
  A backend whose loads take 100 ms: `{:bytes, n}` sources, sized like
  `ModelBudget.Backend.Reservation`.
  """

  @behaviour ModelBudget.Backend

  @impl true
  def footprint(source, opts), do: ModelBudget.Backend.Reservation.footprint(source, opts)

  @impl true
  def load(_source, _placement, _opts) do
    Process.sleep(100)
    {:ok, nil}
  end

  @impl true
  def unload(_handle), do: :ok
end
