defmodule ModelBudget.ModelManager.Directory do
  @moduledoc false
  # The node's list of the managers started with a `:cluster` name, and of
  # the processes that watch it: a duplicate-key Registry the :model_budget
  # application starts. The manager knows no more of clusters than this: it
  # announces itself here, with its cluster name, labels and fixed settings
  # (a card), and whoever keeps the cluster's view on its node watches the
  # directory, subscribes to the managers (ModelManager.subscribe/1) and
  # joins them to their cluster.
  #
  # Entries go with their processes (the Registry links to each). A watcher
  # that starts registers first and lists the managers second, and a
  # manager registers first and tells the watchers second, so a watcher
  # hears of every manager at least once (twice when the two race).

  @managers :managers
  @watchers :watchers

  @typedoc "What a manager announces: its cluster name, labels and fixed settings."
  @type card :: %{
          cluster: term(),
          labels: map(),
          budget: ModelBudget.budget(),
          backend: module(),
          n_gpus: non_neg_integer()
        }

  @doc false
  def child_spec(_), do: Registry.child_spec(keys: :duplicate, name: __MODULE__)

  @doc "Whether the directory runs on this node (the :model_budget application is started)."
  @spec running?() :: boolean()
  def running?, do: Process.whereis(__MODULE__) != nil

  @doc """
  Lists the calling manager with `card` until it exits, and sends every
  watcher `{ModelBudget.ModelManager.Directory, :announced, manager, card}`.
  """
  @spec announce(card()) :: :ok
  def announce(card) do
    {:ok, _} = Registry.register(__MODULE__, @managers, card)
    message = {__MODULE__, :announced, self(), card}

    Registry.dispatch(__MODULE__, @watchers, fn watchers ->
      for {pid, _} <- watchers, do: send(pid, message)
    end)
  end

  @doc """
  Makes the calling process a watcher until it exits (told of each manager
  announced from now on, see announce/1) and returns the managers listed
  now, as `[{manager, card}]`.
  """
  @spec watch() :: [{pid(), card()}]
  def watch do
    {:ok, _} = Registry.register(__MODULE__, @watchers, nil)
    Registry.lookup(__MODULE__, @managers)
  end
end
