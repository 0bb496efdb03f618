defmodule ModelBudget.PlanTest do
  use ExUnit.Case, async: true

  alias ModelBudget.Plan
  alias ModelBudget.Plan.Catalog
  alias ModelBudget.Test.PlanFixtures

  @gib 2 ** 30

  # The budgets below are sized for one slot, no prompt cache and no
  # repacked weights (which types repack depends on the CPU): pinned, so the
  # verdicts are the same on any machine.
  @pinned [n_parallel: 1, cache_ram: 0, repack: false]

  defp fetch!(name) do
    {:ok, model} = Catalog.fetch(name)
    model
  end

  describe "run/1" do
    test "plans on the machine's GPUs, with :auto VRAM from their free memory" do
      machine = PlanFixtures.machine(64, [20, 10])

      # 8192 tokens: the trained 131072 would not fit the 10 GiB GPU.
      load = [split_mode: :layer, n_ctx: 8192]
      {:ok, plan} = Plan.run(models: ["llama-3.1-8b"], load: load, machine: machine)

      assert plan.n_gpus == 2

      assert plan.budget == %{
               mode: :per_device,
               ram: div(64 * @gib * 4, 5),
               vram: %{0 => 20 * @gib, 1 => 10 * @gib}
             }

      [entry] = plan.models
      assert entry.fits
      assert Enum.map(entry.devices, & &1.device) == [:ram, {:gpu, 0}, {:gpu, 1}]

      assert Enum.map(entry.devices, & &1.available) == [
               div(64 * @gib * 4, 5),
               20 * @gib,
               10 * @gib
             ]

      # The devices are the model-aware breakdown.
      b = ModelBudget.breakdown(fetch!("llama-3.1-8b"), load, 2)

      assert Enum.map(entry.devices, & &1.total) == [
               b.ram.total,
               b.vram[0].total,
               b.vram[1].total
             ]
    end

    test "listed VRAM limits plan for that many GPUs, whatever the machine has" do
      machine = PlanFixtures.machine(64)

      {:ok, plan} =
        Plan.run(
          models: ["llama-3.1-8b"],
          budget: %{ram: :auto, vram: [8 * @gib]},
          machine: machine
        )

      assert plan.n_gpus == 1
      assert [%{device: :ram}, %{device: {:gpu, 0}}] = hd(plan.models).devices

      {:ok, plan} =
        Plan.run(
          models: ["llama-3.1-8b"],
          budget: %{ram: :auto, vram: %{2 => @gib}},
          machine: machine
        )

      assert plan.n_gpus == 3
    end

    test "built-in models are each checked alone; given models are folded" do
      machine = PlanFixtures.machine(64)
      budget = %{ram: 10 * @gib, vram: []}
      {:ok, alone} = Plan.run(budget: budget, machine: machine)
      refute alone.together
      assert Enum.map(alone.models, & &1.name) == Enum.map(Catalog.models(), & &1.name)
      assert Enum.all?(alone.models, &(hd(&1.devices).available == 10 * @gib))

      {:ok, together} =
        Plan.run(
          models: ["llama-3.1-8b", "llama-3.1-8b"],
          budget: budget,
          load: [n_ctx: 8192] ++ @pinned,
          machine: machine
        )

      assert together.together
      [first, second] = together.models
      assert first.fits and not second.fits
      assert hd(second.devices).available == 10 * @gib - hd(first.devices).total
      assert [%{device: :ram, short_by: short_by}] = second.short
      assert short_by == hd(second.devices).total - hd(second.devices).available
    end

    test "suggestions are the search's answers" do
      machine = PlanFixtures.machine(64)
      budget = %{ram: 6 * @gib, vram: []}
      load = [n_ctx: 16_384] ++ @pinned

      {:ok, plan} =
        Plan.run(models: ["llama-3.1-8b"], budget: budget, load: load, machine: machine)

      [entry] = plan.models
      target = %{budget: plan.budget, used: ModelBudget.empty_usage(), n_gpus: 0}
      found = Plan.fit_search(fetch!("llama-3.1-8b"), load, target)
      assert entry.suggestions == [n_ctx: found.longest_context, cache_type: found.cache_type]
      assert entry.longest_context == found.longest_context

      # llama-server's 8 GiB prompt cache, in 8 GiB: a smaller one fits.
      budget = %{ram: 8 * @gib, vram: []}
      load = [n_ctx: 8192, n_parallel: 1, repack: false]

      {:ok, plan} =
        Plan.run(models: ["llama-3.1-8b"], budget: budget, load: load, machine: machine)

      target = %{target | budget: plan.budget}
      found = Plan.fit_search(fetch!("llama-3.1-8b"), load, target)
      assert found.cache_ram in 1..(8192 * 2 ** 20 - 1)
      assert {:cache_ram, found.cache_ram} in hd(plan.models).suggestions
    end

    test "each model's file type and bits per weight" do
      {:ok, plan} = Plan.run(models: ["llama-3.1-8b"], machine: PlanFixtures.machine(64))
      [entry] = plan.models
      model = fetch!("llama-3.1-8b")
      assert entry.bits_per_weight == model.weight_bytes * 8 / model.n_params
      # Q4_K_M: Q4_K with some Q6_K, about 4.9 bits a weight, as llama.cpp reports.
      assert_in_delta entry.bits_per_weight, 4.89, 0.05
      assert entry.file_type == "Q4_K_M"
      assert %{file_type: "Q4_K_M", bits_per_weight: bpw} = hd(Plan.to_json(plan).models)
      assert bpw == entry.bits_per_weight
    end

    test "bad input is an error message, not an exception" do
      machine = PlanFixtures.machine(64)

      assert {:error, "--main-gpu 3: --budget names 1 GPU"} =
               Plan.run(
                 models: ["llama-3.1-8b"],
                 budget: %{ram: :auto, vram: [@gib]},
                 load: [main_gpu: 3],
                 machine: machine
               )

      assert {:error, "invalid memory budget: " <> _} = Plan.run(budget: "8GB", machine: machine)

      assert {:error, "nope: no such file, and not a built-in model" <> _} =
               Plan.run(models: ["nope"], machine: machine)
    end
  end

  describe "run/1 and the GPUs" do
    test "a GPU beyond the machine's is refused unless the budget lists VRAM for it" do
      run = fn machine, budget, load ->
        Plan.run(models: ["llama-3.1-8b"], budget: budget, load: load, machine: machine)
      end

      hint = "(name them with --budget vram=... to plan for another machine)"
      none = PlanFixtures.machine(64)

      assert run.(none, :auto, main_gpu: 1) ==
               {:error, "--main-gpu 1: this machine has 0 GPUs #{hint}"}

      assert run.(PlanFixtures.machine(64, [8, 8]), :auto, main_gpu: 2) ==
               {:error, "--main-gpu 2: this machine has 2 GPUs #{hint}"}

      assert run.(PlanFixtures.machine(64, [8]), %{ram: :auto, vram: :infinity}, main_gpu: 1) ==
               {:error, "--main-gpu 1: this machine has 1 GPU #{hint}"}

      assert run.(none, 48 * @gib, tensor_split: [3, 1]) ==
               {:error, "--tensor-split 3,1: 2 weights, and this machine has 0 GPUs #{hint}"}

      assert run.(none, %{ram: :auto, vram: []}, main_gpu: 1) ==
               {:error, "--main-gpu 1: --budget names 0 GPUs"}

      # GPU 0, the default, is no GPU to refuse; GPUs the budget lists are planned for.
      assert {:ok, %{n_gpus: 0}} = run.(none, :auto, main_gpu: 0)

      assert {:ok, %{n_gpus: 2}} =
               run.(none, %{ram: :auto, vram: [@gib, @gib]}, main_gpu: 1, tensor_split: [1, 1])
    end
  end

  describe "run/1 and folders" do
    setup do
      dir =
        Path.join(System.tmp_dir!(), "model_budget_plan_#{System.unique_integer([:positive])}")

      File.mkdir_p!(dir)
      on_exit(fn -> File.rm_rf!(dir) end)
      %{dir: dir}
    end

    test "a folder of GGUF files is each model in it, in name order", %{dir: dir} do
      PlanFixtures.tiny_gguf!(Path.join(dir, "b.gguf"), "B")
      PlanFixtures.tiny_gguf!(Path.join(dir, "a.gguf"), "A")
      File.write!(Path.join(dir, "README.md"), "not a model")
      machine = PlanFixtures.machine(64)
      {:ok, plan} = Plan.run(models: [dir], machine: machine)
      assert plan.together

      assert Enum.map(plan.models, &{&1.name, &1.source}) == [
               {"A", Path.join(dir, "a.gguf")},
               {"B", Path.join(dir, "b.gguf")}
             ]
    end

    test "sources/1: a split model once, by its first split", %{dir: dir} do
      for name <- ~w(m-00001-of-00002.gguf m-00002-of-00002.gguf x.gguf lone-00002-of-00003.gguf),
          do: File.write!(Path.join(dir, name), "")

      assert Plan.sources([dir, "llama-3.1-8b"]) ==
               {:ok,
                [
                  {Path.join(dir, "lone-00002-of-00003.gguf"),
                   {:path, Path.join(dir, "lone-00002-of-00003.gguf")}},
                  {Path.join(dir, "m-00001-of-00002.gguf"),
                   {:path, Path.join(dir, "m-00001-of-00002.gguf")}},
                  {Path.join(dir, "x.gguf"), {:path, Path.join(dir, "x.gguf")}},
                  {"llama-3.1-8b", {:model, fetch!("llama-3.1-8b")}}
                ]}

      # With safetensors beside them, a folder is one (safetensors) model.
      File.write!(Path.join(dir, "model.safetensors"), "")
      assert Plan.sources([dir]) == {:ok, [{dir, {:path, dir}}]}
    end
  end

  describe "search/3" do
    setup do
      %{model: fetch!("llama-3.1-8b"), empty: ModelBudget.empty_usage()}
    end

    test "a model that fits: no shortfall, the trained context", %{model: model, empty: empty} do
      target = %{budget: ModelBudget.resolve(%{ram: 64 * @gib, vram: []}), used: empty, n_gpus: 0}

      # llama-server's default context is the trained one.
      assert Plan.fit_search(model, [], target) ==
               %{
                 short: [],
                 n_ctx: 131_072,
                 longest_context: 131_072,
                 n_gpu_layers: nil,
                 cache_type: nil,
                 cache_ram: nil
               }
    end

    test "the longest context fits and one more token does not", %{model: model, empty: empty} do
      budget = ModelBudget.resolve(%{ram: 6 * @gib, vram: []})
      target = %{budget: budget, used: empty, n_gpus: 0}

      opts = [n_ctx: 65_536] ++ @pinned

      %{longest_context: n, short: [[device: :ram, required: r, available: a, short_by: by]]} =
        Plan.fit_search(model, opts, target)

      assert by == r - a and by > 0

      fits? = fn ctx ->
        placement = ModelBudget.distribute(model, Keyword.put(opts, :n_ctx, ctx), 0)
        ModelBudget.check(budget, placement, empty) == :ok
      end

      # llama.cpp pads the context to 256 cells: n + 1 takes 256 more.
      assert rem(n, 256) == 0
      assert fits?.(n)
      refute fits?.(n + 1)
    end

    test "the most GPU layers that fit, and every short device", %{model: model, empty: empty} do
      budget = ModelBudget.resolve(%{ram: 64 * @gib, vram: [2 * @gib, 2 * @gib]})
      target = %{budget: budget, used: empty, n_gpus: 2}
      opts = [split_mode: :layer]
      found = Plan.fit_search(model, opts, target)

      assert [
               [device: {:gpu, 0}, required: _, available: _, short_by: _],
               [device: {:gpu, 1}, required: _, available: _, short_by: _]
             ] = found.short

      k = found.n_gpu_layers

      fits? = fn k ->
        ModelBudget.check(
          budget,
          ModelBudget.distribute(model, [n_gpu_layers: k] ++ opts, 2),
          empty
        ) == :ok
      end

      assert fits?.(k)
      refute Enum.any?((k + 1)..33, fits?)
    end

    test "bad options raise ArgumentError", %{model: model, empty: empty} do
      target = %{budget: %{mode: :unlimited}, used: empty, n_gpus: 1}

      assert_raise ArgumentError,
                   "invalid option :cache_type_k: expected :f32, :f16, :bf16, :q8_0, :q4_0, :q4_1, :q5_0, :q5_1 or :iq4_nl, got: :q9",
                   fn ->
                     Plan.fit_search(model, [cache_type_k: :q9], target)
                   end
    end
  end

  describe "exit_status/1" do
    test "0 when everything fits, 1 otherwise" do
      machine = PlanFixtures.machine(64)

      run = fn ram ->
        Plan.run(
          models: ["llama-3.1-8b"],
          budget: %{ram: ram, vram: []},
          load: [n_ctx: 8192] ++ @pinned,
          machine: machine
        )
      end

      {:ok, fits} = run.(8 * @gib)
      {:ok, short} = run.(4 * @gib)

      assert {Plan.exit_status(fits), Plan.exit_status(short)} == {0, 1}
    end
  end

  describe "to_json/1" do
    test "JSON-ready data that ModelBudget.JSON encodes" do
      machine = PlanFixtures.machine(64, [20])

      {:ok, plan} =
        Plan.run(
          models: ["llama-3.1-8b"],
          budget: %{ram: 8 * @gib, vram: :infinity},
          machine: machine
        )

      data = Plan.to_json(plan)
      assert data.budget == %{mode: "per_device", ram: 8 * @gib, vram: nil}

      assert data.machine.gpus == [
               %{index: 0, name: "Test GPU 0", total: 80 * @gib, free: 20 * @gib}
             ]

      assert data.machine.gpu_status == %{
               available: true,
               driver: "550.54",
               count: 1,
               reason: nil
             }

      [model] = data.models

      assert Enum.map(model.devices, &{&1.device, &1.gpu, &1.available}) == [
               {"ram", nil, 8 * @gib},
               {"gpu", 0, nil}
             ]

      {:ok, decoded} = data |> ModelBudget.JSON.encode!() |> ModelBudget.JSON.decode()
      assert decoded["models"] |> hd() |> Map.fetch!("devices") |> length() == 2
    end
  end
end
