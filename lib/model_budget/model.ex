defmodule ModelBudget.Model do
  @moduledoc """
  What a model file says about itself, read from its header without reading
  its weights.

  `read/1` understands GGUF files (versions 2 and 3, as llama.cpp writes
  them, split or not) and Hugging Face safetensors models: a single `.safetensors` file,
  a sharded model through its `model.safetensors.index.json`, or a folder
  holding either. For safetensors, the `config.json` beside the weights
  supplies the architecture numbers the tensors do not state.

  Byte counts are exact: each tensor's bytes follow from its shape and its
  type's block layout (every ggml type, including the K-quants and IQ types,
  and every safetensors dtype).

  ## Fields

    * `:format` - `:gguf` or `:safetensors`.
    * `:architecture` - `general.architecture` (GGUF) or `model_type`
      (config.json), a string, or `nil` when the file does not say.
    * `:name` - `general.name` (GGUF) or `_name_or_path` (config.json), or `nil`.
    * `:file_type` - what a GGUF file's weights mostly are: llama.cpp's name
      for its `general.file_type` (`"Q4_K_M"`, `"Q8_0"`, `"BF16"`, ...), or
      `nil` when the header does not say (or for safetensors).
    * `:file_bytes` - size of the weight files (all shards), headers included.
    * `:weight_bytes` - bytes of all tensors as stored, each counted once.
    * `:n_params` - elements of all tensors.
    * `:n_tensors` - number of tensors.
    * `:n_layers` - repeating blocks (`block_count`, `num_hidden_layers`);
      inferred from tensor names when the metadata does not say.
    * `:n_head`, `:n_head_kv` - attention heads and key/value heads: an
      integer, or a list with one entry per layer where the model's counts
      differ between layers. `:n_head_kv` defaults to `:n_head`.
    * `:head_dim_k`, `:head_dim_v` - width of each key and value head;
      default `n_embd / n_head` (of the first layer), as in llama.cpp.
    * `:n_embd` - embedding width.
    * `:n_vocab` - vocabulary size.
    * `:context_length` - the context the model was trained for.
    * `:sliding_window` - tokens a sliding-window layer attends to, or `nil`.
    * `:sliding_window_layers` - one boolean per layer, `true` where the
      layer uses the window; `[]` when there is no window. From the file
      (`sliding_window_pattern`, `layer_types`) or the architecture's known
      pattern (Gemma-2: even layers; Gemma-3: five of every six); a window
      whose pattern is unknown is applied to no layer, which never
      under-counts a KV cache.
    * `:n_experts`, `:n_experts_used` - experts of a mixture-of-experts
      model and experts used per token, or `nil`.
    * `:layer_bytes` - bytes of each repeating block, in order.
    * `:input_bytes` - token (and position) embeddings, which llama.cpp
      keeps in RAM.
    * `:output_bytes` - the output head and final norm. When the head is
      tied to the token embeddings (`:tied_embeddings`) the embedding
      matrix is not counted here: llama.cpp maps it once while the head
      stays on the host, and copies it only to a GPU that runs the head
      (placement adds that copy).
    * `:embedding_bytes` - the token embedding matrix (part of `:input_bytes`).
    * `:other_bytes` - tensors outside the blocks, the embeddings and the
      head (rope tables, vision towers, blocks past `:n_layers`).
    * `:tied_embeddings` - whether the head reuses the token embeddings.
    * `:types` - per type name (`"Q4_K"`, `"BF16"`, ...), a map with
      `:n_tensors`, `:n_params` and `:bytes`.
    * `:n_ff` - the widest feed-forward projection of a dense block, or `nil`.
    * `:n_ff_exp` - one expert's feed-forward width in a MoE block, or `nil`.
    * `:layer_matrices` - per block, a map from a matrix class to the bytes
      of its weight matrices of that class: what an extra CPU buffer of
      llama.cpp's (AMX, KleidiAI, CPU_REPACK; see `ModelBudget.breakdown/3`'s
      `:cpu_buffers`) may take. A class is `{type, rows_multiple,
      cols_multiple, :matrix | :experts}`: the ggml type name, the largest
      power of two up to 32 dividing the row count and up to 256 dividing
      the row length, and whether it stacks a MoE block's experts. A bare
      type name (`"Q4_K"`) in a hand-made model stands for a 2-D matrix
      whose shape every kernel takes. `[]` for safetensors.
    * `:head_matrices` - the same for the output head.
    * `:embedding_matrix` - with a tied head, the token embeddings' class
      as the head's matrix (an extra CPU buffer may copy it), else `nil`.
    * `:layer_largest_matrix` - per block, the bytes of its largest weight
      matrix: what llama.cpp's op offload copies to a GPU when the block
      stays on the host. `[]` when unknown (placement then takes a third
      of the block).
    * `:file_order` - the weights in the file's order, as
      `{part, bytes}` runs (`part` is `:input`, `:output` or a block's
      index), or `{part, bytes, class}` for weight matrices of one class:
      with mmap the host maps one range, from its first tensor to its last
      that no extra CPU buffer takes, offloaded tensors between them
      included. `[]` when unknown
      (placement then takes convert_hf_to_gguf's order: embeddings, blocks,
      head).

  `Enum.sum(layer_bytes) + input_bytes + output_bytes + other_bytes ==
  weight_bytes`.
  """

  alias ModelBudget.Native
  require ModelBudget.Native.Errors, as: Errors

  @enforce_keys [:format, :file_bytes, :weight_bytes]
  defstruct [
    :format,
    :architecture,
    :name,
    :file_type,
    :file_bytes,
    :weight_bytes,
    :n_head,
    :n_head_kv,
    :head_dim_k,
    :head_dim_v,
    :n_embd,
    :n_vocab,
    :context_length,
    :sliding_window,
    :n_experts,
    :n_experts_used,
    n_params: 0,
    n_tensors: 0,
    n_layers: 0,
    sliding_window_layers: [],
    layer_bytes: [],
    input_bytes: 0,
    output_bytes: 0,
    other_bytes: 0,
    embedding_bytes: 0,
    tied_embeddings: false,
    types: %{},
    n_ff: nil,
    n_ff_exp: nil,
    layer_matrices: [],
    head_matrices: %{},
    embedding_matrix: nil,
    layer_largest_matrix: [],
    file_order: []
  ]

  @typedoc "A count that is the same for every layer, or one per layer."
  @type per_layer :: non_neg_integer() | [non_neg_integer()]

  @typedoc "A weight matrix's class: what decides which extra CPU buffer takes it."
  @type matrix_class ::
          String.t()
          | {String.t(), pos_integer(), pos_integer(), :matrix | :experts}

  @typedoc "Tensors of one element type."
  @type type_stats :: %{
          n_tensors: non_neg_integer(),
          n_params: non_neg_integer(),
          bytes: non_neg_integer()
        }

  @type t :: %__MODULE__{
          format: :gguf | :safetensors,
          architecture: String.t() | nil,
          name: String.t() | nil,
          file_type: String.t() | nil,
          file_bytes: non_neg_integer(),
          weight_bytes: non_neg_integer(),
          n_params: non_neg_integer(),
          n_tensors: non_neg_integer(),
          n_layers: non_neg_integer(),
          n_head: per_layer() | nil,
          n_head_kv: per_layer() | nil,
          head_dim_k: non_neg_integer() | nil,
          head_dim_v: non_neg_integer() | nil,
          n_embd: non_neg_integer() | nil,
          n_vocab: non_neg_integer() | nil,
          context_length: non_neg_integer() | nil,
          sliding_window: pos_integer() | nil,
          sliding_window_layers: [boolean()],
          n_experts: pos_integer() | nil,
          n_experts_used: pos_integer() | nil,
          layer_bytes: [non_neg_integer()],
          input_bytes: non_neg_integer(),
          output_bytes: non_neg_integer(),
          other_bytes: non_neg_integer(),
          embedding_bytes: non_neg_integer(),
          tied_embeddings: boolean(),
          types: %{String.t() => type_stats()},
          n_ff: pos_integer() | nil,
          n_ff_exp: pos_integer() | nil,
          layer_matrices: [%{matrix_class() => non_neg_integer()}],
          head_matrices: %{matrix_class() => non_neg_integer()},
          embedding_matrix: matrix_class() | nil,
          layer_largest_matrix: [non_neg_integer()],
          file_order: [
            {:input | :output | non_neg_integer(), non_neg_integer()}
            | {:input | :output | non_neg_integer(), non_neg_integer(), matrix_class()}
          ]
        }

  @typedoc """
  Why a model could not be read: `{:invalid_model, message}` for a
  malformed file (the message says what and at which byte), or the
  `t:File.posix/0` error the file system gave.
  """
  @type error :: {:invalid_model, String.t()} | File.posix()

  @doc """
  Reads the model at `path`: a GGUF file, a `.safetensors` file, a
  `*.safetensors.index.json`, or a folder holding `model.safetensors.index.json`
  or `model.safetensors` (or exactly one index, or else exactly one
  `.safetensors` file). A GGUF model split by llama.cpp's `gguf-split`
  (`NAME-00001-of-00003.gguf`, ...) is read whole from any of its files.

  Only headers are read, with every length checked against the file's real
  size first, so memory use does not grow with the model, and hostile files
  give `{:error, {:invalid_model, message}}`. The read runs on a dirty I/O
  scheduler.

  ## Examples

      iex> ModelBudget.Model.read("/no/such/model.gguf")
      {:error, :enoent}

      iex> path = Path.join(System.tmp_dir!(), "model_budget_doctest.gguf")
      iex> File.write!(path, "GGUF" <> <<1::little-32>>)
      iex> ModelBudget.Model.read(path)
      {:error, {:invalid_model, "GGUF version 1 is not supported (versions 2 and 3 are) at byte 4"}}

      iex> ModelBudget.Model.read(42)
      ** (ArgumentError) invalid path: expected a path (a string), got: 42
  """
  @spec read(Path.t()) :: {:ok, t()} | {:error, error()}
  def read(path) do
    Errors.call(Native.model_read(path_string(path)))
  end

  # A charlist path as a string; anything else that is no chardata is left
  # for the NIF to refuse, naming the argument.
  defp path_string(path) when is_list(path) do
    IO.chardata_to_string(path)
  rescue
    _ in [ArgumentError, UnicodeConversionError] ->
      raise ArgumentError, "invalid path: expected a path (a string), got: #{inspect(path)}"
  end

  defp path_string(path), do: path

  @doc """
  Reads a GGUF header held in memory, with no tensor data after it: what
  `scripts/llama_cpp_truth.py` writes for the built-in catalog and the
  calibration table. `:file_bytes` is the header's size plus the tensors'.

  ## Examples

      iex> ModelBudget.Model.from_gguf_header("GGUF" <> <<1::little-32>>)
      {:error, {:invalid_model, "GGUF version 1 is not supported (versions 2 and 3 are) at byte 4"}}

      iex> ModelBudget.Model.from_gguf_header(:header)
      ** (ArgumentError) invalid header: expected a binary, got: :header
  """
  @spec from_gguf_header(binary()) :: {:ok, t()} | {:error, error()}
  def from_gguf_header(header), do: Errors.call(Native.model_from_gguf_header(header))
end
