defmodule Mix.Tasks.ModelBudget.Plan do
  @shortdoc "Shows this machine's memory budget and where models would go"
  @moduledoc """
  Shows this machine's resolved `:auto` memory budget and a worked example of
  `ModelBudget.distribute/3`, `ModelBudget.check/3` and `ModelBudget.fold/2`.

      mix model_budget.plan
  """
  use Mix.Task

  @impl true
  def run(_args) do
    Mix.Task.run("app.start")
    ModelBudget.Plan.Report.machine() |> IO.puts()
  end
end
