defmodule ModelBudget.Plan.Report do
  @moduledoc """
  The text `mix model_budget.plan` prints: this machine's memory, its
  resolved `:auto` budget, and a worked example of placing models.
  """

  alias ModelBudget.Format

  @gib 2 ** 30

  # A few file sizes of common GGUF quantizations, for the worked example.
  @examples [
    {"8B model, Q4_K_M (4.9 GB file)", 4_920_734_016},
    {"32B model, Q4_K_M (19.9 GB file)", 19_851_336_192},
    {"70B model, Q4_K_M (42.5 GB file)", 42_520_394_752}
  ]

  @doc """
  The whole report for this machine as a string.
  """
  @spec machine() :: String.t()
  def machine do
    memory = ModelBudget.system_memory()
    budget = ModelBudget.resolve(:auto)

    Enum.join(
      [
        "This machine",
        Format.table([
          ["memory", "bytes"],
          ["physical", Format.bytes(memory.total)],
          ["available", Format.bytes(memory.available)],
          ["limit (cgroup-aware)", Format.bytes(memory.limit)]
        ]),
        "",
        "Resolved :auto budget: " <> describe(budget),
        "",
        worked_example(budget, 0, "on this machine"),
        "",
        worked_example(
          ModelBudget.resolve(%{ram: 32 * @gib, vram: [24 * @gib, 24 * @gib]}),
          2,
          "on a 32 GiB RAM, 2 x 24 GiB GPU box (split_mode: :layer)"
        )
      ],
      "\n"
    )
  end

  @doc """
  A one-line description of a resolved budget.

  ## Examples

      iex> ModelBudget.Plan.Report.describe(%{mode: :combined, limit: 2**30})
      "one pool of 1.00 GiB for RAM and VRAM together"
  """
  @spec describe(ModelBudget.budget()) :: String.t()
  def describe(%{mode: :unlimited}), do: "unlimited"

  def describe(%{mode: :combined, limit: limit}),
    do: "one pool of #{Format.bytes(limit)} for RAM and VRAM together"

  def describe(%{mode: :per_device, ram: ram, vram: vram}) do
    gpus =
      case vram do
        :infinity -> "unlimited VRAM"
        map when map_size(map) == 0 -> "no GPUs"
        map -> Enum.map_join(map, ", ", fn {i, l} -> "GPU #{i}: #{Format.bytes(l)}" end)
      end

    "RAM #{Format.bytes(ram)}; #{gpus}"
  end

  # Places each example model in turn (server mode, 8192 x 4 context) and
  # folds those that fit, so later rows see the memory earlier ones took.
  defp worked_example(budget, n_gpus, title) do
    opts = [split_mode: :layer]

    {rows, _used} =
      Enum.map_reduce(@examples, ModelBudget.empty_usage(), fn {name, bytes}, used ->
        placement = ModelBudget.distribute(bytes, opts, n_gpus)

        case ModelBudget.check(budget, placement, used) do
          :ok ->
            {[name | cells(placement, n_gpus)] ++ ["FITS"], ModelBudget.fold(used, placement)}

          {:error, {:insufficient_memory, details}} ->
            verdict =
              "DOES NOT FIT: #{device(details[:device])} needs #{Format.bytes(details[:required])}, " <>
                "#{Format.bytes(details[:available])} left"

            {[name | cells(placement, n_gpus)] ++ [verdict], used}
        end
      end)

    header =
      ["model " <> title, "RAM" | Enum.map(0..(n_gpus - 1)//1, &"GPU #{&1}")] ++ ["verdict"]

    Format.table([header | rows])
  end

  defp cells(placement, n_gpus) do
    [
      Format.bytes(placement.ram)
      | Enum.map(0..(n_gpus - 1)//1, &Format.bytes(Map.get(placement.vram, &1, 0)))
    ]
  end

  defp device(:total), do: "the combined pool"
  defp device(:ram), do: "RAM"
  defp device({:gpu, i}), do: "GPU #{i}"
end
