defmodule ModelBudget.Cluster do
  @moduledoc """
  Places model loads across `ModelBudget.ModelManager`s on several BEAM
  nodes, on Erlang distribution alone: no server and no membership
  protocol of our own.

  A manager joins a cluster with the start options `cluster: name` and
  `labels: %{...}`:

      {ModelBudget.ModelManager,
       memory_budget: %{ram: 64 * 2**30, vram: [80 * 2**30]},
       cluster: :inference, labels: %{gpu: "h100", zone: "a"}}

  It announces itself on its node as it starts, and the `:model_budget`
  application there (started on every node) makes it a member of an OTP
  `:pg` group (in the scope `ModelBudget.Cluster`) until it stops or its
  node goes down; shortly after it starts, as the joining runs apart from
  the manager (it may not be a member yet when `start_link/1` returns).
  Connect the nodes (`Node.connect/1`, or any distribution setup) and every
  node sees every member.

  ## The view

  Ranking reads a view of the members' usage that every node keeps
  (`ModelBudget.Cluster.View`, an ETS table): each member's node publishes
  its budget, labels and usage to every connected node when it joins and
  whenever its usage changes (it follows the usage with
  `ModelBudget.ModelManager.subscribe/1`; changes that come in a burst are
  sent once),
  and a node that connects later is sent every view. So `load/4` and
  `usage/1` send no message to decide: they read the local view, which may
  lag the managers by the time a message takes between nodes. The
  managers themselves admit loads one at a time, as always, so a stale
  view can make a placement be refused, never oversubscribe a manager: the
  refused load goes on to the next candidate.
  """

  alias ModelBudget.Cluster.{Ranking, View}
  alias ModelBudget.ModelManager
  alias ModelBudget.ModelManager.Options

  @typedoc "A cluster's name: any term."
  @type cluster :: term()

  @typedoc "Why a member did not take a load."
  @type member_reason :: {node(), pid(), term()}

  @typedoc "One member, as `usage/1` lists it."
  @type member :: %{
          node: node(),
          manager: pid(),
          labels: map(),
          budget: ModelBudget.budget(),
          usage: ModelBudget.placement()
        }

  @cluster_opts [:policy, :where, :timeout]

  @doc """
  Loads model `id` from `source` on one member of `cluster`.

  The model is sized once, here, by the members' backend
  (`c:ModelBudget.Backend.footprint/2`) and placed with
  `ModelBudget.distribute/3` for each member's GPU count. The members whose
  labels contain `:where` and where the placement fits now, by the view
  (see "The view" above), are ranked by `:policy`, and the load goes to
  the first one with `ModelBudget.ModelManager.load/4` on its node. When
  that manager refuses for lack of memory (another load took the room
  first), or does not answer within `:timeout`, or has stopped, or its
  node is gone, the load goes to the next. A load given up at its
  timeout is cancelled on that manager (the process running it there is
  killed and the id unloaded), so a model is loaded on one member at most;
  ids are expected to be unique in the cluster.

  Returns `{:ok, %{node: node, manager: pid, info: info}}` (`info` as
  `ModelBudget.ModelManager.load/4` returns it), or:

    * `{:error, {:insufficient_memory, reasons}}` - no member took it;
      `reasons` has `{node, manager, reason}` for every member tried or
      left out by the view (`reason` is `ModelBudget.check/3`'s
      `{:insufficient_memory, ...}`, or `:timeout`, `:noconnection`,
      `:noproc`). Members that `:where` excludes are not listed.
    * `{:error, {:no_member, where}}` - no member of the cluster has labels
      that contain `:where` (or the cluster has no member at all).
    * the manager's other errors (`:already_loaded`, `{:load_failed, _}`,
      `{:load_crashed, _}`): they are about the model, not the member,
      so no other member is tried.

  ## Options

    * `:policy` - `:binpack`: the member where the load fits leaving the
      least room on the devices it uses; `:spread`: the most room. Defaults
      to `:binpack`.
    * `:where` - a map the member's labels must contain. Defaults to `%{}`.
    * `:timeout` - milliseconds, or `:infinity`, to wait for one member's
      load before going to the next. Defaults to `60_000`.
    * every other option goes to `ModelBudget.ModelManager.load/4` (and
      so to `ModelBudget.distribute/3` and the backend). Its `:timeout` (a
      load waiting for room) is not available here.
  """
  @spec load(cluster(), term(), term(), keyword()) ::
          {:ok, %{node: node(), manager: pid(), info: ModelManager.info()}}
          | {:error,
             ModelManager.load_error()
             | {:insufficient_memory, [member_reason()]}
             | {:no_member, map()}}
  def load(cluster, id, source, opts \\ []) do
    {policy, where, timeout, load_opts} = load_opts!(opts)

    with {:ok, {ranked, refused}, sizes} <- rank(views(cluster), source, load_opts, policy, where) do
      try_members(ranked, sizes, id, source, load_opts, timeout, refused, [])
    end
  end

  @doc false
  # The placement decision of load/4 over given views (the benchmark's
  # entry): `{:ok, {ranked, refused}}` (see Ranking.rank/3), or the
  # backend's sizing error.
  @spec decide([View.view()], term(), keyword(), :binpack | :spread, map()) ::
          {:ok, {[{View.view(), ModelBudget.placement()}], [member_reason()]}}
          | {:error, term()}
  def decide(views, source, load_opts, policy, where) do
    with {:ok, decision, _sizes} <- rank(views, source, load_opts, policy, where),
         do: {:ok, decision}
  end

  # decide/5, with the load's size per backend (a member of this node is
  # handed both, so its manager does not size and place the load again).
  defp rank(views, source, load_opts, policy, where) do
    with {:ok, views} <- eligible(views, where),
         {:ok, placements, sizes} <- placements(views, source, load_opts) do
      {:ok, Ranking.rank(views, placements, policy), sizes}
    end
  end

  defp eligible(views, where) do
    case Enum.filter(views, &Ranking.where?(&1.labels, where)) do
      [] -> {:error, {:no_member, where}}
      views -> {:ok, views}
    end
  end

  @doc """
  The members of `cluster` that hold model `id` (loading, ready or
  unloading): `[{node, manager}]`, asking each member (one call each, in
  parallel). A member that does not answer within 5 seconds is left out.
  """
  @spec locate(cluster(), term()) :: [{node(), pid()}]
  def locate(cluster, id) do
    cluster
    |> members()
    |> Task.async_stream(
      fn manager ->
        case call(manager, :info, [manager, id], 5_000) do
          {:ok, {:ok, _info}} -> [{node(manager), manager}]
          _ -> []
        end
      end,
      timeout: :infinity
    )
    |> Enum.flat_map(fn {:ok, found} -> found end)
  end

  @doc """
  One map per live member of `cluster` whose view this node has: its
  `:node`, `:manager`, `:labels`, `:budget` (resolved) and `:usage`, from
  the view (see "The view" above), sorted by node.
  """
  @spec usage(cluster()) :: [member()]
  def usage(cluster) do
    cluster
    |> views()
    |> Enum.map(&Map.take(&1, [:node, :manager, :labels, :budget, :usage]))
    |> Enum.sort_by(&{&1.node, &1.manager})
  end

  @doc """
  Unloads model `id` from every member of `cluster` that holds it
  (`ModelBudget.ModelManager.unload/3` with `opts`, on the member's node).
  Returns `:ok` when one did, else `{:error, :not_loaded}`.
  """
  @spec unload(cluster(), term(), keyword()) :: :ok | {:error, :not_loaded | :busy}
  def unload(cluster, id, opts \\ []) do
    Options.unload!(opts)

    results =
      for {_node, manager} <- locate(cluster, id) do
        case call(manager, :unload, [manager, id, opts], :infinity) do
          {:ok, result} -> result
          {:error, _} -> {:error, :not_loaded}
        end
      end

    cond do
      :ok in results -> :ok
      {:error, :busy} in results -> {:error, :busy}
      true -> {:error, :not_loaded}
    end
  end

  @doc false
  # Runs on the member's node: the load, its result sent back to `reply_to`
  # (an alias, dropped once the caller has given up).
  def remote_load(reply_to, tag, manager, id, source, opts) do
    result =
      try do
        ModelManager.load(manager, id, source, opts)
      catch
        :exit, {:noproc, _} -> {:error, :noproc}
        :exit, {reason, _} -> {:error, {:exit, reason}}
      end

    send(reply_to, {tag, result})
  end

  ## Helpers

  # A ModelManager function on the manager's node; a node or manager that
  # is gone, or no answer in time, is {:error, reason}, not an exit.
  defp call(manager, fun, args, timeout) do
    {:ok, :erpc.call(node(manager), ModelManager, fun, args, timeout)}
  catch
    kind, reason -> {:error, {kind, reason}}
  end

  # :pg answers [] for a scope that is not running: say why instead.
  defp members(cluster) do
    unless Process.whereis(__MODULE__),
      do: raise("ModelBudget.Cluster needs the :model_budget application started on #{node()}")

    :pg.get_members(__MODULE__, {__MODULE__, cluster})
  end

  defp views(cluster), do: View.views(members(cluster))

  defp load_opts!(opts) do
    unless is_list(opts) and Keyword.keyword?(opts) do
      raise ArgumentError, "invalid options: expected a keyword list, got: #{inspect(opts)}"
    end

    policy = Keyword.get(opts, :policy, :binpack)
    where = Keyword.get(opts, :where, %{})
    timeout = Keyword.get(opts, :timeout, 60_000)

    unless policy in [:binpack, :spread] do
      raise ArgumentError,
            "invalid option :policy: expected :binpack or :spread, got: #{inspect(policy)}"
    end

    unless is_map(where) do
      raise ArgumentError, "invalid option :where: expected a map, got: #{inspect(where)}"
    end

    unless (is_integer(timeout) and timeout >= 0) or timeout == :infinity do
      raise ArgumentError,
            "invalid option :timeout: expected a non-negative integer or :infinity, got: " <>
              inspect(timeout)
    end

    {policy, where, timeout, Options.load!(Keyword.drop(opts, @cluster_opts))}
  end

  # The load sized once per backend among the members, placed once per
  # {backend, GPU count} of theirs (Ranking.rank's keys): the placements
  # and the sizes by backend.
  defp placements(views, source, opts) do
    views
    |> Enum.map(&{&1.backend, &1.n_gpus})
    |> Enum.uniq()
    |> Enum.reduce_while({:ok, %{}, %{}}, fn {backend, n_gpus} = key, {:ok, acc, sizes} ->
      case size(backend, source, opts, sizes) do
        {:ok, size, sizes} ->
          placement =
            ModelBudget.distribute(
              size,
              Options.placement(Options.for_backend(backend, opts)),
              Keyword.get(opts, :n_gpus, n_gpus)
            )

          {:cont, {:ok, Map.put(acc, key, placement), sizes}}

        error ->
          {:halt, error}
      end
    end)
  end

  defp size(backend, source, opts, sizes) do
    case Map.fetch(sizes, backend) do
      {:ok, size} ->
        {:ok, size, sizes}

      :error ->
        case backend.footprint(source, opts) do
          {:ok, size} -> {:ok, size, Map.put(sizes, backend, size)}
          {:error, reason} -> {:error, {:load_failed, reason}}
          other -> {:error, {:load_crashed, {:bad_return, other}}}
        end
    end
  end

  defp try_members([], _sizes, _id, _source, _opts, _timeout, refused, tried),
    do: {:error, {:insufficient_memory, Enum.reverse(tried) ++ refused}}

  defp try_members([{view, placement} | rest], sizes, id, source, opts, timeout, refused, tried) do
    placed = {Map.fetch!(sizes, view.backend), placement}

    case member_load(view, placed, id, source, opts, timeout) do
      {:ok, info} ->
        {:ok, %{node: view.node, manager: view.manager, info: info}}

      {:error, reason} ->
        if member_reason?(reason) do
          tried = [{view.node, view.manager, reason} | tried]
          try_members(rest, sizes, id, source, opts, timeout, refused, tried)
        else
          {:error, reason}
        end
    end
  end

  # Reasons that are about the member (full, slow, gone), not the model.
  defp member_reason?({:insufficient_memory, _}), do: true
  defp member_reason?({:exit, _}), do: true
  defp member_reason?(reason), do: reason in [:timeout, :noconnection, :noproc]

  # The load on the member's node. A load that outlives `timeout` is given
  # up and its id unloaded (it may have been admitted), so it cannot end up
  # loaded on two members. On this node it is a call from here (no process
  # hop); on a peer, a process there monitored from here, so a node that
  # goes down is a :DOWN at once.
  defp member_load(%{node: node} = view, placed, id, source, opts, timeout) when node == node() do
    ModelManager.load_placed(view.manager, id, source, opts, placed, timeout)
  catch
    :exit, {:timeout, _} ->
      # The manager may still admit it (the request is in its queue):
      # unloaded behind it, as on a peer.
      spawn(ModelManager, :unload, [view.manager, id, [force: true]])
      {:error, :timeout}

    :exit, {:noproc, _} ->
      {:error, :noproc}

    :exit, {reason, _} ->
      {:error, {:exit, reason}}
  end

  defp member_load(view, _placed, id, source, opts, timeout) do
    reply_to = :erlang.alias()
    tag = make_ref()
    args = [reply_to, tag, view.manager, id, source, opts]

    {pid, ref} =
      if view.node == node(),
        do: spawn_monitor(__MODULE__, :remote_load, args),
        else: Node.spawn_monitor(view.node, __MODULE__, :remote_load, args)

    receive do
      {^tag, result} ->
        :erlang.unalias(reply_to)
        Process.demonitor(ref, [:flush])
        result

      {:DOWN, ^ref, :process, ^pid, reason} ->
        :erlang.unalias(reply_to)
        # The result, if any, came before the :DOWN (same sender).
        if reason == :noconnection, do: {:error, :noconnection}, else: {:error, {:exit, reason}}
    after
      timeout -> abandon(view, id, pid, ref, reply_to, tag)
    end
  end

  defp abandon(view, id, pid, ref, reply_to, tag) do
    Process.exit(pid, :kill)
    :erlang.unalias(reply_to)
    Process.demonitor(ref, [:flush])

    # A result that came before the alias went is the answer after all.
    receive do
      {^tag, result} -> result
    after
      0 ->
        # Sent after the kill, over the same connection: runs once the
        # load's process is gone, and unloads what it may have admitted.
        :erpc.cast(view.node, ModelManager, :unload, [view.manager, id, [force: true]])
        {:error, :timeout}
    end
  end
end
