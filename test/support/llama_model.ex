defmodule ModelBudget.Test.LlamaModel do
  @moduledoc false
  # A tiny GGUF that llama.cpp really loads: the llama architecture with a
  # few layers, a small SentencePiece vocabulary (control tokens, the 256
  # byte tokens, a few pieces) and random F16 matrices with F32 norms. The
  # text it generates is noise; the memory it takes is real.

  alias ModelBudget.Test.GGUF

  @shape [layers: 2, embd: 256, ff: 768, heads: 4, kv: 2, ctx: 512]
  @pieces ["▁"] ++ Enum.map(?a..?z, &<<&1>>) ++ Enum.map(?a..?z, &"▁#{<<&1>>}")

  @doc false
  def shape, do: @shape

  @doc false
  def n_vocab, do: length(vocab())

  # Writes the model to `path`; `opts` override entries of @shape, and
  # `drop: names` leaves those tensors out (a model llama.cpp rejects).
  @doc false
  def write!(path, opts \\ []) do
    {drop, shape} = Keyword.pop(opts, :drop, [])
    s = Keyword.merge(@shape, shape)
    kv_width = div(s[:embd], s[:heads]) * s[:kv]
    n_vocab = n_vocab()

    blocks =
      for i <- 0..(s[:layers] - 1) do
        [
          norm("blk.#{i}.attn_norm.weight", s[:embd]),
          matrix("blk.#{i}.attn_q.weight", [s[:embd], s[:embd]]),
          matrix("blk.#{i}.attn_k.weight", [s[:embd], kv_width]),
          matrix("blk.#{i}.attn_v.weight", [s[:embd], kv_width]),
          matrix("blk.#{i}.attn_output.weight", [s[:embd], s[:embd]]),
          norm("blk.#{i}.ffn_norm.weight", s[:embd]),
          matrix("blk.#{i}.ffn_gate.weight", [s[:embd], s[:ff]]),
          matrix("blk.#{i}.ffn_up.weight", [s[:embd], s[:ff]]),
          matrix("blk.#{i}.ffn_down.weight", [s[:ff], s[:embd]])
        ]
      end

    tensors =
      [matrix("token_embd.weight", [s[:embd], n_vocab])] ++
        List.flatten(blocks) ++
        [norm("output_norm.weight", s[:embd]), matrix("output.weight", [s[:embd], n_vocab])]

    tensors = Enum.reject(tensors, fn {name, _, _, _} -> name in drop end)
    GGUF.write_data!(path, metadata(s, n_vocab), tensors)
  end

  defp metadata(s, n_vocab) do
    {tokens, types} = Enum.unzip(vocab())

    [
      {"general.architecture", :string, "llama"},
      {"general.name", :string, "model-budget-tiny-llama"},
      {"llama.context_length", :uint32, s[:ctx]},
      {"llama.embedding_length", :uint32, s[:embd]},
      {"llama.block_count", :uint32, s[:layers]},
      {"llama.feed_forward_length", :uint32, s[:ff]},
      {"llama.attention.head_count", :uint32, s[:heads]},
      {"llama.attention.head_count_kv", :uint32, s[:kv]},
      {"llama.attention.layer_norm_rms_epsilon", :float32, 1.0e-5},
      {"llama.rope.dimension_count", :uint32, div(s[:embd], s[:heads])},
      {"llama.vocab_size", :uint32, n_vocab},
      {"tokenizer.ggml.model", :string, "llama"},
      {"tokenizer.ggml.tokens", {:array, :string}, tokens},
      {"tokenizer.ggml.scores", {:array, :float32}, Enum.map(1..n_vocab, &(-&1 * 1.0))},
      {"tokenizer.ggml.token_type", {:array, :int32}, types},
      {"tokenizer.ggml.unknown_token_id", :uint32, 0},
      {"tokenizer.ggml.bos_token_id", :uint32, 1},
      {"tokenizer.ggml.eos_token_id", :uint32, 2}
    ]
  end

  # {piece, llama.cpp token type}: 2 unknown, 3 control, 6 byte, 1 normal.
  defp vocab do
    [{"<unk>", 2}, {"<s>", 3}, {"</s>", 3}] ++
      Enum.map(0..255, &{"<0x" <> Base.encode16(<<&1>>) <> ">", 6}) ++
      Enum.map(@pieces, &{&1, 1})
  end

  defp norm(name, n),
    do: {name, [n], "F32", for(_ <- 1..n, into: <<>>, do: <<1.0::little-float-32>>)}

  defp matrix(name, dims) do
    data = for _ <- 1..Enum.product(dims), into: <<>>, do: <<random()::little-float-16>>
    {name, dims, "F16", data}
  end

  defp random, do: (:rand.uniform() - 0.5) * 0.2
end
