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

  # The argument's name as the caller knows it: a CLI names its switches
  # (see with_names/2) instead of the options they set.
  def message({:model_budget_badarg, arg, message}), do: "invalid #{name(arg)}: #{message}"

  def message({:model_budget_badarg, arg, message, value}),
    do: "invalid #{name(arg)}: #{message}, got: #{inspect(value)}"

  defp name(arg), do: Map.get(Process.get(__MODULE__, %{}), arg, arg)

  # Runs `fun` with bad-input errors naming arguments by `names` (argument
  # as the NIF names it => name to show), so that a front end speaks of
  # what its user typed without rewriting messages afterwards.
  def with_names(names, fun) when is_map(names) do
    previous = Process.put(__MODULE__, names)

    try do
      fun.()
    after
      if previous, do: Process.put(__MODULE__, previous), else: Process.delete(__MODULE__)
    end
  end
end
