defmodule ModelBudget.ModelManager.Lifecycle.Expiry do
  @moduledoc false
  # Keep-alive: models whose keep-alive ran out unload.

  require Logger

  import ModelBudget.ModelManager.Lifecycle.Books

  alias ModelBudget.ModelManager.Lifecycle
  alias ModelBudget.ModelManager.Lifecycle.Unload
  alias ModelBudget.ModelManager.{Leases, Ledger, Table}

  @type t :: Lifecycle.t()

  ## Lease holders and keep-alive

  @doc """
  Housekeeping, every `:sweep_ms` and on `sweep/1`: models whose keep-alive
  ran out unload. (Leases of dead holders end with their holders' heaps.)
  """
  @spec sweep(t()) :: t()
  def sweep(state) do
    now = state.clock.()

    probe = %{now: now, last_use: &Leases.last_use(&1.gate)}

    state.ledger
    |> Ledger.expired(probe)
    |> Enum.reduce(state, fn entry, state ->
      case Leases.claim([entry.gate]) do
        :ok -> expire(state, entry, now)
        {:leased, _} -> state
      end
    end)
  end

  defp expire(state, entry, now) do
    {_lru, used_at} = Leases.last_use(entry.gate)

    Logger.info(
      "#{prefix(state)}: unloading #{inspect(entry.id)}: its keep-alive of " <>
        "#{entry.keep_alive} ms ran out (no lease for #{now - used_at} ms)"
    )

    Table.bump(state.table, :expired)
    Unload.begin_unload(state, entry)
  end
end
