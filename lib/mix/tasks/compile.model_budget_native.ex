defmodule Mix.Tasks.Compile.ModelBudgetNative do
  @shortdoc "Builds the Rust NIF crate with cargo"
  @moduledoc """
  Builds `native/model_budget_nif` with `cargo build --release` and copies the
  library to `priv/native/model_budget_nif.so`, where `ModelBudget.Native`
  loads it from.

  Cargo decides what to rebuild, so editing Rust source triggers a rebuild on
  the next `mix compile`. The cargo target directory is the workspace's
  `target/` (or `CARGO_TARGET_DIR`), shared with `cargo test`.
  """
  use Mix.Task.Compiler

  @crate "model_budget_nif"

  @impl true
  def run(_args) do
    cargo = System.find_executable("cargo") || Mix.raise(missing_cargo())
    root = File.cwd!()
    target = System.get_env("CARGO_TARGET_DIR") || Path.join(root, "target")

    {_, status} =
      System.cmd(cargo, ["build", "--release", "--quiet", "-p", @crate],
        cd: root,
        env: [{"CARGO_TARGET_DIR", target}],
        stderr_to_stdout: true,
        into: IO.stream(:stdio, :line)
      )

    if status != 0, do: Mix.raise("cargo build of #{@crate} failed (exit status #{status})")

    built = Path.join([target, "release", "lib#{@crate}.so"])
    installed = Path.join([root, "priv", "native", "#{@crate}.so"])

    result =
      if same_file?(built, installed) do
        {:noop, []}
      else
        File.mkdir_p!(Path.dirname(installed))
        # Delete first: a running VM may have the old file mapped, and
        # overwriting it in place would corrupt that mapping.
        File.rm(installed)
        File.cp!(built, installed)
        Mix.shell().info("Installed NIF #{Path.relative_to_cwd(installed)}")
        {:ok, []}
      end

    reload_stubs()
    result
  end

  # The Elixir compiler, which runs before this step, loads every module it
  # compiles; on a first build ModelBudget.Native is then loaded without its
  # library (the stubs). Reload it so that this VM (mix test, mix run) gets
  # the NIFs.
  defp reload_stubs do
    native = ModelBudget.Native

    if :code.is_loaded(native) != false and not nif_loaded?(native) do
      :code.purge(native)
      :code.delete(native)
      :code.purge(native)
      {:module, ^native} = Code.ensure_loaded(native)
    end

    :ok
  end

  defp nif_loaded?(native) do
    native.noop()
    true
  rescue
    ErlangError -> false
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
    cargo was not found on PATH. ModelBudget's NIF needs Rust 1.91 or newer \
    (rustler 0.39). Install a Rust toolchain and run `mix compile` again; \
    `make test` checks this for you.\
    """
  end
end
