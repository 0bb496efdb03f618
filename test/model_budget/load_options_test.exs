defmodule ModelBudget.LoadOptionsTest do
  use ExUnit.Case, async: true

  alias ModelBudget.Backend.LlamaServer.Args
  alias ModelBudget.LoadOptions

  test "the table names each option once, with the estimator's defaults" do
    names = Enum.map(LoadOptions.all(), & &1.name)
    assert names == Enum.uniq(names)
    read = LoadOptions.read!([])

    for %{name: name, reads: reads, kind: kind, default: default} <- LoadOptions.all(),
        reads != :bytes and kind != :repack do
      assert Map.fetch!(read, name) == default, "#{name}"
    end
  end

  test "read!/1 reads :repack into :cpu_buffers unless :cpu_buffers is given" do
    assert LoadOptions.read!(repack: false).cpu_buffers == :none
    assert LoadOptions.read!(repack: true).cpu_buffers == :x86_avx2
    assert LoadOptions.read!(repack: false, cpu_buffers: :x86_amx).cpu_buffers == :x86_amx
    assert LoadOptions.read!(cpu_buffers: :auto).cpu_buffers == :auto
  end

  test "read!/1 refuses bad terms, improper lists and typos with ArgumentError" do
    for bad <- [[n_ctx: 1] ++ :tail, %{n_ctx: 1}, [{:n_ctx, 1} | 2], [n_ctx: -1], [mdoe: :server]] do
      assert_raise ArgumentError, fn -> LoadOptions.read!(bad) end
    end
  end

  test "every option with a llama-server flag reaches the server's command line" do
    opts = Args.validate!(n_ctx: 512, tensor_split: [3, 1])
    args = Args.build("m.gguf", opts, 8080, 512, true)

    for %{server: server, name: name} <- LoadOptions.all(), server != nil do
      flag =
        case server do
          {:value, flag, _gpu} -> flag
          {:switch, [flag | _], _off} -> flag
          {:mib, flag} -> flag
        end

      assert flag in args, "#{name}: #{flag} not in #{inspect(args)}"
    end

    # Without GPUs, the options that need them are left out, and the
    # server is told to use none.
    args = Args.build("m.gguf", opts, 8080, 512, false)
    assert Enum.count(args, &(&1 == "--n-gpu-layers")) == 1
    assert ["--device", "none", "--n-gpu-layers", "0"] in Enum.chunk_every(args, 4, 1)

    for %{server: {:value, flag, true}} <- LoadOptions.all(), flag != "--n-gpu-layers" do
      refute flag in args, flag
    end
  end

  test "every option with a switch is read by the plan's command line" do
    for %{switch: switch, name: name} = o <- LoadOptions.all(), switch != nil do
      value =
        cond do
          o.choices != [] -> [Atom.to_string(hd(o.choices))]
          o.kind == :weights -> ["1,1"]
          o.kind == :bool and match?({:switch, [^switch, "on"], _}, o.server) -> ["off"]
          o.kind in [:bool, :repack] -> []
          true -> ["1"]
        end

      assert {:ok, %{plan: plan}} = ModelBudget.Plan.Args.parse([switch | value])
      assert Keyword.has_key?(plan[:load], name), "#{switch} did not set #{name}"
    end
  end
end
