defmodule ModelBudget.Test.Safetensors do
  @moduledoc false
  # A safetensors writer: the JSON header (padded with spaces to 8 bytes, as
  # the reference writer does) and a sparse data region. Tensors are
  # {name, dtype, shape} with shape in row-major order; offsets follow the
  # given order.

  alias ModelBudget.Test.JSON

  @bits %{
    "BOOL" => 8,
    "U8" => 8,
    "I8" => 8,
    "F8_E4M3" => 8,
    "F8_E5M2" => 8,
    "F4" => 4,
    "F16" => 16,
    "BF16" => 16,
    "I16" => 16,
    "F32" => 32,
    "I32" => 32,
    "F64" => 64,
    "I64" => 64
  }

  def tensor_bytes(dtype, shape), do: div(Enum.product(shape) * Map.fetch!(@bits, dtype), 8)

  def write!(path, tensors) do
    {entries, data} =
      Enum.map_reduce(tensors, 0, fn {name, dtype, shape}, offset ->
        bytes = tensor_bytes(dtype, shape)

        entry =
          {name, {:object, [dtype: dtype, shape: shape, data_offsets: [offset, offset + bytes]]}}

        {entry, offset + bytes}
      end)

    json = JSON.encode({:object, [{"__metadata__", {:object, [format: "pt"]}} | entries]})
    json = json <> String.duplicate(" ", rem(8 - rem(byte_size(json), 8), 8))
    header = <<byte_size(json)::little-64>> <> json
    ModelBudget.Test.Sparse.write!(path, header, byte_size(header) + data)
  end

  @doc false
  # A sharded model: `shards` is a list of tensor lists; writes the shard
  # files and model.safetensors.index.json into `dir`.
  def write_sharded!(dir, shards) do
    n = length(shards)

    names =
      for {tensors, i} <- Enum.with_index(shards, 1) do
        file = "model-#{pad5(i)}-of-#{pad5(n)}.safetensors"
        write!(Path.join(dir, file), tensors)
        Enum.map(tensors, fn {name, _, _} -> {name, file} end)
      end

    total =
      shards |> Enum.concat() |> Enum.map(fn {_, d, s} -> tensor_bytes(d, s) end) |> Enum.sum()

    index =
      {:object,
       [metadata: {:object, [total_size: total]}, weight_map: {:object, Enum.concat(names)}]}

    path = Path.join(dir, "model.safetensors.index.json")
    File.write!(path, JSON.encode(index))
    path
  end

  defp pad5(i), do: String.pad_leading(Integer.to_string(i), 5, "0")
end
