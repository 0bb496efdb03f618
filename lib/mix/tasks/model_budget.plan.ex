defmodule Mix.Tasks.ModelBudget.Plan do
  @shortdoc "What can this machine serve, and how? Fits models into RAM and GPUs"
  @moduledoc """
  Answers "what can this machine serve, and how?".

      mix model_budget.plan [PATH | NAME ...] [options]

  Without arguments it shows this machine (RAM: physical, available and the
  container limit; each GPU: name, total and free memory), the resolved
  `:auto` budget, and for each built-in model shape
  (`ModelBudget.Plan.Catalog`: Llama-3.1-8B, Gemma-2-9B, Qwen2.5-32B,
  Mixtral-8x7B and Llama-3.1-70B at Q4_K_M), checked on its own: whether it
  fits, where it would go (per device: weights, KV cache, compute buffers,
  overhead) and the longest context that fits.

  With PATHs (GGUF files, safetensors files, index files or folders; or the
  names of built-in models) it reads each model's header and checks them
  together, in order, as a model manager would load them: each model is
  checked against what the ones before it that fit already hold, and the
  report says which would be refused. A file is told by its first bytes,
  not its name: one that is neither GGUF nor safetensors is bad input that
  says so. A folder of safetensors files is one model; a folder of GGUF
  files stands for each model in it, in name order, a model split by
  gguf-split (`NAME-00001-of-00003.gguf`, ...) once, by its first split.

  The summary has one line per model: its file type (the GGUF header's
  `general.file_type`, as llama.cpp names it: `Q4_K_M`, ...; `-` when the
  header does not say), parameters, weights and bits per weight (`BPW`:
  the weights' bytes x 8 / parameters, as llama.cpp reports it), context
  and what each device would hold.

  For a model that does not fit, the verdict names every device that is
  short and by how much, and lists the changes that would make it fit, each
  found by placing the model again: the most GPU layers that fit, the
  longest context that fits, a quantized KV cache (`q8_0`, else `q4_0`),
  and the largest prompt cache (`--cache-ram`) that fits when the prompt
  cache is what does not.

  ## Options

  The load options are llama-server's own flags (`--n-gpu-layers`,
  `--split-mode`, `--tensor-split`, `--main-gpu`, `--ctx-size`,
  `--parallel`, `--cache-type-k`, `--cache-type-v`, `--kv-offload`,
  `--flash-attn on|off|auto`, `--batch-size`, `--ubatch-size`,
  `--kv-unified`, `--mmap`, `--cache-ram MIB`, `--repack`; each boolean
  also as `--no-...`), with llama.cpp's short spellings (`-ngl`, `-c`,
  `-ts`, `-ctk`, ...). `mix model_budget.plan --help` lists each with its
  values and default, from `ModelBudget.LoadOptions`, the core's one table
  of them. Beyond the table:

    * `--tensor-split` with more weights than GPUs, or a `--main-gpu` this
      machine does not have, is bad input, unless `--budget` lists VRAM
      for it (planning for another machine).
    * `--cpu-buffers P` - the runtime profile: which extra CPU buffers the
      llama.cpp build copies weights into (`x86_amx`: AMX then CPU_REPACK;
      `x86_avx512`, `x86_avx2`, `arm_dotprod`: CPU_REPACK; `arm_kleidiai`;
      `none`). Defaults to `auto`: what the `--llama-server` binary
      reports, else a native build on this CPU. The "Planned on" line
      names the profile used. `--no-repack` is `--cpu-buffers none`.
    * `--llama-server PATH` - ask this `llama-server` binary which extra CPU
      buffers it uses here (it is started once, on an empty file, and exits
      at once); a build older than the oldest recorded truth is warned of.
    * `--budget B` - `auto` (80% of RAM, each GPU's free memory), `unlimited`,
      one pool such as `48GiB`, or per device `ram=64GiB,vram=24GiB:24GiB`
      (`auto` and `unlimited` allowed per part, `vram=none` for no GPUs; a
      part left out is `auto`). Listing VRAM limits plans for that many
      GPUs, so you can ask about a machine you are not on. Defaults to `auto`.
    * `--json` - print the report as JSON (see `ModelBudget.Plan.to_json/1`).
    * `--help`, `-h` - print this usage.

  A `--ctx-size` beyond a model's trained context gets a warning (as llama.cpp
  gives one), and a "fits with `--ctx N`" suggestion never goes beyond the
  trained context.

  Colour is used only when standard output is a terminal.

  ## A cluster

  `mix model_budget.plan --cluster NAME [MODEL ...]` (with `--connect NODE`
  to reach the cluster) prints the members of the `ModelBudget.Cluster` NAME
  and the member each model would go to, as `ModelBudget.Cluster.load/4`
  ranks them. It waits (`--wait MS`, default 3000) until it has the view
  of every member of every node the `--connect` nodes reach, and takes the
  load options above (and `--json`), applied as the members' backends size
  each model; not `--budget` or `--llama-server`, which are each member's
  own. `--cluster NAME --help` lists its options.

  ## Exit status

    * `0` - every model fits.
    * `1` - a model does not fit.
    * `2` - bad input: an unknown option or value, a file that cannot be
      read or is not a model, an option the machine cannot honour (a GPU it
      does not have). One line on standard error, and no report.
  """
  use Mix.Task

  alias ModelBudget.Native.Errors
  alias ModelBudget.Plan

  @impl true
  def run(args) do
    Mix.Task.run("app.start")

    case main(args, colour?()) do
      0 -> :ok
      status -> exit({:shutdown, status})
    end
  end

  @doc false
  # Prints the report (or the error, or the usage) and returns the exit status.
  def main(args, colour) do
    cluster? = Enum.any?(args, &String.starts_with?(&1, "--cluster"))

    cond do
      # A cluster's members and placements (issue 16): its own options.
      cluster? and Enum.any?(args, &(&1 in ["--help", "-h"])) ->
        IO.puts(ModelBudget.Cluster.Plan.usage())
        0

      cluster? ->
        ModelBudget.Cluster.Plan.main(args)

      Enum.any?(args, &(&1 in ["--help", "-h"])) ->
        IO.puts(usage())
        0

      true ->
        report(args, colour)
    end
  end

  # What `mix help model_budget.plan` prints, and the load options' table.
  defp usage do
    "mix model_budget.plan\n\n" <>
      Mix.Task.moduledoc(__MODULE__) <> "\n## Load options\n\n" <> Plan.Args.options_help()
  end

  defp report(args, colour) do
    with {:ok, %{plan: opts, json: json}} <- Plan.Args.parse(args),
         {:ok, plan} <- Errors.with_names(Plan.Args.switch_names(), fn -> Plan.run(opts) end) do
      output =
        if json,
          do: ModelBudget.JSON.encode!(Plan.to_json(plan), pretty: true),
          else: Plan.Text.render(plan, colour: colour)

      IO.puts(output)
      Plan.exit_status(plan)
    else
      {:error, message} ->
        IO.puts(:stderr, "mix model_budget.plan: " <> message)
        2
    end
  end

  # Colour only when this process writes to the VM's own standard output
  # (not captured) and that is a terminal, which IO.ANSI.enabled?/0 tells.
  defp colour? do
    IO.ANSI.enabled?() and Process.group_leader() == Process.whereis(:user)
  end
end
