defmodule ModelBudgetDoctestTest do
  use ExUnit.Case, async: true
  doctest ModelBudget
  doctest ModelBudget.Format
  doctest ModelBudget.Plan.Report
end
