defmodule ModelBudget.Backend do
  @moduledoc """
  The seam between `ModelBudget.ModelManager` and whatever really holds a
  model: llama.cpp bindings, Bumblebee, Ortex, an external `llama-server`
  process, or nothing at all (`ModelBudget.Backend.Reservation`).

  The manager calls the callbacks in this order for every load:

    1. `c:footprint/2`, in the process that called `ModelBudget.ModelManager.load/4`,
       to learn how many bytes the model needs. The manager places those bytes
       with `ModelBudget.distribute/3` (a model read from its header with
       `ModelBudget.breakdown/3`, every buffer named) and admits or refuses
       the placement: its decision (`t:decision/0`).
    2. `c:load/3`, or `c:load/4` with the decision where the backend has it,
       in a task the manager supervises, once the placement has been
       admitted and reserved. The task may be killed at any time (its
       caller died, or the model was unloaded while loading): a backend that
       starts processes should link them to the calling process so they die
       with it, and keep them alive when the task returns normally.
    3. `c:unload/1`, in a task the manager supervises, when the model is
       unloaded. The model's memory stays reserved until it returns.

  A backend whose load and unload return at once, starting and waiting for
  nothing (`ModelBudget.Backend.Reservation`), says so with the optional
  `c:inline?/0`: the manager then calls them in its own step, without a
  task.

  When a handle is a pid, or a map or struct whose `:pid` is one, the
  manager monitors that process: if it dies, the model's memory is released
  and its entry removed, without calling `c:unload/1`.

  A backend that can tell what a loaded model really holds implements the
  optional `c:measured/1`; the manager asks it right after each load.
  """

  @typedoc "Where a model comes from; each backend defines the shapes it accepts."
  @type source :: term()

  @typedoc "What a backend returns from a load and gets back to unload it."
  @type handle :: term()

  @typedoc """
  What the manager decided for a load, as `c:load/4` receives it:

    * `:placement` - the bytes reserved in RAM and on each GPU (the
      placement `c:load/3` receives).
    * `:breakdown` - `ModelBudget.breakdown/3` of the model as it was
      placed, every buffer named, with the `:n_ctx` its KV cache was sized
      for (padded as llama.cpp pads it) and the `:cpu_buffers` profile;
      `nil` when the footprint was a byte count, or when the load was
      placed elsewhere (`ModelBudget.Cluster.load/4` sends its size and
      placement only).
    * `:opts` - the options the placement was made from: the load's, as
      `c:estimate_options/1` refined them (the options `c:load/3`
      receives).
  """
  @type decision :: %{
          placement: ModelBudget.placement(),
          breakdown: ModelBudget.breakdown() | nil,
          opts: keyword()
        }

  @doc """
  What `source` needs, before any placement: its bytes (weights plus whatever
  the backend always adds), or better a `%ModelBudget.Model{}` describing its
  layers (from `ModelBudget.Model.read/1`), which the manager places layer by
  layer with real KV-cache sizes. Either way the manager places it with
  `ModelBudget.distribute/3` and the load options.

  Returns `{:error, reason}` when the size cannot be known (a missing file,
  say); the load then fails with `{:load_failed, reason}`. Raise
  `ArgumentError` for a source of the wrong shape: it reaches the caller of
  `ModelBudget.ModelManager.load/4` unchanged.
  """
  @callback footprint(source(), opts :: keyword()) ::
              {:ok, non_neg_integer() | ModelBudget.Model.t()} | {:error, term()}

  @doc """
  Loads `source` into the memory `placement` describes (bytes in RAM and on
  each GPU, as `ModelBudget.distribute/3` computed them from the same `opts`).

  Returns `{:ok, handle}`, or `{:error, reason}` after undoing any partial
  work; the load then fails with `{:load_failed, reason}`. A raise or exit
  fails it with `{:load_crashed, reason}`.
  """
  @callback load(source(), ModelBudget.placement(), opts :: keyword()) ::
              {:ok, handle()} | {:error, term()}

  @doc """
  `c:load/3` with the manager's `decision` (`t:decision/0`), so that the
  backend need not size or place the model again: a backend that has it is
  called with it instead of `c:load/3`. Optional. Defining both with one
  clause keeps `c:load/3` for callers without a decision:

      @impl true
      def load(source, placement, opts, decision \\\\ nil)
  """
  @callback load(source(), ModelBudget.placement(), opts :: keyword(), decision() | nil) ::
              {:ok, handle()} | {:error, term()}

  @doc """
  Frees everything `handle` holds. Called once per successful load.
  """
  @callback unload(handle()) :: :ok

  @doc """
  Whether `c:load/3` and `c:unload/1` return at once, starting and waiting
  for nothing: the manager then calls them in its own step instead of a
  supervised task, so an admission costs a fraction of what a task does. A
  backend that may block must not say so: the manager serves nothing else
  while it waits. Optional: without it, `false`.
  """
  @callback inline?() :: boolean()

  @doc """
  What the loaded model really holds: a map with at least `:ram` and `:vram`
  in `t:ModelBudget.placement/0`'s shape, in bytes (more keys are kept as
  they are). Called in the load's task right after `c:load/3` succeeds;
  `info/2` shows it as `:measured`, and where it exceeds the placement on a
  device the manager raises the reservation to it (see
  `ModelBudget.ModelManager`). Return `{:error, reason}` when nothing can be
  measured.
  """
  @callback measured(handle()) :: {:ok, map()} | {:error, term()}

  @doc """
  The estimator's options for a load with `opts` under this backend's
  runtime, before the manager places it: e.g. `cpu_buffers: :auto` resolved
  to the profile the backend's binary reports. Optional: without it the
  options are taken as given.
  """
  @callback estimate_options(opts :: keyword()) :: keyword()

  @optional_callbacks measured: 1, estimate_options: 1, load: 4, inline?: 0

  @doc """
  The backend a `ModelBudget.ModelManager` uses unless told otherwise:
  `ModelBudget.Backend.Reservation`, admission control only.

  ## Examples

      iex> ModelBudget.Backend.default()
      ModelBudget.Backend.Reservation
  """
  @spec default() :: module()
  def default, do: ModelBudget.Backend.Reservation

  # An optional callback is asked of a loaded module (function_exported?/3
  # knows nothing of one not loaded yet). Asked at every load: a module
  # already loaded is not asked of the code server again.
  defp has?(backend, fun, arity) do
    (:erlang.module_loaded(backend) or Code.ensure_loaded?(backend)) and
      function_exported?(backend, fun, arity)
  end

  @doc false
  # c:inline?/0 of `backend`, false where it has none.
  @spec loads_inline?(module()) :: boolean()
  def loads_inline?(backend), do: has?(backend, :inline?, 0) and backend.inline?() == true

  @doc false
  # The backend's load: c:load/4 with the decision where it has one, else
  # c:load/3.
  @spec call_load(module(), source(), ModelBudget.placement(), keyword(), decision() | nil) ::
          term()
  def call_load(backend, source, placement, opts, decision) do
    if has?(backend, :load, 4),
      do: backend.load(source, placement, opts, decision),
      else: backend.load(source, placement, opts)
  end
end
