defmodule ModelBudget.ReadmeTourTest do
  # What a new user does first: a fresh Mix project that depends on
  # ModelBudget by path compiles with no warning, builds the NIF into its
  # own _build (nothing into this folder), and runs README.md's tour as
  # written. Slow (a second VM compiles the project): tagged :fresh_app,
  # which `make test` runs.
  use ExUnit.Case, async: false

  @moduletag :fresh_app
  @moduletag :tmp_dir
  @moduletag timeout: 600_000

  @root Path.expand("../", __DIR__)

  # Runs the examples in the fresh project: each `iex>` expression with the
  # bindings of those before it, its value compared with the expected one
  # (an expression too) or its exception's message with `** (Kind) text`.
  @runner ~S"""
  [file] = System.argv()
  examples = file |> File.read!() |> :erlang.binary_to_term()

  {failures, _binding} =
    Enum.reduce(examples, {[], []}, fn {code, expected}, {failures, binding} ->
      result =
        try do
          {value, binding} = Code.eval_string(code, binding)
          {:ok, value, binding}
        rescue
          error -> {:raised, error}
        end

      case {result, expected} do
        {{:ok, _value, binding}, nil} ->
          {failures, binding}

        {{:ok, value, binding}, {:value, text}} ->
          {want, _} = Code.eval_string(text, binding)
          if value == want, do: {failures, binding}, else: {[{code, text, inspect(value)} | failures], binding}

        {{:raised, error}, {:raise, text}} ->
          got = "** (#{inspect(error.__struct__)}) #{Exception.message(error)}"
          if got == text, do: {failures, binding}, else: {[{code, text, got} | failures], binding}

        {{:raised, error}, _} ->
          {[{code, inspect(expected), Exception.format(:error, error)} | failures], binding}

        {{:ok, value, binding}, _} ->
          {[{code, inspect(expected), inspect(value)} | failures], binding}
      end
    end)

  for {code, want, got} <- Enum.reverse(failures) do
    IO.puts("FAILED: iex> #{code}\n  expected: #{want}\n  got:      #{got}")
  end

  IO.puts("#{length(examples) - length(failures)} of #{length(examples)} examples passed")
  System.halt(if failures == [], do: 0, else: 1)
  """

  # The `iex>` examples of README.md's tour: from its heading to "On this
  # machine", whose examples depend on the machine.
  defp tour_examples do
    readme = File.read!(Path.join(@root, "README.md"))
    [_, rest] = String.split(readme, "## A five-minute tour", parts: 2)
    [tour, _] = String.split(rest, "### On this machine", parts: 2)

    ~r/```elixir\n(.*?)```/s
    |> Regex.scan(tour, capture: :all_but_first)
    |> Enum.map(&hd/1)
    |> Enum.filter(&String.contains?(&1, "iex>"))
    |> Enum.flat_map(&examples/1)
  end

  defp examples(block) do
    block
    |> String.split("\n")
    |> Enum.reject(&(String.trim(&1) == "" or String.starts_with?(&1, "#")))
    |> Enum.chunk_while(
      nil,
      fn
        "iex> " <> code, nil -> {:cont, {code, []}}
        "iex> " <> code, acc -> {:cont, done(acc), {code, []}}
        "...> " <> more, {code, []} -> {:cont, {code <> "\n" <> more, []}}
        line, {code, lines} -> {:cont, {code, [line | lines]}}
      end,
      fn
        nil -> {:cont, nil}
        acc -> {:cont, done(acc), nil}
      end
    )
  end

  defp done({code, []}), do: {code, nil}

  defp done({code, lines}) do
    text = lines |> Enum.reverse() |> Enum.join("\n")
    if String.starts_with?(text, "** ("), do: {code, {:raise, text}}, else: {code, {:value, text}}
  end

  defp mix!(dir, args, env) do
    System.cmd("mix", args, cd: dir, env: env, stderr_to_stdout: true)
  end

  test "a fresh project depends on it by path, compiles cleanly and runs the tour",
       %{tmp_dir: tmp} do
    examples = tour_examples()
    assert length(examples) >= 15, "the tour has #{length(examples)} examples"

    # The project's cargo build is reused (its target directory), so only
    # the install into the fresh project is new; MIX_ENV is the fresh
    # project's own.
    env = [
      {"MIX_ENV", "dev"},
      {"CARGO_TARGET_DIR", System.get_env("CARGO_TARGET_DIR") || Path.join(@root, "target")}
    ]

    {_, 0} = mix!(tmp, ["new", "tour_app"], env)
    app = Path.join(tmp, "tour_app")
    mix_exs = Path.join(app, "mix.exs")
    deps = ~s({:model_budget, path: #{inspect(@root)}})

    File.write!(
      mix_exs,
      String.replace(File.read!(mix_exs), ~r/deps do\n\s*\[/, "\\0\n      #{deps},")
    )

    ours = Path.join(@root, "priv/native")
    before = File.ls(ours)
    {out, status} = mix!(app, ["compile"], env)
    assert status == 0, out
    # The compiler's "warning: ..." lines and the logger's "[warning]" ones
    # (a NIF that failed to load at compile time logged one).
    refute out =~ ~r/^warning: |\[(warning|error)\]/m, out
    assert out =~ "Installed NIF"

    assert File.regular?(
             Path.join(app, "_build/dev/lib/model_budget/priv/native/model_budget_nif.so")
           )

    # Nothing written into the dependency's own folder.
    assert File.ls(ours) == before

    # A dependency is built in :prod: without the NIFs that only tests
    # and benchmarks call (the crate's `bench` feature), in the library
    # and in ModelBudget.Native (the library loads, so the two agree).
    bench_nifs =
      {"for {name, _} <- ModelBudget.Native.__info__(:functions), " <>
         "String.starts_with?(Atom.to_string(name), ~w(noop echo_ floor_ decode_only_ compute_only_)), do: name",
       {:value, "[]"}}

    File.write!(Path.join(app, "tour.exs"), @runner)
    File.write!(Path.join(app, "tour.bin"), :erlang.term_to_binary([bench_nifs | examples]))
    {out, status} = mix!(app, ["run", "tour.exs", "tour.bin"], env)
    assert status == 0, out
    assert out =~ "#{length(examples) + 1} of #{length(examples) + 1} examples passed"
  end
end
