defmodule ModelBudget.ModelManager.Lease do
  @moduledoc """
  A lease on a loaded model, from `ModelBudget.ModelManager.checkout/2`:
  while it is held, the model is neither evicted nor unloaded (unless by
  `unload/3` with `force: true`). Give it back with
  `ModelBudget.ModelManager.checkin/2`.

  A lease belongs to the process that took it: it ends at its first
  checkin (from any process), or, without one, when that process exits,
  killed or not, even if other processes hold copies of the lease. A lease
  dropped without a checkin keeps its model leased until then.

  The fields are the manager's business; `:id` is the model's id.
  """

  @enforce_keys [:id, :holder, :number, :clock]
  defstruct @enforce_keys

  @typedoc "A lease; only `:id` (the model's id) is meant to be read."
  @type t :: %__MODULE__{
          id: term(),
          holder: reference(),
          number: pos_integer(),
          clock: (() -> integer()) | nil
        }
end
