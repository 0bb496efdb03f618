defmodule Mix.Tasks.ModelBudget.PlanTest do
  # Runs the task itself, as `mix model_budget.plan` does, with its output
  # captured and its exit caught.
  use ExUnit.Case, async: true

  alias ModelBudget.Test.PlanFixtures

  @gib 2 ** 30
  @names [
    "Llama-3.1-8B-Instruct-Q4_K_M",
    "Gemma-2-9B-it-Q4_K_M",
    "Qwen2.5-32B-Instruct-Q4_K_M",
    "Mixtral-8x7B-Instruct-v0.1-Q4_K_M",
    "Llama-3.1-70B-Instruct-Q4_K_M"
  ]

  # The budgets below are sized for one slot, no prompt cache and no
  # repacked weights (which types repack depends on the CPU): pinned, so the
  # verdicts are the same on any machine. Add --ctx where the context matters.
  @pinned ~w(--parallel 1 --cache-ram 0 --no-repack)

  # No limit, and RAM only: `--budget unlimited` plans for this machine's
  # GPUs (llama-server offloads every layer by default), so a test that
  # reads the RAM device, or its only device, names no GPU.
  @ram_only "ram=unlimited,vram=none"

  # {exit status, stdout, stderr}
  defp plan(args), do: ModelBudget.Test.MixTask.run(Mix.Tasks.ModelBudget.Plan, args)

  defp json(args) do
    {status, stdout, ""} = plan(["--json" | args])
    {:ok, report} = ModelBudget.JSON.decode(stdout)
    {status, report}
  end

  setup_all do
    dir =
      Path.join(System.tmp_dir!(), "model_budget_plan_task_#{System.unique_integer([:positive])}")

    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf!(dir) end)
    gguf = PlanFixtures.tiny_gguf!(Path.join(dir, "tiny.gguf"))
    other = PlanFixtures.tiny_gguf!(Path.join(dir, "other.gguf"), "Other Tiny")
    safetensors = PlanFixtures.tiny_safetensors!(Path.join(dir, "qwen-tiny"))
    %{dir: dir, gguf: gguf, other: other, safetensors: safetensors}
  end

  describe "the default run" do
    test "shows this machine, its budget and every built-in model with a verdict" do
      {status, out, ""} = plan([])
      memory = ModelBudget.system_memory()
      assert out =~ "This machine"
      assert out =~ "RAM         #{ModelBudget.Format.bytes(memory.total)} physical"
      assert out =~ "#{ModelBudget.Format.bytes(memory.limit)} limit"
      # :auto: 80% of the memory this process may use, and each GPU's free memory.
      auto_ram = ModelBudget.Format.bytes(div(memory.limit * 80, 100))
      assert out =~ ~r/Budget      RAM #{Regex.escape(auto_ram)}; (no GPUs|GPU 0: )/

      assert out =~
               "Options     llama-server's defaults (n_gpu_layers 99, split_mode none, the trained context, 4 slots sharing an f16 KV cache, an 8192 MiB prompt cache)\n"

      assert out =~ "Built-in models, each on its own"

      for name <- @names do
        assert out =~ ~r/^#{Regex.escape(name)}: (FITS|DOES NOT FIT)/m
      end

      # Plain text when not on a terminal.
      refute out =~ "\e["
      # 1 exactly when something does not fit.
      assert status == if(out =~ "DOES NOT FIT", do: 1, else: 0)
    end

    test "with a budget: exit 0 when everything fits, 1 when something does not" do
      {0, out, _} = plan(["--budget", "ram=1TiB,vram=none"])
      assert out =~ "All 5 fit."
      refute out =~ "DOES NOT FIT"

      {1, out, _} = plan(["--budget", "ram=16GiB,vram=none", "--ctx", "8192" | @pinned])
      assert out =~ "Llama-3.1-8B-Instruct-Q4_K_M: FITS"
      assert out =~ "Llama-3.1-70B-Instruct-Q4_K_M: DOES NOT FIT: RAM is short by"
      assert out =~ "2 of 5 fit."
      # Each built-in model is checked alone: none is refused for another's sake.
      refute out =~ "refused"
    end
  end

  describe "files" do
    test "a GGUF file: read from its header and placed block by block", %{gguf: gguf} do
      # No prompt cache: llama-server's 8 GiB of it would not fit in 1 GiB.
      {0, out, ""} = plan([gguf.path, "--budget", "ram=1GiB,vram=none", "--cache-ram", "0"])
      assert out =~ "Models together, in order"
      assert out =~ "Tiny Llama: FITS"

      assert out =~
               "Context 4096 tokens (4 slots sharing one KV cache): the longest that fits is 4096; trained: 4096."

      {0, report} = json([gguf.path, "--budget", "ram=1GiB,vram=none", "--cache-ram", "0"])
      [model] = report["models"]
      assert model["source"] == gguf.path
      assert model["architecture"] == "llama"
      assert model["n_layers"] == 2

      assert model["weight_bytes"] ==
               gguf.input_bytes + Enum.sum(gguf.layer_bytes) + gguf.output_bytes

      [ram] = model["devices"]
      assert ram["weights"] == model["weight_bytes"]
      # 4096 tokens x 2 layers x (2 KV heads x 64) x (K + V) x 2 bytes (f16):
      # the default 4 slots share one cache of the trained context.
      assert ram["kv_cache"] == 4096 * 2 * 128 * 2 * 2
      assert ram["prompt_cache"] == 0
    end

    test "a safetensors folder with its config.json", %{safetensors: dir} do
      {0, report} =
        json([dir, "--budget", "ram=1GiB,vram=none", "--ctx", "1024", "--cache-ram", "0"])

      [model] = report["models"]
      assert model["architecture"] == "qwen2"
      assert model["name"] == "qwen-tiny"
      assert model["trained_context"] == 2048
      assert model["n_ctx"] == 1024
      assert model["longest_context"] == 2048
      # 1024 tokens x 2 layers x 64 (one KV head) x (K + V) x 2 bytes.
      assert hd(model["devices"])["kv_cache"] == 1024 * 2 * 64 * 2 * 2
    end

    test "a file that cannot be read is bad input", %{dir: dir} do
      path = Path.join(dir, "old.gguf")
      File.write!(path, "GGUF" <> <<1::little-32>>)
      {2, "", err} = plan([path])

      assert err ==
               "mix model_budget.plan: #{path}: GGUF version 1 is not supported (versions 2 and 3 are) at byte 4\n"
    end

    test "a file that is neither GGUF nor safetensors says so, whatever its name", %{dir: dir} do
      for {name, bytes, starts} <- [
            {"text.gguf", "hello world\n", ~s("hello wo")},
            {"binary.safetensors", <<0, 1, 255>>, ~s("\\x00\\x01\\xff")}
          ] do
        path = Path.join(dir, name)
        File.write!(path, bytes)
        {2, "", err} = plan([path])

        assert err ==
                 "mix model_budget.plan: #{path}: not a GGUF or safetensors file: it starts with #{starts} at byte 0\n"
      end

      # A safetensors file, cut short, keeps its own error.
      path = Path.join(dir, "cut.safetensors")
      File.write!(path, <<1_000::little-64, "{}">>)
      {2, "", err} = plan([path])

      assert err ==
               "mix model_budget.plan: #{path}: header length 1000 runs past the end of the file (10 bytes) at byte 0\n"
    end

    test "a folder of GGUF files: each model in it, a split model once", %{dir: dir} do
      folder = Path.join(dir, "ggufs")
      File.mkdir_p!(folder)
      PlanFixtures.tiny_gguf!(Path.join(folder, "b-tiny.gguf"), "B Tiny")
      PlanFixtures.split_tiny_gguf!(folder, "split")
      PlanFixtures.tiny_gguf!(Path.join(folder, "a-tiny.gguf"), "A Tiny")
      args = [folder, "--budget", "ram=1GiB,vram=none", "--cache-ram", "0"]

      {0, out, ""} = plan(args)
      assert out =~ "A Tiny: FITS"
      assert out =~ "B Tiny: FITS"
      assert out =~ "Split Tiny: FITS"
      assert out =~ "All 3 fit together."

      {0, report} = json(args)

      assert Enum.map(report["models"], &{&1["name"], Path.basename(&1["source"])}) == [
               {"A Tiny", "a-tiny.gguf"},
               {"B Tiny", "b-tiny.gguf"},
               {"Split Tiny", "split-00001-of-00002.gguf"}
             ]

      # The split model is read whole: as the tiny model in one file. Its
      # header names its file type (Q8_0), the others' do not.
      [a, _b, split] = report["models"]
      assert split["weight_bytes"] == a["weight_bytes"]
      assert {a["file_type"], split["file_type"]} == {nil, "Q8_0"}
      assert out =~ ~r/\n  Split Tiny +Q8_0 /

      # A split whose others are missing says so.
      File.rm!(Path.join(folder, "split-00001-of-00002.gguf"))
      {2, "", err} = plan(args)

      assert err ==
               "mix model_budget.plan: #{Path.join(folder, "split-00002-of-00002.gguf")}: one of its other splits is missing (no such file or directory)\n"
    end

    test "a missing path that is no built-in name is bad input" do
      {2, "", err} = plan(["/no/such/model.gguf"])

      assert err =~
               ~r{^mix model_budget.plan: /no/such/model.gguf: no such file, and not a built-in model \(llama-3.1-8b, .*\)\n$}
    end
  end

  describe "several models" do
    test "are folded in order; the ones that do not fit are refused and take nothing",
         %{gguf: gguf, other: other} do
      # 8 GiB: the tiny model and Llama-3.1-8B (5.9 GiB) fit, Qwen2.5-32B is
      # refused, and the second tiny model still fits after it.
      args =
        [
          gguf.path,
          "llama-3.1-8b",
          "qwen2.5-32b",
          other.path,
          "--budget",
          "ram=8GiB,vram=none",
          "--ctx",
          "8192"
        ] ++ @pinned

      {1, out, ""} = plan(args)
      assert out =~ "Tiny Llama: FITS"
      assert out =~ "Llama-3.1-8B-Instruct-Q4_K_M: FITS"
      assert out =~ "Qwen2.5-32B-Instruct-Q4_K_M: DOES NOT FIT: RAM is short by"
      assert out =~ ~r/Qwen2.5-32B-Instruct-Q4_K_M .* DOES NOT FIT \(refused\)/
      assert out =~ "Other Tiny: FITS"
      assert out =~ "3 of 4 fit together; refused: Qwen2.5-32B-Instruct-Q4_K_M."

      {1, report} = json(args)
      [tiny, llama, qwen, other_tiny] = report["models"]
      ram_total = fn m -> Enum.find(m["devices"], &(&1["device"] == "ram"))["total"] end
      ram_left = fn m -> Enum.find(m["devices"], &(&1["device"] == "ram"))["available"] end
      assert ram_left.(tiny) == 8 * @gib
      assert ram_left.(llama) == 8 * @gib - ram_total.(tiny)
      assert ram_left.(qwen) == 8 * @gib - ram_total.(tiny) - ram_total.(llama)
      # The refused model took nothing.
      assert ram_left.(other_tiny) == ram_left.(qwen)
      assert [%{"device" => "ram", "short_by" => short_by}] = qwen["short"]
      assert short_by == ram_total.(qwen) - ram_left.(qwen)
    end

    test "the same models all fit together in a larger budget", %{gguf: gguf, other: other} do
      {0, out, ""} =
        plan(
          [
            gguf.path,
            other.path,
            "llama-3.1-8b",
            "--budget",
            "ram=32GiB,vram=none",
            "--ctx",
            "8192"
          ] ++
            @pinned
        )

      assert out =~ "All 3 fit together."
    end
  end

  describe "--json" do
    test "the report, decoded and checked field by field" do
      args = ["llama-3.1-8b", "llama-3.1-70b", "--budget", "ram=32GiB,vram=24GiB:24GiB"]

      {1, report} =
        json(args ++ ["--split-mode", "layer", "--ctx", "16384", "--cache-type-k", "q8_0"])

      assert Map.keys(report) ==
               ~w(budget fits machine models n_gpus options runtime together)

      # No binary and no profile asked for: a native build's on this CPU.
      assert report["runtime"] == %{
               "cpu_buffers" => Atom.to_string(ModelBudget.cpu_buffers()),
               "build" => nil,
               "from" => "a native llama.cpp build on this CPU",
               "warning" => nil
             }

      assert report["fits"] == false
      assert report["together"] == true
      assert report["n_gpus"] == 2

      assert report["budget"] == %{
               "mode" => "per_device",
               "ram" => 32 * @gib,
               "vram" => %{"0" => 24 * @gib, "1" => 24 * @gib}
             }

      assert report["options"] == %{
               "split_mode" => "layer",
               "n_ctx" => 16_384,
               "cache_type_k" => "q8_0"
             }

      memory = ModelBudget.system_memory()
      assert report["machine"]["ram"]["total"] == memory.total
      assert report["machine"]["ram"]["limit"] == memory.limit
      assert is_integer(report["machine"]["ram"]["available"])
      assert report["machine"]["gpus"] == Enum.map(ModelBudget.devices(), &gpu_json/1)

      case ModelBudget.gpu_status() do
        {:ok, driver, count} ->
          assert report["machine"]["gpu_status"] ==
                   %{"available" => true, "driver" => driver, "count" => count, "reason" => nil}

        {:unavailable, reason} ->
          assert report["machine"]["gpu_status"] ==
                   %{"available" => false, "driver" => nil, "count" => 0, "reason" => reason}
      end

      [llama, big] = report["models"]
      {:ok, model} = ModelBudget.Plan.Catalog.fetch("llama-3.1-8b")

      assert Map.take(
               llama,
               ~w(name source architecture n_params weight_bytes n_layers trained_context fits n_ctx)
             ) ==
               %{
                 "name" => "Llama-3.1-8B-Instruct-Q4_K_M",
                 "source" => "built-in",
                 "architecture" => "llama",
                 "n_params" => model.n_params,
                 "weight_bytes" => model.weight_bytes,
                 "n_layers" => 32,
                 "trained_context" => 131_072,
                 "fits" => true,
                 "n_ctx" => 16_384
               }

      assert llama["short"] == []

      assert llama["suggestions"] == %{
               "n_gpu_layers" => nil,
               "n_ctx" => nil,
               "cache_type" => nil,
               "cache_ram" => nil
             }

      # The file type, and bits per weight.
      assert llama["file_type"] == "Q4_K_M"
      assert llama["bits_per_weight"] == model.weight_bytes * 8 / model.n_params

      # The devices are exactly ModelBudget.breakdown/3's, with what was left.
      opts = [split_mode: :layer, n_ctx: 16_384, cache_type_k: :q8_0]
      b = ModelBudget.breakdown(model, opts, 2)
      parts = ~w(weights amx kleidiai repack kv_cache compute output prompt_cache overhead total)

      expected =
        [
          {"ram", nil, b.ram, 32 * @gib},
          {"gpu", 0, b.vram[0], 24 * @gib},
          {"gpu", 1, b.vram[1], 24 * @gib}
        ]
        |> Enum.map(fn {device, gpu, share, left} ->
          share
          |> Map.new(fn {k, v} -> {Atom.to_string(k), v} end)
          |> Map.take(parts)
          |> Map.merge(%{"device" => device, "gpu" => gpu, "available" => left})
        end)

      assert llama["devices"] == expected

      # The 70B model comes after the 8B one and is short on both GPUs.
      assert big["fits"] == false
      assert [%{"device" => "gpu", "gpu" => 0}, %{"device" => "gpu", "gpu" => 1}] = big["short"]

      for s <- big["short"] do
        d = Enum.find(big["devices"], &(&1["gpu"] == s["gpu"]))
        assert s["required"] == d["total"]
        assert s["available"] == d["available"]
        assert s["short_by"] == s["required"] - s["available"]

        assert d["available"] ==
                 24 * @gib - Enum.find(llama["devices"], &(&1["gpu"] == s["gpu"]))["total"]
      end

      assert is_integer(big["suggestions"]["n_gpu_layers"])
    end

    test "a combined budget adds the pool as a \"total\" device" do
      # llama-server's defaults: the trained context, the prompt cache.
      {0, report} = json(["llama-3.1-8b", "--budget", "40GiB"])
      assert report["budget"] == %{"mode" => "combined", "limit" => 40 * @gib}
      [model] = report["models"]
      total = List.last(model["devices"])
      assert total["device"] == "total"
      assert total["available"] == 40 * @gib
      devices = Enum.drop(model["devices"], -1)
      assert Enum.all?(devices, &(&1["available"] == nil))
      assert total["prompt_cache"] == 8192 * 2 ** 20

      for part <- ~w(weights repack kv_cache compute output prompt_cache overhead total) do
        assert total[part] == devices |> Enum.map(& &1[part]) |> Enum.sum()
      end
    end
  end

  describe "suggestions" do
    # Every suggestion is checked by running the task again with it.
    test "a smaller context and a quantized KV cache, each of which fits" do
      args = ["llama-3.1-8b", "--budget", "ram=7GiB,vram=none"] ++ @pinned ++ ["--ctx", "32768"]
      {1, out, ""} = plan(args)
      assert out =~ "It fits with any one of:"
      {1, report} = json(args)
      [model] = report["models"]
      %{"n_ctx" => n, "cache_type" => type, "n_gpu_layers" => nil} = model["suggestions"]
      assert n == model["longest_context"] and n < 32_768
      assert out =~ "--ctx #{n}  "
      assert out =~ "--cache-type-k #{type} --cache-type-v #{type}"

      base = List.delete_at(List.delete_at(args, -1), -1)
      assert {0, _, _} = plan(base ++ ["--ctx", "#{n}"])
      assert {1, _, _} = plan(base ++ ["--ctx", "#{n + 1}"])
      assert {0, _, _} = plan(args ++ ["--cache-type-k", type, "--cache-type-v", type])
    end

    test "fewer GPU layers when the GPUs are short" do
      args =
        ["llama-3.1-70b", "--budget", "ram=64GiB,vram=16GiB:16GiB", "--split-mode", "layer"] ++
          ["--ctx", "8192" | @pinned]

      {1, report} = json(args)
      [model] = report["models"]
      k = model["suggestions"]["n_gpu_layers"]
      assert k in 1..79
      assert {0, _, _} = plan(args ++ ["--n-gpu-layers", "#{k}"])
      assert {1, _, _} = plan(args ++ ["--n-gpu-layers", "#{k + 1}"])
    end

    test "--ctx beyond the trained context warns, and the suggested context stays within it",
         %{gguf: gguf} do
      # A RAM budget that holds the tiny model (trained on 4096) at 6000 tokens.
      {0, report} = json([gguf.path, "--budget", @ram_only, "--ctx", "6000", "--no-kv-offload"])
      [%{"devices" => devices}] = report["models"]
      ram = Enum.find(devices, &(&1["device"] == "ram"))["total"]
      args = [gguf.path, "--budget", "ram=#{ram},vram=none", "--ctx", "8192"]

      {1, out, ""} = plan(args)
      assert out =~ "Warning: --ctx 8192 is beyond the 4096 tokens the model was trained on"
      {1, report} = json(args)
      [model] = report["models"]
      assert model["suggestions"]["n_ctx"] == 4096
      assert model["longest_context"] == 4096

      assert model["warnings"] == [
               %{"warning" => "n_ctx_beyond_trained", "n_ctx" => 8192, "trained_context" => 4096}
             ]

      {0, out, ""} = plan([gguf.path, "--budget", "unlimited", "--ctx", "4096"])
      refute out =~ "Warning"
    end

    test "a smaller prompt cache when the prompt cache is what does not fit" do
      # Gemma-2-9B at its trained 8192 tokens needs 7.5 GiB without
      # llama-server's 8 GiB prompt cache: with it, it does not fit 12 GiB.
      pinned = ~w(--parallel 1 --no-repack)
      args = ~w(gemma-2-9b --budget ram=12GiB,vram=none) ++ pinned
      {1, out, ""} = plan(args)
      {1, report} = json(args)
      [model] = report["models"]
      bytes = model["suggestions"]["cache_ram"]
      mib = div(bytes, 2 ** 20)
      assert bytes == mib * 2 ** 20 and mib in 1..8191
      assert out =~ ~r/--cache-ram #{mib} +the largest prompt cache that fits\n/
      assert {0, _, _} = plan(args ++ ["--cache-ram", "#{mib}"])
      assert {1, _, _} = plan(args ++ ["--cache-ram", "#{mib + 1}"])

      # Room for the model and not one MiB of prompt cache: none.
      {0, report} = json(~w(gemma-2-9b --budget #{@ram_only} --cache-ram 0) ++ pinned)
      ram = hd(hd(report["models"])["devices"])["total"]
      args = ["gemma-2-9b", "--budget", "ram=#{ram + 2 ** 19},vram=none" | pinned]
      {1, out, ""} = plan(args)
      {1, report} = json(args)
      assert hd(report["models"])["suggestions"]["cache_ram"] == 0
      assert out =~ ~r/--cache-ram 0 +no prompt cache\n/

      # Not when it is not the prompt cache that does not fit.
      {1, report} = json(~w(llama-3.1-70b --budget ram=8GiB,vram=none --ctx 8192))
      assert hd(report["models"])["suggestions"]["cache_ram"] == nil
    end

    test "none when even the weights do not fit" do
      {1, out, ""} = plan(["llama-3.1-70b", "--budget", "ram=8GiB,vram=none"])
      assert out =~ "no context fits"
      assert out =~ "No smaller context, KV cache type, prompt cache or GPU offload makes it fit."
    end
  end

  describe "options" do
    test "llama.cpp spellings and --no-kv-offload" do
      {0, report} =
        json([
          "llama-3.1-8b",
          "-ngl",
          "10",
          "-c",
          "2048",
          "-nkvo",
          "--budget",
          "ram=32GiB,vram=8GiB"
        ])

      assert report["options"] == %{"n_gpu_layers" => 10, "n_ctx" => 2048, "offload_kqv" => false}
      [model] = report["models"]
      [ram, gpu] = model["devices"]
      # Without KV offload the whole cache stays in RAM.
      assert gpu["kv_cache"] == 0
      assert ram["kv_cache"] == 2048 * 32 * 8 * 128 * 2 * 2
    end

    test "--parallel divides the context among slots unless they share one KV cache" do
      args = ["llama-3.1-8b", "--parallel", "4", "--ctx", "8192", "--budget", "unlimited"]
      {0, out, ""} = plan(args ++ ["--no-kv-unified"])
      assert out =~ "Context 8192 tokens (4 slots of 2048)"

      # llama-server's default: the slots share the whole context.
      {0, out, ""} = plan(args)
      assert out =~ "Context 8192 tokens (4 slots sharing one KV cache)"
      {0, out, ""} = plan(["llama-3.1-8b", "--budget", "unlimited"])
      assert out =~ "Context 131072 tokens (4 slots sharing one KV cache)"
    end

    test "llama-server's memory flags reach the load options" do
      flags = ~w(--cache-ram 0 --no-repack --kv-unified --batch-size 512 --ubatch-size 256
           --flash-attn off --no-mmap)

      {0, report} = json(["llama-3.1-8b", "--budget", @ram_only | flags])

      assert report["options"] == %{
               "cache_ram" => 0,
               "repack" => false,
               "kv_unified" => true,
               "n_batch" => 512,
               "n_ubatch" => 256,
               "flash_attn" => false,
               "mmap" => false
             }

      [%{"devices" => [ram]}] = report["models"]
      assert ram["prompt_cache"] == 0
      assert ram["repack"] == 0

      # The devices are ModelBudget.breakdown/3's under those options.
      {:ok, model} = ModelBudget.Plan.Catalog.fetch("llama-3.1-8b")

      opts = [
        cache_ram: 0,
        repack: false,
        kv_unified: true,
        n_batch: 512,
        n_ubatch: 256,
        flash_attn: false,
        mmap: false
      ]

      assert ram["total"] == ModelBudget.breakdown(model, opts, 0).ram.total
      # --cache-ram is in MiB, as llama-server's.
      {0, report} = json(["llama-3.1-8b", "--budget", @ram_only, "--cache-ram", "1024"])
      assert report["options"] == %{"cache_ram" => 2 ** 30}
      assert hd(hd(report["models"])["devices"])["prompt_cache"] == 2 ** 30
    end
  end

  describe "--help" do
    test "prints the usage, as mix help model_budget.plan does" do
      for flag <- ["--help", "-h"] do
        {0, out, ""} = plan(["llama-3.1-8b", flag])
        assert out =~ "mix model_budget.plan [PATH | NAME ...] [options]"
        assert out =~ "--n-gpu-layers N"
        refute out =~ "FITS"
      end
    end
  end

  describe "the runtime profile" do
    # llama.cpp b11434's buffers on a Sapphire Rapids Xeon for this model at
    # -c 4096 -np 1 (test/fixtures/truth/llama_server_b11434_x86_amx.json).
    @amx_mib 4491.48
    @mapped_mib 4274.33

    test "--cpu-buffers x86_amx: the AMX buffer within 1% of llama.cpp's, and the profile named" do
      args =
        ~w(llama-3.1-8b --ctx 4096 --parallel 1 --no-kv-unified --cache-ram 0 --budget #{@ram_only})

      {0, out, ""} = plan(args ++ ~w(--cpu-buffers x86_amx))
      assert out =~ "CPU buffers x86_amx (AMX, then CPU_REPACK; as asked)"
      assert out =~ ~r/\n  device\s+weights\s+AMX\s+repacked\s+KV cache/

      {0, report} = json(args ++ ~w(--cpu-buffers x86_amx))
      [%{"devices" => [ram]}] = report["models"]
      assert_in_delta ram["amx"] / 2 ** 20, @amx_mib, @amx_mib * 0.01
      assert_in_delta ram["weights"] / 2 ** 20, @mapped_mib, @mapped_mib * 0.01
      assert report["runtime"]["cpu_buffers"] == "x86_amx"

      # Without AMX there is no such column.
      {0, out, ""} = plan(args ++ ~w(--cpu-buffers x86_avx2))
      refute out =~ "AMX"
    end

    test "--llama-server: the profile the binary reports, and a warning for an old build", %{
      dir: dir
    } do
      fake = Path.join(dir, "old-llama-server")

      File.write!(fake, """
      #!/bin/sh
      echo "cmn  common_params_print_info: build 9000 (abc) with GNU 12 for Linux x86_64" >&2
      echo "cmn  common_param: system_info: n_threads = 2 / 2 | CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 1 | AVX512_VNNI = 1 | AMX_INT8 = 1 | REPACK = 1 |" >&2
      exit 1
      """)

      File.chmod!(fake, 0o755)

      {_, out, ""} =
        plan(["llama-3.1-8b", "--llama-server", fake] ++ (@pinned -- ["--no-repack"]))

      assert out =~ "CPU buffers x86_amx (AMX, then CPU_REPACK; llama-server b9000 (#{fake}))"

      assert out =~
               "Warning     llama.cpp build 9000 is older than the oldest recorded one (11434)"
    end
  end

  describe "GPUs the machine does not have" do
    # Named by the budget, they are planned for; otherwise refused.
    test "--main-gpu and --tensor-split beyond them are bad input" do
      n = length(ModelBudget.devices())
      has = if n == 1, do: "1 GPU", else: "#{n} GPUs"
      hint = "(name them with --budget vram=... to plan for another machine)"

      {2, "", err} = plan(["llama-3.1-8b", "--main-gpu", "#{n + 1}"])

      assert err ==
               "mix model_budget.plan: --main-gpu #{n + 1}: this machine has #{has} #{hint}\n"

      split = Enum.join(List.duplicate("1", n + 1), ",")
      {2, "", err} = plan(["llama-3.1-8b", "--tensor-split", split, "--budget", "unlimited"])

      assert err ==
               "mix model_budget.plan: --tensor-split #{split}: #{n + 1} weights, and this machine has #{has} #{hint}\n"

      vram = Enum.join(List.duplicate("8GiB", n + 2), ":")

      {_, report} =
        json(["llama-3.1-8b", "--main-gpu", "#{n + 1}", "--budget", "ram=64GiB,vram=#{vram}"])

      assert report["n_gpus"] == n + 2
      assert report["options"]["main_gpu"] == n + 1
    end
  end

  describe "bad input" do
    for {args, message} <- [
          {["--frobnicate"], "unknown option --frobnicate"},
          {["--ctx", "lots"], "--ctx-size: expected an integer, got: lots"},
          {["--ctx", "0"], "invalid --ctx-size: expected a positive integer below 2^64, got: 0"},
          {["--parallel", "0"],
           "invalid --parallel: expected a positive integer below 2^64, got: 0"},
          {["--n-gpu-layers", "all"], "--n-gpu-layers: expected an integer, got: all"},
          {["--split-mode", "diagonal"],
           "--split-mode: expected none, layer or row, got: diagonal"},
          {["--tensor-split", "3,x"],
           "--tensor-split: expected non-negative numbers such as 3,1, got: 3,x"},
          {["--tensor-split", "1,1,1", "--budget", "vram=8GiB:8GiB"],
           "--tensor-split 1,1,1: 3 weights, and --budget names 2 GPUs"},
          {["--tensor-split", "0,0", "--budget", "vram=8GiB:8GiB"],
           "invalid --tensor-split: needs at least one positive weight, got: [0.0, 0.0]"},
          {["--main-gpu", "2", "--budget", "vram=8GiB"], "--main-gpu 2: --budget names 1 GPU"},
          {["--main-gpu", "1", "--budget", "ram=8GiB,vram=none"],
           "--main-gpu 1: --budget names 0 GPUs"},
          {["--cache-type-v", "q9_9"],
           "--cache-type-v: expected f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1 or iq4_nl, got: q9_9"},
          {["--budget", "lots"],
           "--budget: invalid size: expected a byte count such as 24GiB, 1.5GB or 512 (units: KB, MB, GB, TB, KiB, MiB, GiB, TiB), got: \"lots\""},
          {["--budget", "0"], "--budget: expected a positive size for one pool, got: 0"},
          {["--budget", "ram=8GiB,disk=1TB"],
           "--budget: disk=1TB: expected ram=SIZE or vram=SIZE:SIZE..."},
          {["--budget", "ram=8GiB,ram=9GiB"], "--budget: ram=9GiB: given twice"},
          {["--budget", "vram=8GiB:x"],
           "--budget: vram=8GiB:x: invalid size: expected a byte count such as 24GiB, 1.5GB or 512 (units: KB, MB, GB, TB, KiB, MiB, GiB, TiB), got: \"x\""},
          {["--json=yes"], "--json: expected no value, got: yes"},
          {["--cache-ram", "-1"], "--cache-ram: expected a size in MiB (0 or more), got: -1"},
          {["--flash-attn", "sometimes"],
           "--flash-attn: expected on, off or auto, got: sometimes"},
          {["--batch-size", "0"],
           "invalid --batch-size: expected a positive integer below 2^64, got: 0"},
          {["--cpu-buffers", "amx"],
           "--cpu-buffers: expected auto, none, x86_avx2, x86_avx512, x86_amx, arm_dotprod or arm_kleidiai, got: amx"},
          {["--llama-server", "/nonexistent/llama-server"],
           "--llama-server /nonexistent/llama-server: no system_info line from it (:enoent)"}
        ] do
      test "#{Enum.join(args, " ")}" do
        {status, out, err} = plan(unquote(args))
        assert {status, out} == {2, ""}
        assert err == "mix model_budget.plan: " <> unquote(message) <> "\n"
      end
    end

    test "a model whose header lacks what placement needs", %{dir: dir} do
      path = Path.join(dir, "headless.gguf")

      ModelBudget.Test.GGUF.write!(path, [{"general.architecture", :string, "llama"}], [
        {"t", [32], "F32"}
      ])

      {2, "", err} = plan([path])
      assert err =~ ~r/^mix model_budget.plan: invalid model: .*\n$/
    end
  end

  defp gpu_json(g),
    do: %{
      "index" => g.gpu_index,
      "name" => g.name,
      "total" => g.memory_total,
      "free" => g.memory_free
    }
end
