defmodule ModelBudget.Native do
  @moduledoc false
  # NIF stubs, replaced by native/model_budget_nif when the module loads.
  # The NIF raises `{:model_budget_badarg, arg, message[, value]}` on bad input;
  # `ModelBudget.Native.Errors.call/1` turns that into an ArgumentError.

  @on_load :load_nif

  def load_nif do
    path = :filename.join(:code.priv_dir(:model_budget), ~c"native/model_budget_nif")
    :erlang.load_nif(path, 0)
  end

  def noop, do: not_loaded()
  def empty_usage, do: not_loaded()
  def fold(_used, _placement), do: not_loaded()
  def release(_used, _placement), do: not_loaded()
  def check(_budget, _placement, _used), do: not_loaded()
  def resolve(_spec, _gpus, _ram_limit), do: not_loaded()
  def distribute(_file_bytes, _opts, _n_gpus), do: not_loaded()
  def system_memory, do: not_loaded()
  def model_read(_path), do: not_loaded()

  defp not_loaded, do: :erlang.nif_error(:nif_not_loaded)
end
