defmodule ModelBudget.Backend do
  @moduledoc """
  The seam between `ModelBudget.ModelManager` and whatever really holds a
  model: llama.cpp bindings, Bumblebee, Ortex, an external `llama-server`
  process, or nothing at all (`ModelBudget.Backend.Reservation`).

  The manager calls the callbacks in this order for every load:

    1. `c:footprint/2`, in the process that called `ModelBudget.ModelManager.load/4`,
       to learn how many bytes the model needs. The manager places those bytes
       with `ModelBudget.distribute/3` and admits or refuses the placement.
    2. `c:load/3`, in a task the manager supervises, once the placement has
       been admitted and reserved. The task may be killed at any time (its
       caller died, or the model was unloaded while loading): a backend that
       starts processes should link them to the calling process so they die
       with it, and keep them alive when the task returns normally.
    3. `c:unload/1`, in a task the manager supervises, when the model is
       unloaded. The model's memory stays reserved until it returns.

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
  Frees everything `handle` holds. Called once per successful load.
  """
  @callback unload(handle()) :: :ok

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

  @optional_callbacks measured: 1, estimate_options: 1
end
