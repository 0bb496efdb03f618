defmodule ModelBudget.Backend.LlamaServer.DecisionTest do
  # load/4 with the manager's decision takes the context from its
  # breakdown instead of reading the model file again. No llama.cpp here: a
  # stand-in server that writes its command line and answers /health.
  use ExUnit.Case, async: true

  import ModelBudget.Test.Eventually

  alias ModelBudget.Backend.LlamaServer
  alias ModelBudget.Test.LlamaServer, as: Real

  @moduletag :tmp_dir

  # The stand-in writes its command line to `argv`.
  defp stand_in!(dir) do
    argv = Path.join(dir, "argv")
    {Real.stand_in!(dir, "stand-in-server", ["--argv", argv]), argv}
  end

  defp opts(script), do: [command: script, cpu_buffers: :none, cache_ram: 0, amx_retry: false]

  test "the context comes from the decision's breakdown; the file is not read", %{tmp_dir: dir} do
    {script, argv} = stand_in!(dir)
    # No such file: only the decision can tell the context.
    source = {:path, Path.join(dir, "absent.gguf")}
    placement = %{ram: 1_000, vram: %{}}
    breakdown = %{n_ctx: 4_352, cpu_buffers: :none, ram: %{total: 1_000}, vram: %{}}
    decision = %{placement: placement, breakdown: breakdown, opts: opts(script)}

    assert {:ok, %LlamaServer{} = server} =
             LlamaServer.load(source, placement, opts(script), decision)

    try do
      args = String.split(File.read!(argv), "\n")
      assert ["--ctx-size", "4352"] in Enum.chunk_every(args, 2, 1, :discard)
    after
      :ok = LlamaServer.unload(server)
    end

    eventually(fn -> not Process.alive?(server.pid) end)

    # Without one, the header is read, and there is none.
    assert LlamaServer.load(source, placement, opts(script)) ==
             {:error, {:enoent, Path.join(dir, "absent.gguf")}}

    assert LlamaServer.load(source, placement, opts(script), %{decision | breakdown: nil}) ==
             {:error, {:enoent, Path.join(dir, "absent.gguf")}}
  end

  test ":n_ctx given is the context, decision or not", %{tmp_dir: dir} do
    {script, argv} = stand_in!(dir)
    source = {:path, Path.join(dir, "absent.gguf")}
    placement = %{ram: 1_000, vram: %{}}
    opts = [n_ctx: 1_024] ++ opts(script)
    decision = %{placement: placement, breakdown: %{n_ctx: 4_352}, opts: opts}

    {:ok, server} = LlamaServer.load(source, placement, opts, decision)

    try do
      args = String.split(File.read!(argv), "\n")
      assert ["--ctx-size", "1024"] in Enum.chunk_every(args, 2, 1, :discard)
    after
      :ok = LlamaServer.unload(server)
    end
  end
end
