defmodule Mix.Tasks.Compile.ModelBudgetNativeTest do
  use ExUnit.Case, async: true

  # The compiler is loaded by mix.exs, not compiled into a BEAM file:
  # its doc examples (built_name/1, bench_nifs?/2) are asserted below
  # instead of doctested.
  alias Mix.Tasks.Compile.ModelBudgetNative

  describe "built_name/1" do
    test "names cargo's cdylib per OS" do
      assert ModelBudgetNative.built_name({:unix, :linux}) == "libmodel_budget_nif.so"
      assert ModelBudgetNative.built_name({:unix, :darwin}) == "libmodel_budget_nif.dylib"
      assert ModelBudgetNative.built_name({:win32, :nt}) == "model_budget_nif.dll"
    end
  end

  describe "bench_nifs?/0" do
    # The NIFs of the crate's `bench` feature (echo.rs, floor.rs).
    @prefixes ~w(noop echo_ floor_ decode_only_ compute_only_)

    test "only ModelBudget itself in :dev or :test has them" do
      assert ModelBudgetNative.bench_nifs?(:dev, false)
      assert ModelBudgetNative.bench_nifs?(:test, false)
      refute ModelBudgetNative.bench_nifs?(:prod, false)
      refute ModelBudgetNative.bench_nifs?(:dev, true)
      refute ModelBudgetNative.bench_nifs?(:test, true)
      refute ModelBudgetNative.bench_nifs?(:prod, true)
    end

    test "here (ModelBudget in :test) the library and the module have them" do
      assert ModelBudgetNative.bench_nifs?()

      bench =
        for {name, arity} <- ModelBudget.Native.__info__(:functions),
            String.starts_with?(Atom.to_string(name), @prefixes),
            do: {name, arity}

      # Stubs the library did not replace would raise :nif_not_loaded.
      assert length(bench) == 25
      assert ModelBudget.Native.noop() == :ok
      assert ModelBudget.Native.echo_limit(:infinity) == :infinity
      # A :prod build lacks them: test/readme_tour_test.exs checks a fresh
      # project that depends on ModelBudget.
    end
  end

  describe "clean/0" do
    test "removes the installed library" do
      # Outside the project, so that cargo finds no workspace to clean.
      dir =
        Path.join(System.tmp_dir!(), "model_budget_clean_#{System.unique_integer([:positive])}")

      on_exit(fn -> File.rm_rf!(dir) end)
      lib = Path.join([dir, "priv", "native", "model_budget_nif.so"])
      File.mkdir_p!(Path.dirname(lib))
      File.write!(lib, "not a library")
      assert ModelBudgetNative.clean(lib, Path.join(dir, "target"), dir) == :ok
      refute File.exists?(lib)
    end
  end

  describe "ModelBudget.Native.load_nif/0" do
    test "a library that does not load is an error naming the path and the reason" do
      # Loading again into the loaded module is refused by the VM: the
      # error carries the installed path and the VM's reason.
      assert {:error, {:model_budget_nif_not_loaded, path, reason, text}} =
               ModelBudget.Native.load_nif()

      assert String.ends_with?(path, "priv/native/model_budget_nif.so")
      assert is_atom(reason) and text != []
    end
  end
end
