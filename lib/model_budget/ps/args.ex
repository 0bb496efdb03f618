defmodule ModelBudget.PS.Args do
  @moduledoc false
  # `mix model_budget.ps`'s command line: parsed into ModelBudget.PS.collect/1's
  # options, and the distribution it needs (this VM's own node, hidden
  # unless it is already distributed; the --connect nodes). Errors are one
  # line for a person, without the task's prefix.

  @switches [
    json: :boolean,
    connect: :keep,
    cluster: :string,
    name: :string,
    sname: :string,
    cookie: :string,
    timeout: :integer,
    help: :boolean
  ]

  @why "not running, not reachable, or another cookie: see --cookie"

  @type parsed :: %{
          json: boolean(),
          help: boolean(),
          connect: [node()],
          cluster: atom() | nil,
          name: {atom(), :longnames | :shortnames} | nil,
          cookie: atom() | nil,
          timeout: pos_integer()
        }

  @doc "Parses the arguments: `{:ok, parsed}` or `{:error, message}`."
  @spec parse([String.t()]) :: {:ok, parsed()} | {:error, String.t()}
  def parse(args) do
    case OptionParser.parse(args, strict: @switches, aliases: [h: :help]) do
      {opts, [], []} -> check(opts)
      {_opts, [arg | _], []} -> {:error, "unexpected argument: #{arg}"}
      {_opts, _args, [invalid | _]} -> {:error, invalid(invalid)}
    end
  end

  defp invalid({switch, value}) do
    type =
      Enum.find_value(@switches, fn {name, type} ->
        dashed = String.replace(Atom.to_string(name), "_", "-")
        negated? = type == :boolean and switch == "--no-" <> dashed
        if switch == "--" <> dashed or negated?, do: type
      end)

    cond do
      type == nil -> "unknown option #{switch}"
      value == nil -> "#{switch}: expected a value"
      type == :integer -> "#{switch}: expected an integer, got: #{value}"
      type == :boolean -> "#{switch}: expected no value, got: #{value}"
      true -> "#{switch}: invalid value: #{value}"
    end
  end

  defp check(opts) do
    connect = Keyword.get_values(opts, :connect)
    timeout = Keyword.get(opts, :timeout, 5_000)

    cond do
      opts[:cluster] == "" ->
        {:error, "--cluster: expected a name"}

      bad = Enum.find(connect, &(not node_name?(&1))) ->
        {:error, "--connect: expected name@host, got: #{bad}"}

      opts[:name] != nil and opts[:sname] != nil ->
        {:error, "give --name or --sname, not both"}

      opts[:name] == "" or opts[:sname] == "" ->
        {:error, "--#{if opts[:name] == "", do: "name", else: "sname"}: expected a node name"}

      opts[:cookie] == "" ->
        {:error, "--cookie: expected a cookie"}

      timeout <= 0 ->
        {:error, "--timeout: expected a positive number of milliseconds, got: #{timeout}"}

      true ->
        {:ok,
         %{
           json: Keyword.get(opts, :json, false),
           help: Keyword.get(opts, :help, false),
           connect: Enum.map(connect, &String.to_atom/1),
           cluster: if(opts[:cluster], do: String.to_atom(opts[:cluster])),
           name:
             cond do
               opts[:name] -> {String.to_atom(opts[:name]), :longnames}
               opts[:sname] -> {String.to_atom(opts[:sname]), :shortnames}
               true -> nil
             end,
           cookie: if(opts[:cookie], do: String.to_atom(opts[:cookie])),
           timeout: timeout
         }}
    end
  end

  defp node_name?(text), do: match?([name, host] when name != "" and host != "", split(text))

  defp split(text), do: String.split(text, "@", parts: 2)

  @doc """
  Connects to the `--connect` nodes, starting distribution first when this
  VM has none: as `--name`/`--sname`, else a unique name on the first
  node's host (long names when that host has a dot), hidden either way so
  that it does not join the nodes' mesh. `:ok` or `{:error, message}`.
  """
  @spec connect(parsed()) :: :ok | {:error, String.t()}
  def connect(%{connect: []}), do: :ok

  def connect(%{connect: [first | _] = targets} = parsed) do
    with :ok <- start_distribution(parsed, first) do
      if parsed.cookie, do: for(target <- targets, do: Node.set_cookie(target, parsed.cookie))

      case Enum.reject(targets, &(&1 == node() or Node.connect(&1) == true)) do
        [] -> :ok
        failed -> {:error, "cannot reach #{Enum.join(failed, ", ")} (#{@why})"}
      end
    end
  end

  defp start_distribution(parsed, first) do
    cond do
      Node.alive?() ->
        :ok

      parsed.name ->
        {name, type} = parsed.name
        start(name, type, parsed.cookie)

      true ->
        [_, host] = split(Atom.to_string(first))
        name = :"model_budget_ps_#{System.unique_integer([:positive])}_#{System.pid()}@#{host}"

        start(
          name,
          if(String.contains?(host, "."), do: :longnames, else: :shortnames),
          parsed.cookie
        )
    end
  end

  # Started here, so every node this VM reaches (cluster members too) gets
  # the cookie.
  defp start(name, type, cookie) do
    case :net_kernel.start(name, %{name_domain: type, hidden: true}) do
      {:ok, _} ->
        if cookie, do: Node.set_cookie(cookie)
        :ok

      {:error, reason} ->
        {:error,
         "could not start distribution as #{name}: #{inspect(reason)} " <>
           "(is epmd running? `epmd -daemon` starts it)"}
    end
  end
end
