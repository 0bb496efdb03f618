defmodule ModelBudget.JSONTest do
  use ExUnit.Case, async: true

  alias ModelBudget.JSON

  describe "encode!/2" do
    test "exact text for each kind of value" do
      assert JSON.encode!(nil) == "null"

      assert JSON.encode!([true, false, :ram, "é\"\n", -1, 18_446_744_073_709_551_615, 0.5]) ==
               ~s([true,false,"ram","é\\"\\n",-1,18446744073709551615,0.5])

      assert JSON.encode!(%{0 => 1, "b" => %{}, a: []}) == ~s({"0":1,"a":[],"b":{}})
    end

    test "refuses what JSON cannot hold, naming it" do
      for {term, expected} <- [
            {{1, 2}, "a map, list"},
            {18_446_744_073_709_551_616, "integers of magnitude below 2^64"},
            {<<255>>, "strings that are valid UTF-8"},
            {[1 | 2], "proper lists"},
            {%{:a => 1, "a" => 2}, "maps whose keys stay distinct as JSON strings"},
            {%{{1} => 1}, "map keys that are atoms, strings or integers"},
            {self(), "a map, list"}
          ] do
        error = assert_raise ArgumentError, fn -> JSON.encode!(term) end
        assert error.message =~ "invalid term: expected " <> expected
      end

      deep = Enum.reduce(1..200, 0, fn _, acc -> [acc] end)
      assert_raise ArgumentError, ~r/nested at most 128 levels/, fn -> JSON.encode!(deep) end
      assert_raise ArgumentError, fn -> JSON.encode!(1, colour: true) end
    end
  end

  describe "decode/1" do
    test "round trips, with string keys" do
      data = %{"a" => [1, -2, 2.5, nil, true, "x"], "b" => %{"c" => %{}}}
      assert data |> JSON.encode!(pretty: true) |> JSON.decode() == {:ok, data}

      assert JSON.decode(~s({"n": 18446744073709551615})) ==
               {:ok, %{"n" => 18_446_744_073_709_551_615}}
    end

    test "errors say where" do
      assert JSON.decode(~s({"a": })) == {:error, "expected value at line 1 column 7"}
      assert {:error, "recursion limit exceeded" <> _} = JSON.decode(String.duplicate("[", 200))
      assert_raise ArgumentError, ~r/invalid text: expected a binary/, fn -> JSON.decode(:x) end
    end
  end
end
