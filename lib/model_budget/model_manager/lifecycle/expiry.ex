defmodule ModelBudget.ModelManager.Lifecycle.Expiry do
  @moduledoc false
  # Keep-alive: models whose keep-alive ran out unload. sweep/1 returns
  # `{state, effects}` (ModelManager.Effects performs them).

  alias ModelBudget.ModelManager.{Effects, Leases, Ledger, Lifecycle}
  alias ModelBudget.ModelManager.Lifecycle.Unload

  @type t :: Lifecycle.t()

  ## Lease holders and keep-alive

  @doc """
  Housekeeping, every `:sweep_ms` and on `sweep/1`: models whose keep-alive
  ran out unload. (Leases of dead holders end with their holders' heaps.)
  Reads each model's last use from its gate, and claims the expired ones
  (a claim closes an unleased gate, in this step); the rest is effects.
  """
  @spec sweep(t()) :: {t(), [Effects.t()]}
  def sweep(state) do
    now = state.clock.()
    probe = %{now: now, last_use: &Leases.last_use(&1.gate)}

    state.ledger
    |> Ledger.expired(probe)
    |> Enum.filter(&(Leases.claim([&1.gate]) == :ok))
    |> Enum.reduce({state, []}, fn entry, {state, effects} ->
      {state, unload} = Unload.begin_unload(state, entry)
      {state, [unload, expire(entry, probe.last_use.(entry), now) | effects]}
    end)
    |> then(fn {state, effects} -> {state, effects |> Enum.reverse() |> Enum.concat()} end)
  end

  defp expire(entry, {_lru, used_at}, now) do
    message =
      "unloading #{inspect(entry.id)}: its keep-alive of " <>
        "#{entry.keep_alive} ms ran out (no lease for #{now - used_at} ms)"

    [{:log, :info, message}, {:bump, :expired}]
  end
end
