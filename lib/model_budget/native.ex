defmodule ModelBudget.Native do
  @moduledoc false
  # NIF stubs, replaced by native/model_budget_nif when the module loads.
  # The NIF raises `{:model_budget_badarg, arg, message[, value]}` on bad input;
  # `ModelBudget.Native.Errors.call/1` turns that into an ArgumentError.

  @on_load :load_nif

  # A library that is missing or does not load is an error at load, naming
  # the path and the reason: the module then fails to load instead of
  # leaving stubs behind. (On a first build the Elixir compiler loads this
  # module before cargo has built the library: that one error is logged,
  # and the compile step loads the module again once the library is in.)
  @doc false
  def load_nif do
    path = :filename.join(:code.priv_dir(:model_budget), ~c"native/model_budget_nif")

    case :erlang.load_nif(path, 0) do
      :ok ->
        :ok

      {:error, {reason, text}} ->
        {:error, {:model_budget_nif_not_loaded, List.to_string(path) <> ".so", reason, text}}
    end
  end

  # The NIFs that only tests and benchmarks call: built (the crate's
  # `bench` feature) and stubbed only for ModelBudget itself in :dev and
  # :test, as Mix.Tasks.Compile.ModelBudgetNative.bench_nifs?/0 decides for
  # both. A release, or ModelBudget as a dependency, has none of them.
  if Mix.Tasks.Compile.ModelBudgetNative.bench_nifs?() do
    def noop, do: not_loaded()
    # One echo per codec (native/model_budget_nif/src/echo.rs), for tests.
    def echo_mode(_term), do: not_loaded()
    def echo_split_mode(_term), do: not_loaded()
    def echo_cache_type(_term), do: not_loaded()
    def echo_device(_term), do: not_loaded()
    def echo_limit(_term), do: not_loaded()
    def echo_gpu_bytes(_term), do: not_loaded()
    def echo_gpu_limits(_term), do: not_loaded()
    def echo_placement(_term), do: not_loaded()
    def echo_budget(_term), do: not_loaded()
    def echo_insufficient(_term), do: not_loaded()
    # Benchmark floors (native/model_budget_nif/src/floor.rs).
    def floor_check(_budget, _placement, _used), do: not_loaded()
    def floor_usage(_used, _placement), do: not_loaded()
    def floor_distribute(_bytes, _opts, _n_gpus), do: not_loaded()
    def floor_resolve(_spec, _gpus, _ram_limit), do: not_loaded()
    def floor_result_usage(_used, _placement), do: not_loaded()
    def floor_result_distribute(_bytes, _opts, _n_gpus), do: not_loaded()
    def floor_result_resolve(_spec, _gpus), do: not_loaded()
    def decode_only_check(_budget, _placement, _used), do: not_loaded()
    def decode_only_usage(_used, _placement), do: not_loaded()
    def decode_only_distribute(_bytes, _opts, _n_gpus), do: not_loaded()
    def decode_only_resolve(_spec, _gpus), do: not_loaded()
    def compute_only_usage(_used, _placement, _release), do: not_loaded()
    def compute_only_distribute(_bytes, _opts, _n_gpus), do: not_loaded()
    def compute_only_resolve(_spec, _gpus), do: not_loaded()
  end

  # Lease gates and leases (native/model_budget_nif/src/gate.rs).
  def gate_waiting_new, do: not_loaded()
  def gate_waiting_arm(_waiting, _on), do: not_loaded()
  def gate_new(_waiting, _manager, _inc, _now), do: not_loaded()
  def gate_holder_new, do: not_loaded()
  def gate_checkout(_gate, _holder), do: not_loaded()
  def gate_reserve(_gate, _holder), do: not_loaded()
  def gate_checkin(_holder, _number, _now), do: not_loaded()
  def gate_set(_gate, _state), do: not_loaded()
  def gate_state(_gate), do: not_loaded()
  def gate_close(_gate), do: not_loaded()
  def gate_drop(_gate), do: not_loaded()
  def gate_count(_gate), do: not_loaded()
  def gate_used(_gate, _now), do: not_loaded()
  def gate_touch(_gate, _now), do: not_loaded()
  def gate_last_use(_gate), do: not_loaded()
  def gate_claim(_gates), do: not_loaded()
  def empty_usage, do: not_loaded()
  def fold(_used, _placement), do: not_loaded()
  def release(_used, _placement), do: not_loaded()
  def check(_budget, _placement, _used), do: not_loaded()
  def available(_budget, _used, _device), do: not_loaded()
  def room(_budget, _placement, _used), do: not_loaded()
  def resolve(_spec, _gpus, _ram_limit), do: not_loaded()
  def distribute(_file_bytes, _opts, _n_gpus), do: not_loaded()
  def system_memory, do: not_loaded()
  def distribute_model(_model, _opts, _n_gpus), do: not_loaded()
  def breakdown(_model, _opts, _n_gpus), do: not_loaded()
  def estimate(_total_mib, _params, _bits), do: not_loaded()
  def max_context_length(_budget, _model_or_dims, _opts), do: not_loaded()
  def constraint_compile(_expressions, _variables), do: not_loaded()
  def constraint_met(_constraint, _values), do: not_loaded()
  def memory_limit, do: not_loaded()
  def devices(_cuda_visible_devices), do: not_loaded()
  def gpu_status(_cuda_visible_devices), do: not_loaded()
  def refresh_devices(_cuda_visible_devices), do: not_loaded()
  def probe_machine(_cuda_visible_devices), do: not_loaded()
  def model_read(_path), do: not_loaded()
  def model_from_gguf_header(_header), do: not_loaded()
  def cpu_buffers_from_system_info(_line), do: not_loaded()
  def cpu_buffers_detect, do: not_loaded()
  def load_options, do: not_loaded()
  def load_options_read(_opts), do: not_loaded()
  def evict_admit(_snapshot, _placement, _candidates, _intent), do: not_loaded()
  def evict_choose(_snapshot, _placement, _candidates), do: not_loaded()
  def evict_needs(_snapshot, _placement), do: not_loaded()
  def evict_values(_snapshot, _placement, _device), do: not_loaded()
  def evict_residuals(_budget, _evicted, _placement), do: not_loaded()
  def evict_free(_budget, _placement, _ram, _gpus), do: not_loaded()
  def fit_search(_model, _opts, _n_gpus, _budget, _used), do: not_loaded()
  def plan_parse_size(_text), do: not_loaded()
  def json_encode(_term, _opts), do: not_loaded()
  def json_decode(_text), do: not_loaded()

  # Only reached if the module was loaded without its library, which
  # load_nif/0 refuses; kept so that each stub has a body.
  defp not_loaded, do: :erlang.nif_error(:nif_not_loaded)
end
