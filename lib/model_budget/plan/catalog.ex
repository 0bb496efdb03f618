defmodule ModelBudget.Plan.Catalog do
  @moduledoc """
  Well-known model shapes that `mix model_budget.plan` shows when it is given
  no files, as `%ModelBudget.Model{}` values: what their GGUF files at
  Q4_K_M say about themselves.

  | model | layers | heads / KV heads | head dim | embd | FFN | vocab | trained context | window |
  |---|---|---|---|---|---|---|---|---|
  | Llama-3.1-8B-Instruct | 32 | 32 / 8 | 128 | 4096 | 14336 | 128256 | 131072 | - |
  | Gemma-2-9B-it | 42 | 16 / 8 | 256 | 3584 | 14336 | 256000 | 8192 | 4096, even layers |
  | Qwen2.5-32B-Instruct | 64 | 40 / 8 | 128 | 5120 | 27648 | 152064 | 32768 | - |
  | Mixtral-8x7B-Instruct-v0.1 | 32 | 32 / 8 | 128 | 4096 | 14336 x 8 experts (2 used) | 32000 | 32768 | - |
  | Llama-3.1-70B-Instruct | 80 | 64 / 8 | 128 | 8192 | 28672 | 128256 | 131072 | - |

  **Where the numbers come from.** Each model is a GGUF header in
  `priv/catalog/`, without its tokenizer or weights, written by
  `scripts/llama_cpp_truth.py` (`make calibrate`) from the published
  `config.json` numbers above with llama-quantize's Q4_K_M type mix
  (`attn_v` and `ffn_down` of the first and last eighth and every third
  layer in Q6_K, the head in Q6_K, the rest in Q4_K, norms and biases in
  F32). The same script writes the files whose real llama.cpp buffers the
  calibration table records, so a catalog model reads exactly as the
  recorded file of the same model does (a test holds them to it). They
  are read with `ModelBudget.Model.from_gguf_header/1`, so every number
  comes from the core's GGUF reader, as it would for a real file.
  """

  alias ModelBudget.Model

  # {short name, header file in priv/catalog}, smallest first.
  @entries [
    {"llama-3.1-8b", "llama-3.1-8b-Q4_K_M.gguf"},
    {"gemma-2-9b", "gemma-2-9b-Q4_K_M.gguf"},
    {"qwen2.5-32b", "qwen2.5-32b-Q4_K_M.gguf"},
    {"mixtral-8x7b", "mixtral-8x7b-Q4_K_M.gguf"},
    {"llama-3.1-70b", "llama-3.1-70b-Q4_K_M.gguf"}
  ]

  @doc """
  The built-in models, smallest first.

  ## Examples

      iex> [llama | _] = ModelBudget.Plan.Catalog.models()
      iex> {llama.name, llama.n_layers, llama.n_head_kv, llama.n_params}
      {"Llama-3.1-8B-Instruct-Q4_K_M", 32, 8, 8030261312}
  """
  @spec models() :: [Model.t()]
  def models, do: Enum.map(@entries, &model/1)

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

    Enum.find_value(@entries, :error, fn {short, _} = entry ->
      if key == short do
        {:ok, model(entry)}
      else
        model = model(entry)
        if key == String.downcase(model.name), do: {:ok, model}
      end
    end)
  end

  @doc """
  The short names `fetch/1` takes.

  ## Examples

      iex> ModelBudget.Plan.Catalog.names()
      ["llama-3.1-8b", "gemma-2-9b", "qwen2.5-32b", "mixtral-8x7b", "llama-3.1-70b"]
  """
  @spec names() :: [String.t()]
  def names, do: Enum.map(@entries, &elem(&1, 0))

  # The headers do not name their file type: every one is Q4_K_M.
  defp model({_short, file}) do
    path = Path.join([:code.priv_dir(:model_budget), "catalog", file])
    {:ok, model} = Model.from_gguf_header(File.read!(path))
    %{model | file_type: model.file_type || "Q4_K_M"}
  end
end
