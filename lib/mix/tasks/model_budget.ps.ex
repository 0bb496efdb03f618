defmodule Mix.Tasks.ModelBudget.Ps do
  @shortdoc "What the model managers hold now: models, devices, leases, idle, expiry"
  @moduledoc """
  Shows what the `ModelBudget.ModelManager`s hold now, as `ollama ps` or
  llama-swap's `/running` do: the managers on this node, on the nodes given
  with `--connect`, or every member of a `ModelBudget.Cluster` with
  `--cluster NAME`.

      mix model_budget.ps [options]
      mix model_budget.ps --connect app@host --cookie COOKIE
      mix model_budget.ps --cluster inference --connect app@host --json

  It prints one row per model:

    * `MANAGER` - the manager's registered name, else its pid.
    * `NODE` - the manager's node.
    * `ID` - the model's id (a string as it is, any other term inspected).
    * `STATUS` - `loading`, `ready` or `unloading`; `, pinned` for a
      pinned model.
    * `DEVICES` - the bytes its placement reserves in RAM and on each GPU.
    * `RESERVED` - the bytes reserved on all devices.
    * `MEASURED` - what its backend measured it to hold, on all devices;
      `-` for a backend that does not measure.
    * `LEASES` - the leases held on it now.
    * `IDLE` - how long since it was admitted, loaded, last checked in or
      touched, by the manager's clock (`4m 10s`); `in use` while leased.
    * `EXPIRES` - how long until its keep-alive unloads it: `never` without
      one, `paused` while leased, `now` once due.
    * `PROFILE` - the runtime profile it was placed with (`:cpu_buffers`),
      `-` when none was named.

  then one row per manager: how many models it holds and its usage against
  its budget, per device (`total` for a combined budget, else `ram` and
  each GPU), with the percent used; with `--cluster`, its labels too. With
  no model loaded it prints `no models loaded` (and the managers, if any).

  Each manager is read through its public reads (`list/1`, `usage/1`,
  `budget/1`) on its own node, with `:erpc`; nothing is sent to the
  manager process. See `ModelBudget.PS` for the same data as a function.

  ## Options

    * `--connect NODE` - show the managers of the running node NODE
      (`name@host`) instead of this VM's; repeat it for several nodes. With
      `--cluster`, NODE is the node whose view of the cluster is read.
    * `--cluster NAME` - show every member of the cluster NAME (the atom
      given as the managers' `cluster:` option), as the view of the
      `--connect` node (else this node) lists them.
    * `--cookie COOKIE` - the distribution cookie of the nodes reached.
      Defaults to this VM's (`~/.erlang.cookie`).
    * `--name NAME`, `--sname NAME` - this task's own node name, long or
      short, when it must start distribution to reach `--connect`.
      Defaults to a unique `model_budget_ps_...` name on the first
      `--connect` node's host. The node is hidden: it does not join the
      nodes' mesh.
    * `--timeout MS` - how long each remote read may take. Defaults to
      `5000`.
    * `--json` - print the report as JSON (see `ModelBudget.PS.to_json/1`).
    * `--help`, `-h` - print this usage.

  ## Exit status

    * `0` - the report was printed (whether or not anything is loaded).
    * `2` - bad input: an unknown option, a node that cannot be reached, a
      cluster with no member. One line on standard error,
      `mix model_budget.ps: MESSAGE`.
  """
  use Mix.Task

  alias ModelBudget.PS

  @impl true
  def run(args) do
    # Only this library's application: the project's own (and the
    # managers its supervision tree would start) stays down.
    Mix.Task.run("app.config")
    {:ok, _} = Application.ensure_all_started(:model_budget)

    case main(args) do
      0 -> :ok
      status -> exit({:shutdown, status})
    end
  end

  @doc false
  # Prints the report (or the error, or the usage) and returns the exit status.
  @spec main([String.t()]) :: 0 | 2
  def main(args) do
    with {:ok, parsed} <- PS.Args.parse(args),
         {:help, false} <- {:help, parsed.help},
         :ok <- PS.Args.connect(parsed),
         {:ok, report} <- PS.collect(collect_opts(parsed)) do
      output =
        if parsed.json,
          do: ModelBudget.JSON.encode!(PS.to_json(report), pretty: true),
          else: PS.Text.render(report)

      IO.puts(output)
      0
    else
      {:help, true} ->
        IO.puts(usage())
        0

      {:error, message} ->
        IO.puts(:stderr, "mix model_budget.ps: " <> message)
        2
    end
  end

  defp collect_opts(%{cluster: nil} = parsed) do
    nodes = if parsed.connect == [], do: [node()], else: Enum.uniq(parsed.connect)
    [nodes: nodes, timeout: parsed.timeout]
  end

  defp collect_opts(parsed) do
    via = List.first(parsed.connect, node())
    [cluster: parsed.cluster, via: via, timeout: parsed.timeout]
  end

  # What `mix help model_budget.ps` prints.
  defp usage, do: "mix model_budget.ps\n\n" <> Mix.Task.moduledoc(__MODULE__)
end
