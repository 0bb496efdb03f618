defmodule ModelBudget.Plan.Args do
  @moduledoc """
  The command line of `mix model_budget.plan`, read into options for
  `ModelBudget.Plan.run/1`. See `Mix.Tasks.ModelBudget.Plan` for the
  switches.
  """

  # The plan's own switches; the load options' come from the core's table
  # (ModelBudget.LoadOptions): its switch and llama.cpp's spellings for each.
  @own_switches [llama_server: :string, budget: :string, json: :boolean]

  @flash_attn %{"on" => true, "off" => false, "auto" => true}

  @typedoc """
  What the command line asks for: options for `ModelBudget.Plan.run/1`,
  whether to print JSON, and the caller's own switches (`parse/2`'s
  `extra`), in the order given.
  """
  @type t :: %{plan: keyword(), json: boolean(), extra: keyword()}

  @doc """
  Reads `argv`: `{:ok, %{plan: opts, json: json?, extra: extra}}` with
  options for `ModelBudget.Plan.run/1`, or `{:error, message}` (one line)
  for anything it cannot use. Option values `ModelBudget.Plan.run/1`
  checks against the machine (a `--main-gpu` beyond the GPUs, say) are
  left to it.

  `extra` are more switches, as `OptionParser`'s `:strict` takes them, that
  the caller reads itself (`--cluster`'s own): they come back under
  `:extra`, and are refused as unknown without it.

  ## Examples

      iex> ModelBudget.Plan.Args.parse(["model.gguf", "--ctx", "4096", "-ngl", "20", "--tensor-split", "3,1"])
      {:ok, %{plan: [models: ["model.gguf"], budget: :auto, load: [n_ctx: 4096, n_gpu_layers: 20, tensor_split: [3, 1]]], json: false, extra: []}}

      iex> ModelBudget.Plan.Args.parse(["--budget", "ram=64GiB,vram=24GiB:24GiB", "--json"])
      {:ok, %{plan: [models: [], budget: %{ram: 68719476736, vram: [25769803776, 25769803776]}, load: []], json: true, extra: []}}

      iex> ModelBudget.Plan.Args.parse(["--cluster", "c", "-c", "4096", "llama-3.1-8b"], cluster: :string)
      {:ok, %{plan: [models: ["llama-3.1-8b"], budget: :auto, load: [n_ctx: 4096]], json: false, extra: [cluster: "c"]}}

      iex> ModelBudget.Plan.Args.parse(["--split-mode", "diagonal"])
      {:error, "--split-mode: expected none, layer or row, got: diagonal"}
  """
  @spec parse([String.t()], keyword()) :: {:ok, t()} | {:error, String.t()}
  def parse(argv, extra \\ []) do
    table = load_switches()
    aliases = for {_, o} <- table, {alias, switch} <- o.aliases, into: %{}, do: {alias, switch}
    argv = Enum.map(argv, &Map.get(aliases, &1, &1))
    switches = Enum.map(table, fn {key, o} -> {key, switch_type(o)} end) ++ @own_switches ++ extra

    case OptionParser.parse(argv, strict: switches) do
      {parsed, paths, []} ->
        {theirs, parsed} =
          Enum.split_with(parsed, fn {key, _} -> Keyword.has_key?(extra, key) end)

        with {:ok, load} <- load_options(parsed, Map.new(table)),
             {:ok, budget} <- budget(Keyword.get(parsed, :budget, "auto")) do
          plan = [models: paths, budget: budget, load: load]

          plan =
            case Keyword.fetch(parsed, :llama_server) do
              {:ok, binary} -> plan ++ [llama_server: binary]
              :error -> plan
            end

          {:ok, %{plan: plan, json: Keyword.get(parsed, :json, false), extra: theirs}}
        end

      {_, _, [{switch, nil} | _]} ->
        {:error, "unknown option #{switch}"}

      {_, _, [{switch, value} | _]} ->
        {:error, "#{switch}: expected #{expected(switch, switches)}, got: #{value}"}
    end
  end

  @doc """
  The switch that sets each argument a bad-input error may name, for
  `ModelBudget.Plan.run/1`'s errors to speak of switches.

  ## Examples

      iex> ModelBudget.Plan.Args.switch_names()["option :main_gpu"]
      "--main-gpu"
  """
  @spec switch_names() :: %{String.t() => String.t()}
  def switch_names do
    for {_key, o} <- load_switches(),
        into: %{"memory budget" => "--budget"},
        do: {"option :#{o.name}", o.switch}
  end

  @doc """
  The load options' switches, one line each: the switch, its value, its
  other spellings, what it sets and its default.

  ## Examples

      iex> ModelBudget.Plan.Args.options_help() =~ "--ctx-size N (-c, --ctx)"
      true
  """
  @spec options_help() :: String.t()
  def options_help do
    Enum.map_join(load_switches(), "\n", fn {_key, o} ->
      spellings = Enum.map_join(o.aliases, ", ", &elem(&1, 0))
      spellings = if spellings == "", do: "", else: " (#{spellings})"

      "  #{o.switch}#{value_help(o)}#{spellings}\n      #{o.doc}; default: #{default_help(o)}"
    end)
  end

  defp value_help(o) do
    case switch_type(o) do
      :boolean -> ", " <> String.replace(o.switch, "--", "--no-", global: false)
      :integer -> if match?({:mib, _}, o.server), do: " MIB", else: " N"
      :string when o.choices != [] -> " " <> Enum.map_join(o.choices, "|", &Atom.to_string/1)
      :string when o.kind == :weights -> " W,W,..."
      :string -> " on|off|auto"
    end
  end

  defp default_help(%{default: nil}), do: "the model's trained context"
  defp default_help(%{default: []}), do: "even"
  defp default_help(%{server: {:mib, _}, default: bytes}), do: "#{div(bytes, 2 ** 20)}"

  defp default_help(%{kind: :bool, default: on} = o) when is_boolean(on),
    do: if(on_off?(o), do: if(on, do: "on", else: "off"), else: to_string(on))

  defp default_help(%{default: default}), do: to_string(default)

  # The load options that have a switch, by OptionParser's key for it.
  defp load_switches do
    for %{switch: "--" <> name} = o <- ModelBudget.LoadOptions.all(),
        do: {String.to_atom(String.replace(name, "-", "_")), o}
  end

  # A boolean llama-server takes as `--flash-attn on|off|auto`, under the
  # plan's switch of the same name.
  defp on_off?(%{switch: switch, server: {:switch, [switch, "on"], _}}), do: true
  defp on_off?(_option), do: false

  # OptionParser's type for a switch: llama-server's own form of the value.
  defp switch_type(%{kind: :bool} = o), do: if(on_off?(o), do: :string, else: :boolean)
  defp switch_type(%{kind: :repack}), do: :boolean
  defp switch_type(%{kind: kind}) when kind in [:count, :context, :layers, :index], do: :integer
  defp switch_type(%{server: {:mib, _}}), do: :integer
  defp switch_type(_option), do: :string

  defp expected(switch, switches) do
    name = switch |> String.trim_leading("-") |> String.replace("-", "_")

    case Keyword.get(switches, String.to_existing_atom(name)) do
      :integer -> "an integer"
      :boolean -> "no value"
      _ -> "a value"
    end
  rescue
    ArgumentError -> "a value"
  end

  # In the order given (a repeated switch counts once, its last value), with
  # the names ModelBudget.distribute/3 takes.
  defp load_options(parsed, table) do
    Enum.reduce_while(parsed, {:ok, []}, fn {key, value}, {:ok, acc} ->
      case Map.fetch(table, key) do
        {:ok, option} ->
          case load_option(option, value) do
            {:ok, pair} -> {:cont, {:ok, [pair | acc]}}
            {:error, _} = error -> {:halt, error}
          end

        :error ->
          {:cont, {:ok, acc}}
      end
    end)
    |> case do
      {:ok, load} -> {:ok, Enum.reverse(load)}
      error -> error
    end
  end

  defp load_option(%{kind: :bool} = o, value) do
    if on_off?(o),
      do: choice(o, value, @flash_attn, "on, off or auto"),
      else: {:ok, {o.name, value}}
  end

  defp load_option(%{kind: :repack} = o, yes),
    do: {:ok, {o.name, if(yes, do: :auto, else: false)}}

  # llama-server's MiB; its -1 (no limit) no plan can hold.
  defp load_option(%{server: {:mib, _}} = o, mib) when mib >= 0,
    do: {:ok, {o.name, mib * 2 ** 20}}

  defp load_option(%{server: {:mib, _}} = o, mib),
    do: {:error, "#{o.switch}: expected a size in MiB (0 or more), got: #{mib}"}

  defp load_option(%{kind: :weights} = o, text) do
    weights = text |> String.split(",") |> Enum.map(&weight/1)

    if Enum.all?(weights, &is_number/1),
      do: {:ok, {o.name, weights}},
      else: {:error, "#{o.switch}: expected non-negative numbers such as 3,1, got: #{text}"}
  end

  defp load_option(%{choices: [_ | _] = choices} = o, text) do
    names = Enum.map(choices, &Atom.to_string/1)
    choice(o, text, Map.new(choices, &{Atom.to_string(&1), &1}), or_list(names))
  end

  defp load_option(o, value), do: {:ok, {o.name, value}}

  defp choice(o, value, choices, expected) do
    case Map.fetch(choices, value) do
      {:ok, term} -> {:ok, {o.name, term}}
      :error -> {:error, "#{o.switch}: expected #{expected}, got: #{value}"}
    end
  end

  defp or_list([one]), do: one
  defp or_list(names), do: Enum.join(Enum.drop(names, -1), ", ") <> " or " <> List.last(names)

  defp weight(text) do
    case {Integer.parse(text), Float.parse(text)} do
      {{n, ""}, _} when n >= 0 -> n
      {_, {x, ""}} when x >= 0 -> x
      _ -> nil
    end
  end

  @doc """
  Reads a `--budget`: `auto`, `unlimited`, a byte count for one pool of RAM
  and VRAM (`48GiB`), or per device `ram=SIZE,vram=SIZE:SIZE...` where each
  part may also be `auto` or `unlimited`, `vram=none` plans for no GPUs, and
  a part left out is `auto`. Sizes take the units of
  `ModelBudget.Format.parse_bytes/1`.

  ## Examples

      iex> ModelBudget.Plan.Args.budget("24GiB")
      {:ok, 25769803776}

      iex> ModelBudget.Plan.Args.budget("ram=64GiB,vram=none")
      {:ok, %{ram: 68719476736, vram: []}}

      iex> ModelBudget.Plan.Args.budget("vram=unlimited")
      {:ok, %{ram: :auto, vram: :infinity}}

      iex> ModelBudget.Plan.Args.budget("ram=lots")
      {:error, "--budget: ram=lots: invalid size: expected a byte count such as 24GiB, 1.5GB or 512 (units: KB, MB, GB, TB, KiB, MiB, GiB, TiB), got: \\"lots\\""}
  """
  @spec budget(String.t()) :: {:ok, ModelBudget.budget_option()} | {:error, String.t()}
  def budget("auto"), do: {:ok, :auto}
  def budget("unlimited"), do: {:ok, :infinity}

  def budget(text) do
    if String.contains?(text, "=") do
      per_device(text)
    else
      case size(text) do
        {:ok, 0} -> {:error, "--budget: expected a positive size for one pool, got: #{text}"}
        {:ok, n} -> {:ok, n}
        {:error, message} -> {:error, "--budget: #{message}"}
      end
    end
  end

  defp per_device(text) do
    text
    |> String.split(",")
    |> Enum.reduce_while({:ok, %{}}, fn part, {:ok, acc} ->
      with [key, value] when key in ["ram", "vram"] <- String.split(part, "=", parts: 2),
           device = if(key == "ram", do: :ram, else: :vram),
           false <- Map.has_key?(acc, device),
           {:ok, limit} <- device_limit(key, value) do
        {:cont, {:ok, Map.put(acc, device, limit)}}
      else
        true -> {:halt, {:error, "--budget: #{part}: given twice"}}
        {:error, message} -> {:halt, {:error, "--budget: #{part}: #{message}"}}
        _ -> {:halt, {:error, "--budget: #{part}: expected ram=SIZE or vram=SIZE:SIZE..."}}
      end
    end)
    |> case do
      {:ok, parts} -> {:ok, Map.merge(%{ram: :auto, vram: :auto}, parts)}
      error -> error
    end
  end

  defp device_limit(_key, "auto"), do: {:ok, :auto}
  defp device_limit(_key, "unlimited"), do: {:ok, :infinity}
  defp device_limit("ram", value), do: size(value)
  defp device_limit("vram", "none"), do: {:ok, []}

  defp device_limit("vram", value) do
    value
    |> String.split(":")
    |> Enum.reduce_while({:ok, []}, fn part, {:ok, acc} ->
      case if(part == "unlimited", do: {:ok, :infinity}, else: size(part)) do
        {:ok, limit} -> {:cont, {:ok, [limit | acc]}}
        error -> {:halt, error}
      end
    end)
    |> case do
      {:ok, limits} -> {:ok, Enum.reverse(limits)}
      error -> error
    end
  end

  defp size(text), do: ModelBudget.Format.parse_bytes(text)
end
