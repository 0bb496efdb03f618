defmodule ModelBudget.Test.GGUF do
  @moduledoc false
  # A small GGUF writer (version 3 unless told): metadata, the tensor table
  # with offsets padded to the alignment, and a sparse data region.
  #
  # Metadata entries are {key, type, value} with type :uint8, :uint32,
  # :int32, :uint64, :float32, :bool, :string or {:array, type}. Tensors are
  # {name, dims, type} with dims in ggml order (fastest first) and type a
  # ggml type name.

  # {id, elements per block, bytes per block}, from ggml.h's type traits.
  @types %{
    "F32" => {0, 1, 4},
    "F16" => {1, 1, 2},
    "Q4_0" => {2, 32, 18},
    "Q8_0" => {8, 32, 34},
    "Q4_K" => {12, 256, 144},
    "Q5_K" => {13, 256, 176},
    "Q6_K" => {14, 256, 210},
    "IQ4_XS" => {23, 256, 136},
    "BF16" => {30, 1, 2}
  }

  @value_types %{
    uint8: 0,
    int8: 1,
    uint16: 2,
    int16: 3,
    uint32: 4,
    int32: 5,
    float32: 6,
    bool: 7,
    string: 8,
    array: 9,
    uint64: 10,
    int64: 11,
    float64: 12
  }

  def tensor_bytes(type, dims) do
    {_, block, size} = Map.fetch!(@types, type)
    div(Enum.product(dims), block) * size
  end

  @doc false
  def write!(path, metadata, tensors, opts \\ []) do
    {header, size} = build(metadata, tensors, opts)
    ModelBudget.Test.Sparse.write!(path, header, size)
  end

  # Writes a complete file: `tensors` are {name, dims, type, data} with
  # `data` the tensor's bytes (tensor_bytes(type, dims) of them), each
  # placed at its offset after the header, padded to the alignment.
  @doc false
  def write_data!(path, metadata, tensors, opts \\ []) do
    alignment = Keyword.get(opts, :alignment, 32)
    {header, size} = build(metadata, Enum.map(tensors, &Tuple.delete_at(&1, 3)), opts)

    data =
      Enum.map(tensors, fn {_name, dims, type, data} ->
        data_size = byte_size(data)
        ^data_size = tensor_bytes(type, dims)
        [data, zeros(pad(data_size, alignment) - data_size)]
      end)

    body = [header, zeros(pad(byte_size(header), alignment) - byte_size(header)), data]
    binary = IO.iodata_to_binary(body)
    # The last tensor's padding is not part of the file.
    File.write!(path, binary_part(binary, 0, size))
    path
  end

  defp zeros(n), do: <<0::size(n * 8)>>

  # The header binary and the total file size.
  def build(metadata, tensors, opts \\ []) do
    version = Keyword.get(opts, :version, 3)
    alignment = Keyword.get(opts, :alignment, 32)

    kv = Enum.map(metadata, fn {key, type, value} -> [str(key), value(type, value)] end)

    # The data section ends where the last tensor ends (no trailing padding).
    {table, {_, data_end}} =
      Enum.map_reduce(tensors, {0, 0}, fn {name, dims, type}, {offset, _} ->
        {id, _, _} = Map.fetch!(@types, type)

        entry = [
          str(name),
          <<length(dims)::little-32>>,
          Enum.map(dims, &<<&1::little-64>>),
          <<id::little-32, offset::little-64>>
        ]

        next = offset + tensor_bytes(type, dims)
        {entry, {pad(next, alignment), next}}
      end)

    header =
      IO.iodata_to_binary([
        "GGUF",
        <<version::little-32, length(tensors)::little-64, length(metadata)::little-64>>,
        kv,
        table
      ])

    {header, pad(byte_size(header), alignment) + data_end}
  end

  defp pad(n, a), do: n + a - 1 - rem(n + a - 1, a)

  defp str(s), do: [<<byte_size(s)::little-64>>, s]

  defp value(type, value) when is_atom(type),
    do: [<<Map.fetch!(@value_types, type)::little-32>>, scalar(type, value)]

  defp value({:array, type}, values) do
    [
      <<9::little-32, Map.fetch!(@value_types, type)::little-32, length(values)::little-64>>,
      Enum.map(values, &scalar(type, &1))
    ]
  end

  defp scalar(:uint8, v), do: <<v::little-8>>
  defp scalar(:uint16, v), do: <<v::little-16>>
  defp scalar(:uint32, v), do: <<v::little-32>>
  defp scalar(:int32, v), do: <<v::little-signed-32>>
  defp scalar(:uint64, v), do: <<v::little-64>>
  defp scalar(:float32, v), do: <<v::little-float-32>>
  defp scalar(:bool, v), do: <<if(v, do: 1, else: 0)>>
  defp scalar(:string, v), do: str(v)
end
