defmodule ModelBudget.LayoutTest do
  # Model-aware placement through the public API, on model shapes written out
  # by hand (the header reader's own fixtures are tested with it).
  use ExUnit.Case, async: true

  @mib 2 ** 20
  @layer 200 * @mib

  # Llama-3.1-8B-like: 32 blocks, 32 query heads, 8 KV heads of 128.
  @llama %{
    layer_bytes: List.duplicate(@layer, 32),
    input_bytes: 280 * @mib,
    output_bytes: 400 * @mib,
    other_bytes: 0,
    n_head: 32,
    n_head_kv: 8,
    head_dim_k: 128,
    head_dim_v: 128,
    n_embd: 4096,
    n_vocab: 128_256,
    context_length: 131_072,
    sliding_window: nil,
    sliding_window_layers: []
  }

  # One slot of 8192 tokens, no prompt cache.
  @opts [n_ctx: 8192, n_parallel: 1, cache_ram: 0]

  describe "breakdown/3" do
    test "a full offload at 8192 tokens holds 1 GiB of f16 KV on the GPU" do
      b = ModelBudget.breakdown(@llama, @opts, 1)
      assert b.n_ctx == 8192
      assert b.vram[0].kv_cache == 2 ** 30
      assert b.vram[0].weights == 32 * @layer + 400 * @mib
      assert b.vram[0].overhead == 512 * @mib
      assert b.ram.weights == 280 * @mib
      # One slot's logits on the host.
      assert b.ram.output == 128_256 * 4

      for share <- [b.ram, b.vram[0]] do
        assert share.total ==
                 share.weights + share.repack + share.kv_cache + share.compute + share.output +
                   share.prompt_cache + share.overhead
      end
    end

    test "the defaults are llama-server's: the trained context, 4 slots, an 8 GiB prompt cache" do
      b = ModelBudget.breakdown(@llama, [], 0)
      assert b.n_ctx == 131_072
      assert b.ram.kv_cache == 16 * 2 ** 30
      assert b.ram.prompt_cache == 8 * 2 ** 30
      assert b.ram.output == 4 * 128_256 * 4
    end

    test "repacked weights: their own term on the host, by CPU" do
      model = Map.put(@llama, :layer_matrices, List.duplicate(%{"Q4_K" => 150 * @mib}, 32))

      assert ModelBudget.breakdown(model, [repack: :x86_avx2] ++ @opts, 0).ram.repack ==
               32 * 150 * @mib

      assert ModelBudget.breakdown(model, [repack: false] ++ @opts, 0).ram.repack == 0
      # Without mmap the repacked copy replaces the loaded one.
      b = ModelBudget.breakdown(model, [repack: true, mmap: false] ++ @opts, 0)
      assert b.ram.weights == 280 * @mib + 32 * 50 * @mib + 400 * @mib

      assert_raise ArgumentError, ~r/invalid option :repack: expected true, false, :auto/, fn ->
        ModelBudget.breakdown(model, [repack: :sometimes], 0)
      end
    end

    test "the runtime profile: AMX before CPU_REPACK, its copies grown, and named in the result" do
      q4k = {"Q4_K", 32, 256, :matrix}
      # Rows in eights but not in 32s: AMX refuses it, CPU_REPACK takes it.
      narrow = {"Q4_K", 8, 256, :matrix}
      q6k_experts = {"Q6_K", 32, 256, :experts}

      model =
        Map.put(
          @llama,
          :layer_matrices,
          List.duplicate(%{q4k => 144 * @mib, narrow => 144, q6k_experts => 210}, 32)
        )

      amx = ModelBudget.breakdown(model, [cpu_buffers: :x86_amx] ++ @opts, 0)
      assert amx.cpu_buffers == :x86_amx
      # Q4_K grows from 144 to 148 bytes a block in AMX's layout.
      assert amx.ram.amx == 32 * 148 * @mib
      assert amx.ram.repack == 32 * 144
      assert amx.ram.kleidiai == 0

      avx2 = ModelBudget.breakdown(model, [cpu_buffers: :x86_avx2] ++ @opts, 0)

      assert {avx2.cpu_buffers, avx2.ram.amx, avx2.ram.repack} ==
               {:x86_avx2, 0, 32 * (144 * @mib + 144)}

      none = ModelBudget.breakdown(model, [cpu_buffers: :none] ++ @opts, 0)
      assert {none.ram.amx, none.ram.repack} == {0, 0}

      # :auto is this CPU's, named in the result.
      assert ModelBudget.breakdown(model, @opts, 0).cpu_buffers == ModelBudget.cpu_buffers()

      assert_raise ArgumentError,
                   ~r/invalid option :cpu_buffers: expected :auto, :none, :x86_avx2.*got: :avx512/,
                   fn -> ModelBudget.breakdown(model, [cpu_buffers: :avx512], 0) end

      assert_raise ArgumentError,
                   ~r/invalid model layer_matrices: expected a ggml type name/,
                   fn ->
                     bad =
                       Map.put(
                         @llama,
                         :layer_matrices,
                         List.duplicate(%{{"Q4_K", 3, 256, :matrix} => 1}, 32)
                       )

                     ModelBudget.breakdown(bad, @opts, 0)
                   end
    end

    test "partial offload of 10 of 32 layers over two GPUs 3:1" do
      b =
        ModelBudget.breakdown(
          @llama,
          [n_gpu_layers: 10, split_mode: :layer, tensor_split: [3, 1]] ++ @opts,
          2
        )

      # The head and blocks 23..31 are offloaded: j / 10 < 3/4 puts 23..30
      # on GPU 0, block 31 and the head on GPU 1.
      assert b.vram[0].weights == 8 * @layer
      assert b.vram[1].weights == @layer + 400 * @mib
      assert b.ram.weights == 280 * @mib + 23 * @layer
      assert b.ram.kv_cache == div(23 * 2 ** 30, 32)
    end

    test "with mmap the host maps one range of the file, in the file's order" do
      # Blocks 3 and 2 offloaded with the head; the file lists block 3
      # between blocks 0 and 1, so the host's range reaches over it.
      shuffled =
        Map.merge(@llama, %{
          layer_bytes: List.duplicate(@layer, 4),
          n_head_kv: 8,
          file_order:
            [{:input, 280 * @mib}, {0, @layer}, {3, @layer}, {1, @layer}, {2, @layer}] ++
              [{:output, 400 * @mib}]
        })

      b = ModelBudget.breakdown(shuffled, [n_gpu_layers: 3] ++ @opts, 1)
      assert b.ram.weights == 280 * @mib + 3 * @layer
      assert b.vram[0].weights == 2 * @layer + 400 * @mib
      no_mmap = ModelBudget.breakdown(shuffled, [n_gpu_layers: 3, mmap: false] ++ @opts, 1)
      assert no_mmap.ram.weights == 280 * @mib + 2 * @layer

      assert_raise ArgumentError, ~r/model file_order/, fn ->
        ModelBudget.breakdown(%{shuffled | file_order: [{:head, 1}]}, @opts, 1)
      end
    end

    test "a header keeps its file order and each block's largest matrix" do
      # Qwen2.5-7B-Instruct-Q4_K_M as published: blocks 10..13 come before
      # block 6 in the file (test/fixtures/llama_cpp_gpu_truth.json).
      {:ok, qwen} =
        ModelBudget.Model.from_gguf_header(
          File.read!("test/fixtures/llama_cpp_truth/qwen2.5-7b-Q4_K_M.gguf")
        )

      assert {:input, _} = hd(qwen.file_order)
      assert Enum.sum(Enum.map(qwen.file_order, &elem(&1, 1))) == qwen.weight_bytes
      assert length(qwen.layer_largest_matrix) == 28
      # A Q6_K ffn_down, 3584 x 18944.
      assert Enum.max(qwen.layer_largest_matrix) == div(3584 * 18944, 256) * 210

      opts = [n_gpu_layers: 15, n_ctx: 4096, n_parallel: 1, cache_ram: 0, repack: false]
      b = ModelBudget.breakdown(qwen, opts, 1)
      # llama.cpp b10357 mapped 2198.74 MiB; the host's own tensors are 2146.07.
      assert_in_delta b.ram.weights / @mib, 2198.74, 0.05
    end

    test "cache types, per-layer KV heads and sliding windows size the KV cache" do
      kv = fn model, opts -> ModelBudget.breakdown(model, opts ++ @opts, 1).vram[0].kv_cache end
      assert kv.(@llama, cache_type_k: :q8_0, cache_type_v: :q8_0) == 32 * 8192 * 2 * 32 * 34
      assert kv.(@llama, cache_type_k: :q4_0, cache_type_v: :q4_0) == 32 * 8192 * 2 * 32 * 18
      assert kv.(%{@llama | n_head_kv: 32}, []) == 4 * 2 ** 30

      assert kv.(%{@llama | n_head_kv: List.duplicate(8, 16) ++ List.duplicate(0, 16)}, []) ==
               2 ** 29

      swa = %{
        @llama
        | sliding_window: 4096,
          sliding_window_layers: Enum.map(0..31, &(rem(&1, 2) == 0))
      }

      assert kv.(swa, n_ctx: 32_768) == 16 * 32_768 * 4096 + 16 * 4608 * 4096
      # Four slots: a window each, apart or in one unified cache.
      assert kv.(swa, n_ctx: 32_768, n_parallel: 4, kv_unified: false) ==
               16 * 32_768 * 4096 + 16 * 4 * 4608 * 4096

      assert kv.(swa, n_ctx: 32_768, n_parallel: 4, kv_unified: true) ==
               16 * 32_768 * 4096 + 16 * (4 * 4096 + 512) * 4096
    end

    test "its totals are distribute/3's placement" do
      model = Map.put(@llama, :__struct__, ModelBudget.Model)

      for opts <- [
            [],
            [n_gpu_layers: 5],
            [split_mode: :row, tensor_split: [1, 2]],
            [offload_kqv: false]
          ] do
        b = ModelBudget.breakdown(model, opts, 2)
        placement = ModelBudget.distribute(model, opts, 2)
        assert placement.ram == b.ram.total
        assert placement.vram == Map.new(b.vram, fn {gpu, share} -> {gpu, share.total} end)
      end
    end

    test "bad models and options raise ArgumentError" do
      assert_raise ArgumentError,
                   ~r/invalid model: expected a model whose n_vocab is known/,
                   fn ->
                     ModelBudget.breakdown(%{@llama | n_vocab: nil}, [], 1)
                   end

      assert_raise ArgumentError, ~r/n_head_kv lists 3 layers but the model has 32/, fn ->
        ModelBudget.breakdown(%{@llama | n_head_kv: [8, 8, 8]}, [], 1)
      end

      assert_raise ArgumentError, ~r/invalid model: expected a %ModelBudget.Model{}/, fn ->
        ModelBudget.breakdown(Map.delete(@llama, :layer_bytes), [], 1)
      end

      assert_raise ArgumentError, ~r/invalid option :cache_type_k: .*got: :q3_k/, fn ->
        ModelBudget.breakdown(@llama, [cache_type_k: :q3_k], 1)
      end

      assert_raise ArgumentError, ~r/invalid option :n_ubatch/, fn ->
        ModelBudget.breakdown(@llama, [n_ubatch: 0], 1)
      end

      assert_raise ArgumentError, ~r/invalid option :flash_attn/, fn ->
        ModelBudget.breakdown(@llama, [flash_attn: :yes], 1)
      end
    end
  end

  describe "estimate/3" do
    test "weights, overhead, what is left and the KV budget" do
      e = ModelBudget.estimate(1000, 1_000_000_000, 8)
      assert e.total_system_bytes == 1000 * @mib
      assert e.model_weight_bytes == 1_000_000_000
      assert e.runtime_overhead == div(1000 * @mib, 10)
      assert e.available_bytes == 0
      assert e.kv_cache_budget == 0
    end

    test "NaN-like, negative and absurd inputs raise" do
      for {args, fragment} <- [
            {[1, 1, :nan], "invalid bits_per_weight"},
            {[1, 1, 0], "invalid bits_per_weight"},
            {[1, 1, 65.0], "invalid bits_per_weight"},
            {[-1, 1, 4], "invalid total_available_mib"},
            {[2 ** 64 - 1, 1, 4], "exceeds 2^64 bytes"},
            {[1, -1, 4], "invalid model_params"},
            {[1, 2 ** 64 - 1, 64], "exceed 2^64 bytes"},
            {[1.5, 1, 4], "invalid total_available_mib"}
          ] do
        error = assert_raise ArgumentError, fn -> apply(ModelBudget, :estimate, args) end
        assert error.message =~ fragment
      end
    end
  end

  describe "max_context_length/3 and fits_context?/3" do
    test "the longest context fits and one more token does not" do
      for budget <- [0, 1, 131_072, 2 ** 30, 2 ** 30 - 1, 123_456_789_012],
          model <- [@llama, [n_layers: 80, n_head_kv: 8, head_dim: 128]] do
        n = ModelBudget.max_context_length(budget, model, cache_type_v: :q5_1)

        if n > 0,
          do: assert(ModelBudget.fits_context?(budget, model, n_ctx: n, cache_type_v: :q5_1))

        refute ModelBudget.fits_context?(budget, model, n_ctx: n + 1, cache_type_v: :q5_1)
      end
    end

    test "a model and the same dims agree; an estimate's KV budget is used" do
      dims = [n_layers: 32, n_head_kv: 8, head_dim: 128]
      assert ModelBudget.max_context_length(2 ** 30, @llama, []) == 8192
      assert ModelBudget.max_context_length(2 ** 30, dims, []) == 8192
      est = %{kv_cache_budget: 2 ** 31}
      assert ModelBudget.max_context_length(est, dims, []) == 16_384
    end

    test "a model whose every layer is windowed fits any context" do
      swa = %{@llama | sliding_window: 4096, sliding_window_layers: List.duplicate(true, 32)}
      assert ModelBudget.max_context_length(2 ** 33, swa, []) == :infinity
      assert ModelBudget.fits_context?(2 ** 33, swa, n_ctx: 10_000_000)
    end

    test "bad arguments raise" do
      assert_raise ArgumentError, ~r/invalid model_or_dims/, fn ->
        ModelBudget.max_context_length(1, [n_layers: 1], [])
      end

      assert_raise ArgumentError, ~r/invalid model_or_dims/, fn ->
        ModelBudget.max_context_length(1, :llama, [])
      end

      assert_raise ArgumentError, ~r/invalid bytes_or_estimate/, fn ->
        ModelBudget.max_context_length(-1, [n_layers: 1, n_head_kv: 1, head_dim: 1], [])
      end

      assert_raise ArgumentError, ~r/invalid option :n_ctx/, fn ->
        ModelBudget.fits_context?(1, [n_layers: 1, n_head_kv: 1, head_dim: 1], [])
      end
    end
  end
end
