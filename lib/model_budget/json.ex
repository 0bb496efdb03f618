defmodule ModelBudget.JSON do
  @moduledoc """
  JSON text from Elixir data and back, written and read by `serde_json` in
  the NIF (no hex JSON package can be used here). `mix model_budget.plan
  --json` prints its report with `encode!/2`.

  Encoding takes maps (atom, string or integer keys), lists, strings,
  integers of magnitude below 2^64, floats, booleans, `nil` (`null`) and
  other atoms (strings). Object keys come out sorted. Decoding gives maps
  with string keys (no atoms are made from input), lists, strings, integers,
  floats, booleans and `nil`. Nesting is limited to 128 levels both ways.
  Both run on a dirty CPU scheduler, so large documents do not hold up the
  VM's normal schedulers.
  """

  alias ModelBudget.Native
  require ModelBudget.Native.Errors, as: Errors

  @doc """
  Encodes `term` as JSON text.

  Raises `ArgumentError` naming the offending value for data JSON cannot
  hold: tuples, pids, functions, integers of 2^64 or more, strings that
  are not UTF-8, improper lists, maps whose keys collide as strings
  (`%{:a => 1, "a" => 2}`), or nesting deeper than 128 levels.

  ## Options

    * `:pretty` - indent with two spaces, one value per line. Defaults to `false`.

  ## Examples

      iex> ModelBudget.JSON.encode!(%{fits: true, ram: 17_179_869_184, gpus: [], note: nil})
      ~s({"fits":true,"gpus":[],"note":null,"ram":17179869184})

      iex> ModelBudget.JSON.encode!(%{"a" => [1, 2.5]}, pretty: true)
      ~s({\\n  "a": [\\n    1,\\n    2.5\\n  ]\\n})

      iex> ModelBudget.JSON.encode!({:gpu, 0})
      ** (ArgumentError) invalid term: expected a map, list, string (UTF-8), integer below 2^64 in magnitude, float, boolean, nil or atom, got: {:gpu, 0}
  """
  @spec encode!(term(), keyword()) :: String.t()
  def encode!(term, opts \\ []) do
    unless is_list(opts) and Keyword.keyword?(opts) do
      raise ArgumentError, "invalid opts: expected a keyword list, got: #{inspect(opts)}"
    end

    opts = Keyword.validate!(opts, pretty: false)
    Errors.call(Native.json_encode(term, pretty: opts[:pretty] == true))
  end

  @doc """
  Decodes JSON text: `{:ok, term}`, or `{:error, message}` with serde_json's
  description of the first problem and its line and column.

  Integers that fit 64 bits stay exact; other numbers become floats.

  ## Examples

      iex> ModelBudget.JSON.decode(~s({"fits": false, "short": [{"device": "ram", "short_by": 42}], "x": null}))
      {:ok, %{"fits" => false, "short" => [%{"device" => "ram", "short_by" => 42}], "x" => nil}}

      iex> ModelBudget.JSON.decode("[1, 2")
      {:error, "EOF while parsing a list at line 1 column 5"}
  """
  @spec decode(binary()) :: {:ok, term()} | {:error, String.t()}
  def decode(text), do: Errors.call(Native.json_decode(text))
end
