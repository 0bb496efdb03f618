defmodule ModelBudget.ModelTest do
  use ExUnit.Case, async: true

  doctest ModelBudget.Model

  alias ModelBudget.Model
  alias ModelBudget.Test.{GGUF, ModelFixtures, Safetensors}

  # Bytes of n elements in each ggml block type (ggml.h's type traits).
  defp q4_k(n), do: div(n, 256) * 144
  defp q6_k(n), do: div(n, 256) * 210
  defp q8_0(n), do: div(n, 32) * 34
  defp f32(n), do: n * 4

  setup_all do
    dir =
      Path.join(
        System.tmp_dir!(),
        "model_budget_model_test_#{System.unique_integer([:positive])}"
      )

    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf!(dir) end)
    %{dir: dir}
  end

  defp subdir(dir, name) do
    path = Path.join(dir, name)
    File.mkdir_p!(path)
    path
  end

  describe "read/1 on GGUF" do
    test "a Llama-3.1-8B-like Q4_K_M file, header of several MB, data a hole", %{dir: dir} do
      path = ModelFixtures.llama_gguf!(Path.join(dir, "llama-3.1-8b.gguf"))
      assert {:ok, %Model{} = m} = Model.read(path)

      layer =
        f32(4096) * 2 + q4_k(4096 * 4096) * 2 + q4_k(4096 * 1024) + q6_k(4096 * 1024) +
          q4_k(4096 * 14336) * 2 + q6_k(14336 * 4096)

      assert layer == 138_936_320
      assert m.format == :gguf
      assert m.architecture == "llama"
      assert m.name == "Llama 3.1 8B Instruct"
      assert m.file_type == "Q4_K_M"
      assert m.n_layers == 32
      assert m.layer_bytes == List.duplicate(layer, 32)
      assert m.input_bytes == q4_k(4096 * 128_256)
      assert m.output_bytes == f32(4096) + q6_k(4096 * 128_256)
      assert m.other_bytes == f32(64)
      refute m.tied_embeddings
      assert m.weight_bytes == m.input_bytes + 32 * layer + m.output_bytes + m.other_bytes
      assert m.weight_bytes == 5_172_420_864
      assert m.n_params == 8_030_261_312
      assert m.n_tensors == 292
      assert {m.n_head, m.n_head_kv, m.head_dim_k, m.head_dim_v} == {32, 8, 128, 128}
      assert {m.n_embd, m.n_vocab, m.context_length} == {4096, 128_256, 131_072}
      assert {m.sliding_window, m.sliding_window_layers, m.n_experts} == {nil, [], nil}

      assert m.types == %{
               "F32" => %{
                 n_tensors: 66,
                 n_params: 66 * 4096 - 4096 + 64,
                 bytes: f32(65 * 4096 + 64)
               },
               "Q4_K" => %{
                 n_tensors: 161,
                 n_params:
                   4096 * 128_256 + 32 * (2 * 4096 * 4096 + 4096 * 1024 + 2 * 4096 * 14336),
                 bytes:
                   q4_k(4096 * 128_256) +
                     32 * q4_k(2 * 4096 * 4096 + 4096 * 1024 + 2 * 4096 * 14336)
               },
               "Q6_K" => %{
                 n_tensors: 65,
                 n_params: 4096 * 128_256 + 32 * (4096 * 1024 + 14336 * 4096),
                 bytes: q6_k(4096 * 128_256) + 32 * q6_k(4096 * 1024 + 14336 * 4096)
               }
             }

      # The tokenizer arrays make the header several MB; the file is the
      # header plus the (sparse) data.
      header = m.file_bytes - m.weight_bytes
      assert header > 5_000_000
      assert m.file_bytes == File.stat!(path).size
    end

    test "a Mixtral-8x7B-like mixture of experts", %{dir: dir} do
      assert {:ok, m} = Model.read(ModelFixtures.mixtral_gguf!(Path.join(dir, "mixtral.gguf")))
      assert {m.n_experts, m.n_experts_used} == {8, 2}
      assert m.n_params == 46_702_792_704

      experts = 3 * q4_k(4096 * 14336 * 8)
      attn = q4_k(4096 * 4096) * 2 + q4_k(4096 * 1024) * 2
      assert m.layer_bytes == List.duplicate(f32(4096) * 2 + f32(4096 * 8) + attn + experts, 32)
      assert {m.n_vocab, m.context_length, m.n_head_kv} == {32_000, 32_768, 8}
    end

    test "a Gemma-2-9B-like model: sliding window on even layers, tied embeddings", %{dir: dir} do
      assert {:ok, m} = Model.read(ModelFixtures.gemma2_gguf!(Path.join(dir, "gemma2.gguf")))
      assert m.architecture == "gemma2"
      assert m.sliding_window == 4096
      assert m.sliding_window_layers == Enum.map(0..41, &(rem(&1, 2) == 0))
      assert m.tied_embeddings
      embeddings = q8_0(3584 * 256_000)
      assert m.input_bytes == embeddings
      # The tied head is the embedding matrix, counted once.
      assert {m.output_bytes, m.embedding_bytes} == {f32(3584), embeddings}
      assert m.head_matrices == %{}
      assert m.weight_bytes == embeddings + Enum.sum(m.layer_bytes) + f32(3584)
      assert m.n_params == 9_241_705_984
      assert {m.n_head, m.n_head_kv, m.head_dim_k, m.head_dim_v} == {16, 8, 256, 256}
      assert {m.n_vocab, m.context_length} == {256_000, 8192}
    end

    test "a model split by gguf-split is read whole, from any of its files", %{dir: dir} do
      dir = subdir(dir, "split")

      tensors = [
        {"token_embd.weight", [64, 10], "F32"},
        {"blk.0.attn_q.weight", [64, 64], "Q8_0"},
        {"output_norm.weight", [64], "F32"}
      ]

      split = &[{"split.no", :uint16, &1}, {"split.count", :uint16, 2}]
      meta = [{"general.architecture", :string, "llama"}, {"llama.block_count", :uint32, 1}]

      first =
        GGUF.write!(
          Path.join(dir, "m-00001-of-00002.gguf"),
          meta ++ split.(0),
          Enum.take(tensors, 2)
        )

      second =
        GGUF.write!(Path.join(dir, "m-00002-of-00002.gguf"), split.(1), Enum.drop(tensors, 2))

      assert {:ok, m} = Model.read(second)
      assert {:ok, ^m} = Model.read(first)
      assert {m.architecture, m.n_tensors, m.n_layers} == {"llama", 3, 1}
      assert m.weight_bytes == f32(640) + q8_0(4096) + f32(64)
      assert m.file_bytes == File.stat!(first).size + File.stat!(second).size
      assert m.tied_embeddings

      File.rm!(second)
      assert Model.read(first) == {:error, :enoent}
    end

    test "accepts a charlist path", %{dir: dir} do
      path = Path.join(dir, "tiny.gguf")
      GGUF.write!(path, [{"general.architecture", :string, "llama"}], [{"t", [32], "F32"}])
      assert {:ok, %Model{weight_bytes: 128, n_tensors: 1}} = Model.read(String.to_charlist(path))
    end
  end

  describe "read/1 on safetensors" do
    test "a Qwen2.5-7B-like file with biases and its config.json", %{dir: dir} do
      dir = subdir(dir, "qwen2.5-7b")
      path = ModelFixtures.qwen25_safetensors!(dir)
      bf16 = &(&1 * 2)

      layer =
        bf16.(3584 * 2 + 3 * 3584 * 18944 + 2 * 3584 * 3584 + 2 * 512 * 3584 + 3584 + 2 * 512)

      for target <- [path, dir] do
        assert {:ok, m} = Model.read(target)
        assert m.format == :safetensors
        assert m.architecture == "qwen2"
        assert m.n_params == 7_615_616_512
        assert m.weight_bytes == 2 * 7_615_616_512
        assert m.layer_bytes == List.duplicate(layer, 28)
        assert m.input_bytes == bf16.(152_064 * 3584)
        assert m.output_bytes == bf16.(152_064 * 3584 + 3584)

        assert m.types == %{
                 "BF16" => %{n_tensors: 339, n_params: m.n_params, bytes: m.weight_bytes}
               }

        assert {m.n_head, m.n_head_kv, m.head_dim_k, m.head_dim_v} == {28, 4, 128, 128}
        assert {m.n_vocab, m.n_embd, m.context_length} == {152_064, 3584, 32_768}
        # use_sliding_window: false turns Qwen2's window off.
        assert {m.sliding_window, m.sliding_window_layers} == {nil, []}
        assert m.file_bytes == File.stat!(path).size
      end
    end

    test "a sharded Llama-3.1-8B-like model, by folder and by index", %{dir: dir} do
      dir = subdir(dir, "llama-3.1-8b-hf")
      index = ModelFixtures.llama_sharded!(dir)
      assert {:ok, m} = Model.read(dir)
      assert {:ok, ^m} = Model.read(index)
      assert m.architecture == "llama"
      # The same model as the GGUF, less llama.cpp's rope_freqs table.
      assert m.n_params == 8_030_261_248
      assert m.weight_bytes == 2 * m.n_params
      assert m.n_layers == 32
      assert m.input_bytes == 2 * 128_256 * 4096

      shards = Path.wildcard(Path.join(dir, "model-*-of-00004.safetensors"))
      assert length(shards) == 4
      assert m.file_bytes == shards |> Enum.map(&File.stat!(&1).size) |> Enum.sum()
      assert {m.n_head_kv, m.head_dim_k, m.context_length} == {8, 128, 131_072}

      # One shard alone is read with the same config: its blocks only.
      assert {:ok, first} = Model.read(hd(shards))
      assert first.n_layers == 32
      assert Enum.count(first.layer_bytes, &(&1 > 0)) < 32
    end

    test "a shard the index names but that is missing is :enoent", %{dir: dir} do
      dir = subdir(dir, "missing-shard")
      ModelFixtures.llama_sharded!(dir)
      File.rm!(Path.join(dir, "model-00003-of-00004.safetensors"))
      assert Model.read(dir) == {:error, :enoent}
    end
  end

  describe "read/1 errors" do
    test "file system errors are File-style atoms", %{dir: dir} do
      assert Model.read(Path.join(dir, "nope.gguf")) == {:error, :enoent}
      file = Path.join(dir, "plain.txt")
      File.write!(file, "x")
      assert Model.read(Path.join(file, "model.gguf")) == {:error, :enotdir}
    end

    test "a header whose tensors run past the end of the file", %{dir: dir} do
      {header, _size} = GGUF.build([], [{"w", [64], "F32"}])
      path = Path.join(dir, "cut.gguf")
      File.write!(path, header)

      assert Model.read(path) ==
               {:error,
                {:invalid_model,
                 "tensor w occupies bytes 64..320, past the end of the file (57 bytes) at byte 24"}}
    end

    test "malformed safetensors and config.json say what and where", %{dir: dir} do
      dir = subdir(dir, "bad-config")
      Safetensors.write!(Path.join(dir, "model.safetensors"), [{"w", "F16", [2]}])
      File.write!(Path.join(dir, "config.json"), ~s({"num_hidden_layers": "32"}))

      assert {:error,
              {:invalid_model, "config.json: num_hidden_layers: invalid type: string" <> rest}} =
               Model.read(dir)

      assert rest =~ ~r/at byte 2\d$/
      File.write!(Path.join(dir, "model.safetensors"), <<1_000::little-64, "{}">>)
      File.rm!(Path.join(dir, "config.json"))

      assert Model.read(dir) ==
               {:error,
                {:invalid_model,
                 "header length 1000 runs past the end of the file (10 bytes) at byte 0"}}
    end

    test "a folder without a model", %{dir: dir} do
      dir = subdir(dir, "empty")
      assert {:error, {:invalid_model, message}} = Model.read(dir)
      assert message =~ "holds no model.safetensors.index.json or model.safetensors"
    end

    test "a path that is not a string raises ArgumentError" do
      assert_raise ArgumentError, "invalid path: expected a path (a string), got: :model", fn ->
        Model.read(:model)
      end

      assert_raise ArgumentError, ~r/invalid path: expected a path without NUL bytes/, fn ->
        Model.read("a\0b")
      end
    end
  end
end
