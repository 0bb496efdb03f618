defmodule ModelBudget.Cluster.RankingTest do
  use ExUnit.Case, async: true

  alias ModelBudget.Cluster.Ranking

  @backend ModelBudget.Backend.Reservation

  defp view(node, budget, usage, n_gpus \\ 2) do
    %{
      node: node,
      manager: self(),
      labels: %{},
      budget: ModelBudget.resolve(budget),
      usage: usage,
      backend: @backend,
      n_gpus: n_gpus
    }
  end

  @empty %{ram: 0, vram: %{}}

  describe "room/3" do
    test "sums what is left on the devices the placement uses" do
      budget = ModelBudget.resolve(%{ram: 1_000, vram: [500, 800]})
      usage = %{ram: 100, vram: %{0 => 200}}
      # RAM unused by the placement: only GPU 0 and 1 count.
      assert Ranking.room(budget, usage, %{ram: 0, vram: %{0 => 100, 1 => 300}}) ==
               {:ok, 500 - 200 - 100 + (800 - 300)}

      assert Ranking.room(budget, usage, %{ram: 50, vram: %{}}) == {:ok, 1_000 - 100 - 50}
    end

    test "a device without a limit, or an unlimited budget, has unbounded room" do
      budget = ModelBudget.resolve(%{ram: 1_000, vram: :infinity})
      assert Ranking.room(budget, @empty, %{ram: 0, vram: %{0 => 1}}) == {:ok, :infinity}

      assert Ranking.room(ModelBudget.resolve(:infinity), @empty, %{ram: 1, vram: %{}}) ==
               {:ok, :infinity}
    end

    test "a combined budget counts its one pool" do
      budget = ModelBudget.resolve(1_000)
      usage = %{ram: 100, vram: %{0 => 100}}

      assert Ranking.room(budget, usage, %{ram: 10, vram: %{1 => 20}}) ==
               {:ok, 1_000 - 200 - 30}
    end

    test "a placement that does not fit gets check/3's error" do
      budget = ModelBudget.resolve(%{ram: 1_000, vram: [500]})
      usage = %{ram: 100, vram: %{0 => 200}}
      placement = %{ram: 0, vram: %{0 => 400}}

      assert Ranking.room(budget, usage, placement) ==
               ModelBudget.check(budget, placement, usage)

      assert {:error, {:insufficient_memory, [device: {:gpu, 0}, required: 400, available: 300]}} =
               Ranking.room(budget, usage, placement)
    end
  end

  describe "rank/3" do
    test "binpack puts the least room first and unbounded room last; spread the reverse" do
      views = [
        view(:a, 1_000, @empty),
        view(:b, :infinity, @empty),
        view(:c, 500, @empty),
        view(:d, 100, @empty)
      ]

      placements = %{{@backend, 2} => %{ram: 200, vram: %{}}}

      {ranked, refused} = Ranking.rank(views, placements, :binpack)
      assert Enum.map(ranked, fn {v, _} -> v.node end) == [:c, :a, :b]

      assert [{:d, _, {:insufficient_memory, [device: :total, required: 200, available: 100]}}] =
               refused

      {ranked, _} = Ranking.rank(views, placements, :spread)
      assert Enum.map(ranked, fn {v, _} -> v.node end) == [:b, :a, :c]
    end

    test "each member gets the placement for its own GPU count" do
      views = [
        view(:one, %{ram: 100, vram: [1_000]}, @empty, 1),
        view(:two, :infinity, @empty, 2)
      ]

      one = %{ram: 0, vram: %{0 => 900}}
      two = %{ram: 0, vram: %{0 => 450, 1 => 450}}
      placements = %{{@backend, 1} => one, {@backend, 2} => two}

      assert {[{%{node: :one}, ^one}, {%{node: :two}, ^two}], []} =
               Ranking.rank(views, placements, :binpack)
    end

    test "ties go by node" do
      views = [view(:b, 1_000, @empty), view(:a, 1_000, @empty)]
      placements = %{{@backend, 2} => %{ram: 1, vram: %{}}}
      {ranked, []} = Ranking.rank(views, placements, :spread)
      assert Enum.map(ranked, fn {v, _} -> v.node end) == [:a, :b]
    end
  end

  describe "where?/2" do
    test "labels must contain every key and value" do
      assert Ranking.where?(%{gpu: "h100", zone: "a"}, %{})
      assert Ranking.where?(%{gpu: "h100", zone: "a"}, %{zone: "a"})
      refute Ranking.where?(%{gpu: "h100", zone: "a"}, %{zone: "b"})
      refute Ranking.where?(%{gpu: "h100"}, %{zone: nil})
    end
  end
end
