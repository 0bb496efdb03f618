defmodule ModelBudgetDoctestTest do
  use ExUnit.Case, async: true
  doctest ModelBudget
end
