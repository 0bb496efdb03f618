defmodule ModelBudget.Test.Sparse do
  @moduledoc false
  # Writes `header` and extends the file to `size` bytes without writing
  # the rest: the data region is a hole, so a 40 GB model costs a few MB.

  def write!(path, header, size) when size >= byte_size(header) do
    {:ok, file} = File.open(path, [:write, :binary, :raw])
    :ok = IO.binwrite(file, header)
    {:ok, _} = :file.position(file, size)
    :ok = :file.truncate(file)
    :ok = File.close(file)
    path
  end
end
