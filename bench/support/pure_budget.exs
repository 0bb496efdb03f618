defmodule Bench.PureBudget do
  @moduledoc """
  A straightforward pure-Elixir implementation of the budget contract
  (`check/3`, `distribute/3` on a byte count, `fold/2`, `release/2`,
  `resolve/2`), the baseline `bench/budget.exs` times the NIF against. It
  validates its input with guards, as a library function would, and raises
  `ArgumentError` on bad input; it is not used by the library.
  """

  defguardp is_bytes(n) when is_integer(n) and n >= 0

  # -- check/3 ---------------------------------------------------------------

  def check(%{mode: :unlimited}, %{ram: r, vram: v}, %{ram: ur, vram: uv})
      when is_bytes(r) and is_map(v) and is_bytes(ur) and is_map(uv),
      do: :ok

  def check(%{mode: :combined, limit: limit}, %{ram: r, vram: v}, %{ram: ur, vram: uv})
      when is_bytes(limit) and is_bytes(r) and is_map(v) and is_bytes(ur) and is_map(uv) do
    required = total(r, v)
    available = max(limit - total(ur, uv), 0)
    if required > available, do: short(:total, required, available), else: :ok
  end

  def check(%{mode: :per_device, ram: ram, vram: vram}, %{ram: r, vram: v}, %{ram: ur, vram: uv})
      when is_bytes(r) and is_map(v) and is_bytes(ur) and is_map(uv) do
    with :ok <- within(ram, :ram, r, ur) do
      v |> Enum.sort() |> check_gpus(vram, uv)
    end
  end

  def check(budget, _, _), do: raise(ArgumentError, "invalid budget: #{inspect(budget)}")

  defp check_gpus([], _vram, _uv), do: :ok

  defp check_gpus([{gpu, bytes} | rest], vram, uv) when is_bytes(bytes) do
    limit = if vram == :infinity, do: :infinity, else: Map.get(vram, gpu, :infinity)

    with :ok <- within(limit, {:gpu, gpu}, bytes, Map.get(uv, gpu, 0)) do
      check_gpus(rest, vram, uv)
    end
  end

  defp within(:infinity, _device, _required, _used), do: :ok

  defp within(limit, device, required, used) when is_bytes(limit) do
    available = max(limit - used, 0)
    if required > available, do: short(device, required, available), else: :ok
  end

  defp short(device, required, available),
    do:
      {:error, {:insufficient_memory, [device: device, required: required, available: available]}}

  defp total(ram, vram),
    do: Enum.reduce(vram, ram, fn {_, b}, acc when is_bytes(b) -> acc + b end)

  # -- fold/2 and release/2 ----------------------------------------------------

  def fold(%{ram: ur, vram: uv}, %{ram: r, vram: v})
      when is_bytes(ur) and is_map(uv) and is_bytes(r) and is_map(v) do
    vram =
      Enum.reduce(v, uv, fn
        {_gpu, 0}, acc -> acc
        {gpu, b}, acc when is_bytes(b) -> Map.update(acc, gpu, b, &(&1 + b))
      end)

    %{ram: ur + r, vram: vram}
  end

  def release(%{ram: ur, vram: uv}, %{ram: r, vram: v})
      when is_bytes(ur) and is_map(uv) and is_bytes(r) and is_map(v) do
    if r > ur, do: raise(ArgumentError, "invalid placement: releases #{r} bytes of RAM")

    vram =
      Enum.reduce(v, uv, fn {gpu, b}, acc when is_bytes(b) ->
        case Map.get(acc, gpu, 0) - b do
          left when left < 0 -> raise ArgumentError, "invalid placement: GPU #{gpu}"
          0 -> Map.delete(acc, gpu)
          left -> Map.put(acc, gpu, left)
        end
      end)

    %{ram: ur - r, vram: vram}
  end

  # -- resolve/2 -------------------------------------------------------------

  def resolve(nil, _gpus), do: %{mode: :unlimited}
  def resolve(:infinity, _gpus), do: %{mode: :unlimited}
  def resolve(n, _gpus) when is_integer(n) and n > 0, do: %{mode: :combined, limit: n}
  def resolve(:auto, gpus), do: resolve(%{ram: :auto, vram: :auto}, gpus)

  def resolve(%{ram: ram, vram: vram} = spec, gpus) when map_size(spec) == 2,
    do: %{mode: :per_device, ram: resolve_ram(ram), vram: resolve_vram(vram, gpus)}

  def resolve(spec, _gpus), do: raise(ArgumentError, "invalid memory budget: #{inspect(spec)}")

  defp resolve_ram(nil), do: :infinity
  defp resolve_ram(:infinity), do: :infinity
  defp resolve_ram(:auto), do: div(memory_limit() * 80, 100)
  defp resolve_ram(n) when is_bytes(n), do: n

  defp resolve_vram(nil, _), do: :infinity
  defp resolve_vram(:infinity, _), do: :infinity

  defp resolve_vram(:auto, gpus),
    do:
      Map.new(gpus, fn %{gpu_index: i, memory_free: f} when is_bytes(i) and is_bytes(f) ->
        {i, f}
      end)

  defp resolve_vram(list, _) when is_list(list),
    do: list |> Enum.with_index() |> Map.new(fn {limit, i} -> {i, limit!(limit)} end)

  defp resolve_vram(map, _) when is_map(map),
    do: Map.new(map, fn {i, limit} when is_bytes(i) -> {i, limit!(limit)} end)

  defp limit!(:infinity), do: :infinity
  defp limit!(n) when is_bytes(n), do: n

  # What a pure-Elixir :auto reads: MemTotal from /proc/meminfo, every call.
  defp memory_limit do
    "/proc/meminfo"
    |> File.read!()
    |> String.split("\n")
    |> Enum.find_value(fn
      "MemTotal:" <> rest ->
        rest |> String.trim() |> String.trim_trailing(" kB") |> String.to_integer()

      _ ->
        nil
    end)
    |> Kernel.*(1024)
  end

  # -- distribute/3 (byte count) -------------------------------------------------

  def distribute(file_bytes, opts, n_gpus)
      when is_bytes(file_bytes) and is_list(opts) and is_bytes(n_gpus) do
    kv =
      if Keyword.get(opts, :mode, :server) == :direct,
        do: 0,
        else: Keyword.get(opts, :n_ctx, 32_768) * Keyword.get(opts, :kv_bytes_per_token, 2048)

    total = file_bytes + kv

    if n_gpus == 0 or Keyword.get(opts, :n_gpu_layers, 99) == 0 do
      %{ram: total, vram: %{}}
    else
      {on_gpus, in_ram} =
        if Keyword.get(opts, :offload_kqv, true), do: {total, 0}, else: {file_bytes, kv}

      %{ram: in_ram, vram: spread(on_gpus, opts, n_gpus)}
    end
  end

  defp spread(bytes, opts, n_gpus) do
    case Keyword.get(opts, :split_mode, :none) do
      :none ->
        nonzero(%{Keyword.get(opts, :main_gpu, 0) => bytes})

      mode when mode in [:layer, :row] ->
        weights =
          case Keyword.get(opts, :tensor_split, []) do
            [] -> List.duplicate(1, n_gpus)
            w -> w ++ List.duplicate(0, n_gpus - length(w))
          end

        bytes
        |> apportion(weights)
        |> Enum.with_index()
        |> Map.new(fn {b, i} -> {i, b} end)
        |> nonzero()
    end
  end

  # Largest remainder over integer weights (the bench uses integer splits).
  defp apportion(total, weights) do
    sum = Enum.sum(weights)
    parts = Enum.map(weights, &{div(total * &1, sum), rem(total * &1, sum)})
    left = total - Enum.reduce(parts, 0, fn {s, _}, acc -> acc + s end)

    bonus =
      parts
      |> Enum.with_index()
      |> Enum.sort_by(fn {{_, r}, i} -> {-r, i} end)
      |> Enum.take(left)
      |> MapSet.new(fn {_, i} -> i end)

    parts
    |> Enum.with_index()
    |> Enum.map(fn {{s, _}, i} -> if i in bonus, do: s + 1, else: s end)
  end

  defp nonzero(map), do: :maps.filter(fn _, b -> b > 0 end, map)
end
