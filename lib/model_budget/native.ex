defmodule ModelBudget.Native do
  @moduledoc false
  # NIF stubs, replaced by native/model_budget_nif when the module loads.
  # The NIF raises `{:model_budget_badarg, arg, message[, value]}` on bad input;
  # `ModelBudget.Native.Errors.call/1` turns that into an ArgumentError.

  @on_load :load_nif

  # The Elixir compiler loads each module it compiles, before the cargo step
  # has built the library: a missing library then loads the stubs quietly.
  # At run time the stubs raise a clear error if it is still missing.
  def load_nif do
    path = :filename.join(:code.priv_dir(:model_budget), ~c"native/model_budget_nif")

    if File.exists?(List.to_string(path) <> ".so") do
      :erlang.load_nif(path, 0)
    else
      :ok
    end
  end

  def noop, do: not_loaded()
  def empty_usage, do: not_loaded()
  def fold(_used, _placement), do: not_loaded()
  def release(_used, _placement), do: not_loaded()
  def check(_budget, _placement, _used), do: not_loaded()
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
  def plan_search(_model, _opts, _n_gpus, _budget, _used), do: not_loaded()
  def plan_parse_size(_text), do: not_loaded()
  def json_encode(_term, _opts), do: not_loaded()
  def json_decode(_text), do: not_loaded()

  defp not_loaded do
    :erlang.nif_error(
      {:nif_not_loaded, "priv/native/model_budget_nif.so is missing: run `mix compile`"}
    )
  end
end
