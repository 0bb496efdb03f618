defmodule ModelBudget.Backend.LlamaServer.ArgsTest do
  use ExUnit.Case, async: true

  alias ModelBudget.Backend.LlamaServer.Args

  doctest Args

  defp build(opts, gpus? \\ false),
    do: Args.build("m.gguf", Args.validate!(opts), 8080, 512, gpus?)

  defp pairs(args), do: Enum.chunk_every(args, 2, 1, :discard)

  describe "validate!/1" do
    test "fills in the estimator's defaults and the server's explicit ones" do
      opts = Args.validate!(unknown_to_us: :ignored)
      assert opts.n_gpu_layers == 99
      assert opts.split_mode == :none
      assert opts.flash_attn == true
      assert {opts.cache_type_k, opts.cache_type_v} == {:f16, :f16}
      assert {opts.n_parallel, opts.kv_unified, opts.cache_ram} == {4, true, 8 * 2 ** 30}
      assert {opts.n_batch, opts.n_ubatch} == {2048, 512}
      assert {opts.cpu_buffers, opts.mmap} == {:auto, true}
      refute Map.has_key?(opts, :repack)
      refute Map.has_key?(opts, :unknown_to_us)
    end

    test "raises ArgumentError naming the option and the value" do
      for {key, value} <- [
            command: "",
            command: :llama,
            port: 0,
            port: 65_536,
            host: nil,
            ready_timeout: -5,
            stop_timeout: 1.5,
            extra_args: "--threads 1",
            extra_args: [1],
            n_ctx: 0,
            n_batch: -1,
            n_ubatch: nil,
            n_parallel: 2.0,
            n_gpu_layers: "all",
            split_mode: :tensor,
            tensor_split: [1, -1],
            tensor_split: {1, 1},
            main_gpu: -1,
            cache_type_k: :q2_k,
            cache_type_v: "f16",
            cache_ram: -1,
            flash_attn: :auto,
            kv_unified: nil,
            offload_kqv: 1,
            repack: "yes",
            cpu_buffers: true,
            cpu_buffers: :avx2,
            mmap: :lazy,
            amx_retry: :yes,
            host: "127.0.0.1,0.0.0.0"
          ] do
        message = "invalid option #{inspect(key)}: expected"

        error = assert_raise ArgumentError, fn -> Args.validate!([{key, value}]) end
        assert String.starts_with?(error.message, message)
        assert String.ends_with?(error.message, "got: #{inspect(value)}")
      end

      assert_raise ArgumentError, ~r/expected a keyword list/, fn -> Args.validate!(:none) end
    end
  end

  describe "where the server listens" do
    test "a host beyond loopback needs an :api_key; loopback hosts do not" do
      for host <- ["0.0.0.0", "::", "192.168.1.10", "example.org"] do
        error = assert_raise ArgumentError, fn -> Args.validate!(host: host) end
        assert error.message =~ "invalid option :host: #{inspect(host)}"
        assert error.message =~ ":api_key"

        assert %{host: ^host, api_key: "k"} = Args.validate!(host: host, api_key: "k")
      end

      for host <- ["127.0.0.1", "127.0.0.2", "::1", "localhost", "::ffff:127.0.0.1"] do
        assert %{host: ^host, api_key: nil} = Args.validate!(host: host)
      end
    end

    test "the key goes to the environment, never to the command line" do
      opts = Args.validate!(host: "0.0.0.0", api_key: "sekrit-key")
      assert Args.env(opts) == [{"LLAMA_API_KEY", "sekrit-key"}]
      refute Enum.any?(Args.build("m.gguf", opts, 8080, 512, false), &(&1 =~ "sekrit"))
      assert Args.env(Args.validate!([])) == []
    end

    test "a malformed :api_key is refused without showing it" do
      for value <- ["", ~c"sekrit", :sekrit, "a\0b"] do
        error = assert_raise ArgumentError, fn -> Args.validate!(api_key: value) end
        assert error.message =~ "invalid option :api_key"
        refute error.message =~ "sekrit"
      end
    end

    test ":extra_args may not say where it listens, naming the option to use instead" do
      for {arg, option} <- [
            {"--host", ":host"},
            {"--port", ":port"},
            {"--api-key", ":api_key"},
            {"--api_key", ":api_key"},
            {"--api-key-file", ":api_key"},
            {"--port=8080", ":port"}
          ] do
        error =
          assert_raise ArgumentError, fn ->
            Args.validate!(extra_args: ["--threads", "1", arg, "x"])
          end

        assert error.message =~ "invalid option :extra_args: #{inspect(arg)}"
        assert error.message =~ "use the #{option} option instead"
      end
    end
  end

  describe "build/5" do
    test "always passes the estimator's defaults, --fit off and the trace verbosity" do
      args = build([])
      assert ["--ctx-size", "512"] in pairs(args)
      assert ["--parallel", "4"] in pairs(args)
      assert "--kv-unified" in args
      assert ["--cache-ram", "8192"] in pairs(args)
      assert ["--batch-size", "2048"] in pairs(args)
      assert "--repack" in args
      assert ["--load-mode", "mmap"] in pairs(args)
      assert ["--fit", "off"] in pairs(args)
      assert ["--flash-attn", "on"] in pairs(args)
      assert ["--cache-type-k", "f16"] in pairs(args)
      assert "--kv-offload" in args
      assert ["--ubatch-size", "512"] in pairs(args)
      assert ["--verbosity", "4"] in pairs(args)
    end

    test "without GPUs in the placement: no devices, no layers offloaded" do
      args = build(n_gpu_layers: 40, split_mode: :layer)
      assert ["--device", "none"] in pairs(args)
      assert ["--n-gpu-layers", "0"] in pairs(args)
      refute "--split-mode" in args
    end

    test "with GPUs: layers (negative is all), split mode, main GPU and tensor split" do
      args =
        build([n_gpu_layers: -1, split_mode: :layer, main_gpu: 1, tensor_split: [3, 1.5]], true)

      refute "--device" in args
      assert ["--n-gpu-layers", "all"] in pairs(args)
      assert ["--split-mode", "layer"] in pairs(args)
      assert ["--main-gpu", "1"] in pairs(args)
      assert ["--tensor-split", "3,1.5"] in pairs(args)
      assert ["--n-gpu-layers", "20"] in pairs(build([n_gpu_layers: 20], true))
      refute "--tensor-split" in build([], true)
    end

    test "maps each option to its flag" do
      args =
        build(
          n_parallel: 2,
          kv_unified: false,
          cache_ram: 1,
          flash_attn: false,
          cache_type_k: :q8_0,
          cache_type_v: :q4_0,
          offload_kqv: false,
          n_batch: 1024,
          n_ubatch: 256,
          repack: false,
          mmap: false,
          host: "0.0.0.0",
          api_key: "k",
          extra_args: ["--threads", "1"]
        )

      assert ["--parallel", "2"] in pairs(args)
      assert "--no-kv-unified" in args
      # Rounded up to whole MiB: never less than asked for.
      assert ["--cache-ram", "1"] in pairs(args)
      assert ["--flash-attn", "off"] in pairs(args)
      assert ["--cache-type-k", "q8_0"] in pairs(args)
      assert ["--cache-type-v", "q4_0"] in pairs(args)
      assert "--no-kv-offload" in args
      assert ["--batch-size", "1024"] in pairs(args)
      assert ["--ubatch-size", "256"] in pairs(args)
      assert "--no-repack" in args
      assert ["--load-mode", "none"] in pairs(args)
      assert ["--host", "0.0.0.0"] in pairs(args)
      assert Enum.take(args, -2) == ["--threads", "1"]

      for repack <- [true, :auto, :x86_avx2, :x86_avx512, :arm_dotprod],
          do: assert("--repack" in build(repack: repack))

      assert "--no-repack" in build(repack: :none)
      assert ["--load-mode", "mmap"] in pairs(build(mmap: true))
      assert ["--cache-ram", "2"] in pairs(build(cache_ram: 1024 * 1024 + 1))
    end
  end
end
