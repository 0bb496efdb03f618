defmodule ModelBudget.Format do
  @moduledoc """
  Human-readable byte counts and plain-text tables for reports.
  """

  require ModelBudget.Native.Errors, as: Errors

  @units [{"TiB", 2 ** 40}, {"GiB", 2 ** 30}, {"MiB", 2 ** 20}, {"KiB", 2 ** 10}]

  @doc """
  Reads a byte count written with an optional unit, the way constraint
  expressions write byte literals: `KB`, `MB`, `GB`, `TB` are powers of
  1000, `KiB`, `MiB`, `GiB`, `TiB` powers of 1024, in any case; a decimal
  fraction is allowed and a fraction of a byte dropped. No spaces.

  ## Examples

      iex> ModelBudget.Format.parse_bytes("24GiB")
      {:ok, 25769803776}

      iex> ModelBudget.Format.parse_bytes("1.5gb")
      {:ok, 1500000000}

      iex> ModelBudget.Format.parse_bytes("24 GiB")
      {:error, "invalid size: expected a byte count such as 24GiB, 1.5GB or 512 (units: KB, MB, GB, TB, KiB, MiB, GiB, TiB), got: \\"24 GiB\\""}
  """
  @spec parse_bytes(String.t()) :: {:ok, non_neg_integer()} | {:error, String.t()}
  def parse_bytes(text), do: Errors.call(ModelBudget.Native.plan_parse_size(text))

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

  def bytes(other) do
    raise ArgumentError,
          "invalid bytes: expected a non-negative integer or :infinity, got: #{inspect(other)}"
  end

  @typedoc "A table cell: text, or text with the ANSI colour to print it in."
  @type cell :: String.t() | {IO.ANSI.ansidata(), String.t()}

  @doc """
  Renders rows as an aligned table: the first row is the header, text columns
  are left-aligned and the rest right-aligned. A cell may be `{ansi, text}`:
  it is padded by its text's width and printed in that colour.

  ## Options

    * `:left` - the indices of left-aligned columns. Defaults to `[0]`.
    * `:indent` - put before every line. Defaults to `""`.

  ## Examples

      iex> ModelBudget.Format.table([["device", "bytes"], ["ram", "1"], ["gpu 0", "100"]])
      "device  bytes\\nram         1\\ngpu 0     100"

      iex> ModelBudget.Format.table([["a", "b"], ["xyz", {:red, "!"}]], left: [0, 1], indent: "  ")
      "  a    b\\n  xyz  \\e[31m!\\e[0m"
  """
  @spec table([[cell()]], keyword()) :: String.t()
  def table([_header | _] = rows, opts \\ []) do
    opts = Keyword.validate!(opts, left: [0], indent: "")

    widths =
      rows
      |> Enum.zip_with(& &1)
      |> Enum.map(fn column -> column |> Enum.map(&String.length(text(&1))) |> Enum.max() end)

    Enum.map_join(rows, "\n", fn row ->
      line =
        row
        |> Enum.zip(widths)
        |> Enum.with_index()
        |> Enum.map_join("  ", fn {{cell, width}, i} ->
          gap = String.duplicate(" ", width - String.length(text(cell)))
          if i in opts[:left], do: paint(cell) <> gap, else: gap <> paint(cell)
        end)

      opts[:indent] <> String.trim_trailing(line)
    end)
  end

  defp text({_ansi, text}), do: text
  defp text(text), do: text

  defp paint({ansi, text}), do: IO.iodata_to_binary(IO.ANSI.format([ansi, text], true))
  defp paint(text), do: text
end
