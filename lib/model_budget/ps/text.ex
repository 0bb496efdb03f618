defmodule ModelBudget.PS.Text do
  @moduledoc false
  # `mix model_budget.ps`'s report as text: a table of the models (one row
  # each, in the managers' order, then by id), then a table of the managers
  # with their usage against their budget. See the task's moduledoc for the
  # columns.

  alias ModelBudget.{Format, PS}

  @doc "The report as text, without a final newline."
  @spec render(PS.report()) :: String.t()
  def render(report) do
    models = for m <- report.managers, info <- m.models, do: {m, info}

    first =
      if models == [],
        do: "no models loaded",
        else: models_table(models)

    rest =
      cond do
        report.managers != [] -> ["", managers_table(report)]
        report.cluster != nil -> []
        true -> ["no model managers on #{Enum.join(report.nodes, ", ")}"]
      end

    Enum.join([first | rest], "\n")
  end

  @model_header ~w(MANAGER NODE ID STATUS DEVICES RESERVED MEASURED LEASES IDLE EXPIRES PROFILE)

  defp models_table(models) do
    rows =
      for {m, info} <- models do
        [
          PS.manager_text(m),
          Atom.to_string(m.node),
          PS.id_text(info.id),
          status(info),
          devices(info.placement),
          Format.bytes(PS.total(info.placement)),
          if(info.measured, do: Format.bytes(PS.total(info.measured)), else: "-"),
          Integer.to_string(info.leases),
          idle(info),
          expires(info),
          if(info.cpu_buffers, do: to_string(info.cpu_buffers), else: "-")
        ]
      end

    Format.table([@model_header | rows], left: [0, 1, 2, 3, 4, 10])
  end

  defp status(%{status: status, pinned: true}), do: "#{status}, pinned"
  defp status(%{status: status}), do: Atom.to_string(status)

  # Every device the placement puts bytes on.
  defp devices(%{ram: ram, vram: vram}) do
    parts =
      if(ram > 0, do: ["ram #{Format.bytes(ram)}"], else: []) ++
        for {gpu, bytes} <- Enum.sort(vram), bytes > 0, do: "gpu#{gpu} #{Format.bytes(bytes)}"

    if parts == [], do: "-", else: Enum.join(parts, ", ")
  end

  defp idle(%{leases: leases}) when leases > 0, do: "in use"
  defp idle(%{idle_ms: ms}), do: PS.duration(ms)

  defp expires(%{keep_alive: :infinity}), do: "never"
  # A lease stops the keep-alive's clock.
  defp expires(%{expires_in_ms: :infinity}), do: "paused"
  defp expires(%{expires_in_ms: 0}), do: "now"
  defp expires(%{expires_in_ms: ms}), do: PS.duration(ms)

  defp managers_table(report) do
    labels? = report.cluster != nil

    header =
      ["MANAGER", "NODE"] ++ if(labels?, do: ["LABELS"], else: []) ++ ["MODELS", "USED / BUDGET"]

    rows =
      for m <- report.managers do
        [PS.manager_text(m), Atom.to_string(m.node)] ++
          if(labels?, do: [labels(m.labels)], else: []) ++
          [Integer.to_string(length(m.models)), usage(m)]
      end

    left = if labels?, do: [0, 1, 2, 4], else: [0, 1, 3]
    Format.table([header | rows], left: left)
  end

  defp labels(labels) when labels in [nil, %{}], do: "-"

  defp labels(labels) do
    labels
    |> Enum.map(fn {k, v} -> "#{PS.label_text(k)}=#{PS.label_text(v)}" end)
    |> Enum.sort()
    |> Enum.join(" ")
  end

  defp usage(%{error: error}) when error != nil,
    do: "unreachable: " <> PS.reason_text(error)

  defp usage(m) do
    Enum.map_join(PS.devices(m.budget, m.usage), ", ", fn {device, used, limit} ->
      "#{device(device)} #{Format.bytes(used)} / #{Format.bytes(limit)}" <>
        case PS.percent(used, limit) do
          nil -> ""
          percent -> " (#{percent}%)"
        end
    end)
  end

  defp device({:gpu, i}), do: "gpu#{i}"
  defp device(device), do: Atom.to_string(device)
end
