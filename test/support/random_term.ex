defmodule ModelBudget.Test.RandomTerm do
  @moduledoc """
  Random Erlang terms for robustness tests: every shape a caller might pass,
  biased towards the keys and atoms ModelBudget reads so that generated terms
  reach deep into the decoders, not just the first type check.
  """

  @atoms [
    :ram,
    :vram,
    :mode,
    :limit,
    :infinity,
    :auto,
    nil,
    true,
    false,
    :unlimited,
    :combined,
    :per_device,
    :server,
    :direct,
    :none,
    :layer,
    :row,
    :split_mode,
    :tensor_split,
    :main_gpu,
    :n_gpu_layers,
    :offload_kqv,
    :n_ctx,
    :n_parallel,
    :kv_bytes_per_token,
    :gpu_index,
    :memory_free,
    :layer_bytes,
    :input_bytes,
    :output_bytes,
    :n_head,
    :n_head_kv,
    :head_dim_k,
    :head_dim_v,
    :n_embd,
    :n_vocab,
    :sliding_window,
    :sliding_window_layers,
    :kv_cache_budget,
    :cache_type_k,
    :q8_0,
    :other
  ]

  @integers [
    0,
    1,
    -1,
    2,
    7,
    1024,
    2 ** 32 - 1,
    2 ** 32,
    2 ** 63 - 1,
    2 ** 63,
    2 ** 64 - 1,
    2 ** 64,
    -(2 ** 64),
    10 ** 40
  ]

  @doc "A random term at most `depth` levels deep."
  @spec term(non_neg_integer()) :: term()
  def term(depth \\ 3) do
    case :rand.uniform(if depth == 0, do: 5, else: 11) do
      1 ->
        Enum.random(@atoms)

      2 ->
        integer()

      3 ->
        Enum.random([0.0, -1.5, 1.0e300, 0.75, 3.0])

      4 ->
        Enum.random(["", "8GB", <<0, 255>>, "ram"])

      5 ->
        Enum.random([self(), make_ref(), {}])

      6 ->
        Map.new(1..:rand.uniform(4), fn _ -> {key(), term(depth - 1)} end)

      7 ->
        Enum.map(1..:rand.uniform(5), fn _ -> term(depth - 1) end)

      8 ->
        Enum.map(1..:rand.uniform(4), fn _ -> {Enum.random(@atoms), term(depth - 1)} end)

      9 ->
        List.to_tuple(Enum.map(1..:rand.uniform(3), fn _ -> term(depth - 1) end))

      # Improper lists: a list or a keyword list whose tail is not [].
      10 ->
        improper(Enum.map(1..:rand.uniform(4), fn _ -> term(depth - 1) end))

      11 ->
        improper(
          Enum.map(1..:rand.uniform(3), fn _ -> {Enum.random(@atoms), term(depth - 1)} end)
        )
    end
  end

  @doc "`list` with a tail that is not a list: `[a, b | tail]`."
  @spec improper([term()]) :: maybe_improper_list()
  def improper(list) do
    tail = Enum.random([1, :tail, "tail", {}, %{}])
    List.foldr(list, tail, &[&1 | &2])
  end

  @doc "Whether `term` is or holds an improper list (for tests to count them)."
  @spec improper?(term()) :: boolean()
  def improper?([_ | tail] = list) when not is_list(tail), do: list != []
  def improper?([head | tail]), do: improper?(head) or improper?(tail)

  def improper?(map) when is_map(map),
    do: Enum.any?(map, fn {k, v} -> improper?(k) or improper?(v) end)

  def improper?(tuple) when is_tuple(tuple), do: tuple |> Tuple.to_list() |> improper?()
  def improper?(_), do: false

  defp integer do
    case :rand.uniform(3) do
      1 -> Enum.random(@integers)
      2 -> :rand.uniform(1_000_000) - 1000
      3 -> :rand.uniform(2 ** 70) - 2 ** 69
    end
  end

  defp key do
    case :rand.uniform(3) do
      1 -> Enum.random(@atoms)
      _ -> Enum.random([0, 1, 2, 3, -1, 2 ** 40, "0", 1.0])
    end
  end
end
