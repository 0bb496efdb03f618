defmodule ModelBudget.ModelManager.Measured do
  @moduledoc false
  # What a backend measured a loaded model to hold (its optional
  # `c:ModelBudget.Backend.measured/1`) against what the manager reserved:
  # asked in the load task, right after the backend's load, so the manager
  # never waits on a backend; compared in the manager.

  @doc """
  Runs in the load task: the backend's load (with the manager's `decision`
  where it takes one), then what the model holds if the backend reports
  it. Returns `{:measured, measured_or_nil, result}` with `result` what the
  backend's load returned.
  """
  @spec load(module(), term(), ModelBudget.placement(), keyword(), map() | nil) ::
          {:measured, map() | nil, term()}
  def load(backend, source, placement, opts, decision \\ nil) do
    result = ModelBudget.Backend.call_load(backend, source, placement, opts, decision)

    measured =
      with {:ok, handle} <- result,
           true <- function_exported?(backend, :measured, 1),
           {:ok, %{ram: ram, vram: vram} = measured} when is_integer(ram) and is_map(vram) <-
             backend.measured(handle) do
        measured
      else
        _ -> nil
      end

    {:measured, measured, result}
  end

  @doc """
  Splits a load task's outcome into what was measured (or `nil`) and the
  backend's own outcome, as if it had run alone.
  """
  @spec unwrap({:ok, term()} | {:exit, term()}) :: {map() | nil, {:ok, term()} | {:exit, term()}}
  def unwrap({:ok, {:measured, measured, result}}), do: {measured, {:ok, result}}
  def unwrap(outcome), do: {nil, outcome}

  @doc """
  Compares `measured` with the reserved `placement`, device by device (RAM
  and every GPU either names). Returns the placement raised to the measured
  bytes where they exceed it, the devices raised as `{device, measured,
  reserved}`, and the largest error `measured - reserved` by magnitude
  (signed: positive when the backend holds more than was reserved).
  """
  @spec compare(ModelBudget.placement(), map()) ::
          {ModelBudget.placement(),
           [{ModelBudget.device(), non_neg_integer(), non_neg_integer()}], integer()}
  def compare(placement, measured) do
    gpus = Enum.sort(Enum.uniq(Map.keys(placement.vram) ++ Map.keys(measured.vram)))

    pairs =
      [{:ram, measured.ram, placement.ram}] ++
        for(
          i <- gpus,
          do: {{:gpu, i}, Map.get(measured.vram, i, 0), Map.get(placement.vram, i, 0)}
        )

    raised = for {device, got, reserved} <- pairs, got > reserved, do: {device, got, reserved}

    placement =
      Enum.reduce(raised, placement, fn
        {:ram, got, _}, acc -> %{acc | ram: got}
        {{:gpu, i}, got, _}, acc -> %{acc | vram: Map.put(acc.vram, i, got)}
      end)

    error =
      pairs
      |> Enum.map(fn {_, got, reserved} -> got - reserved end)
      |> Enum.max_by(&abs/1)

    {placement, raised, error}
  end

  @doc """
  Whether a device's measured bytes are beyond the estimate's calibration
  bounds: more than 2% above what was reserved (the calibration holds
  totals to at most 2% below llama.cpp's), and more than the 5 KiB a
  log's rounding leaves.
  """
  @spec beyond_bounds?({ModelBudget.device(), non_neg_integer(), non_neg_integer()}) ::
          boolean()
  def beyond_bounds?({_device, got, reserved}),
    do: got - reserved > 5_243 and got * 100 > reserved * 102

  @doc "The warning for a raised reservation: both figures per device."
  @spec describe([{ModelBudget.device(), non_neg_integer(), non_neg_integer()}]) :: String.t()
  def describe(raised) do
    Enum.map_join(raised, "; ", fn {device, got, reserved} ->
      where = if device == :ram, do: "in :ram", else: "on #{inspect(device)}"

      "measured #{got} bytes #{where}, #{got - reserved} more than the #{reserved} reserved"
    end)
  end
end
