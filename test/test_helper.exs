# GPU tests run only where NVML sees a GPU (ModelBudget.gpu_status/0).
gpu? = match?({:ok, _version, count} when count > 0, ModelBudget.gpu_status())

# The :llama_server tests run against real llama.cpp: $LLAMA_SERVER, which
# `make test` sets to the build scripts/llama_server.sh caches. Without one
# they are left out, and said so.
llama_server? = ModelBudget.Test.LlamaServer.command() != nil

unless llama_server? do
  IO.puts(
    "note: no llama-server (set LLAMA_SERVER or run `make test`): " <>
      "the :llama_server tests are excluded"
  )
end

exclude = if(gpu?, do: [], else: [:gpu]) ++ if(llama_server?, do: [], else: [:llama_server])

# Logs of passing tests are captured: the manager logs every start and eviction.
ModelBudget.TestBackend.count_unloads()
ExUnit.start(exclude: exclude, capture_log: true)
