defmodule ModelBudget.Test.MixTask do
  @moduledoc false
  # Runs a mix task as `mix` would, its output captured and its exit
  # caught: `{exit status, stdout, stderr}`.

  import ExUnit.CaptureIO

  def run(task, args) do
    {{status, stdout}, stderr} =
      with_io(:stderr, fn ->
        with_io(fn ->
          try do
            task.run(args)
            0
          catch
            :exit, {:shutdown, status} -> status
          end
        end)
      end)

    {status, stdout, stderr}
  end
end
