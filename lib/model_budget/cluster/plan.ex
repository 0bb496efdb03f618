defmodule ModelBudget.Cluster.Plan do
  @moduledoc false
  # `mix model_budget.plan --cluster NAME`: the members of a cluster as this
  # node sees them, and where each given model would go, placed in order
  # (each counted as loaded for the ones after it), by the same decision as
  # ModelBudget.Cluster.load/4. Nothing is loaded.

  alias ModelBudget.{Cluster, Format}
  alias ModelBudget.Plan.Catalog

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
  option) as this node sees them, and where each MODEL (a built-in name or
  a model file) would go, placed in order as ModelBudget.Cluster.load/4
  would place them: each counted as loaded for the ones after it.

    --connect NODE     connect to NODE first (repeatable)
    --name N, --sname N  start distribution as N (long or short names) when
                       this VM is not distributed; else a name is made up
                       from the first --connect node's host
    --cookie C         the distribution cookie
    --policy P         binpack (default) or spread
    --where k=v,...    labels the member must have (keys atoms, values text)
    --wait MS          how long to wait for the members' views (default 3000)

  Exit status: 0 every model placed, 1 a model does not fit, 2 bad input.
  """

  @doc "Prints the report (or the error) and returns the exit status."
  @spec main([String.t()]) :: 0 | 1 | 2
  def main(args) do
    with {:ok, opts, models} <- parse(args),
         :ok <- distribute(opts),
         {:ok, sources} <- sources(models) do
      cluster = String.to_atom(opts[:cluster])
      views = await_views(cluster, Keyword.get(opts, :wait, 3_000))
      IO.puts(members(cluster, views))
      place(views, sources, policy(opts), where(opts))
    else
      {:error, message} ->
        IO.puts(:stderr, "mix model_budget.plan: " <> message)
        2
    end
  end

  @doc "The usage text."
  @spec usage() :: String.t()
  def usage, do: @usage

  defp parse(args) do
    case OptionParser.parse(args, strict: @switches) do
      {opts, models, []} ->
        cond do
          opts[:cluster] in [nil, ""] ->
            {:error, "--cluster needs a name"}

          opts[:policy] not in [nil, "binpack", "spread"] ->
            {:error, "--policy: binpack or spread, got: #{opts[:policy]}"}

          not where_ok?(opts[:where]) ->
            {:error, "--where: expected k=v,k=v, got: #{opts[:where]}"}

          true ->
            {:ok, opts, models}
        end

      {_, _, [{switch, _} | _]} ->
        {:error, "unknown or malformed option #{switch}"}
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

  # Distribution: this VM's own if it has one, else started here; then the
  # --connect nodes.
  defp distribute(opts) do
    targets = opts |> Keyword.get_values(:connect) |> Enum.map(&String.to_atom/1)

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

  # A made-up name on the first target's host, long or short like it.
  defp start_like(target) do
    case String.split(Atom.to_string(target), "@", parts: 2) do
      [_, host] ->
        name = :"model_budget_plan_#{System.unique_integer([:positive])}@#{host}"
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

  defp sources(models) do
    Enum.reduce_while(models, {:ok, []}, fn model, {:ok, acc} ->
      cond do
        File.exists?(model) ->
          {:cont, {:ok, acc ++ [{model, {:path, model}}]}}

        match?({:ok, _}, Catalog.fetch(model)) ->
          {:cont, {:ok, acc ++ [{model, {:model, elem(Catalog.fetch(model), 1)}}]}}

        true ->
          {:halt, {:error, "#{model}: no such file or built-in model"}}
      end
    end)
  end

  # The views arrive by message once connected: until every member has one,
  # or `ms` have passed.
  defp await_views(cluster, ms),
    do: await_views(cluster, System.monotonic_time(:millisecond) + ms, nil)

  defp await_views(cluster, deadline, _) do
    members = :pg.get_members(Cluster, {Cluster, cluster})
    views = Cluster.View.views(members)

    if (members != [] and length(views) == length(members)) or
         System.monotonic_time(:millisecond) > deadline do
      views
    else
      Process.sleep(20)
      await_views(cluster, deadline, nil)
    end
  end

  defp members(cluster, []), do: "cluster #{cluster}: no members seen from #{node()}"

  defp members(cluster, views) do
    rows =
      for view <- Enum.sort_by(views, &{&1.node, &1.manager}) do
        [
          "#{view.node} #{inspect(view.manager)}",
          labels(view.labels),
          placement(budget_limits(view.budget)),
          placement(view.usage)
        ]
      end

    "cluster #{cluster}: #{length(views)} members\n" <>
      Format.table([["member", "labels", "budget", "used"] | rows],
        left: [0, 1, 2, 3],
        indent: "  "
      )
  end

  defp labels(labels) when map_size(labels) == 0, do: "-"
  defp labels(labels), do: Enum.map_join(Enum.sort(labels), " ", fn {k, v} -> "#{k}=#{v}" end)

  defp budget_limits(%{mode: :unlimited}), do: :unlimited
  defp budget_limits(%{mode: :combined, limit: limit}), do: {:total, limit}
  defp budget_limits(%{mode: :per_device, ram: ram, vram: vram}), do: %{ram: ram, vram: vram}

  defp placement(:unlimited), do: "unlimited"
  defp placement({:total, limit}), do: "total #{Format.bytes(limit)}"

  defp placement(%{ram: ram, vram: vram}) do
    gpus =
      case vram do
        :infinity -> ["gpus unlimited"]
        vram -> for {gpu, bytes} <- Enum.sort(vram), do: "gpu#{gpu} #{Format.bytes(bytes)}"
      end

    Enum.join(["ram #{Format.bytes(ram)}" | gpus], ", ")
  end

  # Each model placed against the views as the ones before it left them.
  defp place(_views, [], _policy, _where), do: 0

  defp place(views, sources, policy, where) do
    {status, _views} =
      Enum.reduce(sources, {0, views}, fn {name, source}, {status, views} ->
        case Cluster.decide(views, source, [], policy, where) do
          {:ok, {[{view, placement} | _], _}} ->
            IO.puts("#{name} -> #{view.node} #{inspect(view.manager)}: #{placement(placement)}")
            {status, Enum.map(views, &add(&1, view.manager, placement))}

          {:ok, {[], refused}} ->
            IO.puts("#{name} -> does not fit on any member#{reasons(refused)}")
            {1, views}

          {:error, {:no_member, where}} ->
            IO.puts("#{name} -> no member has the labels #{inspect(where)}")
            {1, views}

          {:error, reason} ->
            IO.puts("#{name} -> cannot be sized: #{inspect(reason)}")
            {1, views}
        end
      end)

    status
  end

  defp add(%{manager: manager} = view, manager, placement),
    do: %{view | usage: ModelBudget.fold(view.usage, placement)}

  defp add(view, _manager, _placement), do: view

  defp reasons(refused) do
    Enum.map_join(refused, "", fn {node, _manager, {:insufficient_memory, reason}} ->
      "\n  #{node}: #{device(reason[:device])} needs #{Format.bytes(reason[:required])}, " <>
        "has #{Format.bytes(reason[:available])}"
    end)
  end

  defp device({:gpu, i}), do: "gpu#{i}"
  defp device(device), do: to_string(device)
end
