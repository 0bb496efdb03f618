defmodule ModelBudget.MixProject do
  use Mix.Project

  def project do
    [
      app: :model_budget,
      version: "0.1.0",
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      # The NIF crate is built after the Elixir sources, by a compiler of our
      # own in lib/mix/tasks (no hex package, so no rustler_mix).
      compilers: Mix.compilers() ++ [:model_budget_native],
      elixirc_paths: elixirc_paths(Mix.env()),
      deps: [],
      docs: [main: "readme", extras: ["README.md"]]
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
