# Cross-checks ModelBudget.Model.read/1 against llama.cpp's `gguf` Python
# package (pip install gguf) on the same files: the full-size fixtures of
# the test suite, and a file written by gguf's own GGUFWriter holding one
# tensor of every ggml type.
#
#   mix run scripts/gguf_crosscheck.exs
#
# Prints one line per compared field; exits non-zero on any mismatch.

for file <- ~w(json sparse gguf_writer safetensors_writer model_fixtures) do
  Code.require_file("../test/support/#{file}.ex", __DIR__)
end

alias ModelBudget.Test.ModelFixtures

dir = Path.join(System.tmp_dir!(), "model_budget_crosscheck_#{System.unique_integer([:positive])}")
File.mkdir_p!(dir)
script = Path.join(__DIR__, "gguf_crosscheck.py")
python = System.find_executable("python3") || raise "python3 not found"

python! = fn args ->
  case System.cmd(python, [script | args], stderr_to_stdout: true) do
    {out, 0} -> out
    {out, _} -> raise "gguf_crosscheck.py #{Enum.join(args, " ")} failed:\n#{out}"
  end
end

every = Path.join(dir, "every-type.gguf")
python!.(["write", every])

files = [
  ModelFixtures.llama_gguf!(Path.join(dir, "llama-3.1-8b.gguf")),
  ModelFixtures.mixtral_gguf!(Path.join(dir, "mixtral-8x7b.gguf")),
  ModelFixtures.gemma2_gguf!(Path.join(dir, "gemma-2-9b.gguf")),
  every
]

# gguf field -> how to read the same thing off %ModelBudget.Model{}
metadata = [
  {"block_count", & &1.n_layers},
  {"context_length", & &1.context_length},
  {"embedding_length", & &1.n_embd},
  {"attention.head_count", & &1.n_head},
  {"attention.head_count_kv", & &1.n_head_kv},
  {"attention.key_length", & &1.head_dim_k},
  {"attention.value_length", & &1.head_dim_v},
  {"attention.sliding_window", & &1.sliding_window},
  {"expert_count", & &1.n_experts},
  {"expert_used_count", & &1.n_experts_used}
]

mismatches =
  for path <- files, reduce: 0 do
    acc ->
      {py, _} = Code.eval_string(python!.(["describe", path]))
      {:ok, m} = ModelBudget.Model.read(path)
      meta = py["metadata"]
      vocab = meta["vocab_size"] || meta["tokens"]

      checks =
        [
          {"architecture", py["architecture"], m.architecture},
          {"name", py["name"], m.name},
          {"n_tensors", py["n_tensors"], m.n_tensors},
          {"n_params", py["n_params"], m.n_params},
          {"weight_bytes", py["weight_bytes"], m.weight_bytes},
          {"n_vocab", vocab, m.n_vocab},
          {"types", py["types"], Map.new(m.types, fn {k, v} -> {k, Map.new(v, fn {f, n} -> {to_string(f), n} end)} end)}
        ] ++
          for {key, get} <- metadata, meta[key] != nil do
            {key, meta[key], get.(m)}
          end

      IO.puts("#{Path.basename(path)} (#{map_size(py["types"])} tensor types)")

      Enum.reduce(checks, acc, fn {field, theirs, ours}, acc ->
        same = theirs == ours
        shown = if is_map(theirs), do: "#{map_size(theirs)} types", else: inspect(theirs, limit: 8)
        IO.puts("  #{if same, do: "match   ", else: "MISMATCH"} #{field}: #{shown}#{if same, do: "", else: " vs ours #{inspect(ours)}"}")
        if same, do: acc, else: acc + 1
      end)
  end

File.rm_rf!(dir)
IO.puts(if mismatches == 0, do: "all fields match", else: "#{mismatches} mismatches")
if mismatches > 0, do: System.halt(1)
