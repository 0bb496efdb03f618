defmodule ModelBudget.Native.Errors do
  @moduledoc false
  # Kept apart from ModelBudget.Native so that requiring the macro at compile
  # time does not load the NIF module (whose library is built after Elixir).

  # Wraps a NIF call so that its bad-input error surfaces as an ArgumentError
  # raised from the caller's stack frame.
  defmacro call(expr) do
    quote do
      try do
        unquote(expr)
      catch
        :error, {:model_budget_badarg, _, _} = reason ->
          reraise ArgumentError,
                  [message: ModelBudget.Native.Errors.message(reason)],
                  __STACKTRACE__

        :error, {:model_budget_badarg, _, _, _} = reason ->
          reraise ArgumentError,
                  [message: ModelBudget.Native.Errors.message(reason)],
                  __STACKTRACE__
      end
    end
  end

  def message({:model_budget_badarg, arg, message}), do: "invalid #{arg}: #{message}"

  def message({:model_budget_badarg, arg, message, value}),
    do: "invalid #{arg}: #{message}, got: #{inspect(value)}"
end
