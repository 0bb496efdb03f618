defmodule ModelBudget.Backend.LlamaServer.LogTest do
  use ExUnit.Case, async: true

  alias ModelBudget.Backend.LlamaServer.Log

  doctest Log

  describe "buffer/1" do
    test "reads each kind of buffer line llama.cpp writes" do
      lines = [
        {"load_tensors:   CPU_Mapped model buffer size =    21.62 MiB", "CPU_Mapped", :model},
        {"load_tensors:   CPU_REPACK model buffer size =     3.00 MiB", "CPU_REPACK", :repack},
        {"load_tensors:        CUDA0 model buffer size =  4403.49 MiB", "CUDA0", :model},
        {"llama_kv_cache:      CUDA1 KV buffer size =   512.00 MiB", "CUDA1", :kv},
        {"llama_memory_recurrent:  CPU RS buffer size =     1.50 MiB", "CPU", :recurrent},
        {"llama_context:  CUDA_Host  output buffer size =     0.58 MiB", "CUDA_Host", :output},
        {"sched_reserve:      CUDA0 compute buffer size =   258.50 MiB", "CUDA0", :compute}
      ]

      for {line, device, kind} <- lines do
        assert %{device: ^device, kind: ^kind} = Log.buffer(line), line
      end
    end

    test "rounds the two-decimal MiB to the nearest byte" do
      assert Log.buffer("x: CPU KV buffer size = 0.01 MiB").bytes == 10_486
      assert Log.buffer("x: CPU KV buffer size = 4403.49 MiB").bytes == 4_617_393_930
      assert Log.buffer("x: CPU KV buffer size = 7 MiB").bytes == 7 * 1_048_576
    end

    test "reads lines with a log prefix, and nothing from other lines" do
      assert %{device: "CPU", kind: :compute} =
               Log.buffer("0.01.234.567 I sched_reserve:   CPU compute buffer size =   17.52 MiB")

      assert Log.buffer("llama_adapter: CPU LoRA buffer size = 1.00 MiB") == nil
      assert Log.buffer("print_info: model size = 223.25 KiB") == nil
      assert Log.buffer("") == nil
    end
  end

  describe "device/1 and measured/2" do
    test "numbered GPU backends are GPUs; host buffers are RAM" do
      assert Log.device("CUDA0") == {:gpu, 0}
      assert Log.device("ROCm12") == {:gpu, 12}
      assert Log.device("Vulkan1") == {:gpu, 1}

      for name <- ["CPU", "CPU_Mapped", "CPU_REPACK", "CUDA_Host", "Metal"] do
        assert Log.device(name) == :ram, name
      end
    end

    test "sums per device; no buffers is nothing held" do
      assert Log.measured([], nil) == %{ram: 0, vram: %{}, buffers: [], rss: nil}

      buffers = [
        %{device: "CUDA0", kind: :model, bytes: 10},
        %{device: "CUDA1", kind: :model, bytes: 20},
        %{device: "CUDA0", kind: :kv, bytes: 1},
        %{device: "CPU_Mapped", kind: :model, bytes: 3},
        %{device: "CUDA_Host", kind: :compute, bytes: 4}
      ]

      assert %{ram: 7, vram: %{0 => 11, 1 => 20}} = Log.measured(buffers, 0)
    end
  end
end
