defmodule ModelBudget.ModelManager.Subscribers do
  @moduledoc false
  # The processes subscribed to a manager's usage (ModelManager.subscribe/1),
  # as pure data beside the manager's state: each is monitored, so one that
  # exits is dropped on its :DOWN. The manager publishes once per step
  # (publish/2 after each callback): when the usage differs from the one
  # last published, every subscriber is sent the new one. Only the manager
  # sends, so the messages to one subscriber keep the order of the changes.

  defstruct pids: %{}, refs: %{}, published: nil

  @typedoc "The subscribers (pid => monitor ref, and back) and the usage last published."
  @type t :: %__MODULE__{
          pids: %{pid() => reference()},
          refs: %{reference() => pid()},
          published: ModelBudget.placement() | nil
        }

  @doc "No subscribers; `usage` is what the manager holds now."
  @spec new(ModelBudget.placement()) :: t()
  def new(usage), do: %__MODULE__{published: usage}

  @doc "Adds `pid`, monitored; a pid already subscribed stays subscribed once."
  @spec add(t(), pid()) :: t()
  def add(%__MODULE__{pids: pids} = subs, pid) when is_map_key(pids, pid), do: subs

  def add(%__MODULE__{} = subs, pid) do
    ref = Process.monitor(pid)
    %{subs | pids: Map.put(subs.pids, pid, ref), refs: Map.put(subs.refs, ref, pid)}
  end

  @doc "Removes `pid` (and its monitor); one that is not subscribed is ignored."
  @spec remove(t(), pid()) :: t()
  def remove(%__MODULE__{} = subs, pid) do
    case Map.pop(subs.pids, pid) do
      {nil, _} ->
        subs

      {ref, pids} ->
        Process.demonitor(ref, [:flush])
        %{subs | pids: pids, refs: Map.delete(subs.refs, ref)}
    end
  end

  @doc "Drops the subscriber whose monitor `ref` fired; `:error` for a ref that is not one."
  @spec down(t(), reference()) :: {:ok, t()} | :error
  def down(%__MODULE__{} = subs, ref) do
    case Map.pop(subs.refs, ref) do
      {nil, _} -> :error
      {pid, refs} -> {:ok, %{subs | refs: refs, pids: Map.delete(subs.pids, pid)}}
    end
  end

  @doc """
  Sends every subscriber `{ModelBudget.ModelManager, :usage, manager, usage}`
  when `usage` differs from the usage last published, and keeps it as the
  last published.
  """
  @spec publish(t(), ModelBudget.placement()) :: t()
  def publish(%__MODULE__{published: usage} = subs, usage), do: subs

  def publish(%__MODULE__{} = subs, usage) do
    message = {ModelBudget.ModelManager, :usage, self(), usage}
    for {pid, _ref} <- subs.pids, do: send(pid, message)
    %{subs | published: usage}
  end
end
