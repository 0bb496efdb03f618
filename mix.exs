# The compiler that builds the Rust NIF with cargo: loaded here, before the
# project compiles, so that the library is in place when the Elixir compiler
# loads ModelBudget.Native (no hex package, so no rustler_mix).
Code.require_file("mix/compile.model_budget_native.ex", __DIR__)

defmodule ModelBudget.MixProject do
  use Mix.Project

  def project do
    [
      app: :model_budget,
      version: "0.1.0",
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      # The NIF first: the Elixir compiler loads ModelBudget.Native, which
      # loads the library.
      compilers: [:model_budget_native | Mix.compilers()],
      # priv/ is copied into _build, not linked: the NIF is installed there,
      # so a project that depends on this one never writes into its folder.
      build_embedded: true,
      elixirc_paths: elixirc_paths(Mix.env()),
      deps: [],
      docs: [
        main: "readme",
        extras: ["README.md", "CONTRIBUTING.md", "guides/leases.md", "guides/glossary.md"]
      ]
    ]
  end

  def application do
    # :inets for :httpc, which ModelBudget.Backend.LlamaServer polls /health with.
    # ModelBudget.Application: the :pg scope and view of ModelBudget.Cluster.
    [extra_applications: [:logger, :inets], mod: {ModelBudget.Application, []}]
  end

  defp elixirc_paths(:test), do: ["lib", "test/support"]
  defp elixirc_paths(_), do: ["lib"]
end
