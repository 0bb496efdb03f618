defmodule ModelBudget.Plan do
  @moduledoc """
  The answer `mix model_budget.plan` prints: what this machine has, its
  budget, and for each model whether it fits, where it would go, the
  longest context that fits and, when it does not fit, the changes to the
  load options that would make it fit.

  `run/1` builds the report as data (a `%ModelBudget.Plan{}`), without
  printing anything; `ModelBudget.Plan.Text` renders it for people and
  `to_json/1` for programs.

  Models given together are folded in order, as a `ModelBudget.ModelManager`
  would admit them: each is checked against the memory the earlier ones that
  fit already hold, and one that does not fit is refused and takes nothing.
  The built-in models (`ModelBudget.Plan.Catalog`) are alternatives, each
  checked alone.
  """

  alias ModelBudget.{Model, Native}
  alias ModelBudget.Backend.LlamaServer.Runtime
  alias ModelBudget.Plan.Catalog
  require ModelBudget.Native.Errors, as: Errors

  @enforce_keys [:machine, :budget, :n_gpus, :options, :together, :models, :runtime]
  defstruct [:machine, :budget, :n_gpus, :options, :together, :models, :runtime]

  # The oldest llama.cpp build a truth set was recorded with
  # (test/fixtures/truth/): older builds may size buffers otherwise.
  @oldest_recorded_build 11_434

  @typedoc """
  The runtime profile the report planned with: its extra CPU buffers, the
  build that reported them (`nil` without a binary), where it came from,
  and a warning for a build older than any recorded truth.
  """
  @type runtime :: %{
          cpu_buffers: ModelBudget.cpu_buffers(),
          build: non_neg_integer() | nil,
          from: String.t(),
          warning: String.t() | nil
        }

  @typedoc "This machine as the report shows it."
  @type machine :: %{
          memory: %{
            total: non_neg_integer(),
            available: non_neg_integer(),
            limit: non_neg_integer()
          },
          gpus: [ModelBudget.gpu()],
          gpu_status: {:ok, String.t(), non_neg_integer()} | {:unavailable, String.t()}
        }

  @typedoc "A device a share or a shortfall is on."
  @type device :: ModelBudget.device()

  @typedoc """
  One device's part of a model's placement, and what the budget has left
  there: `:infinity` when it sets no limit, `nil` for a device inside a
  combined budget's pool (the `:total` row has the pool).
  """
  @type device_share :: %{
          device: device(),
          weights: non_neg_integer(),
          amx: non_neg_integer(),
          kleidiai: non_neg_integer(),
          repack: non_neg_integer(),
          kv_cache: non_neg_integer(),
          compute: non_neg_integer(),
          output: non_neg_integer(),
          prompt_cache: non_neg_integer(),
          overhead: non_neg_integer(),
          total: non_neg_integer(),
          available: non_neg_integer() | :infinity | nil
        }

  @typedoc "A device that is short: what the model needs there, what is left, the difference."
  @type shortfall :: %{
          device: device(),
          required: non_neg_integer(),
          available: non_neg_integer(),
          short_by: pos_integer()
        }

  @typedoc """
  A change to the load options that makes a model fit, each found by
  placing the model again: `{:n_gpu_layers, k}`, `{:n_ctx, n}`,
  `{:cache_type, type}` (for both K and V) or `{:cache_ram, bytes}` (a
  smaller prompt cache, a whole number of MiB as `--cache-ram` takes it;
  `0` for none).
  """
  @type suggestion ::
          {:n_gpu_layers, non_neg_integer()}
          | {:n_ctx, pos_integer()}
          | {:cache_type, atom()}
          | {:cache_ram, non_neg_integer()}

  @typedoc """
  Something the user should know about the options: `{:n_ctx_beyond_trained,
  n_ctx, trained}` when the context asked for is beyond the model's trained
  context.
  """
  @type warning :: {:n_ctx_beyond_trained, pos_integer(), pos_integer()}

  @typedoc """
  The verdict for one model. `:file_type` is what the GGUF header's
  `general.file_type` names (llama.cpp's `LLAMA_FTYPE_*`, such as
  `"Q4_K_M"`) when the model says, else `nil`; `:bits_per_weight` is the
  weights' bytes x 8 / their parameters, as llama.cpp's BPW (`nil` for a
  model without parameters).
  """
  @type entry :: %{
          name: String.t(),
          source: :builtin | Path.t(),
          model: Model.t(),
          file_type: String.t() | nil,
          bits_per_weight: float() | nil,
          fits: boolean(),
          n_ctx: pos_integer(),
          longest_context: pos_integer() | nil,
          devices: [device_share()],
          short: [shortfall()],
          suggestions: [suggestion()],
          warnings: [warning()]
        }

  @type t :: %__MODULE__{
          machine: machine(),
          budget: ModelBudget.budget(),
          n_gpus: non_neg_integer(),
          options: keyword(),
          together: boolean(),
          models: [entry()]
        }

  @doc """
  Builds the report. Returns `{:error, message}`, a one-line message, when
  a model cannot be read or an option is refused.

  ## Options

    * `:models` - model file or folder paths (anything `ModelBudget.Model.read/1`
      reads) and built-in names (`ModelBudget.Plan.Catalog.fetch/1`), checked
      together in order; `[]` checks each built-in model alone. A folder
      without safetensors files stands for each GGUF model in it, in name
      order, a split model once (by its first split, which reads the rest).
      Defaults to `[]`.
    * `:budget` - a `:memory_budget` option (see `ModelBudget.resolve/2`),
      resolved against `:machine`. A per-device budget that lists VRAM limits
      plans for that many GPUs (a machine you may not be on); otherwise
      the machine's GPUs are used, and a `:main_gpu` or `:tensor_split`
      beyond them is refused. Defaults to `:auto`.
    * `:load` - load options for `ModelBudget.distribute/3` (`:n_gpu_layers`,
      `:split_mode`, `:tensor_split`, `:main_gpu`, `:n_ctx`, `:n_parallel`,
      `:cache_type_k`, `:cache_type_v`, `:offload_kqv`, ...). Defaults to `[]`.
    * `:machine` - a `t:machine/0` to plan for. Defaults to this machine,
      probed with `ModelBudget.system_memory/0`, `ModelBudget.devices/0` and
      `ModelBudget.gpu_status/0`.

  ## Examples

      iex> machine = %{memory: %{total: 64 * 2**30, available: 60 * 2**30, limit: 64 * 2**30}, gpus: [], gpu_status: {:unavailable, "no driver"}}
      iex> {:ok, plan} = ModelBudget.Plan.run(models: ["llama-3.1-8b", "llama-3.1-70b"], budget: %{ram: 48 * 2**30, vram: []}, machine: machine)
      iex> Enum.map(plan.models, &{&1.name, &1.fits})
      [{"Llama-3.1-8B-Instruct-Q4_K_M", true}, {"Llama-3.1-70B-Instruct-Q4_K_M", false}]
      iex> ModelBudget.Plan.exit_status(plan)
      1

      iex> ModelBudget.Plan.run(models: ["/no/such/model.gguf"])
      {:error, "/no/such/model.gguf: no such file, and not a built-in model (llama-3.1-8b, gemma-2-9b, qwen2.5-32b, mixtral-8x7b, llama-3.1-70b)"}
  """
  @spec run(keyword()) :: {:ok, t()} | {:error, String.t()}
  def run(opts \\ []) do
    opts =
      Keyword.validate!(opts, models: [], budget: :auto, load: [], machine: nil, llama_server: nil)

    machine = opts[:machine] || probe()

    with {:ok, runtime} <- runtime(opts[:load], opts[:llama_server]),
         {:ok, models} <- load_models(opts[:models]) do
      plan(models, opts, machine, runtime)
    end
  end

  # Resolved once for every model: a profile the options name, else the one
  # the given llama-server binary reports, else a native build's on this CPU.
  defp runtime(load, binary) do
    named =
      try do
        # The table's reader, which reads the older :repack as well.
        case ModelBudget.LoadOptions.read!(load).cpu_buffers do
          :auto -> nil
          profile -> profile
        end
      rescue
        # Reported by plan/4, which names the switch.
        ArgumentError -> nil
      end

    cond do
      named != nil ->
        {:ok, %{cpu_buffers: named, build: nil, from: "as asked", warning: nil}}

      binary != nil ->
        case Runtime.profile(binary) do
          {:ok, r} ->
            {:ok,
             %{
               cpu_buffers: r.cpu_buffers,
               build: r.build,
               from: "llama-server b#{r.build} (#{binary})",
               warning: build_warning(r.build)
             }}

          {:error, {:runtime_probe_failed, _, detail}} ->
            {:error, "--llama-server #{binary}: no system_info line from it (#{inspect(detail)})"}
        end

      true ->
        {:ok,
         %{
           cpu_buffers: ModelBudget.cpu_buffers(),
           build: nil,
           from: "a native llama.cpp build on this CPU",
           warning: nil
         }}
    end
  end

  defp build_warning(build) when is_integer(build) and build < @oldest_recorded_build,
    do:
      "llama.cpp build #{build} is older than the oldest recorded one (#{@oldest_recorded_build}): its buffers may differ from this estimate"

  defp build_warning(_build), do: nil

  defp probe do
    %{
      memory: ModelBudget.system_memory(),
      gpus: ModelBudget.devices(),
      gpu_status: ModelBudget.gpu_status()
    }
  end

  defp load_models([]), do: {:ok, Enum.map(Catalog.models(), &{:builtin, &1})}

  defp load_models(names) do
    with {:ok, sources} <- sources(names) do
      Enum.reduce_while(sources, {:ok, []}, fn
        {_name, {:model, model}}, {:ok, acc} ->
          {:cont, {:ok, [{:builtin, model} | acc]}}

        {path, {:path, path}}, {:ok, acc} ->
          case Model.read(path) do
            {:ok, model} -> {:cont, {:ok, [{path, model} | acc]}}
            {:error, reason} -> {:halt, {:error, "#{path}: #{read_error(reason, path)}"}}
          end
      end)
      |> case do
        {:ok, models} -> {:ok, Enum.reverse(models)}
        error -> error
      end
    end
  end

  @doc false
  # The models that paths and built-in names stand for, in order, each with
  # the name it goes by: `{name, {:model, model}}` for a built-in model,
  # `{path, {:path, path}}` for a file or folder to read (a path that exists
  # is read even when a built-in model has its name). A folder without
  # safetensors files stands for each GGUF model in it, in name order: a
  # split model once, by its first split (which reads the others); a later
  # split whose first is missing is kept, for its read to say so. The
  # cluster report (ModelBudget.Cluster.Plan) takes the same.
  @spec sources([String.t()]) ::
          {:ok, [{String.t(), {:model, Model.t()} | {:path, Path.t()}}]} | {:error, String.t()}
  def sources(names) do
    names
    |> Enum.flat_map(&expand/1)
    |> Enum.reduce_while({:ok, []}, fn name, {:ok, acc} ->
      with false <- File.exists?(name),
           {:ok, model} <- Catalog.fetch(name) do
        {:cont, {:ok, [{name, {:model, model}} | acc]}}
      else
        true ->
          {:cont, {:ok, [{name, {:path, name}} | acc]}}

        :error ->
          {:halt,
           {:error,
            "#{name}: no such file, and not a built-in model (#{Enum.join(Catalog.names(), ", ")})"}}
      end
    end)
    |> case do
      {:ok, sources} -> {:ok, Enum.reverse(sources)}
      error -> error
    end
  end

  # llama.cpp's gguf-split names: NAME-00002-of-00003.gguf.
  @split ~r/^(?<name>.+)-(?<no>\d{5})-of-(?<of>\d{5})\.gguf$/

  defp expand(name) do
    with {:ok, names} <- File.ls(name),
         false <- Enum.any?(names, &String.contains?(&1, ".safetensors")),
         [_ | _] = ggufs <- names |> Enum.filter(&String.ends_with?(&1, ".gguf")) |> Enum.sort() do
      ggufs
      |> Enum.reject(&later_split?(&1, names))
      |> Enum.map(&Path.join(name, &1))
    else
      _ -> [name]
    end
  end

  defp later_split?(name, names) do
    case Regex.named_captures(@split, name) do
      %{"no" => no, "name" => base, "of" => of} when no != "00001" ->
        "#{base}-00001-of-#{of}.gguf" in names

      _ ->
        false
    end
  end

  @doc false
  # Why the model at `path`, which exists, could not be read: one line.
  @spec read_error(Model.error(), Path.t()) :: String.t()
  def read_error({:invalid_model, message}, _path), do: message

  # The path exists, so a split GGUF that is not found is missing a split.
  def read_error(posix, path) when is_atom(posix) do
    message = posix |> :file.format_error() |> to_string()

    if posix == :enoent and Regex.match?(@split, Path.basename(path)),
      do: "one of its other splits is missing (#{message})",
      else: message
  end

  # Bad options surface from the NIFs as ArgumentError: they are the user's
  # input here, reported as a message instead of a crash.
  defp plan(models, opts, machine, runtime) do
    budget = ModelBudget.resolve_with(opts[:budget], machine.gpus, machine.memory.limit)
    named = named_gpus(opts[:budget])
    n_gpus = named || length(machine.gpus)

    with :ok <- within_gpus(opts[:load], n_gpus, named != nil),
         do: plan(models, opts, machine, runtime, {budget, n_gpus})
  rescue
    e in ArgumentError -> {:error, Exception.message(e)}
  end

  defp plan(models, opts, machine, runtime, {budget, n_gpus}) do
    load =
      opts[:load] |> Keyword.delete(:repack) |> Keyword.put(:cpu_buffers, runtime.cpu_buffers)

    together = opts[:models] != []

    {entries, _used} =
      Enum.map_reduce(models, ModelBudget.empty_usage(), fn {source, model}, used ->
        entry = entry(source, model, load, %{budget: budget, used: used, n_gpus: n_gpus})

        used =
          if together and entry.fits, do: ModelBudget.fold(used, placement(entry)), else: used

        {entry, used}
      end)

    {:ok,
     %__MODULE__{
       machine: machine,
       budget: budget,
       n_gpus: n_gpus,
       options: opts[:load],
       together: together,
       models: entries,
       runtime: runtime
     }}
  end

  # Explicit VRAM limits describe the GPUs to plan for; nil when the
  # budget lists none (the machine's are planned for).
  defp named_gpus(%{vram: vram}) when is_list(vram), do: length(vram)

  defp named_gpus(%{vram: vram}) when is_map(vram) and map_size(vram) > 0,
    do: (vram |> Map.keys() |> Enum.max()) + 1

  defp named_gpus(_option), do: nil

  # A GPU the options name must be one planned for (GPU 0, the default, is
  # ignored without GPUs, as llama.cpp ignores it): on this machine, or as
  # many as the budget lists.
  defp within_gpus(load, n_gpus, named?) do
    have =
      if named?,
        do: "--budget names #{gpus(n_gpus)}",
        else:
          "this machine has #{gpus(n_gpus)} (name them with --budget vram=... to plan for another machine)"

    main_gpu = Keyword.get(load, :main_gpu, 0)
    split = Keyword.get(load, :tensor_split, [])

    cond do
      is_integer(main_gpu) and main_gpu > 0 and main_gpu >= n_gpus ->
        {:error, "--main-gpu #{main_gpu}: #{have}"}

      is_list(split) and length(split) > n_gpus ->
        {:error, "--tensor-split #{Enum.join(split, ",")}: #{length(split)} weights, and #{have}"}

      true ->
        :ok
    end
  end

  defp gpus(1), do: "1 GPU"
  defp gpus(n), do: "#{n} GPUs"

  defp placement(entry) do
    Enum.reduce(entry.devices, ModelBudget.empty_usage(), fn
      %{device: :ram, total: total}, acc -> %{acc | ram: total}
      %{device: {:gpu, i}, total: total}, acc -> put_in(acc, [:vram, i], total)
      %{device: :total}, acc -> acc
    end)
  end

  @typedoc "Where a model is to go: the resolved budget, what it already holds, the GPU count."
  @type target :: %{
          budget: ModelBudget.budget(),
          used: ModelBudget.placement(),
          n_gpus: non_neg_integer()
        }

  @typedoc "What `search/3` finds."
  @type search :: %{
          short: [
            [
              device: device(),
              required: non_neg_integer(),
              available: non_neg_integer(),
              short_by: pos_integer()
            ]
          ],
          n_ctx: pos_integer(),
          longest_context: pos_integer() | nil,
          n_gpu_layers: non_neg_integer() | nil,
          cache_type: atom() | nil,
          cache_ram: non_neg_integer() | nil
        }

  @doc """
  The fit search: places `model` under the load options `opts` on `target`
  and searches for what would fit, each answer found by placing the model again and
  checking it (in the Rust core):

    * `:short` - every device that is short (`ModelBudget.check/3` names
      only the first), in its order, with what it is short by; `[]` when
      the model fits.
    * `:n_ctx` - the context the KV cache is sized for.
    * `:longest_context` - the largest context, up to the model's trained
      context (`:n_ctx` when the header does not say), that fits with the
      other options unchanged (a multiple of 256: llama.cpp pads the
      context); `nil` when not even one token does.
    * `:n_gpu_layers` - when the model does not fit and there are GPUs, the
      largest `n_gpu_layers` from `0` to `n_layers + 1` (which also offloads
      the output head) that fits; `nil` when none does.
    * `:cache_type` - when the model does not fit, the first of `:q8_0` and
      `:q4_0` that, as both K and V cache type, shrinks the cache and fits.
    * `:cache_ram` - when the model does not fit and has a prompt cache
      (`:cache_ram`), the largest smaller one, in whole MiB (as
      llama-server's `--cache-ram` takes it), that fits: `0` when only
      none does, `nil` when not even that fits.

  ## Examples

      iex> {:ok, model} = ModelBudget.Plan.Catalog.fetch("llama-3.1-8b")
      iex> budget = ModelBudget.resolve(%{ram: 6 * 2**30, vram: []})
      iex> target = %{budget: budget, used: ModelBudget.empty_usage(), n_gpus: 0}
      iex> %{short: [[device: :ram, required: _, available: 6442450944, short_by: _]], longest_context: n, cache_type: :q8_0} =
      ...>   ModelBudget.Plan.fit_search(model, [n_ctx: 16_384, n_parallel: 1, cache_ram: 0, repack: false], target)
      iex> {n < 16_384, rem(n, 256)}
      {true, 0}
  """
  @spec fit_search(Model.t(), keyword(), target()) :: search()
  def fit_search(model, opts, %{budget: budget, used: used, n_gpus: n_gpus}),
    do: Errors.call(Native.fit_search(model, opts, n_gpus, budget, used))

  defp entry(source, model, load, target) do
    found = fit_search(model, load, target)
    opts = Keyword.put(load, :n_ctx, found.n_ctx)
    breakdown = ModelBudget.breakdown(model, opts, target.n_gpus)

    %{
      name: model.name || Path.basename(source),
      source: source,
      model: model,
      file_type: model.file_type,
      bits_per_weight: bits_per_weight(model),
      fits: found.short == [],
      n_ctx: found.n_ctx,
      longest_context: found.longest_context,
      devices: devices(breakdown, target),
      short: Enum.map(found.short, &shortfall/1),
      suggestions: suggestions(found),
      warnings: warnings(load, model)
    }
  end

  # As llama.cpp's load log gives it: "file size = 4.58 GiB (4.89 BPW)".
  defp bits_per_weight(%{n_params: n}) when n in [0, nil], do: nil
  defp bits_per_weight(%{weight_bytes: bytes, n_params: n}), do: bytes * 8 / n

  # A context beyond the trained one: llama.cpp warns that the model may
  # not cope, and so does the report.
  defp warnings(load, %{context_length: trained}) when is_integer(trained) and trained > 0 do
    case Keyword.get(load, :n_ctx) do
      n when is_integer(n) and n > trained -> [{:n_ctx_beyond_trained, n, trained}]
      _ -> []
    end
  end

  defp warnings(_load, _model), do: []

  defp shortfall(details) do
    %{
      device: details[:device],
      required: details[:required],
      available: details[:available],
      short_by: details[:short_by]
    }
  end

  defp suggestions(%{short: []}), do: []

  defp suggestions(found) do
    [
      found.n_gpu_layers && {:n_gpu_layers, found.n_gpu_layers},
      found.longest_context && found.longest_context < found.n_ctx &&
        {:n_ctx, found.longest_context},
      found.cache_type && {:cache_type, found.cache_type},
      found.cache_ram && {:cache_ram, found.cache_ram}
    ]
    |> Enum.filter(& &1)
  end

  # Each device's share with what the budget has left there; a combined
  # budget adds a row for the pool.
  defp devices(breakdown, %{budget: budget, used: used}) do
    ram = Map.merge(breakdown.ram, %{device: :ram, available: left(budget, :ram, used)})

    gpus =
      breakdown.vram
      |> Enum.sort()
      |> Enum.map(fn {i, share} ->
        Map.merge(share, %{device: {:gpu, i}, available: left(budget, {:gpu, i}, used)})
      end)

    rows = [ram | gpus]

    case budget do
      %{mode: :combined} ->
        # The pool row adds up the rows above it, as a table's total line.
        sum = fn key -> rows |> Enum.map(& &1[key]) |> Enum.sum() end

        pool =
          Map.new(
            [:weights, :amx, :kleidiai, :repack, :kv_cache, :compute, :output] ++
              [:prompt_cache, :overhead, :total],
            &{&1, sum.(&1)}
          )
          |> Map.merge(%{device: :total, available: left(budget, :total, used)})

        rows ++ [pool]

      _ ->
        rows
    end
  end

  # Inside a combined pool a device has no limit of its own: the pool row has it.
  defp left(%{mode: :combined}, device, _used) when device != :total, do: nil
  defp left(budget, device, used), do: Errors.call(Native.available(budget, used, device))

  @doc """
  The task's exit status for a report: `0` when every model fits, `1` when
  one does not.

  ## Examples

      iex> machine = %{memory: %{total: 2**36, available: 2**36, limit: 2**36}, gpus: [], gpu_status: {:unavailable, "no driver"}}
      iex> {:ok, plan} = ModelBudget.Plan.run(models: ["gemma-2-9b"], budget: :infinity, machine: machine)
      iex> ModelBudget.Plan.exit_status(plan)
      0
  """
  @spec exit_status(t()) :: 0 | 1
  def exit_status(%__MODULE__{models: models}),
    do: if(Enum.all?(models, & &1.fits), do: 0, else: 1)

  @doc """
  The report as JSON-ready data (maps, lists, strings, integers, booleans,
  `nil`, and a float for each model's bits per weight), the shape
  `mix model_budget.plan --json` prints. Byte counts are integers (a
  suggested `cache_ram` too); an unlimited limit is `null`; a device is
  `"ram"`, `"gpu"` (with `"gpu"`: its index) or `"total"` (a combined
  budget's pool).

  ## Examples

      iex> machine = %{memory: %{total: 2**35, available: 2**34, limit: 2**35}, gpus: [], gpu_status: {:unavailable, "no driver"}}
      iex> {:ok, plan} = ModelBudget.Plan.run(models: ["llama-3.1-8b"], budget: %{ram: 2**34, vram: []}, load: [n_ctx: 8192, cache_ram: 0], machine: machine)
      iex> %{fits: true, budget: %{mode: "per_device", ram: 17179869184}, models: [%{name: "Llama-3.1-8B-Instruct-Q4_K_M", devices: [%{device: "ram"}]}]} =
      ...>   ModelBudget.Plan.to_json(plan)
  """
  @spec to_json(t()) :: map()
  def to_json(%__MODULE__{} = plan) do
    %{
      fits: exit_status(plan) == 0,
      together: plan.together,
      machine: %{
        ram: plan.machine.memory,
        gpus:
          Enum.map(plan.machine.gpus, fn g ->
            %{index: g.gpu_index, name: g.name, total: g.memory_total, free: g.memory_free}
          end),
        gpu_status:
          case plan.machine.gpu_status do
            {:ok, driver, count} -> %{available: true, driver: driver, count: count, reason: nil}
            {:unavailable, reason} -> %{available: false, driver: nil, count: 0, reason: reason}
          end
      },
      budget: budget_json(plan.budget),
      n_gpus: plan.n_gpus,
      runtime: %{plan.runtime | cpu_buffers: Atom.to_string(plan.runtime.cpu_buffers)},
      options: options_json(plan.options),
      models: Enum.map(plan.models, &entry_json/1)
    }
  end

  @doc false
  # A resolved budget as to_json/1 gives it (the cluster report's too).
  @spec budget_json(ModelBudget.budget()) :: map()
  def budget_json(%{mode: :unlimited}), do: %{mode: "unlimited"}
  def budget_json(%{mode: :combined, limit: limit}), do: %{mode: "combined", limit: limit}

  def budget_json(%{mode: :per_device, ram: ram, vram: vram}) do
    vram = if vram == :infinity, do: nil, else: Map.new(vram, fn {i, l} -> {i, limit(l)} end)
    %{mode: "per_device", ram: limit(ram), vram: vram}
  end

  defp limit(:infinity), do: nil
  defp limit(n), do: n

  # The load options as given; defaults are the core's (see ModelBudget.distribute/3).
  defp options_json(options) do
    Map.new(options, fn
      {key, value} when is_atom(value) and not is_boolean(value) and value != nil ->
        {key, Atom.to_string(value)}

      {key, value} ->
        {key, value}
    end)
  end

  defp entry_json(e) do
    m = e.model

    %{
      name: e.name,
      source: if(e.source == :builtin, do: "built-in", else: e.source),
      architecture: m.architecture,
      file_type: e.file_type,
      n_params: m.n_params,
      weight_bytes: m.weight_bytes,
      bits_per_weight: e.bits_per_weight,
      n_layers: m.n_layers,
      trained_context: m.context_length,
      fits: e.fits,
      n_ctx: e.n_ctx,
      longest_context: e.longest_context,
      devices: Enum.map(e.devices, &Map.merge(&1, device_json(&1.device))),
      short: Enum.map(e.short, &Map.merge(&1, device_json(&1.device))),
      warnings:
        Enum.map(e.warnings, fn {:n_ctx_beyond_trained, n, trained} ->
          %{warning: "n_ctx_beyond_trained", n_ctx: n, trained_context: trained}
        end),
      suggestions: %{
        n_gpu_layers: e.suggestions[:n_gpu_layers],
        n_ctx: e.suggestions[:n_ctx],
        cache_type: e.suggestions[:cache_type] && Atom.to_string(e.suggestions[:cache_type]),
        cache_ram: e.suggestions[:cache_ram]
      }
    }
    |> Map.update!(:devices, fn ds ->
      Enum.map(ds, &Map.update!(&1, :available, fn a -> limit(a) end))
    end)
  end

  @doc false
  # A device as to_json/1 gives it (`mix model_budget.ps`'s too).
  @spec device_json(device()) :: map()
  def device_json(:ram), do: %{device: "ram", gpu: nil}
  def device_json(:total), do: %{device: "total", gpu: nil}
  def device_json({:gpu, i}), do: %{device: "gpu", gpu: i}
end
