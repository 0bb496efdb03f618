defmodule ModelBudget.Backend.Reservation do
  @moduledoc """
  The default `ModelBudget.Backend`: admission control only, for apps that
  load models themselves. A load reserves the placement's bytes and returns
  the handle `:reserved`; an unload gives them back. Nothing is read or
  allocated.

  Sources:

    * `{:bytes, n}` - a model of `n` bytes, placed by the conservative
      byte-count path of `ModelBudget.distribute/3`.
    * `{:path, path}` - a model file. A GGUF file (`.gguf`), a safetensors
      model (`.safetensors`, a `model.safetensors.index.json`, or a folder
      holding either) is read with `ModelBudget.Model.read/1` and placed layer
      by layer; any other regular file (ONNX, say) counts as its size.
    * `{:model, %ModelBudget.Model{}}` - a model header already read.

  ## Examples

      iex> ModelBudget.Backend.Reservation.footprint({:bytes, 4096}, [])
      {:ok, 4096}

      iex> ModelBudget.Backend.Reservation.load({:bytes, 4096}, %{ram: 4096, vram: %{}}, [])
      {:ok, :reserved}
  """

  @behaviour ModelBudget.Backend

  @doc """
  What `source` needs: `n` for `{:bytes, n}`; the `%ModelBudget.Model{}`
  read from a model file's header, or the size of any other file, for
  `{:path, path}`; the model itself for `{:model, model}`.

  A path that cannot be read is `{:error, {reason, path}}` with `reason` a
  `File`-style error (`:enoent`, `:eacces`, ...), `:not_a_regular_file`, or
  `{:invalid_model, why}` for a malformed model file. Any other source raises
  `ArgumentError`.

  ## Examples

      iex> ModelBudget.Backend.Reservation.footprint({:bytes, 0}, [])
      {:ok, 0}

      iex> ModelBudget.Backend.Reservation.footprint({:path, "/nonexistent/model.gguf"}, [])
      {:error, {:enoent, "/nonexistent/model.gguf"}}

      iex> ModelBudget.Backend.Reservation.footprint({:bytes, -1}, [])
      ** (ArgumentError) invalid source: expected {:bytes, non_neg_integer}, {:path, path} or {:model, %ModelBudget.Model{}}, got: {:bytes, -1}
  """
  @impl true
  @spec footprint(
          {:bytes, non_neg_integer()} | {:path, Path.t()} | {:model, ModelBudget.Model.t()},
          keyword()
        ) :: {:ok, non_neg_integer() | ModelBudget.Model.t()} | {:error, {term(), Path.t()}}
  def footprint({:bytes, n}, _opts) when is_integer(n) and n >= 0, do: {:ok, n}
  def footprint({:model, %ModelBudget.Model{} = model}, _opts), do: {:ok, model}

  def footprint({:path, path}, _opts) when is_binary(path) or is_list(path) do
    path = IO.chardata_to_string(path)

    case File.stat(path) do
      {:ok, %File.Stat{type: type} = stat} when type in [:regular, :directory] ->
        if type == :directory or model_file?(path), do: header(path), else: {:ok, stat.size}

      {:ok, %File.Stat{}} ->
        {:error, {:not_a_regular_file, path}}

      {:error, reason} ->
        {:error, {reason, path}}
    end
  end

  def footprint(source, _opts) do
    raise ArgumentError,
          "invalid source: expected {:bytes, non_neg_integer}, {:path, path} or " <>
            "{:model, %ModelBudget.Model{}}, got: " <> inspect(source)
  end

  defp model_file?(path), do: Path.extname(path) in [".gguf", ".safetensors", ".json"]

  defp header(path) do
    case ModelBudget.Model.read(path) do
      {:ok, model} -> {:ok, model}
      {:error, reason} -> {:error, {reason, path}}
    end
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
  `true`: a load and an unload here start and wait for nothing, so the
  manager calls them in its own step, without a task.

  ## Examples

      iex> ModelBudget.Backend.Reservation.inline?()
      true
  """
  @impl true
  @spec inline?() :: true
  def inline?, do: true

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
