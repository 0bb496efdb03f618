defmodule ModelBudget.RobustnessTest do
  # Throws generated terms at every function: each call must return a result
  # or raise ArgumentError, never another exception, and never crash the VM.
  use ExUnit.Case, async: true

  alias ModelBudget.Test.RandomTerm

  @runs 100_000

  @calls [
    resolve_1: {&ModelBudget.resolve/1, 1},
    resolve_2: {&ModelBudget.resolve/2, 2},
    distribute: {&ModelBudget.distribute/3, 3},
    check: {&ModelBudget.check/3, 3},
    fold: {&ModelBudget.fold/2, 2},
    release: {&ModelBudget.release/2, 2},
    breakdown: {&ModelBudget.breakdown/3, 3},
    estimate: {&ModelBudget.estimate/3, 3},
    max_context_length: {&ModelBudget.max_context_length/3, 3},
    fit_search: {&__MODULE__.fit_search/5, 5},
    parse_bytes: {&ModelBudget.Format.parse_bytes/1, 1},
    json_encode: {&ModelBudget.JSON.encode!/1, 1},
    json_encode_opts: {&ModelBudget.JSON.encode!/2, 2},
    json_decode: {&ModelBudget.JSON.decode/1, 1},
    fits_context: {&ModelBudget.fits_context?/3, 3},
    format_bytes: {&ModelBudget.Format.bytes/1, 1},
    constraint_compile: {&ModelBudget.Constraint.compile/2, 2},
    model_read: {&ModelBudget.Model.read/1, 1}
  ]

  # ModelBudget.Plan.fit_search/3 with each part of its target random.
  def fit_search(model, opts, n_gpus, budget, used),
    do: ModelBudget.Plan.fit_search(model, opts, %{budget: budget, used: used, n_gpus: n_gpus})

  for {name, {fun, arity}} <- @calls do
    @tag timeout: 120_000
    test "#{name} answers #{@runs} random inputs with a result or ArgumentError" do
      fun = unquote(fun)
      arity = unquote(arity)

      # outcome/1 lets any exception but ArgumentError fail the test; a
      # crash of the VM fails the run.
      {errors, improper} =
        Enum.reduce(1..@runs, {0, 0}, fn _, {errors, improper} ->
          args = Enum.map(1..arity, fn _ -> RandomTerm.term() end)
          error? = outcome(fn -> apply(fun, args) end) == :argument_error

          {errors + if(error?, do: 1, else: 0),
           improper + if(RandomTerm.improper?(args), do: 1, else: 0)}
        end)

      # Errors must occur, or the generator is not reaching the decoders;
      # improper lists too (rustler's list iterator panics at their tail).
      assert errors > 0
      assert improper > 0
    end
  end

  test "an improper list is an ArgumentError naming the argument, from every public function" do
    improper = RandomTerm.improper([{:mode, :direct}])
    {:ok, model} = ModelBudget.Plan.Catalog.fetch("llama-3.1-8b")

    for {call, arg} <- [
          {fn -> ModelBudget.distribute(1000, improper, 0) end, "opts"},
          {fn -> ModelBudget.breakdown(model, improper, 0) end, "opts"},
          {fn -> ModelBudget.max_context_length(2 ** 34, model, improper) end, "opts"},
          {fn -> ModelBudget.fits_context?(2 ** 34, model, improper) end, "opts"},
          {fn -> ModelBudget.Constraint.compile(RandomTerm.improper(["a > 1"]), [:a]) end,
           "expressions"},
          {fn -> ModelBudget.resolve(%{ram: 1, vram: RandomTerm.improper([1])}) end,
           "memory budget :vram"},
          {fn -> ModelBudget.check(%{mode: :unlimited}, %{ram: 1, vram: %{}}, improper) end,
           "used"},
          {fn -> ModelBudget.JSON.encode!(%{}, RandomTerm.improper(pretty: true)) end, "opts"}
        ] do
      error = assert_raise ArgumentError, call
      assert error.message =~ "invalid #{arg}:"
    end
  end

  test "structured near-misses reach results as well as errors" do
    # Random terms rarely form valid budgets; these mostly do.
    outcomes =
      for _ <- 1..20_000 do
        budget = Enum.random([%{mode: :unlimited}, %{mode: :combined, limit: :rand.uniform(100)}])

        placement = %{
          ram: :rand.uniform(60) - 2,
          vram: %{Enum.random([0, 1, -1]) => :rand.uniform(50)}
        }

        outcome(fn -> ModelBudget.check(budget, placement, ModelBudget.empty_usage()) end)
      end

    assert {:ok, :ok} in outcomes
    assert :argument_error in outcomes
    assert Enum.any?(outcomes, &match?({:ok, {:error, {:insufficient_memory, _}}}, &1))
  end

  test "models with one field replaced by a random term give a result or ArgumentError" do
    model = %{
      layer_bytes: List.duplicate(1000, 4),
      input_bytes: 10,
      output_bytes: 10,
      other_bytes: 0,
      n_head: 8,
      n_head_kv: 2,
      head_dim_k: 64,
      head_dim_v: 64,
      n_embd: 512,
      n_vocab: 1000,
      context_length: 4096,
      sliding_window: 128,
      sliding_window_layers: [true, false, true, false]
    }

    outcomes =
      for _ <- 1..20_000 do
        key = Enum.random(Map.keys(model))
        broken = Map.put(model, key, RandomTerm.term(2))

        outcome(fn ->
          ModelBudget.breakdown(
            broken,
            Enum.random([[], [n_gpu_layers: 2], [split_mode: :row]]),
            2
          )
        end)
      end

    assert Enum.any?(outcomes, &match?({:ok, _}, &1))
    assert :argument_error in outcomes
  end

  # A call's result as {:ok, result}, or :argument_error; any other
  # exception fails the test.
  defp outcome(fun) do
    {:ok, fun.()}
  rescue
    ArgumentError -> :argument_error
  end
end
