# Model-aware placement per call: distribute/3 and breakdown/3 on an
# 80-layer model over 8 GPUs, and max_context_length/3.
#
#     mix run bench/layout.exs
Code.require_file("support/timing.exs", __DIR__)
alias Bench.Timing

mib = 2 ** 20

# Llama-3.1-70B-like: 80 blocks, 64 query heads, 8 KV heads of 128.
model = %{
  __struct__: ModelBudget.Model,
  layer_bytes: List.duplicate(500 * mib, 80),
  input_bytes: 1100 * mib,
  output_bytes: 1100 * mib,
  other_bytes: 0,
  n_head: 64,
  n_head_kv: 8,
  head_dim_k: 128,
  head_dim_v: 128,
  n_embd: 8192,
  n_vocab: 128_256,
  context_length: 131_072,
  sliding_window: nil,
  sliding_window_layers: []
}

opts = [split_mode: :layer, n_ctx: 32_768]
IO.puts("model-aware placement, #{Timing.machine()}")
floor = Timing.per_call(fn -> ModelBudget.Native.noop() end)
IO.puts(Timing.line("empty NIF (floor)", floor))

for {name, fun} <- [
      {"distribute/3, 80 layers, 8 GPUs", fn -> ModelBudget.distribute(model, opts, 8) end},
      {"breakdown/3, 80 layers, 8 GPUs", fn -> ModelBudget.breakdown(model, opts, 8) end},
      {"max_context_length/3, 80-layer model",
       fn -> ModelBudget.max_context_length(40 * 2 ** 30, model, []) end},
      {"max_context_length/3, dims",
       fn ->
         ModelBudget.max_context_length(
           40 * 2 ** 30,
           [n_layers: 80, n_head_kv: 8, head_dim: 128],
           []
         )
       end}
    ] do
  IO.puts(Timing.line(name, Timing.per_call(fun, 31, 500), floor))
end
