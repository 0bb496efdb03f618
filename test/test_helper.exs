# GPU tests run only where NVML sees a GPU (ModelBudget.gpu_status/0).
gpu? = match?({:ok, _version, count} when count > 0, ModelBudget.gpu_status())
# Logs of passing tests are captured: the manager logs every start and eviction.
ModelBudget.TestBackend.count_unloads()
ExUnit.start(exclude: if(gpu?, do: [], else: [:gpu]), capture_log: true)
