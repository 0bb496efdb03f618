defmodule ModelBudget.Ledger do
  @moduledoc """
  An admission ledger held in the NIF: a budget and the usage admitted
  under it, so that an admission (`check/3`, then `fold/2` when it fits) is
  one call in which only the new placement crosses the boundary.

  Each call is atomic (a mutex in the NIF), so processes that share a
  ledger can never both take room that only one of them fits. The ledger
  lives as long as a process holds its reference.

  ## Examples

      iex> ledger = ModelBudget.Ledger.new(%{mode: :combined, limit: 100})
      iex> ModelBudget.Ledger.admit(ledger, %{ram: 60, vram: %{}})
      :ok
      iex> ModelBudget.Ledger.admit(ledger, %{ram: 60, vram: %{}})
      {:error, {:insufficient_memory, [device: :total, required: 60, available: 40]}}
      iex> ModelBudget.Ledger.release(ledger, %{ram: 60, vram: %{}})
      :ok
      iex> ModelBudget.Ledger.usage(ledger)
      %{ram: 0, vram: %{}}
  """

  alias ModelBudget.Native
  require ModelBudget.Native.Errors, as: Errors

  @typedoc "A ledger reference."
  @opaque t :: reference()

  @doc "A ledger for a resolved `budget`, with nothing admitted."
  @spec new(ModelBudget.budget()) :: t()
  def new(budget), do: Errors.call(Native.ledger_new(budget))

  @doc """
  Admits `placement` if it fits on top of what is admitted: `:ok`, and the
  usage grows by it; else `ModelBudget.check/3`'s error, and nothing
  changes.
  """
  @spec admit(t(), ModelBudget.placement()) :: :ok | {:error, ModelBudget.insufficient()}
  def admit(ledger, placement), do: Errors.call(Native.ledger_admit(ledger, placement))

  @doc """
  Takes an admitted `placement` back out. Releasing more than is admitted
  on any device raises `ArgumentError` and changes nothing.
  """
  @spec release(t(), ModelBudget.placement()) :: :ok
  def release(ledger, placement), do: Errors.call(Native.ledger_release(ledger, placement))

  @doc "What is admitted, folded."
  @spec usage(t()) :: ModelBudget.placement()
  def usage(ledger), do: Errors.call(Native.ledger_usage(ledger))
end
