defmodule ModelBudget.Backend.Reservation do
  @moduledoc """
  The default `ModelBudget.Backend`: admission control only, for apps that
  load models themselves. A load reserves the placement's bytes and returns
  the handle `:reserved`; an unload gives them back. Nothing is read or
  allocated.

  Sources:

    * `{:bytes, n}` - a model of `n` bytes.
    * `{:path, path}` - a model whose size is that of the regular file at
      `path`.

  ## Examples

      iex> ModelBudget.Backend.Reservation.footprint({:bytes, 4096}, [])
      {:ok, 4096}

      iex> ModelBudget.Backend.Reservation.load({:bytes, 4096}, %{ram: 4096, vram: %{}}, [])
      {:ok, :reserved}
  """

  @behaviour ModelBudget.Backend

  @doc """
  The size of `source`: `n` for `{:bytes, n}`, the file's size for
  `{:path, path}`. A path that cannot be read is `{:error, {reason, path}}`
  with `reason` a `File.stat/1` error (`:enoent`, `:eacces`, ...), or
  `:not_a_regular_file`. Any other source raises `ArgumentError`.

  ## Examples

      iex> ModelBudget.Backend.Reservation.footprint({:bytes, 0}, [])
      {:ok, 0}

      iex> ModelBudget.Backend.Reservation.footprint({:path, "/nonexistent/model.gguf"}, [])
      {:error, {:enoent, "/nonexistent/model.gguf"}}

      iex> ModelBudget.Backend.Reservation.footprint({:bytes, -1}, [])
      ** (ArgumentError) invalid source: expected {:bytes, non_neg_integer} or {:path, path}, got: {:bytes, -1}
  """
  @impl true
  @spec footprint({:bytes, non_neg_integer()} | {:path, Path.t()}, keyword()) ::
          {:ok, non_neg_integer()} | {:error, {atom(), Path.t()}}
  def footprint({:bytes, n}, _opts) when is_integer(n) and n >= 0, do: {:ok, n}

  def footprint({:path, path}, _opts) when is_binary(path) or is_list(path) do
    case File.stat(path) do
      {:ok, %File.Stat{type: :regular, size: size}} -> {:ok, size}
      {:ok, %File.Stat{}} -> {:error, {:not_a_regular_file, path}}
      {:error, reason} -> {:error, {reason, path}}
    end
  end

  def footprint(source, _opts) do
    raise ArgumentError,
          "invalid source: expected {:bytes, non_neg_integer} or {:path, path}, got: " <>
            inspect(source)
  end

  @doc """
  Reserves nothing beyond the manager's ledger: returns `{:ok, :reserved}`.

  ## Examples

      iex> ModelBudget.Backend.Reservation.load({:path, "model.gguf"}, %{ram: 0, vram: %{0 => 10}}, [])
      {:ok, :reserved}
  """
  @impl true
  @spec load(term(), ModelBudget.placement(), keyword()) :: {:ok, :reserved}
  def load(_source, _placement, _opts), do: {:ok, :reserved}

  @doc """
  Nothing to free: returns `:ok`.

  ## Examples

      iex> ModelBudget.Backend.Reservation.unload(:reserved)
      :ok
  """
  @impl true
  @spec unload(term()) :: :ok
  def unload(_handle), do: :ok
end
