defmodule ModelBudget.TestClock do
  @moduledoc """
  A clock for `ModelBudget.ModelManager`'s `:clock` option that moves only
  when a test says so: `{clock, advance} = TestClock.new()`.
  """

  @doc "A clock at 0 and the function that moves it forward by `ms`."
  @spec new() :: {(() -> integer()), (integer() -> :ok)}
  def new do
    time = :atomics.new(1, signed: true)
    {fn -> :atomics.get(time, 1) end, fn ms -> :atomics.add(time, 1, ms) end}
  end
end
