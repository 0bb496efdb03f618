defmodule ModelBudget.Test.ModelFixtures do
  @moduledoc false
  # Full-size model shapes written as sparse files: the header is real, the
  # weights are a hole. Used by the tests and by bench/model.exs.

  alias ModelBudget.Test.{GGUF, JSON, Safetensors}

  @llama_8b [layers: 32, embd: 4096, ff: 14336, heads: 32, kv: 8]
  @llama_70b [layers: 80, embd: 8192, ff: 28672, heads: 64, kv: 8]
  @llama_vocab 128_256
  @llama_merges 280_147

  @doc false
  def llama_shape(:"8b"), do: @llama_8b
  def llama_shape(:"70b"), do: @llama_70b

  # Tokenizer arrays as llama.cpp's converter writes them for Llama 3: they
  # make the header several MB.
  defp llama_tokenizer do
    [
      {"tokenizer.ggml.model", :string, "gpt2"},
      {"tokenizer.ggml.pre", :string, "llama-bpe"},
      {"tokenizer.ggml.tokens", {:array, :string}, Enum.map(0..(@llama_vocab - 1), &"tok#{&1}")},
      {"tokenizer.ggml.token_type", {:array, :int32},
       Enum.map(0..(@llama_vocab - 1), &if(&1 < 128_000, do: 1, else: 3))},
      {"tokenizer.ggml.merges", {:array, :string},
       Enum.map(0..(@llama_merges - 1), &"m#{&1} n#{&1}")},
      {"tokenizer.ggml.bos_token_id", :uint32, 128_000},
      {"tokenizer.ggml.eos_token_id", :uint32, 128_009},
      {"tokenizer.chat_template", :string, String.duplicate("{% for m in messages %}", 60)}
    ]
  end

  @doc """
  A Llama-3.1-like GGUF in a Q4_K_M-like mix: Q4_K matrices, Q6_K for
  `attn_v`, `ffn_down` and the output head, F32 norms. `size` is `:"8b"`
  (5.2 GB) or `:"70b"` (45 GB, 41.9 GiB).
  """
  def llama_gguf!(path, size \\ :"8b") do
    s = llama_shape(size)
    {embd, ff, kv_dim} = {s[:embd], s[:ff], s[:kv] * 128}

    layer = fn i ->
      b = &"blk.#{i}.#{&1}"

      [
        {b.("attn_norm.weight"), [embd], "F32"},
        {b.("attn_q.weight"), [embd, embd], "Q4_K"},
        {b.("attn_k.weight"), [embd, kv_dim], "Q4_K"},
        {b.("attn_v.weight"), [embd, kv_dim], "Q6_K"},
        {b.("attn_output.weight"), [embd, embd], "Q4_K"},
        {b.("ffn_norm.weight"), [embd], "F32"},
        {b.("ffn_gate.weight"), [embd, ff], "Q4_K"},
        {b.("ffn_up.weight"), [embd, ff], "Q4_K"},
        {b.("ffn_down.weight"), [ff, embd], "Q6_K"}
      ]
    end

    tensors =
      [{"rope_freqs.weight", [64], "F32"}, {"token_embd.weight", [embd, @llama_vocab], "Q4_K"}] ++
        Enum.flat_map(0..(s[:layers] - 1), layer) ++
        [
          {"output_norm.weight", [embd], "F32"},
          {"output.weight", [embd, @llama_vocab], "Q6_K"}
        ]

    metadata =
      [
        {"general.architecture", :string, "llama"},
        {"general.name", :string, "Llama 3.1 #{size |> to_string() |> String.upcase()} Instruct"},
        {"general.file_type", :uint32, 15},
        {"llama.block_count", :uint32, s[:layers]},
        {"llama.context_length", :uint32, 131_072},
        {"llama.embedding_length", :uint32, embd},
        {"llama.feed_forward_length", :uint32, ff},
        {"llama.attention.head_count", :uint32, s[:heads]},
        {"llama.attention.head_count_kv", :uint32, s[:kv]},
        {"llama.rope.freq_base", :float32, 500_000.0},
        {"llama.attention.layer_norm_rms_epsilon", :float32, 1.0e-5},
        {"llama.rope.dimension_count", :uint32, 128},
        {"llama.vocab_size", :uint32, @llama_vocab}
      ] ++ llama_tokenizer() ++ [{"general.quantization_version", :uint32, 2}]

    GGUF.write!(path, metadata, tensors)
  end

  @doc "A Mixtral-8x7B-like GGUF (llama architecture with 8 experts), Q4_K with a Q6_K head."
  def mixtral_gguf!(path) do
    {embd, ff, n_expert} = {4096, 14336, 8}

    layer = fn i ->
      b = &"blk.#{i}.#{&1}"

      [
        {b.("attn_norm.weight"), [embd], "F32"},
        {b.("attn_q.weight"), [embd, embd], "Q4_K"},
        {b.("attn_k.weight"), [embd, 1024], "Q4_K"},
        {b.("attn_v.weight"), [embd, 1024], "Q4_K"},
        {b.("attn_output.weight"), [embd, embd], "Q4_K"},
        {b.("ffn_norm.weight"), [embd], "F32"},
        {b.("ffn_gate_inp.weight"), [embd, n_expert], "F32"},
        {b.("ffn_gate_exps.weight"), [embd, ff, n_expert], "Q4_K"},
        {b.("ffn_down_exps.weight"), [ff, embd, n_expert], "Q4_K"},
        {b.("ffn_up_exps.weight"), [embd, ff, n_expert], "Q4_K"}
      ]
    end

    tensors =
      [{"token_embd.weight", [embd, 32_000], "Q4_K"}] ++
        Enum.flat_map(0..31, layer) ++
        [{"output_norm.weight", [embd], "F32"}, {"output.weight", [embd, 32_000], "Q6_K"}]

    metadata = [
      {"general.architecture", :string, "llama"},
      {"general.name", :string, "Mixtral 8x7B Instruct v0.1"},
      {"llama.block_count", :uint32, 32},
      {"llama.context_length", :uint32, 32_768},
      {"llama.embedding_length", :uint32, embd},
      {"llama.feed_forward_length", :uint32, ff},
      {"llama.attention.head_count", :uint32, 32},
      {"llama.attention.head_count_kv", :uint32, 8},
      {"llama.expert_count", :uint32, n_expert},
      {"llama.expert_used_count", :uint32, 2},
      {"tokenizer.ggml.tokens", {:array, :string}, Enum.map(0..31_999, &"t#{&1}")}
    ]

    GGUF.write!(path, metadata, tensors)
  end

  @doc "A Gemma-2-9B-like GGUF: sliding window on even layers, tied embeddings, Q8_0."
  def gemma2_gguf!(path) do
    embd = 3584

    layer = fn i ->
      b = &"blk.#{i}.#{&1}"

      [
        {b.("attn_norm.weight"), [embd], "F32"},
        {b.("attn_q.weight"), [embd, 4096], "Q8_0"},
        {b.("attn_k.weight"), [embd, 2048], "Q8_0"},
        {b.("attn_v.weight"), [embd, 2048], "Q8_0"},
        {b.("attn_output.weight"), [4096, embd], "Q8_0"},
        {b.("post_attention_norm.weight"), [embd], "F32"},
        {b.("ffn_norm.weight"), [embd], "F32"},
        {b.("ffn_gate.weight"), [embd, 14336], "Q8_0"},
        {b.("ffn_up.weight"), [embd, 14336], "Q8_0"},
        {b.("ffn_down.weight"), [14336, embd], "Q8_0"},
        {b.("post_ffw_norm.weight"), [embd], "F32"}
      ]
    end

    tensors =
      [{"token_embd.weight", [embd, 256_000], "Q8_0"}] ++
        Enum.flat_map(0..41, layer) ++ [{"output_norm.weight", [embd], "F32"}]

    metadata = [
      {"general.architecture", :string, "gemma2"},
      {"general.name", :string, "Gemma 2 9b It"},
      {"gemma2.block_count", :uint32, 42},
      {"gemma2.context_length", :uint32, 8192},
      {"gemma2.embedding_length", :uint32, embd},
      {"gemma2.feed_forward_length", :uint32, 14336},
      {"gemma2.attention.head_count", :uint32, 16},
      {"gemma2.attention.head_count_kv", :uint32, 8},
      {"gemma2.attention.key_length", :uint32, 256},
      {"gemma2.attention.value_length", :uint32, 256},
      {"gemma2.attention.sliding_window", :uint32, 4096},
      {"gemma2.attn_logit_softcapping", :float32, 50.0},
      {"gemma2.final_logit_softcapping", :float32, 30.0},
      {"tokenizer.ggml.tokens", {:array, :string}, Enum.map(0..255_999, &"g#{&1}")}
    ]

    GGUF.write!(path, metadata, tensors)
  end

  @doc "Qwen2.5-7B-Instruct-like: one BF16 safetensors file with q/k/v biases, and its config.json."
  def qwen25_safetensors!(dir) do
    {embd, ff, kv_dim, vocab} = {3584, 18944, 512, 152_064}

    layer = fn i ->
      b = &"model.layers.#{i}.#{&1}"

      [
        {b.("input_layernorm.weight"), [embd]},
        {b.("mlp.down_proj.weight"), [embd, ff]},
        {b.("mlp.gate_proj.weight"), [ff, embd]},
        {b.("mlp.up_proj.weight"), [ff, embd]},
        {b.("post_attention_layernorm.weight"), [embd]},
        {b.("self_attn.k_proj.bias"), [kv_dim]},
        {b.("self_attn.k_proj.weight"), [kv_dim, embd]},
        {b.("self_attn.o_proj.weight"), [embd, embd]},
        {b.("self_attn.q_proj.bias"), [embd]},
        {b.("self_attn.q_proj.weight"), [embd, embd]},
        {b.("self_attn.v_proj.bias"), [kv_dim]},
        {b.("self_attn.v_proj.weight"), [kv_dim, embd]}
      ]
    end

    tensors =
      ([{"lm_head.weight", [vocab, embd]}, {"model.embed_tokens.weight", [vocab, embd]}] ++
         Enum.flat_map(0..27, layer) ++ [{"model.norm.weight", [embd]}])
      |> Enum.map(fn {name, shape} -> {name, "BF16", shape} end)

    write_config!(dir,
      architectures: ["Qwen2ForCausalLM"],
      model_type: "qwen2",
      hidden_size: embd,
      intermediate_size: ff,
      num_attention_heads: 28,
      num_key_value_heads: 4,
      num_hidden_layers: 28,
      vocab_size: vocab,
      max_position_embeddings: 32_768,
      sliding_window: 131_072,
      use_sliding_window: false,
      max_window_layers: 28,
      rope_theta: 1_000_000.0,
      tie_word_embeddings: false,
      torch_dtype: "bfloat16"
    )

    Safetensors.write!(Path.join(dir, "model.safetensors"), tensors)
  end

  @doc "Llama-3.1-8B-Instruct-like in BF16, sharded over four files as on the Hub, with its config.json."
  def llama_sharded!(dir) do
    {embd, ff, kv_dim} = {4096, 14336, 1024}

    layer = fn i ->
      b = &"model.layers.#{i}.#{&1}"

      [
        {b.("input_layernorm.weight"), [embd]},
        {b.("mlp.down_proj.weight"), [embd, ff]},
        {b.("mlp.gate_proj.weight"), [ff, embd]},
        {b.("mlp.up_proj.weight"), [ff, embd]},
        {b.("post_attention_layernorm.weight"), [embd]},
        {b.("self_attn.k_proj.weight"), [kv_dim, embd]},
        {b.("self_attn.o_proj.weight"), [embd, embd]},
        {b.("self_attn.q_proj.weight"), [embd, embd]},
        {b.("self_attn.v_proj.weight"), [kv_dim, embd]}
      ]
    end

    tensors =
      ([{"model.embed_tokens.weight", [@llama_vocab, embd]}] ++
         Enum.flat_map(0..31, layer) ++
         [{"model.norm.weight", [embd]}, {"lm_head.weight", [@llama_vocab, embd]}])
      |> Enum.map(fn {name, shape} -> {name, "BF16", shape} end)

    write_config!(dir,
      architectures: ["LlamaForCausalLM"],
      model_type: "llama",
      hidden_size: embd,
      intermediate_size: ff,
      num_attention_heads: 32,
      num_key_value_heads: 8,
      num_hidden_layers: 32,
      head_dim: 128,
      vocab_size: @llama_vocab,
      max_position_embeddings: 131_072,
      rope_scaling:
        {:object,
         [
           factor: 8.0,
           low_freq_factor: 1.0,
           high_freq_factor: 4.0,
           original_max_position_embeddings: 8192,
           rope_type: "llama3"
         ]},
      tie_word_embeddings: false
    )

    Safetensors.write_sharded!(dir, chunk(tensors, 4))
  end

  defp chunk(list, n), do: Enum.chunk_every(list, div(length(list) + n - 1, n))

  defp write_config!(dir, fields),
    do: File.write!(Path.join(dir, "config.json"), JSON.encode({:object, fields}))
end
