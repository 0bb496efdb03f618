defmodule ModelBudget.PS do
  @moduledoc """
  What the `ModelBudget.ModelManager`s of a node, or the members of a
  `ModelBudget.Cluster`, hold now: the data behind `mix model_budget.ps`
  (as `ollama ps` or llama-swap's `/running`).

  `collect/1` reads every manager through its public reads
  (`ModelBudget.ModelManager.list/1`, `usage/1` and `budget/1`), on the
  manager's own node with `:erpc`; nothing is sent to a manager process, so
  a busy manager answers at once. `to_json/1` turns the report into the
  data `mix model_budget.ps --json` prints; without `--json` the task
  prints it as two tables (see `Mix.Tasks.ModelBudget.Ps`).

  A manager is found on its node by the configuration it publishes in
  `:persistent_term` when it starts (`managers/0`), so managers with no
  name are found too.
  """

  alias ModelBudget.ModelManager

  @typedoc "One manager as `collect/1` read it."
  @type manager_report :: %{
          node: node(),
          manager: pid(),
          name: atom() | nil,
          labels: map() | nil,
          budget: ModelBudget.budget() | nil,
          usage: ModelBudget.placement() | nil,
          models: [ModelManager.info()],
          error: term() | nil
        }

  @typedoc """
  What `collect/1` returns: the cluster asked about (or `nil`), the nodes
  asked (or the node whose view of the cluster was read), and the managers,
  sorted by node, then name, then pid.
  """
  @type report :: %{cluster: term() | nil, nodes: [node()], managers: [manager_report()]}

  @doc """
  The live managers of this node, in pid order.

  ## Examples

      iex> {:ok, manager} = ModelBudget.ModelManager.start_link([])
      iex> manager in ModelBudget.PS.managers()
      true
  """
  @spec managers() :: [pid()]
  def managers do
    for {{ModelManager, pid}, %{manager: pid}} <- :persistent_term.get(),
        is_pid(pid),
        Process.alive?(pid) do
      pid
    end
    |> Enum.sort()
  end

  @doc """
  Reads what the managers hold now: those of `:nodes`, or the members of
  `:cluster` as the view of node `:via` has them (`ModelBudget.Cluster.usage/1`
  there). Returns `{:ok, report}`, or `{:error, message}` when a node
  cannot be reached or the cluster has no member.

  A manager that stops while it is read is left out; a cluster member
  whose node does not answer is listed with its `:error` (`:noconnection`,
  `:timeout`, ...), the budget and usage of the view, and no models.

  ## Options

    * `:nodes` - the nodes whose managers are read. Defaults to `[node()]`.
    * `:cluster` - the name of a `ModelBudget.Cluster`: its members are read
      instead of `:nodes`' managers. Defaults to `nil`.
    * `:via` - the node whose view of `:cluster` lists the members.
      Defaults to `node()`.
    * `:timeout` - milliseconds each remote call may take. Defaults to
      `5_000`.

  ## Examples

      iex> {:ok, manager} = ModelBudget.ModelManager.start_link(memory_budget: 1_000)
      iex> {:ok, _} = ModelBudget.ModelManager.load(manager, :a, {:bytes, 600}, mode: :direct, n_gpus: 0)
      iex> {:ok, report} = ModelBudget.PS.collect([])
      iex> [%{models: [%{id: :a, status: :ready}], usage: %{ram: 600}}] =
      ...>   Enum.filter(report.managers, &(&1.manager == manager))
  """
  @spec collect(keyword()) :: {:ok, report()} | {:error, String.t()}
  def collect(opts) do
    opts = Keyword.validate!(opts, nodes: [node()], cluster: nil, via: node(), timeout: 5_000)
    timeout = opts[:timeout]

    with {:ok, members, nodes} <- members(opts[:cluster], opts, timeout) do
      managers =
        members
        |> Enum.flat_map(&read(&1, timeout))
        |> Enum.sort_by(&{&1.node, sort_name(&1.name), &1.manager})

      {:ok, %{cluster: opts[:cluster], nodes: nodes, managers: managers}}
    end
  end

  defp sort_name(nil), do: {1, nil}
  defp sort_name(name), do: {0, name}

  defp members(nil, opts, timeout) do
    opts[:nodes]
    |> Enum.reduce_while({:ok, []}, fn node, {:ok, acc} ->
      case remote(node, __MODULE__, :managers, [], timeout) do
        {:ok, pids} ->
          {:cont, {:ok, acc ++ Enum.map(pids, &%{node: node, manager: &1, labels: nil})}}

        {:error, reason} ->
          {:halt, {:error, "#{node}: #{reason_text(reason, "ModelBudget.PS.managers/0")}"}}
      end
    end)
    |> case do
      {:ok, members} -> {:ok, members, opts[:nodes]}
      error -> error
    end
  end

  defp members(cluster, opts, timeout) do
    via = opts[:via]

    case remote(via, ModelBudget.Cluster, :usage, [cluster], timeout) do
      {:ok, []} ->
        {:error, "cluster #{cluster_text(cluster)} has no members seen from #{via}"}

      {:ok, members} ->
        {:ok, members, [via]}

      {:error, reason} ->
        {:error, "#{via}: #{reason_text(reason, "ModelBudget.Cluster.usage/1")}"}
    end
  end

  # One manager's models, usage, budget and name, read on its node. A
  # manager gone meanwhile is left out; a node that does not answer keeps
  # what the view said (cluster members) and the reason.
  defp read(%{node: node, manager: pid} = member, timeout) do
    calls = [
      {ModelManager, :list, [pid]},
      {ModelManager, :usage, [pid]},
      {ModelManager, :budget, [pid]},
      {Process, :info, [pid, :registered_name]}
    ]

    results =
      Enum.reduce_while(calls, [], fn {m, f, a}, acc ->
        case remote(node, m, f, a, timeout) do
          {:ok, value} -> {:cont, [value | acc]}
          {:error, reason} -> {:halt, {:error, reason}}
        end
      end)

    base = %{
      node: node,
      manager: pid,
      name: nil,
      labels: member[:labels],
      budget: member[:budget],
      usage: member[:usage],
      models: [],
      error: nil
    }

    case results do
      [{:registered_name, name}, budget, usage, models] when is_atom(name) ->
        [%{base | name: name, budget: budget, usage: usage, models: models}]

      [_no_name, budget, usage, models] ->
        [%{base | budget: budget, usage: usage, models: models}]

      {:error, :noproc} ->
        []

      {:error, reason} ->
        [%{base | error: reason}]
    end
  end

  # `m.f(a)` on `node` (this one included), its failures as reasons.
  defp remote(node, m, f, a, timeout) do
    {:ok, :erpc.call(node, m, f, a, timeout)}
  catch
    :error, {:erpc, reason} -> {:error, reason}
    :exit, {:exception, {:noproc, _}} -> {:error, :noproc}
    :exit, {:exception, reason} -> {:error, {:exit, reason}}
    :error, {:exception, :undef, _stack} -> {:error, :undef}
    :error, {:exception, reason, _stack} -> {:error, {:raised, reason}}
    :throw, value -> {:error, {:throw, value}}
  end

  @doc false
  # A reason of collect/1's, for a person.
  @spec reason_text(term(), String.t()) :: String.t()
  def reason_text(reason, function \\ "")
  def reason_text(:noconnection, _), do: "cannot be reached"
  def reason_text(:timeout, _), do: "did not answer in time"

  def reason_text(:undef, function),
    do: "#{function} is not defined there (is model_budget loaded there, and new enough?)"

  def reason_text({:raised, %{__exception__: true} = e}, _), do: Exception.message(e)
  def reason_text({:raised, reason}, _), do: inspect(reason)
  def reason_text({:exit, reason}, _), do: "exited: " <> inspect(reason)
  def reason_text(reason, _), do: inspect(reason)

  @doc """
  `report` as plain data for `ModelBudget.JSON.encode!/2`: an object with
  `"cluster"` (its name, inspected, or `null`), `"managers"` (one object
  each: `"manager"` (its name, else its pid, as text), `"name"`, `"pid"`,
  `"node"`, `"labels"`, `"budget"`, `"usage"`, `"devices"` (per device:
  `"used"` against its `"limit"`, `null` for none, and `"used_percent"`),
  `"models"` (a count) and `"error"`) and `"models"` (one object per model,
  in the managers' order then by id: `"manager"`, `"node"`, `"id"`,
  `"status"`, `"reserved"` and `"measured"` (`"ram"`, `"vram"` by GPU index
  and `"total"`, in bytes; `"measured"` is `null` for a backend that does
  not measure), `"bytes"`, `"leases"`, `"pinned"`, `"keep_alive_ms"`,
  `"idle_ms"`, `"expires_in_ms"` (`null` for never), `"cpu_buffers"`,
  `"loads"`, `"evictions"` and `"source"` (inspected)). Ids that are
  strings stay strings; other ids are inspected (`:llama` is `":llama"`).
  """
  @spec to_json(report()) :: map()
  def to_json(report) do
    %{
      cluster: if(report.cluster == nil, do: nil, else: cluster_text(report.cluster)),
      managers: Enum.map(report.managers, &manager_json/1),
      models: for(m <- report.managers, info <- m.models, do: model_json(m, info))
    }
  end

  defp manager_json(m) do
    %{
      manager: manager_text(m),
      name: if(m.name, do: inspect(m.name)),
      pid: inspect(m.manager),
      node: Atom.to_string(m.node),
      labels: labels_json(m.labels),
      budget: budget_json(m.budget),
      usage: placement_json(m.usage),
      devices:
        for {device, used, limit} <- devices(m.budget, m.usage) do
          Map.merge(device_json(device), %{
            used: used,
            limit: limit(limit),
            used_percent: percent(used, limit)
          })
        end,
      models: length(m.models),
      error: if(m.error, do: reason_text(m.error))
    }
  end

  defp model_json(m, info) do
    %{
      manager: manager_text(m),
      node: Atom.to_string(m.node),
      id: id_text(info.id),
      status: Atom.to_string(info.status),
      reserved: placement_json(info.placement),
      measured: placement_json(info.measured),
      bytes: info.bytes,
      leases: info.leases,
      pinned: info.pinned,
      keep_alive_ms: limit(info.keep_alive),
      idle_ms: info.idle_ms,
      expires_in_ms: limit(info.expires_in_ms),
      cpu_buffers: info.cpu_buffers,
      loads: info.loads,
      evictions: info.evictions,
      source: inspect(info.source)
    }
  end

  defp placement_json(nil), do: nil

  defp placement_json(%{ram: ram, vram: vram}),
    do: %{ram: ram, vram: vram, total: total(%{ram: ram, vram: vram})}

  # The plan report's shapes, so that both commands print budgets and
  # devices alike.
  defp budget_json(nil), do: nil
  defp budget_json(budget), do: ModelBudget.Plan.budget_json(budget)

  defp device_json(device), do: ModelBudget.Plan.device_json(device)

  defp labels_json(nil), do: nil

  defp labels_json(labels) do
    Map.new(labels, fn {k, v} -> {label_text(k), label_value(v)} end)
  end

  defp label_value(v) when is_binary(v) or is_number(v) or is_boolean(v) or v == nil, do: v
  defp label_value(v), do: label_text(v)

  defp limit(:infinity), do: nil
  defp limit(n), do: n

  ## Shared with the text report

  @doc false
  # A manager as a person names it: its registered name, else its pid.
  @spec manager_text(manager_report()) :: String.t()
  def manager_text(%{name: nil, manager: pid}), do: inspect(pid)
  def manager_text(%{name: name}), do: inspect(name)

  @doc false
  @spec id_text(term()) :: String.t()
  def id_text(id) when is_binary(id), do: if(String.printable?(id), do: id, else: inspect(id))
  def id_text(id), do: inspect(id)

  @doc false
  @spec cluster_text(term()) :: String.t()
  def cluster_text(cluster) when is_atom(cluster), do: Atom.to_string(cluster)
  def cluster_text(cluster), do: inspect(cluster)

  @doc false
  @spec label_text(term()) :: String.t()
  def label_text(term) when is_binary(term), do: term
  def label_text(term) when is_atom(term), do: Atom.to_string(term)
  def label_text(term), do: inspect(term)

  @doc false
  # A placement's bytes on every device.
  @spec total(ModelBudget.placement()) :: non_neg_integer()
  def total(%{ram: ram, vram: vram}), do: ram + Enum.sum(Map.values(vram))

  @doc false
  # Usage against budget, per device of the budget: `{device, used, limit}`;
  # the combined pool is one device, `:total`. GPUs are those the budget
  # names or the usage holds, by index.
  @spec devices(ModelBudget.budget() | nil, ModelBudget.placement() | nil) :: [
          {ModelBudget.device(), non_neg_integer(), non_neg_integer() | :infinity}
        ]
  def devices(_budget, nil), do: []
  def devices(%{mode: :combined, limit: limit}, usage), do: [{:total, total(usage), limit}]

  def devices(budget, usage) do
    {ram_limit, vram_limits} =
      case budget do
        %{mode: :per_device, ram: ram, vram: vram} when is_map(vram) -> {ram, vram}
        %{mode: :per_device, ram: ram} -> {ram, %{}}
        _ -> {:infinity, %{}}
      end

    gpus = Enum.sort(Enum.uniq(Map.keys(vram_limits) ++ Map.keys(usage.vram)))

    [{:ram, usage.ram, ram_limit}] ++
      for i <- gpus,
          do: {{:gpu, i}, Map.get(usage.vram, i, 0), Map.get(vram_limits, i, :infinity)}
  end

  @doc false
  # Whole percent, rounded down (as the `used_percent` of eviction rules);
  # 100 for a limit of 0, nil for no limit.
  @spec percent(non_neg_integer(), non_neg_integer() | :infinity) :: non_neg_integer() | nil
  def percent(_used, :infinity), do: nil
  def percent(_used, 0), do: 100
  def percent(used, limit), do: div(used * 100, limit)

  @doc """
  A duration in milliseconds as a person reads it: the two largest units
  of days, hours, minutes and seconds (rounded down; a unit that is 0 is
  left out), or milliseconds under a second.

  ## Examples

      iex> ModelBudget.PS.duration(250_000)
      "4m 10s"
      iex> ModelBudget.PS.duration(3_600_000)
      "1h"
      iex> ModelBudget.PS.duration(93_784_000)
      "1d 2h"
      iex> ModelBudget.PS.duration(59_999)
      "59s"
      iex> ModelBudget.PS.duration(450)
      "450ms"
      iex> ModelBudget.PS.duration(0)
      "0s"
  """
  @spec duration(non_neg_integer()) :: String.t()
  def duration(0), do: "0s"
  def duration(ms) when is_integer(ms) and ms > 0 and ms < 1_000, do: "#{ms}ms"

  def duration(ms) when is_integer(ms) and ms >= 1_000 do
    s = div(ms, 1_000)
    parts = [{"d", div(s, 86_400)}, {"h", rem(div(s, 3_600), 24)}, {"m", rem(div(s, 60), 60)}]

    (parts ++ [{"s", rem(s, 60)}])
    |> Enum.drop_while(fn {_unit, n} -> n == 0 end)
    |> Enum.take(2)
    |> Enum.reject(fn {_unit, n} -> n == 0 end)
    |> Enum.map_join(" ", fn {unit, n} -> "#{n}#{unit}" end)
  end
end
