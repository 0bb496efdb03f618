defmodule ModelBudget.PlacementFixturesTest do
  # Model-aware placement on realistic full-size shapes read from sparse GGUF
  # files, with expectations computed by hand from the architectures.
  use ExUnit.Case, async: true

  alias ModelBudget.Model
  alias ModelBudget.Test.ModelFixtures

  @gib 2 ** 30

  setup_all do
    dir =
      Path.join(System.tmp_dir!(), "model_budget_placement_#{System.unique_integer([:positive])}")

    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf!(dir) end)

    read! = fn path ->
      {:ok, model} = Model.read(path)
      model
    end

    %{
      llama: read!.(ModelFixtures.llama_gguf!(Path.join(dir, "llama.gguf"))),
      mixtral: read!.(ModelFixtures.mixtral_gguf!(Path.join(dir, "mixtral.gguf"))),
      gemma: read!.(ModelFixtures.gemma2_gguf!(Path.join(dir, "gemma2.gguf")))
    }
  end

  # One slot of 8192 tokens unless a test says otherwise.
  @one_slot [n_ctx: 8192, n_parallel: 1]

  defp kv(model, opts, n_gpus \\ 1) do
    b = ModelBudget.breakdown(model, opts ++ @one_slot, n_gpus)
    b.ram.kv_cache + Enum.sum(Enum.map(b.vram, fn {_, s} -> s.kv_cache end))
  end

  describe "KV cache sizes" do
    test "Llama-3.1-8B at 8192 tokens with an f16 cache: 1 GiB exactly", %{llama: llama} do
      b = ModelBudget.breakdown(llama, [n_ctx: 8192], 1)
      assert b.vram[0].kv_cache == @gib
      # The default context is the trained one, 131,072 (llama-server's `-c 0`).
      assert ModelBudget.breakdown(llama, [], 1).n_ctx == 131_072
    end

    test "q8_0 and q4_0 caches: 34 and 18 bytes per 32 elements", %{llama: llama} do
      # 32 layers x 8192 tokens x (K + V) x 1024 elements / 32 per block.
      assert kv(llama, cache_type_k: :q8_0, cache_type_v: :q8_0) == 32 * 8192 * 2 * 32 * 34
      assert kv(llama, cache_type_k: :q4_0, cache_type_v: :q4_0) == 32 * 8192 * 2 * 32 * 18
      assert kv(llama, cache_type_k: :q8_0) == 32 * 8192 * (32 * 34 + 1024 * 2)
    end

    test "GQA counts the 8 KV heads, not the 32 query heads", %{llama: llama} do
      mha = %{llama | n_head_kv: 32}
      assert kv(mha, []) == 4 * kv(llama, [])
    end

    test "Gemma-2's sliding-window layers hold the window plus a micro-batch", %{gemma: gemma} do
      assert gemma.sliding_window == 4096
      per_token = 2 * 8 * 256 * 2
      swa = Enum.count(gemma.sliding_window_layers, & &1)
      assert swa == 21
      # 4096 + 512 cells (already a multiple of 256) on the 21 windowed layers.
      assert kv(gemma, n_ctx: 8192) == 21 * 8192 * per_token + 21 * 4608 * per_token
      assert kv(gemma, n_ctx: 2048) == 42 * 2048 * per_token
    end

    test "Mixtral's experts change the weights, not the KV cache", %{
      mixtral: mixtral,
      llama: llama
    } do
      assert mixtral.n_experts == 8
      assert kv(mixtral, []) == kv(llama, [])
      [first | _] = mixtral.layer_bytes
      assert first > 5 * hd(llama.layer_bytes)
    end
  end

  describe "placement" do
    test "partial offload of 10 of 32 layers over 2 GPUs with tensor_split [3, 1]", %{
      llama: llama
    } do
      opts = [n_gpu_layers: 10, split_mode: :layer, tensor_split: [3, 1]] ++ @one_slot
      b = ModelBudget.breakdown(llama, opts, 2)
      layers = llama.layer_bytes
      kv_layer = div(@gib, 32)

      # The head counts as layer 32 and goes first: blocks 23..31 and the
      # head are offloaded, 23..30 on GPU 0 (j / 10 < 3/4), 31 and the head
      # on GPU 1.
      assert b.vram[0].weights == Enum.sum(Enum.slice(layers, 23..30))
      assert b.vram[1].weights == Enum.at(layers, 31) + llama.output_bytes
      assert b.vram[0].kv_cache == 8 * kv_layer
      assert b.vram[1].kv_cache == kv_layer

      # The host maps one range of the file: embeddings, rope table, 23 blocks.
      assert b.ram.weights ==
               llama.input_bytes + llama.other_bytes + Enum.sum(Enum.take(layers, 23))

      assert b.ram.kv_cache == 23 * kv_layer
      assert b.vram[0].overhead == 512 * 2 ** 20

      assert ModelBudget.distribute(llama, opts, 2).vram == %{
               0 => b.vram[0].total,
               1 => b.vram[1].total
             }
    end

    test "a partial offload is no longer charged as a full one", %{llama: llama} do
      partial = ModelBudget.distribute(llama, [n_gpu_layers: 10] ++ @one_slot, 1)
      full = ModelBudget.distribute(llama, [n_gpu_layers: 99] ++ @one_slot, 1)
      coarse = ModelBudget.distribute(llama.file_bytes, [n_gpu_layers: 10] ++ @one_slot, 1)
      assert partial.vram[0] < full.vram[0]
      assert partial.ram > full.ram
      assert coarse.vram[0] > partial.vram[0]
    end

    test "the output head is the first layer offloaded", %{llama: llama} do
      weights = fn ngl -> ModelBudget.breakdown(llama, [n_gpu_layers: ngl], 1).vram[0].weights end
      assert weights.(1) == llama.output_bytes
      assert weights.(33) - weights.(32) == hd(llama.layer_bytes)
      assert weights.(-1) == weights.(33)
    end

    test "every weight byte is placed somewhere", %{mixtral: mixtral} do
      # No extra CPU buffer: one that takes the last host tensors would end
      # the mapped range before them.
      b =
        ModelBudget.breakdown(
          mixtral,
          [n_gpu_layers: 16, split_mode: :row, tensor_split: [1, 1], cpu_buffers: :none],
          2
        )

      placed = b.ram.weights + Enum.sum(Enum.map(b.vram, fn {_, s} -> s.weights end))
      assert placed == mixtral.weight_bytes
    end
  end
end
