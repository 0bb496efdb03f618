defmodule ModelBudget.Cluster.Plan do
  @moduledoc false
  # `mix model_budget.plan --cluster NAME`: the members of a cluster, and
  # which member each given model would go to, ranked in order (each counted
  # as loaded for the ones after it) by the same decision as
  # ModelBudget.Cluster.load/4, under the same load options as a local plan
  # (ModelBudget.Plan.Args). Nothing is loaded.
  #
  # Every answer is decided before anything is printed, so bad input (an
  # option, a file, a model the members' backend cannot size) is one line
  # on standard error and exit 2, with no report half printed.

  alias ModelBudget.{Cluster, Format, Plan}
  alias ModelBudget.Cluster.View
  alias ModelBudget.Native.Errors

  @switches [
    cluster: :string,
    connect: :keep,
    name: :string,
    sname: :string,
    cookie: :string,
    policy: :string,
    where: :string,
    wait: :integer
  ]

  @usage """
  mix model_budget.plan --cluster NAME [MODEL ...] [options]

  The members of cluster NAME (the atom given as a manager's `cluster:`
  option), and which member each MODEL (a built-in name, a model file, or
  a folder of GGUF files) would go to, ranked as ModelBudget.Cluster.load/4
  ranks them, in order: each counted as loaded for the ones after it.

    --connect NODE     connect to NODE first (repeatable)
    --name N, --sname N  start distribution as N (long or short names) when
                       this VM is not distributed; else a name is made up
                       from the first --connect node's host
    --cookie C         the distribution cookie
    --policy P         binpack (default) or spread
    --where k=v,...    labels the member must have (keys atoms, values text)
    --wait MS          how long to wait for every member's view (default
                       3000): the members are asked of every node that
                       NODE is connected to, and each one's budget and
                       usage must have reached this node
    --json             print the report as JSON

  The load options of a local plan apply to every model, as the members'
  backends size and place it: --ctx, --parallel, --cache-ram,
  --n-gpu-layers, --split-mode, --tensor-split, --main-gpu,
  --cache-type-k/-v, --no-kv-offload, --batch-size, --ubatch-size,
  --flash-attn, --kv-unified, --cpu-buffers, --no-repack, --no-mmap (see
  `mix help model_budget.plan`). --budget and --llama-server are not
  taken: each member has its own budget and runtime.

  Exit status: 0 every model placed, 1 a model does not fit, 2 bad input.
  """

  @doc "Prints the report (or the error) and returns the exit status."
  @spec main([String.t()]) :: 0 | 1 | 2
  def main(args) do
    with {:ok, opts, load, names, json} <- parse(args),
         :ok <- distribute(opts),
         {:ok, sources} <- Plan.sources(names) do
      cluster = String.to_atom(opts[:cluster])
      {views, unseen} = await_views(cluster, targets(opts), Keyword.get(opts, :wait, 3_000))

      with {:ok, placed} <- place(views, sources, load, policy(opts), where(opts)) do
        report = %{cluster: cluster, views: views, unseen: unseen, placed: placed}

        IO.puts(
          if json, do: ModelBudget.JSON.encode!(to_json(report), pretty: true), else: text(report)
        )

        if Enum.all?(placed, &match?({_, _, {:placed, _, _}}, &1)), do: 0, else: 1
      end
    end
    |> case do
      {:error, message} ->
        IO.puts(:stderr, "mix model_budget.plan: " <> message)
        2

      status ->
        status
    end
  end

  @doc "The usage text."
  @spec usage() :: String.t()
  def usage, do: @usage

  defp parse(args) do
    with {:ok, %{plan: plan, json: json, extra: opts}} <- Plan.Args.parse(args, @switches) do
      cond do
        opts[:cluster] in [nil, ""] ->
          {:error, "--cluster needs a name"}

        opts[:policy] not in [nil, "binpack", "spread"] ->
          {:error, "--policy: binpack or spread, got: #{opts[:policy]}"}

        not where_ok?(opts[:where]) ->
          {:error, "--where: expected k=v,k=v, got: #{opts[:where]}"}

        Keyword.get(opts, :wait, 0) < 0 ->
          {:error, "--wait: expected milliseconds (0 or more), got: #{opts[:wait]}"}

        plan[:budget] != :auto ->
          {:error, "--budget: each member of a cluster has its own budget"}

        Keyword.has_key?(plan, :llama_server) ->
          {:error, "--llama-server: each member of a cluster sizes loads with its own runtime"}

        true ->
          {:ok, opts, plan[:load], plan[:models], json}
      end
    end
  end

  defp where_ok?(nil), do: true

  defp where_ok?(text),
    do: Enum.all?(String.split(text, ","), &match?([_, _], String.split(&1, "=", parts: 2)))

  defp policy(opts), do: if(opts[:policy] == "spread", do: :spread, else: :binpack)

  defp where(opts) do
    for pair <- String.split(opts[:where] || "", ",", trim: true), into: %{} do
      [key, value] = String.split(pair, "=", parts: 2)
      {String.to_atom(key), value}
    end
  end

  defp targets(opts), do: opts |> Keyword.get_values(:connect) |> Enum.map(&String.to_atom/1)

  # Distribution: this VM's own if it has one, else started here; then the
  # --connect nodes.
  defp distribute(opts) do
    targets = targets(opts)

    with :ok <- start_node(opts, targets) do
      if opts[:cookie], do: Node.set_cookie(String.to_atom(opts[:cookie]))

      case Enum.reject(targets, &Node.connect/1) do
        [] -> :ok
        failed -> {:error, "could not connect to #{Enum.map_join(failed, ", ", &to_string/1)}"}
      end
    end
  end

  defp start_node(opts, targets) do
    cond do
      Node.alive?() -> :ok
      opts[:name] -> start(String.to_atom(opts[:name]), :longnames)
      opts[:sname] -> start(String.to_atom(opts[:sname]), :shortnames)
      targets != [] -> start_like(hd(targets))
      true -> {:error, "this VM is not distributed: give --name, --sname or --connect"}
    end
  end

  # A made-up name on the first target's host, long or short like it;
  # unique on this host (the OS pid), as two reports may run at once.
  defp start_like(target) do
    case String.split(Atom.to_string(target), "@", parts: 2) do
      [_, host] ->
        name = :"model_budget_plan_#{System.unique_integer([:positive])}_#{System.pid()}@#{host}"
        start(name, if(String.contains?(host, "."), do: :longnames, else: :shortnames))

      _ ->
        {:error, "--connect: expected name@host, got: #{target}"}
    end
  end

  defp start(name, type) do
    case Node.start(name, type) do
      {:ok, _} -> :ok
      {:error, reason} -> {:error, "could not start distribution as #{name}: #{inspect(reason)}"}
    end
  end

  ## Waiting for the members

  # Every member of the group, and this node's views of them: `{views,
  # unseen}`, where `unseen` counts the members whose view had not arrived
  # within `ms`. The members are those of every node the --connect nodes
  # are connected to (this node connects to those too, so that their views
  # are sent here), each node asked for its own: not only the ones this
  # node happens to have heard of yet.
  defp await_views(cluster, targets, ms) do
    deadline = System.monotonic_time(:millisecond) + ms
    reach(targets, deadline)
    expected = members(cluster, deadline)
    await_views(expected, deadline)
  end

  defp await_views(expected, deadline) do
    views = View.views(expected)

    if length(views) == length(expected) or left(deadline) == 0 do
      {views, length(expected) - length(views)}
    else
      Process.sleep(20)
      await_views(expected, deadline)
    end
  end

  defp left(deadline), do: max(deadline - System.monotonic_time(:millisecond), 0)

  # The nodes the targets are connected to, connected from here too, in
  # parallel and within the deadline.
  defp reach(targets, deadline) do
    targets
    |> Enum.flat_map(fn target ->
      try do
        :erpc.call(target, Node, :list, [], max(left(deadline), 1))
      catch
        _, _ -> []
      end
    end)
    |> Enum.uniq()
    |> Enum.reject(&(&1 in [node() | Node.list()]))
    |> Task.async_stream(&Node.connect/1,
      timeout: max(left(deadline), 1),
      on_timeout: :kill_task,
      ordered: false
    )
    |> Stream.run()
  end

  # The group's members on every connected node, each node asked for its
  # own; a node without the cluster scope or that does not answer in time
  # has none.
  defp members(cluster, deadline) do
    group = {Cluster, cluster}

    [node() | Node.list()]
    |> :erpc.multicall(:pg, :get_local_members, [Cluster, group], max(left(deadline), 1))
    |> Enum.flat_map(fn
      {:ok, members} when is_list(members) -> members
      _ -> []
    end)
  end

  ## Ranking

  # Each model ranked against the views as the ones before it left them:
  # `{:ok, [{name, source, answer}]}`, or the first bad input as a message.
  defp place(views, sources, load, policy, where) do
    Errors.with_names(Plan.Args.switch_names(), fn ->
      with :ok <- check_load(load, views) do
        rank_all(views, sources, load, policy, where)
      end
    end)
  end

  # The load options checked as a local plan checks them (by the core's
  # placement, its errors naming the switches), before any member's backend
  # sees them: a backend's own checks name options, not switches. The GPU
  # options are checked against the most GPUs a member has; a member with
  # fewer refuses them when it places the model.
  defp check_load(load, views) do
    n_gpus = views |> Enum.map(& &1.n_gpus) |> Enum.max(fn -> 0 end)
    {:ok, probe} = Plan.Catalog.fetch("llama-3.1-8b")
    ModelBudget.distribute(probe, load, n_gpus)
    :ok
  rescue
    e in ArgumentError -> {:error, Exception.message(e)}
  end

  defp rank_all(views, sources, load, policy, where) do
    Enum.reduce_while(sources, {:ok, [], views}, fn {name, source}, {:ok, acc, views} ->
      case answer(views, name, source, load, policy, where) do
        {:placed, view, placement} = placed ->
          views = Enum.map(views, &add(&1, view.manager, placement))
          {:cont, {:ok, [{name, source, placed} | acc], views}}

        {:error, message} ->
          {:halt, {:error, message}}

        other ->
          {:cont, {:ok, [{name, source, other} | acc], views}}
      end
    end)
    |> case do
      {:ok, placed, _views} -> {:ok, Enum.reverse(placed)}
      error -> error
    end
  end

  defp answer(views, name, source, load, policy, where) do
    case Cluster.decide(views, source, load, policy, where) do
      {:ok, {[{view, placement} | _], _}} -> {:placed, view, placement}
      {:ok, {[], refused}} -> {:refused, refused}
      {:error, {:no_member, where}} -> {:no_member, where}
      {:error, {:load_failed, reason}} -> {:error, "#{name}: #{sizing_error(reason)}"}
      {:error, reason} -> {:error, "#{name}: cannot be sized: #{inspect(reason)}"}
    end
  rescue
    e in ArgumentError -> {:error, argument_error(e, name, source, views)}
  end

  # The backends' footprint/2 errors: {reason, path}.
  defp sizing_error({:not_gguf, _path}), do: "not a GGUF file, which the members' backend needs"

  defp sizing_error({reason, path}) when is_binary(path) do
    if match?({:invalid_model, _}, reason) or is_atom(reason),
      do: Plan.read_error(reason, path),
      else: inspect(reason)
  end

  defp sizing_error(reason), do: inspect(reason)

  # A backend refuses a source it cannot size (a built-in model where it
  # runs files) as an invalid source; any other ArgumentError is about an
  # option, and its message names the switch.
  defp argument_error(e, name, source, views) do
    message = Exception.message(e)

    if match?({:model, _}, source) and String.starts_with?(message, "invalid source") do
      backends = views |> Enum.map(&inspect(&1.backend)) |> Enum.uniq() |> Enum.join(", ")

      "#{name}: a built-in model, which the members' backend (#{backends}) cannot size: give the model's file"
    else
      message
    end
  end

  defp add(%{manager: manager} = view, manager, placement),
    do: %{view | usage: ModelBudget.fold(view.usage, placement)}

  defp add(view, _manager, _placement), do: view

  ## Text

  defp text(report) do
    [members_text(report) | Enum.map(report.placed, &line/1)] |> Enum.join("\n")
  end

  defp members_text(%{cluster: cluster, views: [], unseen: 0}),
    do: "cluster #{cluster}: no members seen from #{node()}"

  defp members_text(%{cluster: cluster, views: views, unseen: unseen}) do
    rows =
      for view <- Enum.sort_by(views, &{&1.node, &1.manager}) do
        [
          "#{view.node} #{inspect(view.manager)}",
          labels(view.labels),
          budget_text(view.budget),
          placement_text(view.usage)
        ]
      end

    missing =
      if unseen > 0,
        do: " (#{unseen} more gave no view in time: their budgets are not known here)",
        else: ""

    count = if length(views) == 1, do: "1 member", else: "#{length(views)} members"

    "cluster #{cluster}: #{count}#{missing}\n" <>
      Format.table([["member", "labels", "budget", "used"] | rows],
        left: [0, 1, 2, 3],
        indent: "  "
      )
  end

  defp labels(labels) when map_size(labels) == 0, do: "-"

  defp labels(labels),
    do: Enum.map_join(Enum.sort(labels), " ", fn {k, v} -> "#{k}=#{label(v)}" end)

  defp label(v) when is_binary(v) or is_atom(v) or is_number(v), do: to_string(v)
  defp label(v), do: inspect(v)

  defp budget_text(%{mode: :unlimited}), do: "unlimited"
  defp budget_text(%{mode: :combined, limit: limit}), do: "total #{Format.bytes(limit)}"
  defp budget_text(%{mode: :per_device} = budget), do: placement_text(budget)

  defp placement_text(%{ram: ram, vram: vram}) do
    gpus =
      case vram do
        :infinity -> ["gpus unlimited"]
        vram -> for {gpu, bytes} <- Enum.sort(vram), do: "gpu#{gpu} #{bytes(bytes)}"
      end

    Enum.join(["ram #{bytes(ram)}" | gpus], ", ")
  end

  defp bytes(:infinity), do: "unlimited"
  defp bytes(n), do: Format.bytes(n)

  defp line({name, _source, {:placed, view, placement}}),
    do: "#{name} -> #{view.node} #{inspect(view.manager)}: #{placement_text(placement)}"

  defp line({name, _source, {:refused, refused}}),
    do: "#{name} -> does not fit on any member#{reasons(refused)}"

  defp line({name, _source, {:no_member, where}}),
    do: "#{name} -> #{no_member(where)}"

  defp no_member(where) when map_size(where) == 0, do: "no member to place it on"
  defp no_member(where), do: "no member has the labels #{inspect(where)}"

  defp reasons(refused) do
    Enum.map_join(refused, "", fn {node, _manager, reason} -> "\n  #{node}: #{reason(reason)}" end)
  end

  defp reason({:insufficient_memory, details}) do
    "#{device(details[:device])} needs #{Format.bytes(details[:required])}, " <>
      "has #{Format.bytes(details[:available])}"
  end

  defp reason(other), do: inspect(other)

  defp device({:gpu, i}), do: "gpu#{i}"
  defp device(device), do: to_string(device)

  ## JSON

  # Byte counts are integers, an unlimited limit null; a member is its
  # node and its manager (the pid as text).
  defp to_json(report) do
    %{
      cluster: Atom.to_string(report.cluster),
      seen_from: node(),
      fits: Enum.all?(report.placed, &match?({_, _, {:placed, _, _}}, &1)),
      unseen: report.unseen,
      members:
        for view <- Enum.sort_by(report.views, &{&1.node, &1.manager}) do
          %{
            node: view.node,
            manager: inspect(view.manager),
            labels: Map.new(view.labels, fn {k, v} -> {label(k), label(v)} end),
            budget: Plan.budget_json(view.budget),
            used: placement_json(view.usage)
          }
        end,
      models: Enum.map(report.placed, &model_json/1)
    }
  end

  defp model_json({name, source, answer}) do
    base = %{
      name: name,
      source: if(match?({:model, _}, source), do: "built-in", else: elem(source, 1)),
      fits: false,
      node: nil,
      manager: nil,
      placement: nil,
      refused: [],
      reason: nil
    }

    case answer do
      {:placed, view, placement} ->
        %{
          base
          | fits: true,
            node: view.node,
            manager: inspect(view.manager),
            placement: placement_json(placement)
        }

      {:refused, refused} ->
        %{
          base
          | refused: Enum.map(refused, &refused_json/1),
            reason: "does not fit on any member"
        }

      {:no_member, where} ->
        %{base | reason: no_member(where)}
    end
  end

  defp refused_json({node, manager, reason}) do
    common = %{node: node, manager: inspect(manager), reason: reason(reason)}

    case reason do
      {:insufficient_memory, details} ->
        {device, gpu} =
          case details[:device] do
            {:gpu, i} -> {"gpu", i}
            device -> {Atom.to_string(device), nil}
          end

        Map.merge(common, %{
          device: device,
          gpu: gpu,
          required: details[:required],
          available: details[:available]
        })

      _ ->
        common
    end
  end

  defp placement_json(%{ram: ram, vram: vram}) do
    %{
      ram: limit(ram),
      vram: if(vram == :infinity, do: nil, else: Map.new(vram, fn {i, b} -> {i, limit(b)} end))
    }
  end

  defp limit(:infinity), do: nil
  defp limit(n), do: n
end
