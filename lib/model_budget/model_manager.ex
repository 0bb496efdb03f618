defmodule ModelBudget.ModelManager do
  @moduledoc """
  A process that admits, places and refuses model loads against a
  `:memory_budget`, and keeps the ledger of what is loaded.

  Start one (or several: one per GPU pool, say) in your supervision tree:

      children = [
        {ModelBudget.ModelManager,
         name: MyApp.Models, memory_budget: %{ram: 32 * 2**30, vram: [24 * 2**30]}}
      ]

  and send every model load through it:

      {:ok, info} = ModelBudget.ModelManager.load(MyApp.Models, :llama, {:path, "llama.gguf"})

  ## How a load goes

    1. In the caller: the backend's `c:ModelBudget.Backend.footprint/2` sizes
       the source and `ModelBudget.distribute/3` places it over RAM and the
       GPUs, from the load options.
    2. In the manager: idle models are evicted to make room when the load
       does not fit or the `:evict_when` rules say so (see "Eviction" below),
       and the placement is checked against the budget and what is held or
       reserved (`ModelBudget.check/3`). If it fits, it is reserved at once
       (folded into `usage/1`) and the model is listed with status
       `:loading`; if not, the load is refused with check's error and nothing
       is evicted. Admissions are decided one at a time in the manager, so
       two loads can never both be admitted into room that only one fits.
    3. In a task the manager supervises, once the models evicted for it have
       been unloaded: the backend's `c:ModelBudget.Backend.load/3` does the
       slow work while the manager goes on serving other loads, unloads and
       touches. Success makes the model `:ready`; a failure or crash
       releases the reservation.

  The caller is monitored while its load runs: if it dies, the load is
  cancelled (its task killed) and the reservation released. A handle that
  is a pid is monitored while the model is loaded: if that process dies, the
  manager logs it, releases the model's memory and removes its entry.

  ## Eviction

  Before admitting a load, for each device its placement touches (the
  combined pool, or RAM and then each GPU by index, where it puts bytes),
  the manager evicts, one at a time, the least recently used idle model that
  holds memory on that device, while the load does not fit there or any
  `:evict_when` rule holds, measuring the device again after each. It stops
  as soon as the load fits and no rule holds. A model is idle when it is
  `:ready`, not pinned (the `:pinned` load option), and was not admitted,
  loaded or touched within `:min_idle_ms` (`:infinity` turns eviction off);
  loading and unloading models are never evicted. Rules that still hold once
  no idle model is left do not refuse a load that fits.

  **Plan first, then act.** The evictions are simulated on the ledger; if
  the load still does not fit once every idle model on a device would be
  gone, it is refused with `ModelBudget.check/3`'s error against the ledger
  as it stands and nothing is evicted. Otherwise each planned model is
  unloaded through the backend's `c:ModelBudget.Backend.unload/1`, logged at
  info level with the reason, and the load is admitted, all in one step of
  the manager.

  **Memory is handed over, never double-counted or over-committed.** An
  evicted model's memory is free only when its backend unload returns, so
  the new model's backend load starts only once every model evicted for it
  is unloaded (its caller waits; the model is listed as `:loading`
  meanwhile). The ledger, from the moment of admission, counts the new
  placement plus whatever the evicted models hold beyond it (per device, or
  in total for a combined budget), released as their unloads return: so
  `usage/1` never exceeds the budget, and it covers what the backends really
  hold at every moment, as long as each frees a model's memory by the time
  its `c:ModelBudget.Backend.unload/1` returns. If the waiting load is
  cancelled, its evicted models count in full again until their unloads
  return.

  `fence/3` makes room the same way for work that is not a model load, and
  returns once the evicted models are unloaded; it reserves nothing.

  ### Variables

  Each rule is an expression of `ModelBudget.Constraint` over these
  variables, measured on the device being planned, after the evictions
  planned so far. All are integers from 0 to 2^64 - 1 (bytes or counts).

    * `memory_required` - the bytes the load (or fence) needs on the device.
    * `total` - the device's budget: the limit of a combined budget on its one
      device, `:total`; a per-device budget's limit for RAM or that GPU. A
      device with no limit (`:infinity`, a GPU a per-device budget does not
      name, any device of an unlimited budget) has `total` 2^64 - 1.
    * `used` - the bytes held or reserved on the device (`usage/1`; the
      combined pool counts RAM and every GPU).
    * `available` - `total - used`, never below 0; so 2^64 - 1 - `used` on a
      device with no limit, where the default rule never holds.
    * `used_percent` - `used * 100 / total`, rounded down; 100 when `total`
      is 0. (`used / total > 0.9` is exact, for finer thresholds.)
    * `free` - the device's free memory as the probe sees it when the load
      is planned (`ModelBudget.system_memory/0`'s `:available` for RAM,
      `ModelBudget.devices/0`'s `:memory_free` for a GPU, 0 for a GPU it does
      not see, their sum for the combined pool), plus what the evictions
      planned so far hold there. Probed only when a rule reads it.
    * `model_size` - the load's whole placement (all devices), or a fence's
      bytes.
    * `resident_count` - how many models the manager lists (loading, ready
      and unloading), less those planned for eviction.
    * `resident_bytes` - `used` over all devices.

  An unlimited budget is planned per device, like a per-device budget with
  no limits: only rules (on `free`, `resident_count`, ...) evict there.

  ## History

  `info/2` and `list/1` count, per model id, how many times this manager
  loaded it (`:loads`) and evicted it (`:evictions`), and list the ids
  evicted to admit it (`:evicted`). `stats/1` has the manager's totals. The
  manager remembers the two counters of every id it has loaded (one small
  ETS row each, kept for its life): ids are meant to name models, not
  requests.

  ## Reads

  `info/2`, `list/1`, `usage/1`, `budget/1` and `stats/1` read an ETS table
  the manager owns, without a message to the manager, so they stay fast
  while it is busy (they must run on the manager's node). The total usage is one row of that
  table, rewritten with every change (in the same insert as an entry that is
  added or updated), so `usage/1` is always the usage of some state of the
  ledger, never a half-updated one.

  ## Restarts

  **A manager that restarts starts with an empty ledger.** Models that a
  previous incarnation loaded are no longer accounted for: the new manager
  does not know them, does not count their memory against the budget, and
  cannot unload them. Whatever a backend started for them keeps running
  unless it was linked to the old manager's processes. The manager logs this
  every time it starts; the `:models` option loads its models again.

  Loads that were in flight when the manager went down are killed with it:
  their tasks run under a `Task.Supervisor` the manager starts and links.
  """

  use GenServer
  require Logger

  alias ModelBudget.Backend.Reservation
  alias ModelBudget.ModelManager.Eviction

  @typedoc "A manager: a pid or any `GenServer` name."
  @type manager :: GenServer.server()

  @typedoc "A model's id: any term, unique within one manager."
  @type id :: term()

  @typedoc """
  A model's entry, as `info/2` and `list/1` return it.

    * `:id` - the model's id.
    * `:status` - `:loading` (admitted, memory reserved, the backend still
      loading), `:ready`, or `:unloading` (the backend still unloading; the
      memory stays reserved until it is done).
    * `:source` - the source the load was given.
    * `:placement` - the bytes reserved in RAM and on each GPU.
    * `:bytes` - the backend's footprint before placement (a model's weight bytes).
    * `:pinned` - the `:pinned` load option.
    * `:handle` - what the backend's load returned; `nil` while loading.
    * `:loaded_at` - when the load finished, in `System.monotonic_time(:millisecond)`;
      `nil` while loading.
    * `:last_used` - when the model was admitted, loaded or last touched
      (`touch/2`), in `System.monotonic_time(:millisecond)`.
    * `:evicted` - the ids evicted to make room for this load, in order.
    * `:loads` - how many times this manager has loaded this id, this load
      included once it is ready.
    * `:evictions` - how many times this manager has evicted this id, an
      eviction under way included.
  """
  @type info :: %{
          id: id(),
          status: :loading | :ready | :unloading,
          source: term(),
          placement: ModelBudget.placement(),
          bytes: non_neg_integer(),
          pinned: boolean(),
          handle: term(),
          loaded_at: integer() | nil,
          last_used: integer(),
          evicted: [id()],
          loads: non_neg_integer(),
          evictions: non_neg_integer()
        }

  @typedoc """
  The manager's totals, as `stats/1` returns them.

    * `:loads` - loads that finished (models made ready).
    * `:evictions` - models evicted, for loads and fences.
    * `:refused` - loads and fences refused for lack of memory.
    * `:fences` - fences granted.
  """
  @type stats :: %{
          loads: non_neg_integer(),
          evictions: non_neg_integer(),
          refused: non_neg_integer(),
          fences: non_neg_integer()
        }

  @typedoc "Why a load did not happen."
  @type load_error ::
          :already_loaded
          | ModelBudget.insufficient()
          | {:load_failed, term()}
          | {:load_crashed, term()}

  @start_schema [
    :name,
    memory_budget: :infinity,
    backend: Reservation,
    models: [],
    evict_when: Eviction.default_rules(),
    min_idle_ms: 0
  ]
  @info_keys [
    :id,
    :status,
    :source,
    :placement,
    :bytes,
    :pinned,
    :handle,
    :loaded_at,
    :last_used,
    :evicted,
    :loads,
    :evictions
  ]
  # Positions of the totals in the table's {:stats, ...} row.
  @stats [loads: 2, evictions: 3, refused: 4, fences: 5]

  @doc """
  A child specification for a supervisor: starts the manager with
  `start_link/1` and `opts`. The child id is the `:name` option when given,
  else this module, so several managers under one supervisor need names (or
  their own ids through `Supervisor.child_spec/2`).

  ## Examples

      iex> ModelBudget.ModelManager.child_spec(name: :gpu0_models, memory_budget: 2**30)
      %{
        id: :gpu0_models,
        start: {ModelBudget.ModelManager, :start_link, [[name: :gpu0_models, memory_budget: 2**30]]}
      }
  """
  @spec child_spec(keyword()) :: Supervisor.child_spec()
  def child_spec(opts) do
    id = if Keyword.keyword?(opts), do: Keyword.get(opts, :name, __MODULE__), else: __MODULE__
    %{id: id, start: {__MODULE__, :start_link, [opts]}}
  end

  @doc """
  Starts a manager linked to the calling process.

  Options are checked before the process starts: an unknown option, a
  budget `ModelBudget.resolve/1` rejects, a backend that does not implement
  `ModelBudget.Backend`, `:evict_when` rules that do not compile (the message
  names the expression, the column and what was expected), or a malformed
  `:models` list raises `ArgumentError`.

  ## Options

    * `:memory_budget` - the budget, in any shape `ModelBudget.resolve/1`
      accepts; `:auto` is resolved once, here. Defaults to `:infinity`.
    * `:backend` - a module implementing `ModelBudget.Backend`. Defaults to
      `ModelBudget.Backend.Reservation`.
    * `:models` - `[{id, source}]` or `[{id, source, opts}]`, loaded one after
      another with `load/4` once the manager is running, so a slow load does
      not hold up the supervisor. Failures are logged and do not stop the
      manager or the models after them. Defaults to `[]`.
    * `:evict_when` - rules, combined with OR, that make room by evicting
      idle models before a load (see "Eviction" above for the variables);
      `[]` evicts only what a load needs to fit. Defaults to
      `["memory_required > available * 0.70"]`.
    * `:min_idle_ms` - models admitted, loaded or touched within this many
      milliseconds are not evicted; `:infinity` turns eviction off (a load
      that does not fit is refused). Defaults to `0`.
    * `:name` - any `GenServer` name (an atom, `{:global, term}`,
      `{:via, module, term}`). Defaults to no name.

  ## Examples

      iex> {:ok, manager} = ModelBudget.ModelManager.start_link(memory_budget: 2**30)
      iex> ModelBudget.ModelManager.budget(manager)
      %{mode: :combined, limit: 1073741824}

      iex> ModelBudget.ModelManager.start_link(memory_budget: "8GB")
      ** (ArgumentError) invalid memory budget: expected :infinity, nil, :auto, a positive integer, or a map with :ram and :vram keys, got: "8GB"

      iex> ModelBudget.ModelManager.start_link(evict_when: ["memory_required > avail * 0.7"])
      ** (ArgumentError) invalid option :evict_when: "memory_required > avail * 0.7" does not compile at column 19: expected a variable (memory_required, available, total, used, used_percent, free, model_size, resident_count, resident_bytes), got `avail`
  """
  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts) do
    unless is_list(opts) do
      raise ArgumentError, "expected a keyword list of options, got: #{inspect(opts)}"
    end

    opts = Keyword.validate!(opts, @start_schema)

    config = %{
      budget: ModelBudget.resolve(opts[:memory_budget]),
      backend: validate_backend!(opts[:backend]),
      models: validate_models!(opts[:models]),
      rules: Eviction.compile!(opts[:evict_when]),
      min_idle_ms: validate_min_idle!(opts[:min_idle_ms]),
      name: opts[:name]
    }

    gen_opts = if opts[:name], do: [name: opts[:name]], else: []
    GenServer.start_link(__MODULE__, config, gen_opts)
  end

  @doc """
  Loads model `id` from `source` through the backend, if its placement fits.

  Idle models may be evicted first to make room (see "Eviction" above).
  Blocks until they are unloaded and the backend's load has finished (there
  is no timeout; run it in a task and shut the task down to give up: the
  load is then cancelled). Returns `{:ok, info}` with the model `:ready` and
  `info.evicted` the ids evicted for it, or `{:error, reason}`:

    * `:already_loaded` - `id` is loading, loaded or unloading.
    * `{:insufficient_memory, [device: d, required: r, available: a]}` -
      `ModelBudget.check/3`'s refusal, against everything held or reserved,
      when evicting every idle model would not make room; nothing was
      evicted.
    * `{:load_failed, reason}` - the backend could not size or load the
      source (`{:error, reason}` from `footprint/2` or `load/3`), or
      `reason` is `:cancelled`: the model was unloaded while loading.
    * `{:load_crashed, reason}` - the backend's load raised or exited with
      `reason`, or returned `{:bad_return, value}`, something not in its
      contract.

  `opts` are the load options: they go to `ModelBudget.distribute/3` (which
  ignores keys it does not know) and to the backend. A malformed option or a
  source the backend rejects raises `ArgumentError` in the caller. Sizing and
  placing run in the caller, so it must be on the manager's node.

  ## Options

    * `:n_gpus` - the number of GPUs to place over. Defaults to the GPUs a
      per-device budget names (one past its highest VRAM index), else the
      number of GPUs `ModelBudget.devices/0` found when the manager started.
    * `:pinned` - keeps the model resident: it is never evicted (an
      explicit `unload/2` still unloads it). Defaults to `false`.
    * every `ModelBudget.distribute/3` option (`:mode`, `:n_gpu_layers`,
      `:split_mode`, ...), with its defaults.

  ## Examples

      iex> {:ok, manager} = ModelBudget.ModelManager.start_link(memory_budget: 1_000)
      iex> {:ok, info} = ModelBudget.ModelManager.load(manager, :a, {:bytes, 600}, mode: :direct, n_gpus: 0)
      iex> {info.status, info.placement, info.evicted}
      {:ready, %{ram: 600, vram: %{}}, []}
      iex> {:ok, info} = ModelBudget.ModelManager.load(manager, :b, {:bytes, 600}, mode: :direct, n_gpus: 0, pinned: true)
      iex> info.evicted
      [:a]
      iex> ModelBudget.ModelManager.load(manager, :c, {:bytes, 600}, mode: :direct, n_gpus: 0)
      {:error, {:insufficient_memory, [device: :total, required: 600, available: 400]}}
      iex> ModelBudget.ModelManager.load(manager, :b, {:bytes, 1}, mode: :direct)
      {:error, :already_loaded}
  """
  @spec load(manager(), id(), term(), keyword()) :: {:ok, info()} | {:error, load_error()}
  def load(manager, id, source, opts \\ []) do
    validate_load_opts!(opts)
    config = config!(manager, :load, [manager, id, source, opts])

    if read(config, :load, [manager, id, source, opts], &:ets.member(&1, {:model, id})) do
      {:error, :already_loaded}
    else
      with {:ok, size} <- footprint(config.backend, source, opts) do
        n_gpus = Keyword.get(opts, :n_gpus, config.n_gpus)
        placement = ModelBudget.distribute(size, opts, n_gpus)
        bytes = if is_integer(size), do: size, else: size.weight_bytes
        request = %{id: id, source: source, opts: opts, bytes: bytes, placement: placement}
        GenServer.call(manager, {:load, request}, :infinity)
      end
    end
  end

  @doc """
  Unloads model `id` and frees its share of the budget.

  Returns once the backend's unload has finished, with the memory released:
  `:ok`, or `{:error, :not_loaded}`. Unloading a model that is still loading
  cancels the load (its caller gets `{:error, {:load_failed, :cancelled}}`).
  A backend unload that crashes is logged; the memory is released anyway.

  ## Examples

      iex> {:ok, manager} = ModelBudget.ModelManager.start_link(memory_budget: 1_000)
      iex> {:ok, _} = ModelBudget.ModelManager.load(manager, :a, {:bytes, 600}, mode: :direct)
      iex> ModelBudget.ModelManager.unload(manager, :a)
      :ok
      iex> ModelBudget.ModelManager.usage(manager)
      %{ram: 0, vram: %{}}
      iex> ModelBudget.ModelManager.unload(manager, :a)
      {:error, :not_loaded}
  """
  @spec unload(manager(), id()) :: :ok | {:error, :not_loaded}
  def unload(manager, id), do: GenServer.call(manager, {:unload, id}, :infinity)

  @doc """
  Marks model `id` as used now, for the least-recently-used order.

  Returns `:ok`, or `{:error, :not_loaded}` when `id` is neither loading nor
  ready.

  ## Examples

      iex> {:ok, manager} = ModelBudget.ModelManager.start_link([])
      iex> {:ok, _} = ModelBudget.ModelManager.load(manager, :a, {:bytes, 1})
      iex> ModelBudget.ModelManager.touch(manager, :a)
      :ok
      iex> ModelBudget.ModelManager.touch(manager, :b)
      {:error, :not_loaded}
  """
  @spec touch(manager(), id()) :: :ok | {:error, :not_loaded}
  def touch(manager, id), do: GenServer.call(manager, {:touch, id})

  @doc """
  Makes room for `bytes` on `device` for work that is not a model load (a
  plugin's scratch memory, say), evicting idle models by the same rules as a
  load (see "Eviction" above; `model_size` is `bytes`).

  Returns `{:ok, evicted_ids}` once the evicted models are unloaded, or
  `ModelBudget.check/3`'s `{:error, {:insufficient_memory, ...}}` when even
  evicting every idle model would not make room; nothing is evicted then.
  Nothing is reserved: the room is free when this returns, and the next
  admission may take it.

  `device` is `:ram` or `{:gpu, index}`; with a combined budget, `:total`
  too, and all three mean the one pool. `:total` with another budget, or a
  `bytes` that is not a non-negative integer, raises `ArgumentError`.

  ## Examples

      iex> {:ok, manager} = ModelBudget.ModelManager.start_link(memory_budget: 1_000, evict_when: [])
      iex> {:ok, _} = ModelBudget.ModelManager.load(manager, :a, {:bytes, 600}, mode: :direct, n_gpus: 0)
      iex> ModelBudget.ModelManager.fence(manager, :total, 300)
      {:ok, []}
      iex> ModelBudget.ModelManager.fence(manager, :total, 500)
      {:ok, [:a]}
      iex> ModelBudget.ModelManager.fence(manager, :total, 1_001)
      {:error, {:insufficient_memory, [device: :total, required: 1001, available: 1000]}}
  """
  @spec fence(manager(), ModelBudget.device(), non_neg_integer()) ::
          {:ok, [id()]} | {:error, ModelBudget.insufficient()}
  def fence(manager, device, bytes) do
    unless is_integer(bytes) and bytes >= 0 do
      raise ArgumentError,
            "invalid bytes: expected a non-negative integer, got: #{inspect(bytes)}"
    end

    placement =
      fence_placement!(config!(manager, :fence, [manager, device, bytes]), device, bytes)

    GenServer.call(manager, {:fence, placement}, :infinity)
  end

  @doc """
  The manager's totals since it started (see `t:stats/0`), read without
  calling the manager.

  ## Examples

      iex> {:ok, manager} = ModelBudget.ModelManager.start_link(memory_budget: 1_000)
      iex> {:ok, _} = ModelBudget.ModelManager.load(manager, :a, {:bytes, 600}, mode: :direct, n_gpus: 0)
      iex> {:ok, _} = ModelBudget.ModelManager.load(manager, :b, {:bytes, 600}, mode: :direct, n_gpus: 0)
      iex> ModelBudget.ModelManager.stats(manager)
      %{loads: 2, evictions: 1, refused: 0, fences: 0}
  """
  @spec stats(manager()) :: stats()
  def stats(manager) do
    args = [manager]
    [row] = read(config!(manager, :stats, args), :stats, args, &:ets.lookup(&1, :stats))
    Map.new(@stats, fn {name, position} -> {name, elem(row, position - 1)} end)
  end

  @doc """
  The entry of model `id` (see `t:info/0`), read without calling the manager.

  ## Examples

      iex> {:ok, manager} = ModelBudget.ModelManager.start_link([])
      iex> {:ok, _} = ModelBudget.ModelManager.load(manager, :a, {:bytes, 10}, mode: :direct, n_gpus: 0)
      iex> {:ok, %{id: :a, status: :ready, bytes: 10, placement: %{ram: 10, vram: %{}}}} =
      ...>   ModelBudget.ModelManager.info(manager, :a)
      iex> ModelBudget.ModelManager.info(manager, :b)
      {:error, :not_loaded}
  """
  @spec info(manager(), id()) :: {:ok, info()} | {:error, :not_loaded}
  def info(manager, id) do
    args = [manager, id]

    case read(config!(manager, :info, args), :info, args, &:ets.lookup(&1, {:model, id})) do
      [{_, info}] -> {:ok, info}
      [] -> {:error, :not_loaded}
    end
  end

  @doc """
  Every model the manager holds, loading or unloading ones included, in id
  order; read without calling the manager.

  ## Examples

      iex> {:ok, manager} = ModelBudget.ModelManager.start_link([])
      iex> {:ok, _} = ModelBudget.ModelManager.load(manager, :b, {:bytes, 1})
      iex> {:ok, _} = ModelBudget.ModelManager.load(manager, :a, {:bytes, 2})
      iex> manager |> ModelBudget.ModelManager.list() |> Enum.map(& &1.id)
      [:a, :b]
  """
  @spec list(manager()) :: [info()]
  def list(manager) do
    args = [manager]
    match = [{{{:model, :_}, :"$1"}, [], [:"$1"]}]

    config!(manager, :list, args)
    |> read(:list, args, &:ets.select(&1, match))
    |> Enum.sort_by(& &1.id)
  end

  @doc """
  The folded placement of every model held or reserved (loading, ready or
  unloading), read without calling the manager.

  ## Examples

      iex> {:ok, manager} = ModelBudget.ModelManager.start_link([])
      iex> {:ok, _} = ModelBudget.ModelManager.load(manager, :a, {:bytes, 10}, mode: :direct, n_gpus: 0)
      iex> {:ok, _} = ModelBudget.ModelManager.load(manager, :b, {:bytes, 5}, mode: :direct, n_gpus: 0)
      iex> ModelBudget.ModelManager.usage(manager)
      %{ram: 15, vram: %{}}
  """
  @spec usage(manager()) :: ModelBudget.placement()
  def usage(manager) do
    args = [manager]

    [{:usage, usage}] =
      read(config!(manager, :usage, args), :usage, args, &:ets.lookup(&1, :usage))

    usage
  end

  @doc """
  The manager's resolved budget (see `ModelBudget.resolve/1`), read without
  calling the manager.

  ## Examples

      iex> {:ok, manager} = ModelBudget.ModelManager.start_link(memory_budget: %{ram: 100, vram: [50]})
      iex> ModelBudget.ModelManager.budget(manager)
      %{mode: :per_device, ram: 100, vram: %{0 => 50}}
  """
  @spec budget(manager()) :: ModelBudget.budget()
  def budget(manager), do: config!(manager, :budget, [manager]).budget

  ## Client helpers

  # The manager's fixed settings and table live in a persistent term keyed by
  # its pid: managers have no fixed names, and reads must not call them.
  defp config!(manager, fun, args) do
    pid = GenServer.whereis(manager)

    if is_pid(pid) and node(pid) == node() and Process.alive?(pid) do
      case :persistent_term.get({__MODULE__, pid}, nil) do
        # Named but still in init/1 (a restart, say): wait for it like a call.
        nil -> initialized_config!(pid, fun, args)
        config -> config
      end
    else
      exit({:noproc, {__MODULE__, fun, args}})
    end
  end

  defp initialized_config!(pid, fun, args) do
    GenServer.call(pid, {__MODULE__, :config})
  catch
    :exit, {reason, _} -> exit({reason, {__MODULE__, fun, args}})
  end

  # The table disappears with its owner; a read racing the manager's death
  # exits the way a call to a dead manager would.
  defp read(%{table: table}, fun, args, read_fun) do
    read_fun.(table)
  rescue
    ArgumentError -> exit({:noproc, {__MODULE__, fun, args}})
  end

  defp footprint(backend, source, opts) do
    case backend.footprint(source, opts) do
      {:ok, bytes} when is_integer(bytes) and bytes >= 0 -> {:ok, bytes}
      {:ok, %ModelBudget.Model{} = model} -> {:ok, model}
      {:error, reason} -> {:error, {:load_failed, reason}}
      other -> {:error, {:load_crashed, {:bad_return, other}}}
    end
  end

  defp validate_backend!(backend) do
    if is_atom(backend) and Code.ensure_loaded?(backend) and
         function_exported?(backend, :footprint, 2) and function_exported?(backend, :load, 3) and
         function_exported?(backend, :unload, 1) do
      backend
    else
      raise ArgumentError,
            "invalid option :backend: expected a module implementing ModelBudget.Backend, got: " <>
              inspect(backend)
    end
  end

  defp validate_min_idle!(ms) when (is_integer(ms) and ms >= 0) or ms == :infinity, do: ms

  defp validate_min_idle!(ms) do
    raise ArgumentError,
          "invalid option :min_idle_ms: expected a non-negative integer or :infinity, got: " <>
            inspect(ms)
  end

  defp fence_placement!(_config, :ram, bytes), do: %{ram: bytes, vram: %{}}

  defp fence_placement!(_config, {:gpu, gpu}, bytes) when is_integer(gpu) and gpu >= 0,
    do: %{ram: 0, vram: if(bytes > 0, do: %{gpu => bytes}, else: %{})}

  defp fence_placement!(%{budget: %{mode: :combined}}, :total, bytes),
    do: %{ram: bytes, vram: %{}}

  defp fence_placement!(_config, :total, _bytes) do
    raise ArgumentError,
          "invalid device: :total is the pool of a combined budget; " <>
            "with this manager's budget, expected :ram or {:gpu, index}"
  end

  defp fence_placement!(_config, device, _bytes) do
    raise ArgumentError,
          "invalid device: expected :total, :ram or {:gpu, index}, got: #{inspect(device)}"
  end

  defp validate_models!(models) when is_list(models), do: Enum.map(models, &validate_model!/1)

  defp validate_models!(models) do
    raise ArgumentError,
          "invalid option :models: expected a list of {id, source} or {id, source, opts}, got: " <>
            inspect(models)
  end

  defp validate_model!({id, source}), do: {id, source, []}
  defp validate_model!({id, source, opts}), do: {id, source, validate_load_opts!(opts)}

  defp validate_model!(entry) do
    raise ArgumentError,
          "invalid option :models: expected entries {id, source} or {id, source, opts}, got: " <>
            inspect(entry)
  end

  defp validate_load_opts!(opts) do
    unless is_list(opts) and Keyword.keyword?(opts) do
      raise ArgumentError, "invalid load options: expected a keyword list, got: #{inspect(opts)}"
    end

    validate_opt!(opts, :n_gpus, &(is_integer(&1) and &1 >= 0), "a non-negative integer")
    validate_opt!(opts, :pinned, &is_boolean/1, "a boolean")
    opts
  end

  defp validate_opt!(opts, key, valid?, expected) do
    case Keyword.fetch(opts, key) do
      {:ok, value} ->
        valid?.(value) ||
          raise ArgumentError,
                "invalid option #{inspect(key)}: expected #{expected}, got: #{inspect(value)}"

      :error ->
        true
    end
  end

  ## Server

  @impl true
  def init(config) do
    {:ok, task_sup} = Task.Supervisor.start_link()
    table = :ets.new(__MODULE__, [:set, :protected, read_concurrency: true])
    :ets.insert(table, [{:usage, ModelBudget.empty_usage()}, {:stats, 0, 0, 0, 0}])

    shared = %{
      table: table,
      budget: config.budget,
      backend: config.backend,
      n_gpus: default_gpu_count(config.budget)
    }

    publish_config(shared)

    Logger.info(
      "#{inspect(__MODULE__)} #{inspect(config.name || self())} started with an empty ledger: " <>
        "models loaded by a previous incarnation of this manager, if any, are no longer accounted for"
    )

    if config.models != [] do
      manager = self()
      Task.Supervisor.start_child(task_sup, fn -> load_at_start(manager, config.models) end)
    end

    state =
      Map.merge(shared, %{
        name: config.name,
        task_sup: task_sup,
        rules: config.rules,
        min_idle_ms: config.min_idle_ms,
        usage: ModelBudget.empty_usage(),
        models: %{},
        # {{lru_tick, id}} of every model, least recently used first: an
        # ordered set outside the heap, cheap to update on every touch.
        lru: :ets.new(__MODULE__.LRU, [:ordered_set, :private]),
        # Fences waiting for their evicted models: ref => %{from, pending, evicted}.
        fences: %{},
        # Every monitor and task ref the manager holds: ref => {kind, id}.
        refs: %{}
      })

    {:ok, state}
  end

  # A watcher removes the persistent term when the manager dies, however it
  # dies (a kill skips terminate/2).
  defp publish_config(shared) do
    key = {__MODULE__, self()}
    :persistent_term.put(key, shared)
    manager = self()

    spawn(fn ->
      ref = Process.monitor(manager)

      receive do
        {:DOWN, ^ref, :process, _, _} -> :persistent_term.erase(key)
      end
    end)
  end

  defp default_gpu_count(%{mode: :per_device, vram: vram}) when map_size(vram) > 0,
    do: Enum.max(Map.keys(vram)) + 1

  defp default_gpu_count(_budget), do: length(ModelBudget.devices())

  defp load_at_start(manager, models) do
    for {id, source, opts} <- models do
      result =
        try do
          load(manager, id, source, opts)
        rescue
          error -> {:error, Exception.message(error)}
        end

      with {:error, reason} <- result do
        Logger.warning(
          "#{inspect(__MODULE__)} could not load #{inspect(id)} at start-up: #{inspect(reason)}"
        )
      end
    end
  end

  @impl true
  def handle_call({:load, %{id: id} = request}, from, state) do
    if Map.has_key?(state.models, id) do
      {:reply, {:error, :already_loaded}, state}
    else
      case admit(state, request.placement) do
        {:ok, evictions, usage} -> {:noreply, start_load(state, from, request, evictions, usage)}
        {:error, _} = refused -> {:reply, refused, count(state, :refused)}
      end
    end
  end

  def handle_call({:fence, placement}, from, state) do
    case admit(state, placement) do
      {:ok, [], _usage} ->
        {:reply, {:ok, []}, count(state, :fences)}

      {:ok, evictions, _usage} ->
        ref = make_ref()
        # Nothing takes the evicted models' memory over: they count in full
        # until their unloads return, and the fence answers then.
        {evicted, state} = evict(state, evictions, {:fence, ref}, placements(evictions))
        ids = Enum.map(evictions, & &1.id)
        fence = %{from: from, pending: MapSet.new(ids), evicted: ids}
        state = put_entries(%{state | fences: Map.put(state.fences, ref, fence)}, evicted)
        {:noreply, count(state, :fences)}

      {:error, _} = refused ->
        {:reply, refused, count(state, :refused)}
    end
  end

  def handle_call({:unload, id}, from, state) do
    case Map.fetch(state.models, id) do
      {:ok, %{status: :ready} = entry} -> {:noreply, start_unload(state, entry, [from])}
      {:ok, %{status: :loading} = entry} -> {:noreply, cancel_load(state, entry, [from])}
      # Joins the unload in progress and is answered when it finishes.
      {:ok, %{status: :unloading} = entry} -> {:noreply, join_unload(state, entry, from)}
      :error -> {:reply, {:error, :not_loaded}, state}
    end
  end

  def handle_call({__MODULE__, :config}, _from, state),
    do: {:reply, :persistent_term.get({__MODULE__, self()}), state}

  def handle_call({:touch, id}, _from, state) do
    case Map.fetch(state.models, id) do
      {:ok, %{status: status} = entry} when status in [:loading, :ready] ->
        {:reply, :ok, put_entries(state, [used_now(entry)])}

      _ ->
        {:reply, {:error, :not_loaded}, state}
    end
  end

  @impl true
  # Task replies (loads and unloads): {task_ref, result}.
  def handle_info({ref, result}, state) when is_reference(ref) do
    case Map.pop(state.refs, ref) do
      {{kind, id}, refs} ->
        Process.demonitor(ref, [:flush])
        {:noreply, finished(%{state | refs: refs}, kind, id, {:ok, result})}

      {nil, _} ->
        {:noreply, state}
    end
  end

  def handle_info({:DOWN, ref, :process, _pid, reason}, state) do
    case Map.pop(state.refs, ref) do
      {{:caller, id}, refs} ->
        {:noreply, cancel_load(%{state | refs: refs}, state.models[id], [])}

      {{:handle, id}, refs} ->
        {:noreply, model_died(%{state | refs: refs}, id, reason)}

      {{kind, id}, refs} ->
        {:noreply, finished(%{state | refs: refs}, kind, id, {:exit, reason})}

      {nil, _} ->
        {:noreply, state}
    end
  end

  def handle_info(message, state) do
    Logger.debug("#{inspect(__MODULE__)} ignored an unexpected message: #{inspect(message)}")
    {:noreply, state}
  end

  # The one place loads and fences are admitted: plans the evictions that
  # make room (nothing is evicted yet), then checks the placement against
  # the ledger without them. Returns the evictions and that ledger's usage.
  defp admit(state, placement) do
    ledger = %{
      budget: state.budget,
      rules: state.rules,
      usage: state.usage,
      resident_count: map_size(state.models),
      free: Eviction.probe_free(state.rules, state.budget, placement)
    }

    with {:ok, evictions, usage} <- Eviction.plan(ledger, placement, candidates(state)),
         :ok <- ModelBudget.check(state.budget, placement, usage) do
      {:ok, evictions, usage}
    end
  end

  # Idle models, least recently used first, walked lazily.
  defp candidates(%{min_idle_ms: :infinity}), do: []

  defp candidates(state) do
    idle_since = now() - state.min_idle_ms
    Stream.unfold(:ets.first(state.lru), &next_idle(state, idle_since, &1))
  end

  defp next_idle(_state, _idle_since, :"$end_of_table"), do: nil

  defp next_idle(state, idle_since, {_tick, id} = key) do
    next = :ets.next(state.lru, key)

    case Map.fetch!(state.models, id) do
      %{status: :ready, pinned: false, last_used: used, placement: placement}
      when used <= idle_since ->
        {{id, placement}, next}

      _busy ->
        next_idle(state, idle_since, next)
    end
  end

  # The evicted models start unloading, each counting `held` in the ledger
  # from now on; `for` is what waits for them. Their entries are returned for
  # the caller to write with the rest of its step.
  defp evict(state, evictions, for, held) do
    Enum.zip(evictions, held)
    |> Enum.map_reduce(state, fn {eviction, held}, state ->
      entry = Map.fetch!(state.models, eviction.id)
      log_eviction(state, entry, eviction, for)
      evictions = history(state, entry.id, :evictions)
      entry = %{entry | held: held, evicted_for: for, evictions: evictions}
      {state, entry} = begin_unload(count(state, :evictions), entry, [])
      {entry, store(state, entry)}
    end)
  end

  defp placements(evictions), do: Enum.map(evictions, & &1.placement)

  defp log_eviction(state, entry, eviction, for) do
    target =
      case for do
        {:load, id} -> "the load of #{inspect(id)}"
        {:fence, _} -> "a fence"
      end

    reason =
      case eviction.reason do
        :constraint ->
          "the :evict_when rules hold (#{Enum.join(state.rules.constraint.expressions, " or ")})"

        {:does_not_fit, required, available} ->
          "#{required} bytes do not fit in the #{available} available"
      end

    Logger.info(
      "#{inspect(__MODULE__)} #{inspect(state.name || self())}: evicting #{inspect(entry.id)} " <>
        "(idle #{now() - entry.last_used} ms) to make room on #{inspect(eviction.device)} " <>
        "for #{target}: #{reason}"
    )
  end

  # `usage` is the ledger without the evicted models; they keep counting
  # what they hold beyond the new placement (Eviction.residuals/3) until
  # their unloads return, and the backend load waits for those.
  defp start_load(state, {caller, _} = from, request, evictions, usage) do
    %{id: id, placement: placement} = request
    held = Eviction.residuals(state.budget, placements(evictions), placement)
    {evicted, state} = evict(state, evictions, {:load, id}, held)
    usage = Enum.reduce([placement | held], usage, &ModelBudget.fold(&2, &1))
    caller_ref = Process.monitor(caller)
    ids = Enum.map(evictions, & &1.id)

    {loads, evictions} =
      case :ets.lookup(state.table, {:history, id}) do
        [{_, loads, evictions}] -> {loads, evictions}
        [] -> {0, 0}
      end

    entry =
      used_now(%{
        id: id,
        status: :loading,
        source: request.source,
        opts: request.opts,
        placement: placement,
        held: placement,
        bytes: request.bytes,
        pinned: Keyword.get(request.opts, :pinned, false),
        handle: nil,
        loaded_at: nil,
        evicted: ids,
        evicted_for: nil,
        waiting: MapSet.new(ids),
        loads: loads,
        evictions: evictions,
        from: from,
        task: nil,
        caller_ref: caller_ref,
        handle_ref: nil,
        waiters: []
      })

    refs = Map.put(state.refs, caller_ref, {:caller, id})
    state = put_entries(%{state | refs: refs, usage: usage}, [entry | evicted])
    if ids == [], do: run_load(state, entry), else: state
  end

  defp run_load(state, entry) do
    %{source: source, placement: placement, opts: opts} = entry

    task =
      Task.Supervisor.async_nolink(state.task_sup, state.backend, :load, [source, placement, opts])

    state = %{state | refs: Map.put(state.refs, task.ref, {:load, entry.id})}
    store(state, %{entry | task: task})
  end

  defp finished(state, :load, id, outcome) do
    %{from: from, caller_ref: caller_ref} = entry = Map.fetch!(state.models, id)
    Process.demonitor(caller_ref, [:flush])
    state = %{state | refs: Map.delete(state.refs, caller_ref)}

    case outcome do
      {:ok, {:ok, handle}} ->
        loads = history(state, id, :loads)
        entry = %{entry | status: :ready, handle: handle, loaded_at: now(), loads: loads}
        {state, entry} = monitor_handle(state, used_now(entry))
        state = put_entries(state, [%{entry | task: nil, caller_ref: nil, from: nil}])
        GenServer.reply(from, {:ok, info(entry)})
        count(state, :loads)

      {:ok, {:error, reason}} ->
        fail_load(state, id, {:load_failed, reason})

      {:ok, other} ->
        fail_load(state, id, {:load_crashed, {:bad_return, other}})

      {:exit, reason} ->
        fail_load(state, id, {:load_crashed, reason})
    end
  end

  defp finished(state, :unload, id, outcome) do
    with {:exit, reason} <- outcome do
      Logger.error(
        "#{inspect(__MODULE__)} #{inspect(state.name || self())}: unloading #{inspect(id)} " <>
          "crashed (#{inspect(reason)}); its memory is released anyway"
      )
    end

    {entry, state} = drop(state, id)
    Enum.each(entry.waiters, &GenServer.reply(&1, :ok))
    evicted(state, entry)
  end

  # An evicted model is unloaded: what waited for it may go on.
  defp evicted(state, %{evicted_for: nil}), do: state

  defp evicted(state, %{evicted_for: {:load, id}, id: evicted}) do
    entry = Map.fetch!(state.models, id)
    entry = %{entry | waiting: MapSet.delete(entry.waiting, evicted)}
    if MapSet.size(entry.waiting) == 0, do: run_load(state, entry), else: store(state, entry)
  end

  defp evicted(state, %{evicted_for: {:fence, ref}, id: evicted}) do
    fence = Map.fetch!(state.fences, ref)
    pending = MapSet.delete(fence.pending, evicted)

    if MapSet.size(pending) == 0 do
      GenServer.reply(fence.from, {:ok, fence.evicted})
      %{state | fences: Map.delete(state.fences, ref)}
    else
      %{state | fences: Map.put(state.fences, ref, %{fence | pending: pending})}
    end
  end

  defp fail_load(state, id, reason) do
    {entry, state} = drop(state, id)
    GenServer.reply(entry.from, {:error, reason})
    state
  end

  defp monitor_handle(state, %{handle: handle, id: id} = entry) when is_pid(handle) do
    ref = Process.monitor(handle)
    {%{state | refs: Map.put(state.refs, ref, {:handle, id})}, %{entry | handle_ref: ref}}
  end

  defp monitor_handle(state, entry), do: {state, entry}

  # Still waiting for its evicted models: they hold their memory until their
  # unloads return, so they count in full again.
  defp cancel_load(state, %{task: nil} = entry, waiters) do
    Process.demonitor(entry.caller_ref, [:flush])

    state =
      Enum.reduce(entry.waiting, %{state | refs: Map.delete(state.refs, entry.caller_ref)}, fn
        id, state ->
          evicted = Map.fetch!(state.models, id)

          usage =
            state.usage
            |> ModelBudget.release(evicted.held)
            |> ModelBudget.fold(evicted.placement)

          store(%{state | usage: usage}, %{evicted | held: evicted.placement, evicted_for: nil})
      end)

    {_, state} = drop(state, entry.id)
    Enum.each(waiters, &GenServer.reply(&1, :ok))
    GenServer.reply(entry.from, {:error, {:load_failed, :cancelled}})
    state
  end

  # Kills the load's task and waits for it to be gone, so that a handle it
  # returned just before is never lost: that reply precedes its :DOWN.
  defp cancel_load(state, entry, waiters) do
    %{task: %Task{pid: pid, ref: ref} = task, caller_ref: caller_ref, from: from} = entry
    Process.demonitor(caller_ref, [:flush])
    Process.exit(pid, :kill)

    result =
      receive do
        {:DOWN, ^ref, :process, _, _} ->
          receive do
            {^ref, result} -> result
          after
            0 -> nil
          end
      end

    state = %{state | refs: Map.drop(state.refs, [task.ref, caller_ref])}
    entry = %{entry | task: nil, caller_ref: nil, from: nil}

    state =
      case result do
        {:ok, handle} ->
          start_unload(state, %{entry | handle: handle}, waiters)

        _ ->
          {_, state} = drop(state, entry.id)
          Enum.each(waiters, &GenServer.reply(&1, :ok))
          state
      end

    GenServer.reply(from, {:error, {:load_failed, :cancelled}})
    state
  end

  # The memory stays reserved until the backend's unload returns: a runtime
  # frees it only then.
  defp start_unload(state, entry, waiters) do
    {state, entry} = begin_unload(state, entry, waiters)
    put_entries(state, [entry])
  end

  defp begin_unload(state, entry, waiters) do
    if entry.handle_ref, do: Process.demonitor(entry.handle_ref, [:flush])

    task = Task.Supervisor.async_nolink(state.task_sup, state.backend, :unload, [entry.handle])
    refs = state.refs |> Map.delete(entry.handle_ref) |> Map.put(task.ref, {:unload, entry.id})
    entry = %{entry | status: :unloading, task: task, handle_ref: nil, waiters: waiters}
    {%{state | refs: refs}, entry}
  end

  defp join_unload(state, entry, from),
    do: store(state, %{entry | waiters: [from | entry.waiters]})

  defp model_died(state, id, reason) do
    Logger.warning(
      "#{inspect(__MODULE__)} #{inspect(state.name || self())}: the process of model " <>
        "#{inspect(id)} exited (#{inspect(reason)}); releasing its memory"
    )

    {_, state} = drop(state, id)
    state
  end

  defp used_now(entry),
    do: Map.merge(entry, %{last_used: now(), lru_tick: :erlang.unique_integer([:monotonic])})

  defp now, do: System.monotonic_time(:millisecond)

  defp info(entry), do: Map.take(entry, @info_keys)

  # Bumps a total of stats/1.
  defp count(state, name) do
    :ets.update_counter(state.table, :stats, {Keyword.fetch!(@stats, name), 1})
    state
  end

  # Bumps and returns one of an id's history counters.
  defp history(state, id, name) do
    position = if name == :loads, do: 2, else: 3
    :ets.update_counter(state.table, {:history, id}, {position, 1}, {{:history, id}, 0, 0})
  end

  # The entries and the usage they imply go to the table in one insert, so a
  # reader never sees one without the other.
  defp put_entries(state, entries) do
    rows = for entry <- entries, do: {{:model, entry.id}, info(entry)}
    :ets.insert(state.table, [{:usage, state.usage} | rows])
    Enum.reduce(entries, state, &store(&2, &1))
  end

  # The manager's own copy of an entry, and its place in the LRU order.
  defp store(state, %{id: id, lru_tick: tick} = entry) do
    case state.models do
      %{^id => %{lru_tick: ^tick}} ->
        :ok

      %{^id => %{lru_tick: old}} ->
        :ets.delete(state.lru, {old, id})
        :ets.insert(state.lru, {{tick, id}})

      %{} ->
        :ets.insert(state.lru, {{tick, id}})
    end

    %{state | models: Map.put(state.models, id, entry)}
  end

  defp drop(state, id) do
    {entry, models} = Map.pop!(state.models, id)
    usage = ModelBudget.release(state.usage, entry.held)
    :ets.delete(state.table, {:model, id})
    :ets.insert(state.table, {:usage, usage})
    :ets.delete(state.lru, {entry.lru_tick, id})
    {entry, %{state | models: models, usage: usage}}
  end
end
