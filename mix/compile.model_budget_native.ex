defmodule Mix.Tasks.Compile.ModelBudgetNative do
  @shortdoc "Builds the Rust NIF crate with cargo"
  @moduledoc """
  Builds `native/model_budget_nif` with `cargo build --release` and installs
  the library as `priv/native/model_budget_nif.so` in the app's build
  directory (`_build/ENV/lib/model_budget`, whose `priv` is a copy: the
  project is `build_embedded`), where `ModelBudget.Native` loads it from
  (`:erlang.load_nif/2` adds `.so` on every Unix, macOS included; cargo
  names it `.dylib` there).

  It runs before the Elixir compiler (mix.exs loads it), so the library is
  in place when the Elixir compiler loads `ModelBudget.Native`: a first
  build logs no failed load. Whenever a new library is installed, a
  `ModelBudget.Native` already loaded in this VM is loaded again, so that
  `mix test` and `recompile` in IEx run the library just built.

  The NIFs that only tests and benchmarks call (the crate's `bench`
  feature: echo and floor NIFs) are built, and their stubs in
  `ModelBudget.Native` defined, only where `bench_nifs?/0` says so: for
  ModelBudget itself in `:dev` and `:test`. A release, or a project that
  depends on ModelBudget (Mix compiles dependencies in `:prod`), has
  neither.

  Cargo decides what to rebuild, so editing Rust source triggers a rebuild
  on the next `mix compile`. The cargo target directory is
  `CARGO_TARGET_DIR` when set; else, for ModelBudget itself, the
  workspace's `target/` (shared with `cargo test`), and for a project that
  depends on it, a folder of that project's `_build`, so nothing is written
  into the dependency's folder. `mix clean` removes the installed library
  and cargo's build of this crate.
  """
  use Mix.Task.Compiler

  @crate "model_budget_nif"

  @impl true
  def run(_args) do
    cargo = cargo!()
    root = File.cwd!()

    {_, status} =
      System.cmd(cargo, ["build", "--release", "--quiet", "-p", @crate] ++ features(),
        cd: root,
        env: [{"CARGO_TARGET_DIR", target_dir(root)}],
        stderr_to_stdout: true,
        into: IO.stream(:stdio, :line)
      )

    if status != 0, do: Mix.raise("cargo build of #{@crate} failed (exit status #{status})")

    built = Path.join([target_dir(root), "release", built_name(:os.type())])
    installed = installed_path()

    own_priv!()

    if same_file?(built, installed) do
      {:noop, []}
    else
      File.mkdir_p!(Path.dirname(installed))
      # Delete first: a running VM may have the old file mapped, and
      # overwriting it in place would corrupt that mapping.
      File.rm(installed)
      File.cp!(built, installed)
      Mix.shell().info("Installed NIF #{Path.relative_to_cwd(installed)}")
      reload_native()
      {:ok, []}
    end
  end

  @impl true
  def clean do
    root = File.cwd!()
    clean(installed_path(), target_dir(root), root)
  end

  @doc false
  # Removes the library installed at `installed` and cargo's build of the
  # crate in `target`, for the cargo workspace at `root`.
  def clean(installed, target, root) do
    File.rm(installed)

    if cargo = System.find_executable("cargo") do
      System.cmd(cargo, ["clean", "--release", "--quiet", "-p", @crate],
        cd: root,
        env: [{"CARGO_TARGET_DIR", target}],
        stderr_to_stdout: true
      )
    end

    :ok
  end

  @doc """
  Whether this build has the NIFs that only tests and benchmarks call:
  `bench_nifs?/2` for the project being compiled. Read by this step (the
  cargo feature) and by `ModelBudget.Native` as it compiles (the stubs), so
  that the two always agree: the VM refuses a library with a NIF its
  module lacks.
  """
  @spec bench_nifs?() :: boolean()
  def bench_nifs?, do: bench_nifs?(Mix.env(), dependency?())

  @doc """
  Whether a build in `env`, of ModelBudget itself or as a `dependency`,
  has the test and benchmark NIFs: only ModelBudget itself in `:dev` or
  `:test`.

  ## Examples

      iex> Mix.Tasks.Compile.ModelBudgetNative.bench_nifs?(:test, false)
      true

      iex> Mix.Tasks.Compile.ModelBudgetNative.bench_nifs?(:prod, false)
      false

      iex> Mix.Tasks.Compile.ModelBudgetNative.bench_nifs?(:dev, true)
      false
  """
  @spec bench_nifs?(atom(), boolean()) :: boolean()
  def bench_nifs?(env, dependency), do: env in [:dev, :test] and not dependency

  # Mix compiles a dependency with its parent's :app_path in the config
  # (`_build/ENV/lib/APP` of the parent); a project of its own has none.
  defp dependency?, do: Mix.Project.config()[:app_path] != nil

  defp features, do: if(bench_nifs?(), do: ["--features", "bench"], else: [])

  @doc """
  The file name cargo gives the crate's `cdylib` on an OS, as `:os.type/0`
  reports it.

  ## Examples

      iex> Mix.Tasks.Compile.ModelBudgetNative.built_name({:unix, :darwin})
      "libmodel_budget_nif.dylib"

      iex> Mix.Tasks.Compile.ModelBudgetNative.built_name({:unix, :linux})
      "libmodel_budget_nif.so"
  """
  @spec built_name({atom(), atom()}) :: String.t()
  def built_name({:unix, :darwin}), do: "lib#{@crate}.dylib"
  def built_name({:win32, _}), do: "#{@crate}.dll"
  def built_name({:unix, _}), do: "lib#{@crate}.so"

  defp installed_path, do: Path.join([Mix.Project.app_path(), "priv", "native", "#{@crate}.so"])

  # A build from before the project was embedded links priv/ to the
  # source folder: the library would land there. Copy it instead.
  defp own_priv! do
    priv = Path.join(Mix.Project.app_path(), "priv")

    with {:ok, _link} <- File.read_link(priv) do
      File.rm!(priv)
      File.cp_r!(Path.expand("priv"), priv)
    end

    :ok
  end

  # A dependency's build path lies outside its folder (the parent's _build).
  defp target_dir(root) do
    build = Mix.Project.build_path()

    cond do
      dir = System.get_env("CARGO_TARGET_DIR") -> dir
      String.starts_with?(build, root <> "/") -> Path.join(root, "target")
      true -> Path.join(build, "model_budget_cargo")
    end
  end

  defp cargo!, do: System.find_executable("cargo") || Mix.raise(missing_cargo())

  # A VM that loaded the module before this build keeps the old library
  # until the module is loaded again.
  defp reload_native do
    native = ModelBudget.Native

    if :code.is_loaded(native) != false do
      :code.purge(native)
      :code.delete(native)
      :code.purge(native)
      {:module, ^native} = Code.ensure_loaded(native)
    end

    :ok
  end

  defp same_file?(a, b) do
    with {:ok, sa} <- File.stat(a, time: :posix),
         {:ok, sb} <- File.stat(b, time: :posix) do
      sa.size == sb.size and sa.mtime <= sb.mtime
    else
      _ -> false
    end
  end

  defp missing_cargo do
    """
    cargo was not found on PATH. ModelBudget compiles a Rust NIF and needs \
    Rust 1.91 or newer (rustler 0.39), with cargo on PATH: install it with \
    rustup or your system's packages (Debian's rustc is older than that), \
    then run `mix compile` again.\
    """
  end
end
