defmodule ModelBudget.Plan.TextTest do
  use ExUnit.Case, async: true

  alias ModelBudget.Plan
  alias ModelBudget.Test.PlanFixtures

  @gib 2 ** 30

  defp render(run_opts, opts \\ []) do
    {:ok, plan} = Plan.run([machine: PlanFixtures.machine(64, [20, 20])] ++ run_opts)
    Plan.Text.render(plan, opts)
  end

  describe "render/2" do
    test "the machine, an aligned summary and one block per model" do
      text = render(models: ["llama-3.1-8b", "llama-3.1-70b"], load: [split_mode: :layer])
      assert text =~ "GPUs        GPU 0: Test GPU 0, 80.00 GiB total, 20.00 GiB free"
      assert text =~ "            GPU 1: Test GPU 1, 80.00 GiB total, 20.00 GiB free"
      assert text =~ "Budget      RAM 51.20 GiB; GPU 0: 20.00 GiB, GPU 1: 20.00 GiB"
      assert text =~ "Planned on  RAM and 2 GPUs\n"
      assert text =~ "Options     split_mode layer"

      [header | _] =
        text |> String.split("\n") |> Enum.drop_while(&(not String.starts_with?(&1, "  model ")))

      assert header =~ ~r/^  model\s+params\s+weights\s+context\s+RAM\s+GPU 0\s+GPU 1\s+verdict$/
      # Every row of the summary has its verdict in the same column.
      column = :binary.match(header, "verdict") |> elem(0)
      rows = text |> String.split("\n") |> Enum.filter(&(&1 =~ ~r/  (FITS|DOES NOT FIT)/))
      assert length(rows) == 2

      assert Enum.all?(rows, fn row -> String.slice(row, column, 4) in ["FITS", "DOES"] end)

      assert text =~ "Llama-3.1-70B-Instruct-Q4_K_M: DOES NOT FIT: GPU 0 is short by"
      assert text =~ "; GPU 1 is short by"

      assert text =~
               ~r/\n  device +weights +KV cache +compute +overhead +total +available\n  RAM /

      assert text =~ "    --n-gpu-layers "

      assert String.ends_with?(
               text,
               "1 of 2 fit together; refused: Llama-3.1-70B-Instruct-Q4_K_M."
             )
    end

    test "colour only when asked for" do
      opts = [models: ["llama-3.1-8b", "llama-3.1-70b"], budget: %{ram: 16 * @gib, vram: []}]
      plain = render(opts)
      refute plain =~ "\e["
      coloured = render(opts, colour: true)
      assert coloured =~ "\e[32mFITS\e[0m"
      assert coloured =~ "\e[31mDOES NOT FIT\e[0m"
      # The same text once the escapes are taken out.
      assert String.replace(coloured, ~r/\e\[[0-9;]*m/, "") == plain
    end

    test "a combined budget shows the pool; unlimited devices say so" do
      text = render(models: ["llama-3.1-8b"], budget: 24 * @gib)
      assert text =~ ~r/\n  total .* 24\.00 GiB\n/
      text = render(models: ["llama-3.1-8b"], budget: :infinity)
      assert text =~ "Budget      unlimited"
      assert text =~ ~r/\n  RAM .* unlimited\n/
    end
  end

  describe "describe/1" do
    test "each budget mode" do
      assert Plan.Text.describe(%{mode: :unlimited}) == "unlimited"

      assert Plan.Text.describe(%{mode: :per_device, ram: :infinity, vram: :infinity}) ==
               "RAM unlimited; VRAM unlimited"

      assert Plan.Text.describe(%{mode: :per_device, ram: @gib, vram: %{}}) ==
               "RAM 1.00 GiB; no GPUs"
    end
  end
end
