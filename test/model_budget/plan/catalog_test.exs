defmodule ModelBudget.Plan.CatalogTest do
  use ExUnit.Case, async: true

  alias ModelBudget.Plan.Catalog

  describe "models/0" do
    test "parameter counts are the published totals" do
      params = Map.new(Catalog.models(), &{&1.name, &1.n_params})
      # Published sizes, in billions, to the digits given on the model cards.
      for {name, billions} <- [
            {"Llama-3.1-8B-Instruct-Q4_K_M", 8.03},
            {"Gemma-2-9B-it-Q4_K_M", 9.24},
            {"Qwen2.5-32B-Instruct-Q4_K_M", 32.76},
            {"Mixtral-8x7B-Instruct-v0.1-Q4_K_M", 46.70},
            {"Llama-3.1-70B-Instruct-Q4_K_M", 70.55}
          ] do
        assert Float.round(params[name] / 1.0e9, 2) == billions, name
      end

      # The same count ModelBudget.Model reads from a Gemma-2-9B-like file.
      assert params["Gemma-2-9B-it-Q4_K_M"] == 9_241_705_984
    end

    test "weights are within 1% of published Q4_K_M files, which add a header" do
      bytes = Map.new(Catalog.models(), &{&1.name, &1.weight_bytes})

      for {name, file} <- [
            {"Llama-3.1-8B-Instruct-Q4_K_M", 4_920_734_016},
            {"Qwen2.5-32B-Instruct-Q4_K_M", 19_851_336_192},
            {"Llama-3.1-70B-Instruct-Q4_K_M", 42_520_394_752}
          ] do
        assert abs(bytes[name] - file) / file < 0.01, "#{name}: #{bytes[name]} vs #{file}"
      end
    end

    test "byte counts add up the way ModelBudget.Model's do, heads as published" do
      head_dims = %{
        "Llama-3.1-8B-Instruct-Q4_K_M" => 128,
        "Gemma-2-9B-it-Q4_K_M" => 256,
        "Qwen2.5-32B-Instruct-Q4_K_M" => 128,
        "Mixtral-8x7B-Instruct-v0.1-Q4_K_M" => 128,
        "Llama-3.1-70B-Instruct-Q4_K_M" => 128
      }

      for m <- Catalog.models() do
        assert Enum.sum(m.layer_bytes) + m.input_bytes + m.output_bytes + m.other_bytes ==
                 m.weight_bytes

        assert length(m.layer_bytes) == m.n_layers
        assert {m.head_dim_k, m.head_dim_v} == {head_dims[m.name], head_dims[m.name]}
      end
    end

    test "each agrees with the recorded llama.cpp file of the same model" do
      dir = Path.expand("../../fixtures/llama_cpp_truth", __DIR__)

      for {short, recorded} <- [
            {"llama-3.1-8b", "llama-3.1-8b-Q4_K_M.gguf"},
            {"gemma-2-9b", "gemma-2-9b-Q4_K_M.gguf"},
            {"mixtral-8x7b", "mixtral-8x7b-Q4_K_M.gguf"}
          ] do
        {:ok, model} = Catalog.fetch(short)
        {:ok, truth} = ModelBudget.Model.from_gguf_header(File.read!(Path.join(dir, recorded)))
        # Everything but the name, the header's own size and the file type
        # (which neither header names: the catalog's are all Q4_K_M).
        assert model.file_type == "Q4_K_M"
        assert truth.file_type == nil

        assert %{model | name: nil, file_bytes: 0, file_type: nil} == %{
                 truth
                 | name: nil,
                   file_bytes: 0
               }
      end
    end

    test "shapes: GQA heads, Gemma-2's window on even layers, Mixtral's experts" do
      {:ok, gemma} = Catalog.fetch("gemma-2-9b")

      assert {gemma.sliding_window, Enum.take(gemma.sliding_window_layers, 4)} ==
               {4096, [true, false, true, false]}

      assert gemma.tied_embeddings
      {:ok, mixtral} = Catalog.fetch("mixtral-8x7b")
      assert {mixtral.n_experts, mixtral.n_experts_used, mixtral.sliding_window} == {8, 2, nil}
      {:ok, llama} = Catalog.fetch("llama-3.1-8b")
      # Placed at 8192 tokens of f16 KV: exactly 1 GiB of cache (GQA: 8 KV heads).
      assert ModelBudget.breakdown(llama, [n_ctx: 8192, n_parallel: 1], 0).ram.kv_cache == 2 ** 30
    end
  end

  describe "fetch/1" do
    test "full and short names in any case" do
      for name <- ["llama-3.1-70b", "LLAMA-3.1-70B", "Llama-3.1-70B-Instruct-Q4_K_M"] do
        assert {:ok, %{n_layers: 80}} = Catalog.fetch(name)
      end

      assert Catalog.fetch("llama") == :error
    end
  end
end
