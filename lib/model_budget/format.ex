defmodule ModelBudget.Format do
  @moduledoc """
  Human-readable byte counts and plain-text tables for reports.
  """

  @units [{"TiB", 2 ** 40}, {"GiB", 2 ** 30}, {"MiB", 2 ** 20}, {"KiB", 2 ** 10}]

  @doc """
  Formats a byte count with binary units, or `:infinity` as "unlimited".

  ## Examples

      iex> ModelBudget.Format.bytes(25_769_803_776)
      "24.00 GiB"

      iex> ModelBudget.Format.bytes(512)
      "512 B"

      iex> ModelBudget.Format.bytes(:infinity)
      "unlimited"
  """
  @spec bytes(non_neg_integer() | :infinity) :: String.t()
  def bytes(:infinity), do: "unlimited"

  def bytes(n) when is_integer(n) and n >= 0 do
    case Enum.find(@units, fn {_, size} -> n >= size end) do
      {unit, size} -> :erlang.float_to_binary(n / size, decimals: 2) <> " " <> unit
      nil -> "#{n} B"
    end
  end

  @doc """
  Renders rows as an aligned table: the first row is the header, text columns
  are left-aligned and the rest right-aligned.

  ## Examples

      iex> ModelBudget.Format.table([["device", "bytes"], ["ram", "1"], ["gpu 0", "100"]])
      "device  bytes\\nram         1\\ngpu 0     100"
  """
  @spec table([[String.t()]]) :: String.t()
  def table([_header | _] = rows) do
    widths =
      rows
      |> Enum.zip_with(& &1)
      |> Enum.map(fn column -> column |> Enum.map(&String.length/1) |> Enum.max() end)

    Enum.map_join(rows, "\n", fn row ->
      row
      |> Enum.zip(widths)
      |> Enum.with_index()
      |> Enum.map_join("  ", fn {{cell, width}, i} ->
        if i == 0, do: String.pad_trailing(cell, width), else: String.pad_leading(cell, width)
      end)
      |> String.trim_trailing()
    end)
  end
end
