defmodule ModelBudget.Test.PlanFixtures do
  @moduledoc false
  # Small model files for the plan task's tests (a few hundred KB, written
  # in full), and machines to plan for.

  alias ModelBudget.Test.{GGUF, JSON, Safetensors}

  @gib 2 ** 30

  @doc """
  A two-block Llama-like GGUF, Q8_0 matrices and F32 norms: 256 wide, 4
  heads of 64 with 2 KV heads, a 1000-token vocabulary, 4096 trained
  context. Returns the path and its exact byte layout.
  """
  def tiny_gguf!(path, name \\ "Tiny Llama") do
    %{blocks: blocks, input: input, output: output} = tiny_tensors()
    GGUF.write!(path, tiny_metadata(name), input ++ List.flatten(blocks) ++ output)

    sum = fn tensors ->
      tensors |> Enum.map(fn {_, d, t} -> GGUF.tensor_bytes(t, d) end) |> Enum.sum()
    end

    %{
      path: path,
      layer_bytes: Enum.map(blocks, sum),
      input_bytes: sum.(input),
      output_bytes: sum.(output)
    }
  end

  @doc """
  `tiny_gguf!/2`'s model split in two as gguf-split does, into
  `dir/NAME-00001-of-00002.gguf` and `-00002-`: the metadata (a Q8_0 file
  type) in the first, the tensors spread over both (block 0 with the
  embeddings, block 1 with the head).
  """
  def split_tiny_gguf!(dir, name) do
    %{blocks: [b0, b1], input: input, output: output} = tiny_tensors()
    metadata = tiny_metadata("Split Tiny") ++ [{"general.file_type", :uint32, 7}]
    split = fn no -> [{"split.no", :uint16, no}, {"split.count", :uint16, 2}] end
    write = &GGUF.write!(Path.join(dir, "#{name}-0000#{&1}-of-00002.gguf"), &2, &3)
    write.(1, metadata ++ split.(0), input ++ b0)
    write.(2, split.(1), b1 ++ output)
  end

  # Two Llama-like blocks, Q8_0 matrices and F32 norms.
  defp tiny_tensors do
    layer = fn i ->
      b = &"blk.#{i}.#{&1}"

      [
        {b.("attn_norm.weight"), [256], "F32"},
        {b.("attn_q.weight"), [256, 256], "Q8_0"},
        {b.("attn_k.weight"), [256, 128], "Q8_0"},
        {b.("attn_v.weight"), [256, 128], "Q8_0"},
        {b.("attn_output.weight"), [256, 256], "Q8_0"},
        {b.("ffn_norm.weight"), [256], "F32"},
        {b.("ffn_gate.weight"), [256, 512], "Q8_0"},
        {b.("ffn_up.weight"), [256, 512], "Q8_0"},
        {b.("ffn_down.weight"), [512, 256], "Q8_0"}
      ]
    end

    %{
      blocks: Enum.map(0..1, layer),
      input: [{"token_embd.weight", [256, 1000], "Q8_0"}],
      output: [{"output_norm.weight", [256], "F32"}, {"output.weight", [256, 1000], "Q8_0"}]
    }
  end

  defp tiny_metadata(name) do
    [
      {"general.architecture", :string, "llama"},
      {"general.name", :string, name},
      {"llama.block_count", :uint32, 2},
      {"llama.context_length", :uint32, 4096},
      {"llama.embedding_length", :uint32, 256},
      {"llama.feed_forward_length", :uint32, 512},
      {"llama.attention.head_count", :uint32, 4},
      {"llama.attention.head_count_kv", :uint32, 2},
      {"llama.vocab_size", :uint32, 1000}
    ]
  end

  @doc """
  A folder with a two-layer Qwen2-like `model.safetensors` in BF16 and its
  `config.json`: 128 wide, 2 heads of 64 with 1 KV head, 500 tokens.
  """
  def tiny_safetensors!(dir) do
    File.mkdir_p!(dir)

    layer = fn i ->
      b = &"model.layers.#{i}.#{&1}"

      [
        {b.("input_layernorm.weight"), [128]},
        {b.("self_attn.q_proj.weight"), [128, 128]},
        {b.("self_attn.q_proj.bias"), [128]},
        {b.("self_attn.k_proj.weight"), [64, 128]},
        {b.("self_attn.k_proj.bias"), [64]},
        {b.("self_attn.v_proj.weight"), [64, 128]},
        {b.("self_attn.v_proj.bias"), [64]},
        {b.("self_attn.o_proj.weight"), [128, 128]},
        {b.("post_attention_layernorm.weight"), [128]},
        {b.("mlp.gate_proj.weight"), [256, 128]},
        {b.("mlp.up_proj.weight"), [256, 128]},
        {b.("mlp.down_proj.weight"), [128, 256]}
      ]
    end

    tensors =
      ([{"model.embed_tokens.weight", [500, 128]}] ++
         Enum.flat_map(0..1, layer) ++
         [{"model.norm.weight", [128]}, {"lm_head.weight", [500, 128]}])
      |> Enum.map(fn {name, shape} -> {name, "BF16", shape} end)

    config = [
      architectures: ["Qwen2ForCausalLM"],
      model_type: "qwen2",
      hidden_size: 128,
      intermediate_size: 256,
      num_attention_heads: 2,
      num_key_value_heads: 1,
      num_hidden_layers: 2,
      vocab_size: 500,
      max_position_embeddings: 2048,
      tie_word_embeddings: false
    ]

    File.write!(Path.join(dir, "config.json"), JSON.encode({:object, config}))
    Safetensors.write!(Path.join(dir, "model.safetensors"), tensors)
    dir
  end

  @doc "A machine with `ram_gib` GiB of RAM and GPUs of the given free GiB."
  def machine(ram_gib, gpus_free_gib \\ []) do
    gpus =
      gpus_free_gib
      |> Enum.with_index()
      |> Enum.map(fn {free, i} ->
        %{
          gpu_index: i,
          nvml_index: i,
          name: "Test GPU #{i}",
          uuid: "GPU-#{i}",
          memory_total: 80 * @gib,
          memory_free: free * @gib,
          memory_used: 80 * @gib - free * @gib
        }
      end)

    status =
      if gpus == [], do: {:unavailable, "no driver here"}, else: {:ok, "550.54", length(gpus)}

    %{
      memory: %{total: ram_gib * @gib, available: ram_gib * @gib, limit: ram_gib * @gib},
      gpus: gpus,
      gpu_status: status
    }
  end
end
