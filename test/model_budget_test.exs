defmodule ModelBudgetTest do
  use ExUnit.Case, async: true

  @gib 2 ** 30
  @u64_max 18_446_744_073_709_551_615

  describe "resolve/2" do
    @gpus [
      %{gpu_index: 0, memory_free: 20 * @gib, name: "A"},
      %{gpu_index: 1, memory_free: 8 * @gib}
    ]

    test ":infinity and nil are unlimited" do
      assert ModelBudget.resolve(:infinity, []) == %{mode: :unlimited}
      assert ModelBudget.resolve(nil, @gpus) == %{mode: :unlimited}
    end

    test "a positive integer is one combined pool" do
      assert ModelBudget.resolve(1, []) == %{mode: :combined, limit: 1}
      assert ModelBudget.resolve(@u64_max, []) == %{mode: :combined, limit: @u64_max}
    end

    test ":auto takes 80% of the memory limit and each GPU's free memory" do
      %{limit: limit} = ModelBudget.system_memory()

      assert ModelBudget.resolve(:auto, @gpus) == %{
               mode: :per_device,
               ram: div(limit * 4, 5),
               vram: %{0 => 20 * @gib, 1 => 8 * @gib}
             }
    end

    # Per-device budgets cross as tuples of four shapes (no GPU, one GPU,
    # more, :infinity) that ModelBudget turns into maps.
    test "per-device budgets with no GPU, one GPU, several and unbounded VRAM" do
      for vram <- [%{}, %{2 => 5}, %{0 => 1, 1 => :infinity, 4 => 3}] do
        assert ModelBudget.resolve(%{ram: 9, vram: vram}, []) ==
                 %{mode: :per_device, ram: 9, vram: vram}
      end

      assert ModelBudget.resolve(%{ram: :infinity, vram: :auto}, Enum.take(@gpus, 1)) ==
               %{mode: :per_device, ram: :infinity, vram: %{0 => 20 * @gib}}

      assert ModelBudget.resolve(%{ram: 9}, []) == %{mode: :per_device, ram: 9, vram: :infinity}
    end

    test "per-device maps accept bytes, :infinity, nil and :auto for RAM" do
      %{limit: limit} = ModelBudget.system_memory()
      vram = %{0 => 1}

      assert %{ram: 0} = ModelBudget.resolve(%{ram: 0, vram: vram}, [])
      assert %{ram: :infinity} = ModelBudget.resolve(%{ram: :infinity, vram: vram}, [])
      assert %{ram: :infinity} = ModelBudget.resolve(%{ram: nil, vram: vram}, [])
      assert %{ram: ram} = ModelBudget.resolve(%{ram: :auto, vram: vram}, [])
      assert ram == div(limit * 4, 5)
    end

    test "VRAM may be :infinity, nil, :auto, a list by index or a map" do
      assert %{vram: :infinity} = ModelBudget.resolve(%{ram: 1, vram: :infinity}, @gpus)
      assert %{vram: :infinity} = ModelBudget.resolve(%{ram: 1, vram: nil}, @gpus)

      assert %{vram: %{0 => 21_474_836_480, 1 => 8_589_934_592}} =
               ModelBudget.resolve(%{ram: 1, vram: :auto}, @gpus)

      assert %{vram: %{0 => 5, 1 => :infinity, 2 => 0}} =
               ModelBudget.resolve(%{ram: 1, vram: [5, :infinity, 0]}, [])

      assert %{vram: %{3 => 7, 0 => :infinity}} =
               ModelBudget.resolve(%{ram: 1, vram: %{3 => 7, 0 => :infinity}}, [])

      assert %{vram: %{}} = ModelBudget.resolve(%{ram: 1, vram: []}, [])
    end

    test "an explicit device list is used as given, and :auto with none has no GPUs" do
      assert %{vram: %{7 => 3}} =
               ModelBudget.resolve(%{ram: 1, vram: :auto}, [%{gpu_index: 7, memory_free: 3}])

      assert %{vram: %{}} = ModelBudget.resolve(%{ram: 1, vram: :auto}, [])
    end

    test "resolve/1 probes this machine" do
      assert %{mode: :per_device, ram: ram, vram: vram} = ModelBudget.resolve(:auto)
      assert ram == div(ModelBudget.system_memory().limit * 4, 5)
      assert is_map(vram)
      assert ModelBudget.resolve(5) == %{mode: :combined, limit: 5}
    end

    test "bad budgets raise ArgumentError naming the value" do
      for {bad, fragment} <- [
            {0, "got: 0"},
            {-1, "got: -1"},
            {1.5, "got: 1.5"},
            {"8GB", ~s(got: "8GB")},
            {@u64_max + 1, "got: 18446744073709551616"},
            {:unlimited, "got: :unlimited"},
            {%{}, "got: %{}"},
            {%{vram: 1}, "got: 1"},
            {%{ram: 1, vram: 1, gpu: 2}, ":ram and/or :vram keys and no others"},
            {%{ram: 1, gpu: 2}, ":ram and/or :vram keys and no others"},
            {%{"ram" => 1, "vram" => 1}, ":ram and/or :vram keys and no others"},
            {[ram: 1, vram: 1], "got: [ram: 1, vram: 1]"}
          ] do
        error = assert_raise ArgumentError, fn -> ModelBudget.resolve(bad, []) end
        assert error.message =~ "invalid memory budget"
        assert error.message =~ fragment
      end
    end

    test "a map with only :ram or only :vram leaves the other :infinity" do
      assert ModelBudget.resolve(%{ram: 100}, []) ==
               %{mode: :per_device, ram: 100, vram: :infinity}

      assert ModelBudget.resolve(%{vram: [24, 12]}, []) ==
               %{mode: :per_device, ram: :infinity, vram: %{0 => 24, 1 => 12}}

      gpus = [%{gpu_index: 0, memory_free: 7}]

      assert ModelBudget.resolve(%{vram: :auto}, gpus) ==
               %{mode: :per_device, ram: :infinity, vram: %{0 => 7}}
    end

    test "bad RAM and VRAM parts name the part" do
      assert_raise ArgumentError, ~r/invalid memory budget :ram: .*got: -5/, fn ->
        ModelBudget.resolve(%{ram: -5, vram: :infinity}, [])
      end

      assert_raise ArgumentError, ~r/invalid memory budget :ram: .*got: "64GiB"/, fn ->
        ModelBudget.resolve(%{ram: "64GiB", vram: :infinity}, [])
      end

      for vram <- [[1, -1], [1.0], %{-1 => 5}, %{0 => "x"}, %{"0" => 1}, 5, :everything] do
        assert_raise ArgumentError, ~r/invalid memory budget :vram: .*got: /, fn ->
          ModelBudget.resolve(%{ram: 1, vram: vram}, [])
        end
      end
    end

    test "bad device lists raise" do
      for gpus <- [:none, [%{gpu_index: 0}], [%{gpu_index: -1, memory_free: 1}], [1]] do
        assert_raise ArgumentError, ~r/invalid gpu_devices/, fn ->
          ModelBudget.resolve(:auto, gpus)
        end
      end

      assert_raise ArgumentError, "invalid gpu_devices: GPU 0 is listed more than once", fn ->
        ModelBudget.resolve(:auto, [
          %{gpu_index: 0, memory_free: 1},
          %{gpu_index: 0, memory_free: 2}
        ])
      end
    end
  end

  describe "distribute/3" do
    @kv 8192 * 4 * 2048

    test "defaults: server mode, full offload to GPU 0 with the coarse KV estimate" do
      assert ModelBudget.distribute(@gib, [], 1) == %{ram: 0, vram: %{0 => @gib + @kv}}
    end

    test ":mode :direct adds no KV cache" do
      assert ModelBudget.distribute(@gib, [mode: :direct], 1) == %{ram: 0, vram: %{0 => @gib}}
      assert ModelBudget.distribute(@gib, [mode: :server], 0) == %{ram: @gib + @kv, vram: %{}}
    end

    test ":n_gpu_layers 0 keeps everything in RAM; any other value offloads fully" do
      assert ModelBudget.distribute(100, [mode: :direct, n_gpu_layers: 0], 2) ==
               %{ram: 100, vram: %{}}

      for n <- [-1, 1, 99, 100_000] do
        assert ModelBudget.distribute(100, [mode: :direct, n_gpu_layers: n], 1) ==
                 %{ram: 0, vram: %{0 => 100}}
      end
    end

    test "no GPUs charges everything to RAM" do
      assert ModelBudget.distribute(100, [split_mode: :layer, n_ctx: 1, n_parallel: 1], 0) ==
               %{ram: 2148, vram: %{}}
    end

    test ":split_mode :none uses :main_gpu" do
      assert ModelBudget.distribute(100, [mode: :direct, main_gpu: 1], 2) ==
               %{ram: 0, vram: %{1 => 100}}
    end

    test ":layer and :row split exactly by :tensor_split" do
      for mode <- [:layer, :row] do
        opts = [mode: :direct, split_mode: mode]

        assert ModelBudget.distribute(10, opts ++ [tensor_split: [3, 1]], 2) ==
                 %{ram: 0, vram: %{0 => 8, 1 => 2}}

        assert ModelBudget.distribute(10, opts ++ [tensor_split: [0.75, 0.25]], 2) ==
                 %{ram: 0, vram: %{0 => 8, 1 => 2}}

        assert ModelBudget.distribute(10, opts, 3) == %{ram: 0, vram: %{0 => 4, 1 => 3, 2 => 3}}

        assert ModelBudget.distribute(10, opts ++ [tensor_split: [0, 1]], 3) ==
                 %{ram: 0, vram: %{1 => 10}}
      end
    end

    test "splits never lose or invent bytes" do
      for total <- [0, 1, 7, 1_000_003, @u64_max - @kv], n <- 1..8 do
        weights = Enum.map(1..n, &rem(&1 * 7, 5))
        weights = if Enum.all?(weights, &(&1 == 0)), do: [1], else: weights
        placement = ModelBudget.distribute(total, [split_mode: :row, tensor_split: weights], n)
        assert placement.ram + Enum.sum(Map.values(placement.vram)) == total + @kv
      end
    end

    test ":offload_kqv false charges the KV cache to RAM" do
      assert ModelBudget.distribute(100, [offload_kqv: false], 1) ==
               %{ram: @kv, vram: %{0 => 100}}
    end

    test ":n_ctx (total, shared by the slots) and :kv_bytes_per_token size the KV estimate" do
      for n_parallel <- [1, 2, 8] do
        assert ModelBudget.distribute(0, [n_ctx: 1000, n_parallel: n_parallel], 0) == %{
                 ram: 2_048_000,
                 vram: %{}
               }

        assert ModelBudget.distribute(
                 0,
                 [n_ctx: 1000, n_parallel: n_parallel, kv_bytes_per_token: 3],
                 0
               ) ==
                 %{ram: 3000, vram: %{}}
      end

      # The default context is 32768 tokens (4 slots of 8192).
      assert ModelBudget.distribute(0, [], 0) == %{ram: 32768 * 2048, vram: %{}}
    end

    test "a key one or two edits from an option raises, naming the option" do
      for {typo, known} <- [
            n_gpu_layer: :n_gpu_layers,
            tensor_spilt: :tensor_split,
            n_ctxx: :n_ctx,
            cache_type_kk: :cache_type_k,
            mdoe: :mode
          ] do
        error = assert_raise ArgumentError, fn -> ModelBudget.distribute(1, [{typo, 0}], 1) end

        assert error.message ==
                 "invalid option :#{typo}: no such option; did you mean :#{inspect(known) |> String.trim_leading(":")}?"
      end

      # Other programs' options near ours, and far-off keys, stay allowed.
      for key <- [:model, :n_batch, :node, :temperature, :keep_alive] do
        assert ModelBudget.distribute(1, [{key, 0}, mode: :direct], 0) == %{ram: 1, vram: %{}}
      end
    end

    test "each path reads its own options: the other path's keys are ignored" do
      # :gpu_overhead belongs to the model path; the byte count ignores it.
      assert ModelBudget.distribute(1, [mode: :direct, gpu_overhead: :bad], 0) ==
               %{ram: 1, vram: %{}}

      # :kv_bytes_per_token belongs to the byte count; the model path ignores
      # it, sizes its KV cache for the total :n_ctx whatever the slots, and
      # refuses near misses too.
      model = %{
        layer_bytes: [1000, 1000],
        input_bytes: 100,
        output_bytes: 100,
        other_bytes: 0,
        n_head: 4,
        n_head_kv: 2,
        head_dim_k: 64,
        head_dim_v: 64,
        n_embd: 256,
        n_vocab: 1000,
        context_length: 4096,
        sliding_window: nil,
        sliding_window_layers: []
      }

      base = ModelBudget.breakdown(model, [n_ctx: 1024], 1)
      assert ModelBudget.breakdown(model, [n_ctx: 1024, kv_bytes_per_token: :bad], 1) == base
      assert ModelBudget.breakdown(model, [n_ctx: 1024, n_parallel: 4], 1) == base

      assert_raise ArgumentError, ~r/did you mean :n_gpu_layers\?/, fn ->
        ModelBudget.breakdown(model, [n_gpu_layer: 0], 1)
      end
    end

    test "unknown keys are ignored and the first of duplicate keys wins" do
      assert ModelBudget.distribute(5, [mode: :direct, temperature: 0.7, mode: :server], 0) ==
               %{ram: 5, vram: %{}}
    end

    test "bad options raise ArgumentError naming the option and the value" do
      for {opts, message} <- [
            {[mode: :fast], "invalid option :mode: expected :server or :direct, got: :fast"},
            {[n_gpu_layers: 1.0], "invalid option :n_gpu_layers: expected an integer, got: 1.0"},
            {[split_mode: "layer"],
             ~s(invalid option :split_mode: expected :none, :layer or :row, got: "layer")},
            {[tensor_split: [1, -1]],
             "invalid option :tensor_split: expected a list of non-negative numbers, got: [1, -1]"},
            {[tensor_split: :even], "got: :even"},
            {[tensor_split: [0, 0]], "needs at least one positive weight"},
            {[tensor_split: [1, 1, 1]], "has 3 entries for 2 GPU(s)"},
            {[main_gpu: 2], "invalid option :main_gpu: must be below the GPU count 2, got: 2"},
            {[main_gpu: -1], "invalid option :main_gpu"},
            {[offload_kqv: "yes"],
             ~s(invalid option :offload_kqv: expected a boolean, got: "yes")},
            {[n_ctx: 0], "invalid option :n_ctx: expected a positive integer below 2^64, got: 0"},
            {[n_parallel: -4], "invalid option :n_parallel"},
            {[kv_bytes_per_token: -1], "invalid option :kv_bytes_per_token"},
            {[n_ctx: @u64_max], "exceeds 2^64 bytes"},
            {[:mode], "invalid opts: expected a keyword list, got: [:mode]"},
            {%{mode: :direct}, "invalid opts: expected a keyword list"}
          ] do
        assert_raise ArgumentError, fn -> ModelBudget.distribute(1, opts, 2) end
        error = assert_raise ArgumentError, fn -> ModelBudget.distribute(1, opts, 2) end
        assert error.message =~ message
      end
    end

    test "bad sizes and GPU counts raise" do
      assert_raise ArgumentError, ~r/invalid file_bytes: .*got: -1/, fn ->
        ModelBudget.distribute(-1, [], 0)
      end

      assert_raise ArgumentError, ~r/invalid file_bytes: .*got: 1000000000.0/, fn ->
        ModelBudget.distribute(1.0e9, [], 0)
      end

      assert_raise ArgumentError, ~r/invalid file_bytes: .*exceeds 2\^64/, fn ->
        ModelBudget.distribute(@u64_max, [], 0)
      end

      assert_raise ArgumentError, ~r/invalid n_gpus: .*got: 1025/, fn ->
        ModelBudget.distribute(1, [], 1025)
      end
    end
  end

  describe "check/3" do
    @empty %{ram: 0, vram: %{}}

    test "unlimited budgets admit anything" do
      assert ModelBudget.check(%{mode: :unlimited}, %{ram: @u64_max, vram: %{0 => 1}}, @empty) ==
               :ok
    end

    test "combined budgets count RAM and VRAM together; exactly at the limit fits" do
      budget = %{mode: :combined, limit: 100}
      assert ModelBudget.check(budget, %{ram: 50, vram: %{0 => 25, 1 => 25}}, @empty) == :ok

      assert ModelBudget.check(budget, %{ram: 50, vram: %{0 => 26}}, %{ram: 0, vram: %{1 => 25}}) ==
               {:error, {:insufficient_memory, [device: :total, required: 76, available: 75]}}
    end

    test "available is never negative" do
      assert ModelBudget.check(%{mode: :combined, limit: 10}, %{ram: 1, vram: %{}}, %{
               ram: 20,
               vram: %{}
             }) ==
               {:error, {:insufficient_memory, [device: :total, required: 1, available: 0]}}
    end

    test "per-device budgets check RAM first, then GPUs in index order" do
      budget = %{mode: :per_device, ram: 10, vram: %{0 => 10, 1 => 10}}
      over_all = %{ram: 11, vram: %{0 => 11, 1 => 11}}

      assert {:error, {:insufficient_memory, [device: :ram, required: 11, available: 10]}} =
               ModelBudget.check(budget, over_all, @empty)

      assert {:error, {:insufficient_memory, [device: {:gpu, 0}, required: 11, available: 10]}} =
               ModelBudget.check(budget, %{over_all | ram: 1}, @empty)

      assert {:error, {:insufficient_memory, [device: {:gpu, 1}, required: 11, available: 4]}} =
               ModelBudget.check(budget, %{ram: 1, vram: %{0 => 1, 1 => 11}}, %{
                 ram: 0,
                 vram: %{1 => 6}
               })

      assert ModelBudget.check(budget, %{ram: 4, vram: %{1 => 4}}, %{ram: 6, vram: %{1 => 6}}) ==
               :ok
    end

    test "GPUs a per-device budget does not name, and :infinity limits, are unbounded" do
      budget = %{mode: :per_device, ram: :infinity, vram: %{0 => 10}}
      assert ModelBudget.check(budget, %{ram: @u64_max, vram: %{5 => @u64_max}}, @empty) == :ok

      assert ModelBudget.check(
               %{mode: :per_device, ram: 0, vram: :infinity},
               %{ram: 0, vram: %{0 => 9}},
               @empty
             ) ==
               :ok
    end

    test "bad budgets and placements raise" do
      good = %{ram: 1, vram: %{}}

      for budget <- [
            %{mode: :combined, limit: 0},
            %{mode: :combined, limit: -1},
            %{mode: :combined},
            %{mode: :weird},
            %{mode: :unlimited, limit: 5},
            %{mode: :per_device, ram: 1},
            %{mode: :per_device, ram: 1, vram: [1]},
            %{mode: :per_device, ram: -1, vram: :infinity},
            :infinity,
            100
          ] do
        error = assert_raise ArgumentError, fn -> ModelBudget.check(budget, good, good) end
        assert error.message =~ "invalid budget"
        assert error.message =~ inspect(budget)
      end

      for placement <- [
            %{ram: -1, vram: %{}},
            %{ram: 1},
            %{ram: 1, vram: %{0 => -1}},
            %{ram: 1, vram: [], x: 1},
            nil
          ] do
        assert_raise ArgumentError, ~r/invalid placement/, fn ->
          ModelBudget.check(%{mode: :unlimited}, placement, good)
        end

        assert_raise ArgumentError, ~r/invalid used/, fn ->
          ModelBudget.check(%{mode: :unlimited}, good, placement)
        end
      end
    end
  end

  describe "fold/2, release/2 and empty_usage/0" do
    test "fold sums RAM and merges VRAM per GPU" do
      assert ModelBudget.fold(%{ram: 1, vram: %{0 => 1}}, %{ram: 2, vram: %{0 => 3, 2 => 4}}) ==
               %{ram: 3, vram: %{0 => 4, 2 => 4}}
    end

    test "release is fold's inverse and drops GPUs that reach zero" do
      used = %{ram: 3, vram: %{0 => 4, 2 => 4}}
      placement = %{ram: 2, vram: %{0 => 3, 2 => 4}}
      assert ModelBudget.release(used, placement) == %{ram: 1, vram: %{0 => 1}}
      assert ModelBudget.release(ModelBudget.fold(used, placement), placement) == used
    end

    # The NIF answers placements as tuples of three shapes (no GPU, one GPU,
    # more) that ModelBudget turns into maps: each shape, each call.
    test "results are placement maps with no GPU, one GPU and several" do
      none = %{ram: 7, vram: %{}}
      one = %{ram: 7, vram: %{3 => 5}}
      three = %{ram: 7, vram: %{0 => 1, 1 => 2, 5 => 3}}

      for used <- [none, one, three] do
        assert ModelBudget.fold(used, %{ram: 0, vram: %{}}) == used
        assert ModelBudget.release(used, %{ram: 0, vram: %{}}) == used
        assert ModelBudget.fold(%{ram: 0, vram: %{}}, used) == used
        assert ModelBudget.release(ModelBudget.fold(used, used), used) == used
      end

      assert ModelBudget.release(three, three) == %{ram: 0, vram: %{}}

      assert ModelBudget.distribute(100, [mode: :direct], 0) == %{ram: 100, vram: %{}}
      assert ModelBudget.distribute(100, [mode: :direct], 1) == %{ram: 0, vram: %{0 => 100}}

      assert ModelBudget.distribute(100, [mode: :direct, split_mode: :layer], 3) ==
               %{ram: 0, vram: %{0 => 34, 1 => 33, 2 => 33}}
    end

    test "releasing more than is held raises instead of going negative" do
      assert_raise ArgumentError,
                   "invalid placement: releases 5 bytes of GPU 1 but only 0 are held",
                   fn ->
                     ModelBudget.release(%{ram: 10, vram: %{}}, %{ram: 1, vram: %{1 => 5}})
                   end
    end

    test "folding past 2^64 - 1 bytes raises instead of wrapping" do
      assert_raise ArgumentError, ~r/exceed 18446744073709551615 bytes/, fn ->
        ModelBudget.fold(%{ram: @u64_max, vram: %{}}, %{ram: 1, vram: %{}})
      end
    end

    test "zero entries are normalised away" do
      assert ModelBudget.fold(%{ram: 0, vram: %{0 => 0}}, %{ram: 0, vram: %{1 => 0}}) ==
               ModelBudget.empty_usage()
    end

    test "empty_usage is nothing anywhere" do
      assert ModelBudget.empty_usage() == %{ram: 0, vram: %{}}
    end
  end
end
