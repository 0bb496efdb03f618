defmodule ModelBudget.Plan.ArgsTest do
  use ExUnit.Case, async: true

  alias ModelBudget.Plan.Args
  doctest Args

  @gib 2 ** 30

  describe "parse/1" do
    test "every load option, under the names distribute/3 takes" do
      argv =
        ~w(a.gguf b --n-gpu-layers 20 --split-mode row --tensor-split 3,1.5 --main-gpu 1 --ctx 4096
           --parallel 2 --cache-type-k q8_0 --cache-type-v q4_0 --no-kv-offload --budget 48GiB)

      assert {:ok, %{plan: plan, json: false}} = Args.parse(argv)
      assert plan[:models] == ["a.gguf", "b"]
      assert plan[:budget] == 48 * @gib

      assert plan[:load] == [
               n_gpu_layers: 20,
               split_mode: :row,
               tensor_split: [3, 1.5],
               main_gpu: 1,
               n_ctx: 4096,
               n_parallel: 2,
               cache_type_k: :q8_0,
               cache_type_v: :q4_0,
               offload_kqv: false
             ]
    end

    test "llama.cpp's spellings" do
      argv =
        ~w(-ngl 5 -sm layer -ts 1,1 -mg 0 -c 100 -np 3 -ctk q8_0 -ctv q8_0 -nkvo --ctx-size 200)

      {:ok, %{plan: plan}} = Args.parse(argv)
      assert plan[:load][:n_gpu_layers] == 5
      assert plan[:load][:split_mode] == :layer
      # The last of a repeated switch wins.
      assert plan[:load][:n_ctx] == 200
      assert plan[:load][:offload_kqv] == false
    end

    test "--json and the defaults" do
      assert Args.parse(["--json"]) ==
               {:ok, %{plan: [models: [], budget: :auto, load: []], json: true, extra: []}}
    end
  end

  describe "parse/2" do
    test "the caller's own switches come back apart, in order; unknown without them" do
      extra = [cluster: :string, connect: :keep, wait: :integer]
      argv = ~w(--cluster c --connect a@h -c 4096 --connect b@h --json m.gguf --wait 10)

      assert Args.parse(argv, extra) ==
               {:ok,
                %{
                  plan: [models: ["m.gguf"], budget: :auto, load: [n_ctx: 4096]],
                  json: true,
                  extra: [cluster: "c", connect: "a@h", connect: "b@h", wait: 10]
                }}

      assert Args.parse(["--wait", "soon"], extra) ==
               {:error, "--wait: expected an integer, got: soon"}

      assert Args.parse(["--cluster", "c"]) == {:error, "unknown option --cluster"}
    end
  end

  describe "budget/1" do
    test "auto, unlimited, one pool, per device" do
      assert Args.budget("auto") == {:ok, :auto}
      assert Args.budget("unlimited") == {:ok, :infinity}
      assert Args.budget("1.5GB") == {:ok, 1_500_000_000}

      assert Args.budget("ram=64GiB,vram=24GiB:unlimited") ==
               {:ok, %{ram: 64 * @gib, vram: [24 * @gib, :infinity]}}

      assert Args.budget("vram=none,ram=unlimited") == {:ok, %{ram: :infinity, vram: []}}
      assert Args.budget("ram=8GiB") == {:ok, %{ram: 8 * @gib, vram: :auto}}
    end

    test "refusals say which part is wrong" do
      assert {:error, "--budget: ram=: invalid size: " <> _} = Args.budget("ram=")

      assert {:error, "--budget: vram: expected ram=SIZE or vram=SIZE:SIZE..."} =
               Args.budget("ram=1GiB,vram")

      assert {:error, "--budget: expected a positive size for one pool, got: 0KB"} =
               Args.budget("0KB")
    end
  end

  describe "switch_names/0" do
    test "errors from a plan name the switch instead of the option" do
      names = Args.switch_names()

      run = fn load ->
        ModelBudget.Native.Errors.with_names(names, fn ->
          ModelBudget.Plan.run(models: ["llama-3.1-8b"], load: load, machine: machine())
        end)
      end

      assert {:error, "invalid --ctx-size: expected a positive integer below 2^64, got: 0"} =
               run.(n_ctx: 0)

      assert {:error, "invalid --parallel: expected a positive integer below 2^64, got: 0"} =
               run.(n_parallel: 0)

      # Outside, the same error names the option.
      assert {:error, "invalid option :n_ctx: " <> _} =
               ModelBudget.Plan.run(
                 models: ["llama-3.1-8b"],
                 load: [n_ctx: 0],
                 machine: machine()
               )
    end
  end

  defp machine do
    %{
      memory: %{total: 2 ** 36, available: 2 ** 36, limit: 2 ** 36},
      gpus: [%{gpu_index: 0, memory_free: 2 ** 34}],
      gpu_status: {:ok, "test", 1}
    }
  end
end
