defmodule ModelBudget.Backend.LlamaServer.Log do
  @moduledoc """
  Reads llama.cpp's buffer lines from a server's log, and sums them per
  device into what `ModelBudget.Backend.LlamaServer.measured/1` reports.

  llama.cpp logs every buffer it allocates when it loads a model, one line
  each, at trace verbosity (`--verbosity 4`):

      load_tensors:   CPU_Mapped model buffer size =    21.62 MiB
      llama_kv_cache:        CPU KV buffer size =     2.00 MiB
      llama_context:        CPU  output buffer size =     0.01 MiB
      sched_reserve:        CPU compute buffer size =    17.52 MiB

  The sizes are MiB with two decimals, so each is known to within 5 KiB
  (half of 0.01 MiB); they are read back as bytes rounded to the nearest.
  A buffer named after a GPU backend and its index (`CUDA0`, `ROCm1`,
  `Vulkan0`, ...) is that GPU's; every other one (`CPU`, `CPU_Mapped`,
  `CPU_REPACK`, `AMX`, `CUDA_Host`, ...) is host RAM. The extra CPU
  buffers' weights (`AMX`, `KLEIDIAI`, `*_REPACK`) are kinds of their own,
  as `ModelBudget.breakdown/3` names them.
  """

  @typedoc "One buffer llama.cpp reported."
  @type buffer :: %{
          device: String.t(),
          kind: :model | :amx | :kleidiai | :repack | :kv | :recurrent | :compute | :output,
          bytes: non_neg_integer()
        }

  @typedoc """
  What a server holds: its buffers summed per device in `t:ModelBudget.placement/0`'s
  shape, the buffers themselves in the order they were logged, and the
  process's resident memory (`nil` where it cannot be read).
  """
  @type measured :: %{
          ram: non_neg_integer(),
          vram: %{non_neg_integer() => non_neg_integer()},
          buffers: [buffer()],
          rss: non_neg_integer() | nil
        }

  @buffer_line ~r/(?<device>[A-Za-z0-9_]+)\s+(?<kind>model|KV|RS|compute|output) buffer size =\s*(?<mib>[0-9]+(?:\.[0-9]+)?) MiB/
  @gpu_device ~r/^(?:CUDA|ROCm|HIP|Vulkan|SYCL|MUSA|CANN|Metal|OpenCL)(?<index>[0-9]+)$/
  @kinds %{
    "model" => :model,
    "KV" => :kv,
    "RS" => :recurrent,
    "compute" => :compute,
    "output" => :output
  }

  # llama.cpp's extra CPU buffer types by name (ggml-cpu/amx, kleidiai).
  @extra_buffers %{"AMX" => :amx, "KLEIDIAI" => :kleidiai}

  @doc """
  The buffer a log line reports, or `nil` for any other line.

  ## Examples

      iex> ModelBudget.Backend.LlamaServer.Log.buffer("llama_kv_cache:        CPU KV buffer size =     2.00 MiB")
      %{device: "CPU", kind: :kv, bytes: 2097152}

      iex> ModelBudget.Backend.LlamaServer.Log.buffer("load_tensors:   CPU_REPACK model buffer size =     0.50 MiB")
      %{device: "CPU_REPACK", kind: :repack, bytes: 524288}

      iex> ModelBudget.Backend.LlamaServer.Log.buffer("load_tensors:          AMX model buffer size =  4491.48 MiB")
      %{device: "AMX", kind: :amx, bytes: 4709658132}

      iex> ModelBudget.Backend.LlamaServer.Log.buffer("main: server is listening on http://127.0.0.1:8080")
      nil
  """
  @spec buffer(String.t()) :: buffer() | nil
  def buffer(line) do
    case Regex.named_captures(@buffer_line, line) do
      %{"device" => device, "kind" => kind, "mib" => mib} ->
        kind =
          cond do
            kind != "model" -> Map.fetch!(@kinds, kind)
            String.ends_with?(device, "_REPACK") -> :repack
            true -> Map.get(@extra_buffers, device, :model)
          end

        %{device: device, kind: kind, bytes: mib_to_bytes(mib)}

      nil ->
        nil
    end
  end

  # Exact decimal arithmetic: "21.62" MiB is 2162 * 2^20 / 100 bytes.
  defp mib_to_bytes(mib) do
    {whole, fraction} =
      case String.split(mib, ".") do
        [whole] -> {whole, ""}
        [whole, fraction] -> {whole, fraction}
      end

    scale = Integer.pow(10, byte_size(fraction))
    hundredths = String.to_integer(whole <> fraction)
    div(hundredths * 1_048_576 * 2 + scale, 2 * scale)
  end

  @doc """
  Where a buffer lives: `{:gpu, index}` for a GPU backend's numbered
  device, `:ram` for anything else.

  ## Examples

      iex> ModelBudget.Backend.LlamaServer.Log.device("CUDA1")
      {:gpu, 1}

      iex> ModelBudget.Backend.LlamaServer.Log.device("CUDA_Host")
      :ram
  """
  @spec device(String.t()) :: :ram | {:gpu, non_neg_integer()}
  def device(name) do
    case Regex.named_captures(@gpu_device, name) do
      %{"index" => index} -> {:gpu, String.to_integer(index)}
      nil -> :ram
    end
  end

  @doc """
  Sums `buffers` (in the order logged) per device and adds `rss`.

  ## Examples

      iex> buffers = [
      ...>   %{device: "CPU", kind: :model, bytes: 100},
      ...>   %{device: "CUDA0", kind: :kv, bytes: 30},
      ...>   %{device: "CUDA0", kind: :compute, bytes: 5}
      ...> ]
      iex> ModelBudget.Backend.LlamaServer.Log.measured(buffers, 4096)
      %{ram: 100, vram: %{0 => 35}, buffers: buffers, rss: 4096}
  """
  @spec measured([buffer()], non_neg_integer() | nil) :: measured()
  def measured(buffers, rss) do
    totals =
      Enum.reduce(buffers, %{ram: 0, vram: %{}}, fn %{device: name, bytes: bytes}, acc ->
        case device(name) do
          :ram -> %{acc | ram: acc.ram + bytes}
          {:gpu, i} -> %{acc | vram: Map.update(acc.vram, i, bytes, &(&1 + bytes))}
        end
      end)

    Map.merge(totals, %{buffers: buffers, rss: rss})
  end
end
