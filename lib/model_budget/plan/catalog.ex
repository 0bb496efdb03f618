defmodule ModelBudget.Plan.Catalog do
  @moduledoc """
  Well-known model shapes that `mix model_budget.plan` shows when it is given
  no files, as `%ModelBudget.Model{}` values: what their GGUF files at
  Q4_K_M would say about themselves.

  | model | layers | heads / KV heads | head dim | embd | FFN | vocab | trained context | window |
  |---|---|---|---|---|---|---|---|---|
  | Llama-3.1-8B-Instruct | 32 | 32 / 8 | 128 | 4096 | 14336 | 128256 | 131072 | - |
  | Gemma-2-9B-it | 42 | 16 / 8 | 256 | 3584 | 14336 | 256000 | 8192 | 4096, even layers |
  | Qwen2.5-32B-Instruct | 64 | 40 / 8 | 128 | 5120 | 27648 | 152064 | 32768 | - |
  | Mixtral-8x7B-Instruct-v0.1 | 32 | 32 / 8 | 128 | 4096 | 14336 x 8 experts (2 used) | 32000 | 32768 | - |
  | Llama-3.1-70B-Instruct | 80 | 64 / 8 | 128 | 8192 | 28672 | 128256 | 131072 | - |

  **Where the numbers come from.** The architecture numbers are the
  published ones, from each model's `config.json` on Hugging Face
  (`num_hidden_layers`, `num_attention_heads`, `num_key_value_heads`,
  `head_dim` or `hidden_size / num_attention_heads`, `hidden_size`,
  `intermediate_size`, `num_local_experts`, `vocab_size`,
  `max_position_embeddings`, `sliding_window`; Qwen2.5 ships with
  `use_sliding_window: false` and Mixtral v0.1 with `sliding_window: null`,
  so neither has a window; Gemma-2 applies its window to every other layer,
  from layer 0). Qwen2 adds biases to q, k and v; Gemma-2 ties its output
  head to the token embeddings.

  Parameter counts follow from those numbers tensor by tensor (attention
  q, k, v and output, the FFN's gate, up and down per expert, the MoE
  router, norms, biases), and come to the published totals: 8.03 B, 9.24 B,
  32.76 B, 46.70 B and 70.55 B.

  Bytes are parameters at the bits per weight of llama.cpp's Q4_K_M mix:
  block matrices at 4.8 bits (Q4_K's 144 bytes per 256 weights, with
  `attn_v` and `ffn_down` of half the layers in Q6_K's 210 bytes per 256),
  token embeddings in Q4_K (4.5 bits), the output head in Q6_K (6.5625
  bits; for tied embeddings the embedding matrix is Q6_K too, and counted
  again for the head as `ModelBudget.Model` does), norms and biases in F32.
  Checked against published Q4_K_M files (bartowski's GGUF conversions on
  Hugging Face): Llama-3.1-8B-Instruct 4.92 GB (here 4.91 GB of weights),
  Gemma-2-9B-it 5.76 GB (5.75 GB), Qwen2.5-32B-Instruct 19.85 GB (19.80 GB),
  Llama-3.1-70B-Instruct 42.52 GB (42.52 GB); a file also holds its header
  and tokenizer. The per-type table (`:types`) is left empty.
  """

  alias ModelBudget.Model

  # Bytes per weight as {numerator, denominator}.
  @block_bits {24, 5 * 8}
  @q4_k {144, 256}
  @q6_k {210, 256}
  @f32 {4, 1}

  @shapes [
    %{
      name: "Llama-3.1-8B-Instruct-Q4_K_M",
      short: "llama-3.1-8b",
      architecture: "llama",
      n_layers: 32,
      n_head: 32,
      n_head_kv: 8,
      head_dim: 128,
      n_embd: 4096,
      n_ff: 14_336,
      n_vocab: 128_256,
      context_length: 131_072,
      # Llama 3.1's rope scaling factors: a 64-entry F32 tensor.
      rope_freqs: 64
    },
    %{
      name: "Gemma-2-9B-it-Q4_K_M",
      short: "gemma-2-9b",
      architecture: "gemma2",
      n_layers: 42,
      n_head: 16,
      n_head_kv: 8,
      head_dim: 256,
      n_embd: 3584,
      n_ff: 14_336,
      n_vocab: 256_000,
      context_length: 8192,
      sliding_window: 4096,
      # Gemma-2 norms before and after attention and the FFN.
      norms: 4,
      tied_embeddings: true
    },
    %{
      name: "Qwen2.5-32B-Instruct-Q4_K_M",
      short: "qwen2.5-32b",
      architecture: "qwen2",
      n_layers: 64,
      n_head: 40,
      n_head_kv: 8,
      head_dim: 128,
      n_embd: 5120,
      n_ff: 27_648,
      n_vocab: 152_064,
      context_length: 32_768,
      qkv_bias: true
    },
    %{
      name: "Mixtral-8x7B-Instruct-v0.1-Q4_K_M",
      short: "mixtral-8x7b",
      architecture: "llama",
      n_layers: 32,
      n_head: 32,
      n_head_kv: 8,
      head_dim: 128,
      n_embd: 4096,
      n_ff: 14_336,
      n_vocab: 32_000,
      context_length: 32_768,
      n_experts: 8,
      n_experts_used: 2
    },
    %{
      name: "Llama-3.1-70B-Instruct-Q4_K_M",
      short: "llama-3.1-70b",
      architecture: "llama",
      n_layers: 80,
      n_head: 64,
      n_head_kv: 8,
      head_dim: 128,
      n_embd: 8192,
      n_ff: 28_672,
      n_vocab: 128_256,
      context_length: 131_072,
      rope_freqs: 64
    }
  ]

  @doc """
  The built-in models, smallest first.

  ## Examples

      iex> [llama | _] = ModelBudget.Plan.Catalog.models()
      iex> {llama.name, llama.n_layers, llama.n_head_kv, llama.n_params}
      {"Llama-3.1-8B-Instruct-Q4_K_M", 32, 8, 8030261312}
  """
  @spec models() :: [Model.t()]
  def models, do: Enum.map(@shapes, &model/1)

  @doc """
  The built-in model called `name`: its full name or its short one
  (`"llama-3.1-8b"`, `"gemma-2-9b"`, `"qwen2.5-32b"`, `"mixtral-8x7b"`,
  `"llama-3.1-70b"`), in any case.

  ## Examples

      iex> {:ok, model} = ModelBudget.Plan.Catalog.fetch("Qwen2.5-32B")
      iex> model.name
      "Qwen2.5-32B-Instruct-Q4_K_M"

      iex> ModelBudget.Plan.Catalog.fetch("gpt-5")
      :error
  """
  @spec fetch(String.t()) :: {:ok, Model.t()} | :error
  def fetch(name) do
    key = String.downcase(name)

    case Enum.find(@shapes, &(key in [&1.short, String.downcase(&1.name)])) do
      nil -> :error
      shape -> {:ok, model(shape)}
    end
  end

  @doc """
  The short names `fetch/1` takes.

  ## Examples

      iex> ModelBudget.Plan.Catalog.names()
      ["llama-3.1-8b", "gemma-2-9b", "qwen2.5-32b", "mixtral-8x7b", "llama-3.1-70b"]
  """
  @spec names() :: [String.t()]
  def names, do: Enum.map(@shapes, & &1.short)

  defp model(s) do
    experts = Map.get(s, :n_experts)
    q_dim = s.n_head * s.head_dim
    kv_dim = s.n_head_kv * s.head_dim
    bias = if Map.get(s, :qkv_bias, false), do: q_dim + 2 * kv_dim, else: 0
    norms = Map.get(s, :norms, 2) * s.n_embd

    matrices =
      s.n_embd * q_dim + 2 * s.n_embd * kv_dim + q_dim * s.n_embd +
        3 * s.n_embd * s.n_ff * (experts || 1) + if(experts, do: s.n_embd * experts, else: 0)

    block_bytes = bytes(matrices, @block_bits) + bytes(bias + norms, @f32)
    embeddings = s.n_vocab * s.n_embd
    tied = Map.get(s, :tied_embeddings, false)
    # Tied embeddings are stored in the head's type, since they serve as it.
    input_bytes = bytes(embeddings, if(tied, do: @q6_k, else: @q4_k))
    output_bytes = bytes(embeddings, @q6_k) + bytes(s.n_embd, @f32)
    other = Map.get(s, :rope_freqs, 0)
    other_bytes = bytes(other, @f32)
    # The head's own matrix is in the file only when it is not tied.
    head_params = if tied, do: 0, else: embeddings
    head_stored = if tied, do: bytes(s.n_embd, @f32), else: output_bytes

    stored = s.n_layers * block_bytes + input_bytes + head_stored + other_bytes

    tensors_per_block =
      if(experts, do: 10, else: 9) + if(bias > 0, do: 3, else: 0) + (div(norms, s.n_embd) - 2)

    %Model{
      format: :gguf,
      architecture: s.architecture,
      name: s.name,
      # The header and tokenizer are not counted: the file is its tensors.
      file_bytes: stored,
      weight_bytes: stored,
      n_params:
        s.n_layers * (matrices + bias + norms) + embeddings + head_params + s.n_embd + other,
      n_tensors:
        s.n_layers * tensors_per_block + 2 + if(tied, do: 0, else: 1) +
          if(other > 0, do: 1, else: 0),
      n_layers: s.n_layers,
      n_head: s.n_head,
      n_head_kv: s.n_head_kv,
      head_dim_k: s.head_dim,
      head_dim_v: s.head_dim,
      n_embd: s.n_embd,
      n_vocab: s.n_vocab,
      context_length: s.context_length,
      sliding_window: Map.get(s, :sliding_window),
      sliding_window_layers:
        if(Map.has_key?(s, :sliding_window),
          do: Enum.map(0..(s.n_layers - 1), &(rem(&1, 2) == 0)),
          else: []
        ),
      n_experts: experts,
      n_experts_used: Map.get(s, :n_experts_used),
      layer_bytes: List.duplicate(block_bytes, s.n_layers),
      input_bytes: input_bytes,
      output_bytes: output_bytes,
      other_bytes: other_bytes,
      tied_embeddings: tied,
      types: %{}
    }
  end

  # Bytes of `params` weights at {num, den} bytes per weight, rounded up.
  defp bytes(params, {num, den}), do: div(params * num + den - 1, den)
end
