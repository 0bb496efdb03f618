defmodule ModelBudget.ConstraintTest do
  use ExUnit.Case, async: true

  alias ModelBudget.Constraint

  doctest ModelBudget.Constraint

  @vars [:a, :b, :c]
  @gib 2 ** 30

  defp met?(expression, values) do
    {:ok, constraint} = Constraint.compile([expression], @vars)
    Constraint.met?(constraint, values)
  end

  defp abc(a, b \\ 0, c \\ 0), do: %{a: a, b: b, c: c}

  describe "compile/2" do
    test "keeps the expressions and lists declared and used variables as strings" do
      assert {:ok, %Constraint{} = c} = Constraint.compile(["c > a", "a > 1"], [:a, "b", :a, :c])
      assert c.expressions == ["c > a", "a > 1"]
      assert c.variables == ["a", "b", "c"]
      assert c.used_variables == ["a", "c"]
      assert is_reference(c.ref)
    end

    @invalid [
      {"", 1, "expected an operand"},
      {"a >", 4,
       "expected an operand (a number, a variable, a function call or `(`), got the end of the expression"},
      {"a > b)", 6, "expected an operator"},
      {"(a > b", 7, "expected `)` to close the `(` at column 1, got the end of the expression"},
      {"a + b", 1, "expected a comparison"},
      {"a", 1, "expected a comparison"},
      {"not a", 5, "expected a comparison"},
      {"a > 1 and b", 11, "expected a comparison"},
      {"a > (b > c)", 5, "expected a number, got a comparison or a boolean"},
      {"a + (b > c) > 1", 5, "expected a number"},
      {"min(a > 1) > 0", 5, "expected a number"},
      {"d > 1", 1, "expected a variable (a, b, c), got `d`"},
      {"A > 1", 1, "expected a variable"},
      {"a > foo(1)", 5,
       "expected a function (min, max, abs, or a unit: KB, MB, GB, TB, KiB, MiB, GiB, TiB), got `foo`"},
      {"a > MIN(1)", 5, "expected a function"},
      {"a > min()", 5, "expected at least one argument to `min`, got 0"},
      {"a > abs(1, 2)", 5, "expected exactly one argument to `abs`, got 2"},
      {"a > gib()", 5, "expected exactly one argument to `gib`"},
      {"a > min(1 2)", 11, "expected `,` or `)` to close the call to `min` at column 8, got `2`"},
      {"a > 2XB", 6,
       "expected a unit (KB, MB, GB, TB, KiB, MiB, GiB, TiB) after the number, got `XB`"},
      {"a > 2 GiB", 7, "expected an operator"},
      {"a > 1.", 7, "expected a digit after the decimal point"},
      {"a > .5", 5, "got `.`"},
      {"a > 1 / 0", 9, "expected a divisor other than a constant zero"},
      {"a > b / (1 - 1)", 9, "constant zero"},
      {"a > 99999999999999999999999999999999999999999", 5, "expected a number below 2^127"},
      {"a > 1000000000000000000000TiB * 1000000000000000000", 5, "overflows"},
      {"a > 2**3", 6, "expected `*` (there is no power operator), got `**`"},
      {"a = 1", 3, "expected `==`"},
      {"a ! b", 3, "expected `!=` (write `not` to negate), got `!`"},
      {"a > 1 && b > 1", 7, "expected `and`, got `&&`"},
      {"a > 1 || b > 1", 7, "expected `or`, got `||`"},
      {"a > 1 AND b > 1", 7, "expected an operator"},
      {"a.b > 1", 2, "got `.`"},
      {"__import__('os').system('x') > 0", 12, "got `'`"},
      {"a > é", 5, "got `é`"},
      {"a < not b", 5, "expected an operand"},
      {"a > -", 6, "expected an operand"}
    ]

    test "a table of invalid expressions with their columns" do
      for {expression, column, message} <- @invalid do
        assert {:error, {:invalid_constraint, ^expression, got, got_column}} =
                 Constraint.compile([expression], @vars)

        assert {got_column, got =~ message} == {column, true},
               "#{inspect(expression)}: #{got} at #{got_column}"

        assert String.starts_with?(got, "expected ")
      end
    end

    test "reports the first expression that fails" do
      assert {:error, {:invalid_constraint, "b >", _, 4}} =
               Constraint.compile(["a > 1", "b >", "zz"], @vars)
    end

    test "no expressions is a constraint that is never met" do
      assert {:ok, c} = Constraint.compile([], @vars)
      refute Constraint.met?(c, %{})
    end

    test "bad arguments raise ArgumentError naming them" do
      assert_raise ArgumentError,
                   ~r/invalid expressions: expected a list of strings, got: "a > 1"/,
                   fn ->
                     Constraint.compile("a > 1", @vars)
                   end

      assert_raise ArgumentError, ~r/invalid expressions: expected a list of strings/, fn ->
        Constraint.compile([:a], @vars)
      end

      assert_raise ArgumentError,
                   ~r/invalid variables: expected a list of atoms or strings/,
                   fn ->
                     Constraint.compile(["a > 1"], [1])
                   end

      for name <- ["", "1a", "a-b", "and", :not, "é"] do
        assert_raise ArgumentError,
                     ~r/invalid variables: expected names made of ASCII letters/,
                     fn ->
                       Constraint.compile(["1 > 0"], [name])
                     end
      end
    end

    test "a 10,000-term expression is rejected on its length" do
      huge = Enum.map_join(1..10_000, " + ", fn _ -> "a" end) <> " > 1"

      assert {:error, {:invalid_constraint, ^huge, message, 513}} =
               Constraint.compile([huge], @vars)

      assert message == "expected at most 512 bytes, got #{byte_size(huge)}"
    end

    test "512 bytes compile, 513 do not" do
      padded = "a > 1" <> String.duplicate(" ", 507)
      assert {:ok, _} = Constraint.compile([padded], @vars)

      assert {:error, {:invalid_constraint, _, _, 513}} =
               Constraint.compile([padded <> " "], @vars)
    end

    test "more than 256 nodes is rejected" do
      wide = Enum.map_join(1..129, "+", fn _ -> "a" end) <> ">1"
      assert byte_size(wide) <= 512

      assert {:error, {:invalid_constraint, ^wide, "expected at most 256 nodes" <> _, _}} =
               Constraint.compile([wide], @vars)

      fits = Enum.map_join(1..127, "+", fn _ -> "a" end) <> ">1"
      assert {:ok, _} = Constraint.compile([fits], @vars)
    end

    test "nesting deeper than 32 is rejected" do
      deep = String.duplicate("(", 33) <> "a" <> String.duplicate(")", 33) <> " > 1"

      assert {:error,
              {:invalid_constraint, ^deep, "expected at most 32 levels of nesting" <> _, 33}} =
               Constraint.compile([deep], @vars)

      ok = String.duplicate("(", 32) <> "a" <> String.duplicate(")", 32) <> " > 1"
      assert {:ok, _} = Constraint.compile([ok], @vars)

      assert {:error, {:invalid_constraint, _, _, 33}} =
               Constraint.compile([String.duplicate("-", 100) <> "a > 1"], @vars)
    end

    test "more than 64 expressions raise ArgumentError" do
      assert {:ok, _} = Constraint.compile(List.duplicate("a > 1", 64), @vars)

      assert_raise ArgumentError,
                   ~r/invalid expressions: expected at most 64 expressions, got 65/,
                   fn ->
                     Constraint.compile(List.duplicate("a > 1", 65), @vars)
                   end
    end

    @pieces ~w[a b c zz 1 0 0.70 2GiB 1.5gb kib min max abs ( ) , + - * / < <= > == != = ! and or not . 99999999999999999999999] ++
              [" "]

    test "random strings compile to {:ok, _} or an {:error, _} with a column in range" do
      seed = :rand.seed(:exsss, {7, 11, 2024})

      for _ <- 1..2_000 do
        text =
          case :rand.uniform(3) do
            1 -> Enum.map_join(1..:rand.uniform(40), fn _ -> Enum.random(@pieces) end)
            2 -> for _ <- 1..:rand.uniform(80), into: "", do: <<:rand.uniform(256) - 1>>
            3 -> for _ <- 1..:rand.uniform(530), into: "", do: <<Enum.random(32..126)>>
          end

        case Constraint.compile([text], @vars) do
          {:ok, c} ->
            values = for v <- @vars, into: %{}, do: {v, Enum.random(-(2 ** 63)..(2 ** 64 - 1))}
            assert is_boolean(Constraint.met?(c, values))

          {:error, {:invalid_constraint, ^text, message, column}} ->
            assert String.starts_with?(message, "expected "), inspect({seed, text, message})
            assert column in 1..(min(byte_size(text), 512) + 1), inspect({seed, text, column})
        end
      end
    end
  end

  describe "met?/2" do
    @valid [
      {"a > b * 0.70", {71, 100, 0}, true},
      {"a > b * 0.70", {70, 100, 0}, false},
      {"a >= b * 0.70", {70, 100, 0}, true},
      {"a == 1 + 2 * 3", {7, 0, 0}, true},
      {"a == (1 + 2) * 3", {9, 0, 0}, true},
      {"a == 10 - 4 - 3", {3, 0, 0}, true},
      {"a == 12 / 3 / 2", {2, 0, 0}, true},
      {"a == -b * -2", {6, 3, 0}, true},
      {"a / 3 == 1 / 3", {1, 0, 0}, true},
      {"7 / 2 == 3.5", {0, 0, 0}, true},
      {"0.1 + 0.2 == 0.3", {0, 0, 0}, true},
      {"min(a, b, c) == 1 and max(a, b, c) == 3", {2, 3, 1}, true},
      {"min(a) == a", {5, 0, 0}, true},
      {"abs(a - b) == 5", {1, 6, 0}, true},
      {"not a > b", {1, 2, 0}, true},
      {"not not a > b", {1, 2, 0}, false},
      {"a > 0 or b > 0 and c > 0", {1, 0, 0}, true},
      {"(a > 0 or b > 0) and c > 0", {1, 0, 0}, false},
      {"a != b", {1, 2, 0}, true},
      {"a<=b", {1, 1, 0}, true},
      {"  a\t>\nb  ", {2, 1, 0}, true},
      {"a > -5", {-4, 0, 0}, true},
      {"a == 18446744073709551615", {2 ** 64 - 1, 0, 0}, true},
      {"a == -9223372036854775808", {-(2 ** 63), 0, 0}, true}
    ]

    test "a table of valid expressions with their values" do
      for {expression, {a, b, c} = values, expected} <- @valid do
        assert met?(expression, abc(a, b, c)) == expected, "#{expression} with #{inspect(values)}"
      end
    end

    test "any rule met means the constraint is met" do
      {:ok, c} = Constraint.compile(["a > 10", "b > 10"], @vars)
      refute Constraint.met?(c, abc(1, 1))
      assert Constraint.met?(c, abc(1, 11))
      assert Constraint.met?(c, abc(11, 1))
    end

    test "unit arithmetic is exact" do
      units = [
        {"4KiB", 4 * 1024},
        {"kib(4)", 4 * 1024},
        {"512MiB", 512 * 2 ** 20},
        {"mib(512)", 512 * 2 ** 20},
        {"2GiB", 2 * @gib},
        {"gib(2)", 2 * @gib},
        {"1TiB", 2 ** 40},
        {"1.5GiB", 1_610_612_736},
        {"0.5KiB", 512},
        {"3KB", 3_000},
        {"kb(3)", 3_000},
        {"7MB", 7_000_000},
        {"mb(7)", 7_000_000},
        {"1.5GB", 1_500_000_000},
        {"gb(1.5)", 1_500_000_000},
        {"2TB", 2_000_000_000_000},
        {"2gib", 2 * @gib},
        {"2GIB", 2 * @gib},
        {"GiB(2)", 2 * @gib},
        {"1.5gb", 1_500_000_000}
      ]

      for {text, bytes} <- units do
        assert met?("b == #{text}", abc(0, bytes)), text
        refute met?("b == #{text}", abc(0, bytes + 1)), text
      end

      assert met?("b == gib(a / 2)", abc(3, 3 * div(@gib, 2)))
      assert met?("1KB < 1KiB", abc(0))
      assert met?("a * 0.70 == 1.4GiB", abc(2 * @gib))
    end

    test "comparisons chain as in Python" do
      assert met?("a < b < c", abc(1, 2, 3))
      refute met?("a < b < c", abc(1, 3, 2))
      assert met?("a < b > c", abc(1, 3, 2))
      assert met?("a == b == c", abc(4, 4, 4))
      refute met?("a == b == c", abc(4, 4, 5))
      assert met?("a != b != c", abc(1, 2, 1))
      assert met?("1GiB <= a <= 2GiB", abc(@gib))
      refute met?("1GiB <= a <= 2GiB", abc(2 * @gib + 1))

      ops = ["<", "<=", ">", ">=", "==", "!="]

      for x <- ops, y <- ops, a <- -1..1, b <- -1..1, c <- -1..1 do
        chained = met?("a #{x} b #{y} c", abc(a, b, c))
        paired = met?("a #{x} b and b #{y} c", abc(a, b, c))
        assert chained == paired, "a #{x} b #{y} c with #{inspect({a, b, c})}"
      end
    end

    test "division by zero makes that comparison false, and only that one" do
      refute met?("a / b > 0", abc(1, 0))
      refute met?("a / b <= 0", abc(1, 0))
      refute met?("a / b == a / b", abc(1, 0))
      assert met?("not a / b > 0", abc(1, 0))
      assert met?("a / b > 0 or a > 0", abc(1, 0))
      refute met?("a / b > 0 and a > 0", abc(1, 0))
      refute met?("a < b / c < 10", abc(0, 10, 0))
    end

    test "an overflow makes that comparison false instead of wrapping" do
      big = 2 ** 64 - 1
      refute met?("a * a * a * a * a * b > 0", abc(big, big))
      refute met?("a * a * a * a * a * b < 0", abc(big, big))
      assert met?("a * 1000 > 0", abc(big))
      assert met?("a > b * 0.70", abc(big, big))
    end

    test "values may be keyed by atom or string; the atom wins" do
      {:ok, c} = Constraint.compile(["a > 1"], ["a"])
      assert Constraint.met?(c, %{"a" => 2})
      assert Constraint.met?(c, %{a: 2})
      assert Constraint.met?(c, %{:a => 2, "a" => 0})
      refute Constraint.met?(c, %{:a => 0, "a" => 2})
    end

    test "only the variables the rules use are required" do
      {:ok, c} = Constraint.compile(["a > 1"], @vars)
      assert Constraint.met?(c, %{a: 2})
      assert Constraint.met?(c, %{a: 2, unrelated: :anything})
    end

    test "a missing variable raises ArgumentError naming it" do
      {:ok, c} = Constraint.compile(["a > 1 or b > 1"], @vars)

      assert_raise ArgumentError,
                   "invalid values: expected an integer for the variable `b` (missing from the map), got: %{a: 0}",
                   fn -> Constraint.met?(c, %{a: 0}) end
    end

    test "values that are not integers in range raise ArgumentError" do
      {:ok, c} = Constraint.compile(["a > 1"], @vars)

      for bad <- [1.5, "2", nil, 2 ** 64, -(2 ** 63) - 1] do
        assert_raise ArgumentError,
                     "invalid values: expected an integer between -2^63 and 2^64 - 1 for the variable `a`, got: #{inspect(bad)}",
                     fn -> Constraint.met?(c, %{a: bad}) end
      end

      assert_raise ArgumentError, ~r/invalid values: expected a map/, fn ->
        Constraint.met?(c, a: 1)
      end

      assert_raise ArgumentError, ~r/invalid constraint: expected a compiled constraint/, fn ->
        Constraint.met?(%{c | ref: make_ref()}, %{a: 1})
      end
    end

    test "a compiled constraint is usable from other processes" do
      {:ok, c} = Constraint.compile(["a > 1"], @vars)
      task = Task.async(fn -> Constraint.met?(c, %{a: 2}) end)
      assert Task.await(task)
    end
  end
end
