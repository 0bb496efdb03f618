defmodule ModelBudget.Test.JSON do
  @moduledoc false
  # The little JSON the test writers need (no hex packages here). Objects
  # are lists of {key, value} pairs, so their order is the caller's.

  def encode(term), do: IO.iodata_to_binary(enc(term))

  defp enc(nil), do: "null"
  defp enc(true), do: "true"
  defp enc(false), do: "false"
  defp enc(n) when is_integer(n), do: Integer.to_string(n)
  defp enc(x) when is_float(x), do: Float.to_string(x)
  defp enc(s) when is_binary(s), do: [?", escape(s), ?"]
  defp enc(a) when is_atom(a), do: enc(Atom.to_string(a))
  defp enc({:object, pairs}), do: [?{, Enum.map_intersperse(pairs, ?,, &pair/1), ?}]
  defp enc(list) when is_list(list), do: [?[, Enum.map_intersperse(list, ?,, &enc/1), ?]]

  defp pair({k, v}), do: [enc(to_string(k)), ?:, enc(v)]

  defp escape(s) do
    for <<c <- s>>, into: "" do
      case c do
        ?" -> "\\\""
        ?\\ -> "\\\\"
        c when c < 0x20 -> "\\u" <> String.pad_leading(Integer.to_string(c, 16), 4, "0")
        c -> <<c>>
      end
    end
  end
end
