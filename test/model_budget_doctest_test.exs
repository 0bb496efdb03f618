defmodule ModelBudgetDoctestTest do
  use ExUnit.Case, async: true
  doctest ModelBudget
  doctest ModelBudget.Format
  doctest ModelBudget.Plan
  doctest ModelBudget.Plan.Catalog
  doctest ModelBudget.Plan.Text
  doctest ModelBudget.JSON
  doctest ModelBudget.Backend.LlamaServer
end
