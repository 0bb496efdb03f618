defmodule ModelBudget.Plan.Text do
  @moduledoc """
  Renders a `%ModelBudget.Plan{}` for people: the machine and its budget, a
  summary table with one line per model (its file type, parameters,
  weights, bits per weight, context and total per device), then each
  model's placement per device (weights, repacked weights, KV cache,
  compute, output, prompt cache, overhead), its verdict naming every device
  that is short and by how much, the longest context that fits, and the
  options that would make it fit.
  """

  alias ModelBudget.{Format, Plan}

  @doc """
  The report as text, ending without a newline.

  ## Options

    * `:colour` - colour the verdicts and headings with ANSI escapes (for a
      terminal). Defaults to `false`.

  ## Examples

      iex> machine = %{memory: %{total: 2**35, available: 2**34, limit: 2**35}, gpus: [], gpu_status: {:unavailable, "no driver"}}
      iex> {:ok, plan} = ModelBudget.Plan.run(models: ["llama-3.1-8b"], budget: %{ram: 4 * 2**30, vram: []}, machine: machine)
      iex> text = ModelBudget.Plan.Text.render(plan)
      iex> text =~ "Llama-3.1-8B-Instruct-Q4_K_M: DOES NOT FIT: RAM is short by"
      true
  """
  @spec render(Plan.t(), keyword()) :: String.t()
  def render(%Plan{} = plan, opts \\ []) do
    opts = Keyword.validate!(opts, colour: false)
    c = if opts[:colour], do: & &1, else: &plain/1

    [
      machine(plan, c),
      summary(plan, c)
      | Enum.map(plan.models, &model(&1, plan, c))
    ]
    |> Kernel.++([conclusion(plan, c)])
    |> Enum.join("\n\n")
  end

  # Without colour, a coloured cell is its text.
  defp plain({_ansi, text}), do: text
  defp plain(text), do: text

  defp heading(text, c), do: paint(c.({[:bright], text}))

  defp paint({ansi, text}), do: IO.iodata_to_binary(IO.ANSI.format([ansi, text], true))
  defp paint(text), do: text

  defp machine(plan, c) do
    %{memory: m, gpus: gpus, gpu_status: status} = plan.machine

    gpu_lines =
      case {status, gpus} do
        {{:unavailable, reason}, _} -> ["none (#{reason})"]
        {{:ok, driver, _}, []} -> ["none visible (driver #{driver})"]
        {{:ok, driver, _}, gpus} -> Enum.map(gpus, &gpu_line/1) ++ ["driver #{driver}"]
      end

    rows =
      [
        ["RAM", "#{b(m.total)} physical, #{b(m.available)} available, #{b(m.limit)} limit"]
        | Enum.with_index(gpu_lines, fn line, i -> [if(i == 0, do: "GPUs", else: ""), line] end)
      ] ++
        [
          ["Budget", describe(plan.budget)],
          ["Planned on", planned_on(plan) <> ", " <> runtime(plan.runtime)],
          ["Options", options(plan.options)]
        ] ++
        if(plan.runtime.warning,
          do: [["Warning", paint(c.({:yellow, plan.runtime.warning}))]],
          else: []
        )

    heading("This machine", c) <> "\n" <> Format.table(rows, left: [0, 1], indent: "  ")
  end

  defp gpu_line(g),
    do: "GPU #{g.gpu_index}: #{g.name}, #{b(g.memory_total)} total, #{b(g.memory_free)} free"

  defp planned_on(%{n_gpus: 0}), do: "RAM only"

  defp planned_on(plan) do
    gpus = if plan.n_gpus == 1, do: "1 GPU", else: "#{plan.n_gpus} GPUs"

    if plan.n_gpus == length(plan.machine.gpus),
      do: "RAM and #{gpus}",
      else: "RAM and #{gpus} (as the budget lists)"
  end

  # The extra CPU buffers, as llama.cpp names them, in its order.
  defp runtime(r) do
    buffers =
      case r.cpu_buffers do
        :none -> "no extra CPU buffers"
        :x86_amx -> "AMX, then CPU_REPACK"
        :arm_kleidiai -> "KLEIDIAI, then CPU_REPACK"
        _ -> "CPU_REPACK"
      end

    "CPU buffers #{r.cpu_buffers} (#{buffers}; #{r.from})"
  end

  # The defaults as the core's option table has them.
  defp options([]) do
    d = Map.new(ModelBudget.LoadOptions.all(), &{&1.name, &1.default})

    "llama-server's defaults (n_gpu_layers #{d.n_gpu_layers}, split_mode #{d.split_mode}, " <>
      "the trained context, #{d.n_parallel} slots sharing an #{d.cache_type_k} KV cache, " <>
      "an #{div(d.cache_ram, 2 ** 20)} MiB prompt cache)"
  end

  defp options(load) do
    Enum.map_join(load, ", ", fn
      {:tensor_split, split} -> "tensor_split #{Enum.join(split, ",")}"
      {key, value} -> "#{key} #{value}"
    end)
  end

  @doc """
  A one-line description of a resolved budget.

  ## Examples

      iex> ModelBudget.Plan.Text.describe(%{mode: :combined, limit: 2**30})
      "one pool of 1.00 GiB for RAM and VRAM together"

      iex> ModelBudget.Plan.Text.describe(%{mode: :per_device, ram: 2**34, vram: %{0 => 2**33}})
      "RAM 16.00 GiB; GPU 0: 8.00 GiB"
  """
  @spec describe(ModelBudget.budget()) :: String.t()
  def describe(%{mode: :unlimited}), do: "unlimited"

  def describe(%{mode: :combined, limit: limit}),
    do: "one pool of #{b(limit)} for RAM and VRAM together"

  def describe(%{mode: :per_device, ram: ram, vram: vram}) do
    gpus =
      case vram do
        :infinity -> "VRAM unlimited"
        map when map_size(map) == 0 -> "no GPUs"
        map -> map |> Enum.sort() |> Enum.map_join(", ", fn {i, l} -> "GPU #{i}: #{b(l)}" end)
      end

    "RAM #{b(ram)}; #{gpus}"
  end

  defp summary(plan, c) do
    title =
      if plan.together,
        do: "Models together, in order (each checked against the ones before it that fit)",
        else: "Built-in models, each on its own"

    gpus = Enum.map(0..(plan.n_gpus - 1)//1, &"GPU #{&1}")
    header = ["model", "type", "params", "weights", "BPW", "context", "RAM" | gpus] ++ ["verdict"]

    rows =
      Enum.map(plan.models, fn e ->
        on = fn device -> Enum.find(e.devices, &(&1.device == device)) end

        [
          e.name,
          e.file_type || "-",
          params(e.model.n_params),
          b(e.model.weight_bytes),
          bpw(e.bits_per_weight),
          Integer.to_string(e.n_ctx),
          b(on.(:ram).total)
          | Enum.map(0..(plan.n_gpus - 1)//1, fn i ->
              case on.({:gpu, i}) do
                nil -> "-"
                share -> b(share.total)
              end
            end)
        ] ++ [c.(verdict_cell(e, plan))]
      end)

    left = [0, 1, length(header) - 1]
    heading(title, c) <> "\n" <> Format.table([header | rows], left: left, indent: "  ")
  end

  defp verdict_cell(%{fits: true}, _plan), do: {:green, "FITS"}
  defp verdict_cell(_e, %{together: true}), do: {:red, "DOES NOT FIT (refused)"}
  defp verdict_cell(_e, _plan), do: {:red, "DOES NOT FIT"}

  defp params(n), do: :erlang.float_to_binary(n / 1.0e9, decimals: 2) <> " B"

  defp bpw(nil), do: "-"
  defp bpw(bits), do: :erlang.float_to_binary(bits, decimals: 2)

  defp model(e, plan, c) do
    verdict =
      case e do
        %{fits: true} -> paint(c.({:green, "FITS"}))
        %{short: short} -> paint(c.({:red, "DOES NOT FIT"})) <> ": " <> shortfalls(short)
      end

    [
      heading(e.name, c) <> ": " <> verdict,
      devices(e, c),
      "  " <> context(e, plan)
      | Enum.map(e.warnings, &warning(&1, c)) ++ advice(e, c)
    ]
    |> Enum.join("\n")
  end

  defp shortfalls(short) do
    Enum.map_join(short, "; ", fn s ->
      "#{device(s.device)} is short by #{b(s.short_by)} " <>
        "(needs #{b(s.required)}, #{b(s.available)} left)"
    end)
  end

  defp devices(e, c) do
    short = MapSet.new(e.short, & &1.device)

    # AMX and KleidiAI columns only where a device has such a buffer.
    extra =
      Enum.filter([amx: "AMX", kleidiai: "KleidiAI"], fn {key, _} ->
        Enum.any?(e.devices, &(&1[key] > 0))
      end)

    rows =
      Enum.map(e.devices, fn d ->
        left = if d.available, do: b(d.available), else: "-"
        available = if d.device in short, do: c.({:red, left}), else: left

        [device(d.device), b(d.weights)] ++
          Enum.map(extra, fn {key, _} -> b(d[key]) end) ++
          [b(d.repack), b(d.kv_cache), b(d.compute)] ++
          [b(d.output), b(d.prompt_cache), b(d.overhead), b(d.total), available]
      end)

    header =
      ["device", "weights"] ++
        Enum.map(extra, &elem(&1, 1)) ++
        ["repacked", "KV cache", "compute", "output"] ++
        ["prompt cache", "overhead", "total", "available"]

    Format.table([header | rows], indent: "  ")
  end

  defp context(e, plan) do
    # llama-server's defaults: 4 slots sharing one KV cache, where each slot
    # may use the whole context; separate caches divide it.
    slots =
      case {Keyword.get(plan.options, :n_parallel, 4),
            Keyword.get(plan.options, :kv_unified, true)} do
        {1, _} -> ""
        {n, true} -> " (#{n} slots sharing one KV cache)"
        {n, false} -> " (#{n} slots of #{div(e.n_ctx, n)})"
      end

    trained = if e.model.context_length, do: "; trained: #{e.model.context_length}", else: ""

    longest =
      case e.longest_context do
        nil -> "no context fits"
        n -> "the longest that fits is #{n}"
      end

    "Context #{e.n_ctx} tokens#{slots}: #{longest}#{trained}."
  end

  defp warning({:n_ctx_beyond_trained, n, trained}, c) do
    "  " <>
      paint(c.({:yellow, "Warning:"})) <>
      " --ctx #{n} is beyond the #{trained} tokens the model was trained on; " <>
      "it may not cope with a longer context."
  end

  defp advice(%{fits: true}, _c), do: []

  defp advice(%{suggestions: []}, _c),
    do: ["  No smaller context, KV cache type, prompt cache or GPU offload makes it fit."]

  defp advice(%{suggestions: suggestions}, c) do
    rows =
      Enum.map(suggestions, fn
        {:n_gpu_layers, k} ->
          [c.({:cyan, "--n-gpu-layers #{k}"}), "the most GPU layers that fit"]

        {:n_ctx, n} ->
          [c.({:cyan, "--ctx #{n}"}), "the longest context that fits"]

        {:cache_type, t} ->
          [c.({:cyan, "--cache-type-k #{t} --cache-type-v #{t}"}), "a quantized KV cache"]

        {:cache_ram, 0} ->
          [c.({:cyan, "--cache-ram 0"}), "no prompt cache"]

        {:cache_ram, bytes} ->
          [
            c.({:cyan, "--cache-ram #{div(bytes, 2 ** 20)}"}),
            "the largest prompt cache that fits"
          ]
      end)

    ["  It fits with any one of:", Format.table(rows, left: [0, 1], indent: "    ")]
  end

  defp conclusion(plan, c) do
    {fit, refused} = Enum.split_with(plan.models, & &1.fits)
    n = length(plan.models)

    text =
      cond do
        n == 1 and refused == [] ->
          "It fits."

        n == 1 ->
          "It does not fit."

        refused == [] and plan.together ->
          "All #{n} fit together."

        refused == [] ->
          "All #{n} fit."

        plan.together ->
          "#{length(fit)} of #{n} fit together; refused: #{Enum.map_join(refused, ", ", & &1.name)}."

        true ->
          "#{length(fit)} of #{n} fit."
      end

    paint(c.({if(refused == [], do: :green, else: :red), text}))
  end

  defp device(:ram), do: "RAM"
  defp device(:total), do: "total"
  defp device({:gpu, i}), do: "GPU #{i}"

  defp b(n), do: Format.bytes(n)
end
