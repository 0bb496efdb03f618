defmodule ModelBudget.ModelManager.HistoryTest do
  # The ids whose counts the manager keeps once their models are gone.
  use ExUnit.Case, async: true

  alias ModelBudget.ModelManager.History

  describe "forgotten/2" do
    test "keeps the most recently forgotten ids, and hands back the oldest past the limit" do
      h = History.new(2)
      {h, []} = History.forgotten(h, :a)
      {h, []} = History.forgotten(h, :b)
      # :a forgotten again: :b is now the oldest.
      {h, []} = History.forgotten(h, :a)
      {h, [:b]} = History.forgotten(h, :c)
      {_h, [:a]} = History.forgotten(h, :d)
    end

    test "a loaded id is not kept, and its stale place in the order is skipped" do
      h = History.new(2)
      {h, []} = History.forgotten(h, :a)
      {h, []} = History.forgotten(h, :b)
      h = History.loaded(h, :a)
      {h, []} = History.forgotten(h, :c)
      {_h, [:b]} = History.forgotten(h, :d)
    end

    test "stays bounded however often the same ids come and go" do
      h =
        Enum.reduce(1..10_000, History.new(3), fn i, h ->
          {h, _} = History.forgotten(h, rem(i, 5))
          h
        end)

      assert map_size(h.by_id) == 3
      # Stale places are swept: the queue holds a bounded number of them.
      assert :queue.len(h.queue) <= 2 * 3 + 64 + 1
    end

    test ":infinity keeps every id" do
      h =
        Enum.reduce(1..1_000, History.new(:infinity), fn i, h ->
          {h, []} = History.forgotten(h, i)
          h
        end)

      assert map_size(h.by_id) == 1_000
    end
  end
end
