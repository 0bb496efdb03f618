defmodule ModelBudget.Plan.TextTest do
  use ExUnit.Case, async: true

  alias ModelBudget.Plan
  alias ModelBudget.Test.PlanFixtures

  @gib 2 ** 30

  # The budgets below are sized for 8192 tokens, one slot, no prompt cache
  # and no repacked weights (which types repack depends on the CPU).
  @pinned [n_ctx: 8192, n_parallel: 1, cache_ram: 0, repack: false]

  defp render(run_opts, opts \\ []) do
    {:ok, plan} = Plan.run([machine: PlanFixtures.machine(64, [20, 20])] ++ run_opts)
    Plan.Text.render(plan, opts)
  end

  describe "render/2" do
    test "the machine, an aligned summary and one block per model" do
      text =
        render(models: ["llama-3.1-8b", "llama-3.1-70b"], load: [split_mode: :layer] ++ @pinned)

      assert text =~ "GPUs        GPU 0: Test GPU 0, 80.00 GiB total, 20.00 GiB free"
      assert text =~ "            GPU 1: Test GPU 1, 80.00 GiB total, 20.00 GiB free"
      assert text =~ "Budget      RAM 51.20 GiB; GPU 0: 20.00 GiB, GPU 1: 20.00 GiB"

      assert text =~
               "Planned on  RAM and 2 GPUs, CPU buffers none (no extra CPU buffers; as asked)\n"

      assert text =~
               "Options     split_mode layer, n_ctx 8192, n_parallel 1, cache_ram 0, repack false\n"

      [header | _] =
        text |> String.split("\n") |> Enum.drop_while(&(not String.starts_with?(&1, "  model ")))

      assert header =~
               ~r/^  model\s+type\s+params\s+weights\s+BPW\s+context\s+RAM\s+GPU 0\s+GPU 1\s+verdict$/

      # Q4_K_M is about 4.9 bits a weight.
      assert text =~
               ~r/\n  Llama-3.1-8B-Instruct-Q4_K_M +Q4_K_M +8\.03 B +4\.58 GiB +4\.89 +8192 /

      # Every row of the summary has its verdict in the same column.
      column = :binary.match(header, "verdict") |> elem(0)
      rows = text |> String.split("\n") |> Enum.filter(&(&1 =~ ~r/  (FITS|DOES NOT FIT)/))
      assert length(rows) == 2

      assert Enum.all?(rows, fn row -> String.slice(row, column, 4) in ["FITS", "DOES"] end)

      assert text =~ "Llama-3.1-70B-Instruct-Q4_K_M: DOES NOT FIT: GPU 0 is short by"
      assert text =~ "; GPU 1 is short by"

      assert text =~
               ~r/\n  device +weights +repacked +KV cache +compute +output +prompt cache +overhead +total +available\n  RAM /

      assert text =~ "    --n-gpu-layers "

      assert String.ends_with?(
               text,
               "1 of 2 fit together; refused: Llama-3.1-70B-Instruct-Q4_K_M."
             )
    end

    test "colour only when asked for" do
      opts = [
        models: ["llama-3.1-8b", "llama-3.1-70b"],
        budget: %{ram: 16 * @gib, vram: []},
        load: @pinned
      ]

      plain = render(opts)
      refute plain =~ "\e["
      coloured = render(opts, colour: true)
      assert coloured =~ "\e[32mFITS\e[0m"
      assert coloured =~ "\e[31mDOES NOT FIT\e[0m"
      # The same text once the escapes are taken out.
      assert String.replace(coloured, ~r/\e\[[0-9;]*m/, "") == plain
    end

    test "no load options: llama-server's defaults" do
      text = render(models: ["llama-3.1-8b"], budget: :infinity)

      assert text =~
               "Options     llama-server's defaults (n_gpu_layers 99, split_mode none, the trained context, 4 slots sharing an f16 KV cache, an 8192 MiB prompt cache)\n"

      assert text =~ "Context 131072 tokens (4 slots sharing one KV cache): "
      assert text =~ ~r/\n  RAM .* 8\.00 GiB .* unlimited\n/
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
