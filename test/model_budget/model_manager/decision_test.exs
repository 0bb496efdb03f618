defmodule ModelBudget.ModelManager.DecisionTest do
  # What the manager decides for a load travels to the backend's load
  # (c:ModelBudget.Backend.load/4), and a backend says itself whether the
  # manager may call it in its own step (c:ModelBudget.Backend.inline?/0).
  use ExUnit.Case, async: true

  @moduletag :tmp_dir

  alias ModelBudget.ModelManager
  alias ModelBudget.Test.LlamaModel

  doctest ModelBudget.Backend

  defmodule Deciding do
    # Reports each load's decision, and the process it ran in, to `:notify`.
    @behaviour ModelBudget.Backend

    @impl true
    def footprint({:bytes, n}, _opts), do: {:ok, n}
    def footprint({:model, model}, _opts), do: {:ok, model}

    @impl true
    def load(source, placement, opts, decision \\ nil) do
      send(Keyword.fetch!(opts, :notify), {__MODULE__, source, placement, decision, self()})
      {:ok, :loaded}
    end

    @impl true
    def unload(_handle), do: :ok

    # The runtime's own profile, as a backend with a binary would say.
    @impl true
    def estimate_options(opts), do: Keyword.put(opts, :cpu_buffers, :none)
  end

  defmodule Inline do
    # Deciding's loads, in the manager's own step.
    @behaviour ModelBudget.Backend

    @impl true
    defdelegate footprint(source, opts), to: Deciding
    @impl true
    defdelegate load(source, placement, opts), to: Deciding
    @impl true
    defdelegate unload(handle), to: Deciding
    @impl true
    def inline?, do: true
  end

  defp model!(dir) do
    path = LlamaModel.write!(Path.join(dir, "tiny.gguf"))
    {:ok, model} = ModelBudget.Model.read(path)
    model
  end

  describe "load/4" do
    test "a model read from its header: the placement, its breakdown and the options placed",
         %{tmp_dir: dir} do
      manager = start_supervised!({ModelManager, backend: Deciding})
      model = model!(dir)
      opts = [n_gpus: 0, n_ctx: 300, n_parallel: 2, cache_ram: 0, notify: self()]

      {:ok, info} = ModelManager.load(manager, :m, {:model, model}, opts)

      assert_received {Deciding, {:model, ^model}, placement, decision, task}
      assert task != manager
      # The options as the backend refined them, the manager's own included.
      assert decision.opts == Keyword.put(opts, :cpu_buffers, :none)
      assert decision.placement == placement and placement == info.placement

      placed = Keyword.drop(decision.opts, [:n_gpus])
      assert decision.breakdown == ModelBudget.breakdown(model, placed, 0)
      assert placement == ModelBudget.distribute(model, placed, 0)
      # The context llama.cpp will have: 300 padded to 256s for 2 slots.
      assert %{n_ctx: 512, cpu_buffers: :none} = decision.breakdown
    end

    test "a byte count: the placement and the options, no breakdown" do
      manager = start_supervised!({ModelManager, backend: Deciding})
      opts = [mode: :direct, n_gpus: 0, notify: self()]
      {:ok, info} = ModelManager.load(manager, :b, {:bytes, 1_000}, opts)

      assert_received {Deciding, {:bytes, 1_000}, placement, decision, _task}

      assert decision == %{
               placement: info.placement,
               breakdown: nil,
               opts: Keyword.put(opts, :cpu_buffers, :none)
             }

      assert placement == %{ram: 1_000, vram: %{}}
    end

    test "a backend with load/3 alone is called without one" do
      manager = start_supervised!({ModelManager, backend: Inline})
      {:ok, _} = ModelManager.load(manager, :b, {:bytes, 10}, mode: :direct, notify: self())
      assert_received {Deciding, {:bytes, 10}, %{ram: 10}, nil, _}
    end
  end

  describe "inline?/0" do
    test "a backend that says so is loaded in the manager's step; any other in a task" do
      inline = start_supervised!({ModelManager, backend: Inline}, id: :inline)
      {:ok, %{status: :ready}} = ModelManager.load(inline, :b, {:bytes, 10}, notify: self())
      assert_received {Deciding, _, _, _, ^inline}

      tasked = start_supervised!({ModelManager, backend: Deciding}, id: :tasked)
      {:ok, %{status: :ready}} = ModelManager.load(tasked, :b, {:bytes, 10}, notify: self())
      assert_received {Deciding, _, _, _, pid}
      assert pid != tasked

      refute ModelBudget.Backend.loads_inline?(Deciding)
      assert ModelBudget.Backend.loads_inline?(ModelBudget.Backend.default())
    end
  end
end
