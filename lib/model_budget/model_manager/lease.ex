defmodule ModelBudget.ModelManager.Lease do
  @moduledoc """
  A lease on a loaded model, from `ModelBudget.ModelManager.checkout/2`:
  while it is held, the model is neither evicted nor unloaded (unless by
  `unload/3` with `force: true`). Give it back with
  `ModelBudget.ModelManager.checkin/2`; it also ends when the process that
  took it exits.

  The fields are the manager's business; `:id` is the model's id.
  """

  @enforce_keys [:id, :key, :gate, :manager, :leases, :flags, :clock]
  defstruct @enforce_keys

  @typedoc "A lease; only `:id` (the model's id) is meant to be read."
  @type t :: %__MODULE__{
          id: term(),
          key: {pos_integer(), reference()},
          gate: :atomics.atomics_ref(),
          manager: pid(),
          leases: :ets.tid(),
          flags: :atomics.atomics_ref(),
          clock: (() -> integer())
        }
end
