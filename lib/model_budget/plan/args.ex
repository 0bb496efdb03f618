defmodule ModelBudget.Plan.Args do
  @moduledoc """
  The command line of `mix model_budget.plan`, read into options for
  `ModelBudget.Plan.run/1`. See `Mix.Tasks.ModelBudget.Plan` for the
  switches.
  """

  @switches [
    n_gpu_layers: :integer,
    split_mode: :string,
    tensor_split: :string,
    main_gpu: :integer,
    ctx: :integer,
    parallel: :integer,
    cache_type_k: :string,
    cache_type_v: :string,
    no_kv_offload: :boolean,
    batch_size: :integer,
    ubatch_size: :integer,
    flash_attn: :string,
    kv_unified: :boolean,
    cache_ram: :integer,
    repack: :boolean,
    cpu_buffers: :string,
    llama_server: :string,
    mmap: :boolean,
    budget: :string,
    json: :boolean
  ]

  # llama.cpp's spellings, for people who type them from habit.
  @llama_cpp %{
    "-ngl" => "--n-gpu-layers",
    "--gpu-layers" => "--n-gpu-layers",
    "-sm" => "--split-mode",
    "-ts" => "--tensor-split",
    "-mg" => "--main-gpu",
    "-c" => "--ctx",
    "--ctx-size" => "--ctx",
    "-np" => "--parallel",
    "-ctk" => "--cache-type-k",
    "-ctv" => "--cache-type-v",
    "-nkvo" => "--no-kv-offload",
    "-b" => "--batch-size",
    "-ub" => "--ubatch-size",
    "-fa" => "--flash-attn",
    "-kvu" => "--kv-unified",
    "-cram" => "--cache-ram"
  }

  @flash_attn %{"on" => true, "off" => false, "auto" => true}

  @cpu_buffers Map.new(
                 ~w(auto none x86_avx2 x86_avx512 x86_amx arm_dotprod arm_kleidiai)a,
                 &{Atom.to_string(&1), &1}
               )

  @split_modes %{"none" => :none, "layer" => :layer, "row" => :row}
  @cache_types Map.new(
                 ~w(f32 f16 bf16 q8_0 q4_0 q4_1 q5_0 q5_1 iq4_nl)a,
                 &{Atom.to_string(&1), &1}
               )

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
    argv = Enum.map(argv, &Map.get(@llama_cpp, &1, &1))
    switches = @switches ++ extra

    case OptionParser.parse(argv, strict: switches) do
      {parsed, paths, []} ->
        {theirs, parsed} =
          Enum.split_with(parsed, fn {key, _} -> Keyword.has_key?(extra, key) end)

        with {:ok, load} <- load_options(parsed),
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

  # Switches by the load option (or argument) they set.
  @switch_of [
    {"option :n_gpu_layers", "--n-gpu-layers"},
    {"option :split_mode", "--split-mode"},
    {"option :tensor_split", "--tensor-split"},
    {"option :main_gpu", "--main-gpu"},
    {"option :n_ctx", "--ctx"},
    {"option :n_parallel", "--parallel"},
    {"option :cache_type_k", "--cache-type-k"},
    {"option :cache_type_v", "--cache-type-v"},
    {"option :offload_kqv", "--no-kv-offload"},
    {"option :n_batch", "--batch-size"},
    {"option :n_ubatch", "--ubatch-size"},
    {"option :cache_ram", "--cache-ram"},
    {"memory budget", "--budget"}
  ]

  @doc """
  The switch that sets each argument a bad-input error may name, for
  `ModelBudget.Plan.run/1`'s errors to speak of switches.

  ## Examples

      iex> ModelBudget.Plan.Args.switch_names()["option :main_gpu"]
      "--main-gpu"
  """
  @spec switch_names() :: %{String.t() => String.t()}
  def switch_names, do: Map.new(@switch_of)

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
  defp load_options(parsed) do
    Enum.reduce_while(parsed, {:ok, []}, fn {key, value}, {:ok, acc} ->
      case load_option(key, value) do
        {:ok, nil} -> {:cont, {:ok, acc}}
        {:ok, pair} -> {:cont, {:ok, [pair | acc]}}
        {:error, _} = error -> {:halt, error}
      end
    end)
    |> case do
      {:ok, load} -> {:ok, Enum.reverse(load)}
      error -> error
    end
  end

  defp load_option(:n_gpu_layers, k), do: {:ok, {:n_gpu_layers, k}}
  defp load_option(:main_gpu, i), do: {:ok, {:main_gpu, i}}
  defp load_option(:ctx, n), do: {:ok, {:n_ctx, n}}
  defp load_option(:parallel, n), do: {:ok, {:n_parallel, n}}
  defp load_option(:no_kv_offload, true), do: {:ok, {:offload_kqv, false}}
  defp load_option(:no_kv_offload, false), do: {:ok, nil}
  defp load_option(:batch_size, n), do: {:ok, {:n_batch, n}}
  defp load_option(:ubatch_size, n), do: {:ok, {:n_ubatch, n}}
  defp load_option(:kv_unified, yes), do: {:ok, {:kv_unified, yes}}
  defp load_option(:repack, yes), do: {:ok, {:repack, if(yes, do: :auto, else: false)}}
  defp load_option(:mmap, yes), do: {:ok, {:mmap, yes}}

  defp load_option(:cpu_buffers, name) do
    choice(
      "--cpu-buffers",
      name,
      @cpu_buffers,
      Enum.join(Map.keys(@cpu_buffers), ", "),
      :cpu_buffers
    )
  end

  # llama-server's --cache-ram is in MiB; -1 means no limit, which no plan can hold.
  defp load_option(:cache_ram, mib) when mib >= 0, do: {:ok, {:cache_ram, mib * 2 ** 20}}

  defp load_option(:cache_ram, mib),
    do: {:error, "--cache-ram: expected a size in MiB (0 or more), got: #{mib}"}

  defp load_option(:flash_attn, value),
    do: choice("--flash-attn", value, @flash_attn, "on, off or auto", :flash_attn)

  defp load_option(:split_mode, mode),
    do: choice("--split-mode", mode, @split_modes, "none, layer or row", :split_mode)

  defp load_option(key, type) when key in [:cache_type_k, :cache_type_v] do
    names = @cache_types |> Map.keys() |> Enum.sort()
    switch = "--" <> String.replace(Atom.to_string(key), "_", "-")
    choice(switch, type, @cache_types, Enum.join(names, ", "), key)
  end

  defp load_option(:tensor_split, text) do
    weights = text |> String.split(",") |> Enum.map(&weight/1)

    if Enum.all?(weights, &is_number/1),
      do: {:ok, {:tensor_split, weights}},
      else: {:error, "--tensor-split: expected non-negative numbers such as 3,1, got: #{text}"}
  end

  defp load_option(key, _value) when key in [:budget, :json, :llama_server], do: {:ok, nil}

  defp choice(switch, value, choices, expected, key) do
    case Map.fetch(choices, value) do
      {:ok, atom} -> {:ok, {key, atom}}
      :error -> {:error, "#{switch}: expected #{expected}, got: #{value}"}
    end
  end

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
