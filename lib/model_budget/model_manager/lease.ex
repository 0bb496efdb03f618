defmodule ModelBudget.ModelManager.Lease do
  @moduledoc """
  A lease on a loaded model, from `ModelBudget.ModelManager.checkout/2`:
  while it is held, the model is neither evicted nor unloaded (unless by
  `unload/3` with `force: true`). Give it back with
  `ModelBudget.ModelManager.checkin/2`.

  A lease is also a value with a lifetime of its own: it ends at its first
  checkin, or, without one, once no process holds it any more: when the
  process that took it exits, or drops it and collects its garbage. A lease
  sent to (or stored by) other processes lives until every copy is checked
  in or gone: the process that took it exiting does not end it then.

  The fields are the manager's business; `:id` is the model's id.
  """

  @enforce_keys [:id, :ref, :clock]
  defstruct @enforce_keys

  @typedoc "A lease; only `:id` (the model's id) is meant to be read."
  @type t :: %__MODULE__{
          id: term(),
          ref: reference(),
          clock: (() -> integer()) | nil
        }
end
