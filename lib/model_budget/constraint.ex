defmodule ModelBudget.Constraint do
  @moduledoc """
  Rules such as `"memory_required > available * 0.70"` that decide when
  resident models must make room, compiled once and evaluated many times.

  A constraint is a list of expressions combined with OR: it is met when any
  one of them holds. Expressions use only the variables named at compile
  time, so a typo is a compile error rather than a rule that never fires.
  The language is small and has no way to reach the host: no attribute
  access, no calls but the functions below, nothing to import.

      iex> {:ok, rule} = ModelBudget.Constraint.compile(["used > total * 0.9"], [:used, :total])
      iex> ModelBudget.Constraint.met?(rule, %{used: 95, total: 100})
      true
      iex> ModelBudget.Constraint.met?(rule, %{used: 90, total: 100})
      false

  ## Grammar

  From loosest to tightest binding, as in Python:

  | form | meaning |
  |---|---|
  | `a or b` | either holds |
  | `a and b` | both hold |
  | `not a` | `a` does not hold |
  | `x < y`, `<=`, `>`, `>=`, `==`, `!=` | comparisons; `x < y <= z` chains as `x < y and y <= z` |
  | `x + y`, `x - y` | sum, difference |
  | `x * y`, `x / y` | product, exact quotient (`7 / 2` is 3.5) |
  | `-x` | negation |
  | `(...)`, a call, a number, a variable | |

  * Numbers: integers and decimals (`42`, `0.70`), optionally followed by a
    byte unit with no space: `2GiB`, `512MiB`, `1.5GB`.
  * Units: `KB`, `MB`, `GB`, `TB` (powers of 1000) and `KiB`, `MiB`, `GiB`,
    `TiB` (powers of 1024), as a suffix or as a function: `gib(2)`,
    `mib(x)`. Unit names ignore case (`2gib`, `2GIB` and `GiB(2)` are the same).
  * Functions: `min(x, ...)` and `max(x, ...)` (one argument or more),
    `abs(x)`.
  * Variables: the names given to `compile/2`, case-sensitive.
  * Keywords `and`, `or`, `not` and the function names `min`, `max`, `abs`
    are lowercase.

  Each expression must be a comparison or `and`/`or`/`not` of comparisons:
  `"used + 1"` is a compile error, and so is `"used > (total > 1)"`.

  ## Arithmetic

  Evaluation is exact: numbers are rationals of 128-bit integers, so `0.1 +
  0.2 == 0.3` holds and `available * 0.70` is never rounded. Nothing wraps
  around:

  * **A division by zero, or a result beyond 128-bit rationals, makes the
    comparison it feeds false** at evaluation time. The rest of the
    expression is evaluated as usual: when `y` is 0, `x / y > 1` is false,
    `not (x / y > 1)` is true, and `x / y > 1 or used > 0` holds when
    `used > 0`.
  * A constant that overflows (`1000000000000000000000TiB * 1000000000000000000`)
    and a division by a constant zero (`x / (2 - 2)`) are compile errors.

  Variable values are integers between -2^63 and 2^64 - 1; with such values
  an expression like the default `memory_required > available * 0.70` never
  overflows.

  ## Limits

  An expression has at most 512 bytes, 256 nodes (numbers, names, operators
  and calls) and 32 levels of nesting (parentheses, calls, `-`, `not`); a
  constraint has at most 64 expressions. Longer input is rejected before it
  is parsed, so evaluation time is bounded.

  ## Errors

  `compile/2` returns `{:error, {:invalid_constraint, expression, message,
  column}}` for the first expression that does not compile: `message` says
  what was expected and `column` is 1-based. Columns count bytes, which are
  characters wherever the text is ASCII; a non-ASCII character is itself an
  error at its column. Bad arguments (not a list of strings, a variable name
  that is not an identifier, too many expressions) raise `ArgumentError`.
  """

  alias ModelBudget.Native
  require ModelBudget.Native.Errors, as: Errors

  @enforce_keys [:expressions, :variables, :used_variables, :ref]
  defstruct @enforce_keys

  @typedoc """
  A compiled constraint.

    * `:expressions` - the expressions as given to `compile/2`.
    * `:variables` - the declared variable names as strings, without repeats.
    * `:used_variables` - those the expressions read, in declared order: the
      only keys `met?/2` needs.
    * `:ref` - the compiled rules (a NIF resource).
  """
  @type t :: %__MODULE__{
          expressions: [String.t()],
          variables: [String.t()],
          used_variables: [String.t()],
          ref: reference()
        }

  @typedoc "A variable name: an atom or a string."
  @type name :: atom() | String.t()

  @typedoc "Why an expression does not compile: the expression, what was expected, the 1-based column."
  @type error :: {:invalid_constraint, String.t(), String.t(), pos_integer()}

  @doc """
  Compiles `expressions`, a list of strings combined with OR, over
  `variables`, the names (atoms or strings) they may use.

  Variable names are identifiers: ASCII letters, digits and `_`, not starting
  with a digit, and not `and`, `or` or `not`. An empty list of expressions
  compiles to a constraint that is never met.

  ## Examples

      iex> {:ok, constraint} =
      ...>   ModelBudget.Constraint.compile(
      ...>     ["memory_required > available * 0.70", "free < 512MiB"],
      ...>     [:memory_required, :available, :free, :total]
      ...>   )
      iex> constraint.used_variables
      ["memory_required", "available", "free"]

      iex> ModelBudget.Constraint.compile(["memory_required > availble * 0.70"], [:memory_required, :available])
      {:error, {:invalid_constraint, "memory_required > availble * 0.70", "expected a variable (memory_required, available), got `availble`", 19}}

      iex> ModelBudget.Constraint.compile(["used + 1"], [:used])
      {:error, {:invalid_constraint, "used + 1", "expected a comparison (such as `used > total * 0.9`) or `and`, `or`, `not` of comparisons, got a number", 1}}
  """
  @spec compile([String.t()], [name()]) :: {:ok, t()} | {:error, error()}
  def compile(expressions, variables) do
    case Errors.call(Native.constraint_compile(expressions, variables)) do
      {:ok, {ref, {declared, used}}} ->
        {:ok,
         %__MODULE__{
           expressions: expressions,
           variables: declared,
           used_variables: used,
           ref: ref
         }}

      {:error, {:invalid_constraint, _, _, _}} = error ->
        error
    end
  end

  @doc """
  Whether any expression of `constraint` holds for `values`, a map from
  variable names (atoms or strings; an atom key wins over the same name as a
  string) to integers. Keys the expressions do not use are ignored.

  A variable the expressions use but `values` lacks, or a value that is not an
  integer between -2^63 and 2^64 - 1, raises `ArgumentError`.

  ## Examples

      iex> {:ok, rule} = ModelBudget.Constraint.compile(["2GiB <= free < 8GiB"], [:free])
      iex> ModelBudget.Constraint.met?(rule, %{free: 4 * 2**30})
      true
      iex> ModelBudget.Constraint.met?(rule, %{"free" => 1})
      false
      iex> ModelBudget.Constraint.met?(rule, %{used: 1})
      ** (ArgumentError) invalid values: expected an integer for the variable `free` (missing from the map), got: %{used: 1}

      iex> {:ok, rule} = ModelBudget.Constraint.compile(["used / total > 0.5"], [:used, :total])
      iex> ModelBudget.Constraint.met?(rule, %{used: 1, total: 0})
      false
  """
  @spec met?(t(), %{optional(name()) => integer()}) :: boolean()
  def met?(%__MODULE__{ref: ref}, values) do
    Errors.call(Native.constraint_met(ref, values))
  end
end
