defmodule ModelBudget.Test.Eventually do
  @moduledoc """
  Polling for a condition that another process makes true, for the tests
  that cannot wait on a message.
  """

  @doc """
  Runs `fun` every 5 ms until it returns a truthy value, which it returns;
  after `ms` milliseconds, fails the test saying `what` did not happen.
  """
  @spec eventually(String.t(), non_neg_integer(), (() -> term())) :: term()
  def eventually(what \\ "the condition", ms \\ 2_000, fun) do
    poll(what, System.monotonic_time(:millisecond) + ms, fun)
  end

  defp poll(what, deadline, fun) do
    cond do
      result = fun.() ->
        result

      System.monotonic_time(:millisecond) > deadline ->
        raise ExUnit.AssertionError, message: "timed out waiting for #{what}"

      true ->
        Process.sleep(5)
        poll(what, deadline, fun)
    end
  end
end
