defmodule ModelBudget.ModelManager do
  @moduledoc """
  A process that admits, places and refuses model loads against a
  `:memory_budget`, keeps the ledger of what is loaded, and hands out
  leases on loaded models. **The default policy:** a load that does not
  fit, or that would take more than 70% of what is left
  (`:evict_when`), evicts the least recently used idle models until it fits;
  a model that is pinned, loading, unloading or leased (`checkout/2`) is
  never evicted; no model is unloaded for being idle unless its load gave a
  `:keep_alive`; and a load that cannot fit is refused at once, unless its
  `:timeout` lets it wait for room.

  Start one (or several: one per GPU pool, say) in your supervision tree:

      children = [
        {ModelBudget.ModelManager,
         name: MyApp.Models, memory_budget: %{ram: 32 * 2**30, vram: [24 * 2**30]}}
      ]

  send every model load through it:

      {:ok, info} = ModelBudget.ModelManager.load(MyApp.Models, :llama, {:path, "llama.gguf"})

  and serve each request under a lease:

      ModelBudget.ModelManager.with_model(MyApp.Models, :llama, fn info ->
        MyApp.Llama.complete(info.handle, prompt)
      end)

  ## Leases

  `checkout/2` takes a lease on a ready model, `checkin/2` gives it back,
  `with_model/3` does both around a function. While a model has a lease it
  is never evicted, its keep-alive does not run, and `unload/3` waits for
  the lease to end (or gives up after its `:timeout`, or does not wait with
  `force: true`). A lease also ends when the process that took it exits.
  Checkins count as use for the least-recently-used order and the
  keep-alive.

  Checkout and checkin are the per-request path: they never send the
  manager a message in the ordinary case and never wait for it, so requests
  do not queue behind admissions; a lease also ends, without a checkin,
  when the process that took it exits, killed or not. Any process may check
  a lease in; checking it in twice does nothing the second time. How leases
  work inside (gates of atomics, holders, the race with unloads) is in
  [the leases guide](guides/leases.md).

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
       slow work while the manager goes on serving other loads and unloads.
       The backend receives the whole decision: the placement, the
       model's breakdown where its header was read, and the options as
       placed (`c:ModelBudget.Backend.load/4`). Success makes the model
       `:ready` (and open to leases); a failure or crash releases the
       reservation. (A backend whose load and unload start and wait for
       nothing, such as the default one, says so with
       `c:ModelBudget.Backend.inline?/0`: the manager calls them in its own
       step, without a task.)

  The caller is monitored while its load runs: if it dies, the load is
  cancelled (its task killed) and the reservation released. A handle that
  is a pid (or carries one as `:pid`) is monitored while the model is
  loaded: if that process dies, the
  manager logs it, releases the model's memory and removes its entry.

  ## Eviction

  Before admitting a load, for each device its placement touches (the
  combined pool, or RAM and then each GPU by index, where it puts bytes),
  the manager evicts, one at a time, the least recently used idle model that
  holds memory on that device, while the load does not fit there or any
  `:evict_when` rule holds, measuring the device again after each. It stops
  as soon as the load fits and no rule holds. A model is idle when it is
  `:ready`, not pinned (the `:pinned` load option), holds no lease, and was
  not admitted, loaded, checked in or touched within `:min_idle_ms`
  (`:infinity` turns eviction off); the least recently used is the one
  whose last such use is oldest. Loading, unloading and leased models are
  never evicted. Rules that still hold once
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
  manager keeps the two counters of every id while it is loaded and of the
  `:history_limit` ids most recently unloaded (one small ETS row each), so
  a manager fed ever new ids stays bounded.

  ## Keep-alive

  A model loaded with `keep_alive: ms` is unloaded by the manager once it
  has been ready without a lease for `ms` milliseconds (by the `:clock`,
  since its load, last checkin or `touch/2`), at the next sweep (every
  `:sweep_ms`, or `sweep/1`). The unload is logged at info level with the
  reason and counted in `stats/1` (`:expired`). Pinning does not stop it:
  the keep-alive is the model's own setting.

  ## Loads that wait

  A load with `timeout: ms` that does not fit now (with the evictions the
  rules allow) waits, if it would fit with every unpinned model gone;
  otherwise it is refused at once. Waiting loads form one queue, first come
  first served: each is admitted as soon as it fits (its backend load then
  runs as usual), checked again whenever room may have freed (an unload or
  a failed load releasing memory, a lease ending, a keep-alive running out,
  a waiting load leaving). A load waiting ahead counts as held for the ones
  behind it and for new loads, so none of them takes its room. At the
  deadline it gets the refusal a load without timeout would get then. A
  caller that exits leaves the queue.

  ## Reads

  `info/2`, `list/1`, `usage/1`, `budget/1`, `stats/1`, `checkout/2`,
  `checkin/2` and `touch/2` read (or write) ETS tables and lease gates the
  manager owns, without a message to the manager, so they stay fast while
  it is busy (they must run on the manager's node). The total usage is one
  row of that table, rewritten with every change (in the same insert as an
  entry that is added or updated), so `usage/1` is always the usage of some
  state of the ledger, never a half-updated one.

  ## Stopping and restarts

  **The manager owns what it starts.** A manager that stops (`GenServer.stop/1`,
  its supervisor shutting down) or crashes unloads every ready model
  through its backend first, most recently loaded first. One that is
  killed cannot; the backends' processes watch it instead:
  `ModelBudget.Backend.LlamaServer` kills each server's whole process group
  as soon as its manager is gone, and when the VM itself dies. So a
  restarted manager starts with an empty ledger and nothing of its
  predecessor's left running: the leftovers are killed, not adopted, and
  the `:models` option loads its models again.

  Loads that were in flight when the manager went down are killed with it:
  their tasks run under a `Task.Supervisor` the manager starts and links.
  """

  use GenServer
  require Logger

  alias ModelBudget.ModelManager.{
    Directory,
    Effects,
    Entry,
    History,
    Lease,
    Leases,
    Ledger,
    Lifecycle,
    Options,
    Subscribers,
    Table
  }

  @typedoc "A manager: a pid or any `GenServer` name."
  @type manager :: GenServer.server()

  @typedoc "A model's id: any term, unique within one manager."
  @type id :: term()

  @typedoc """
  A model's entry, as `info/2` and `list/1` return it.

    * `:id` - the model's id.
    * `:status` - `:loading` (admitted, memory reserved, the backend still
      loading), `:ready`, or `:unloading` (waiting for its leases to end, or
      the backend still unloading; the memory stays reserved until it is
      done).
    * `:source` - the source the load was given.
    * `:placement` - the bytes reserved in RAM and on each GPU.
    * `:bytes` - the backend's footprint before placement (a model's weight bytes).
    * `:pinned` - the `:pinned` load option.
    * `:keep_alive` - the `:keep_alive` load option.
    * `:leases` - how many leases hold the model now.
    * `:handle` - what the backend's load returned; `nil` while loading.
    * `:measured` - what the backend measured the model to hold once
      loaded (`c:ModelBudget.Backend.measured/1`), `:ram` and `:vram` in
      bytes like `:placement`; `nil` for a backend that does not measure.
      Where it exceeds the placement on a device, the placement was raised
      to it when the load finished, so the ledger covers what is really
      held (counted in `stats/1`'s `:raised`; logged as a warning, with
      both figures, only beyond the estimate's calibration bounds: more
      than 2% above the reservation).
    * `:loaded_at` - when the load finished, by the manager's `:clock`;
      `nil` while loading.
    * `:last_used` - when the model was admitted, loaded, last checked in
      or touched, by the manager's `:clock` (a raw reading).
    * `:idle_ms` - milliseconds since `:last_used`, by the same clock.
    * `:expires_in_ms` - milliseconds until its `:keep_alive` unloads it
      (`0` once due, `:infinity` without a keep-alive or while leased).
    * `:evicted` - the ids evicted to make room for this load, in order.
    * `:loads` - how many times this manager has loaded this id, this load
      included once it is ready.
    * `:evictions` - how many times this manager has evicted this id, an
      eviction under way included. With `:loads`, kept while the id is
      loaded and for the `:history_limit` ids most recently unloaded.
    * `:cpu_buffers` - the runtime profile the model was placed with (see
      `ModelBudget.breakdown/3`): the one its backend's binary reports
      (`ModelBudget.Backend.LlamaServer`), else the load options' (`nil`
      when they name none).
  """
  @type info :: %{
          id: id(),
          status: :loading | :ready | :unloading,
          source: term(),
          placement: ModelBudget.placement(),
          bytes: non_neg_integer(),
          pinned: boolean(),
          keep_alive: non_neg_integer() | :infinity,
          leases: non_neg_integer(),
          handle: term(),
          measured: map() | nil,
          loaded_at: integer() | nil,
          last_used: integer(),
          evicted: [id()],
          loads: non_neg_integer(),
          evictions: non_neg_integer(),
          cpu_buffers: ModelBudget.cpu_buffers() | :auto | nil,
          idle_ms: non_neg_integer(),
          expires_in_ms: non_neg_integer() | :infinity
        }

  @typedoc """
  The manager's totals, as `stats/1` returns them.

    * `:loads` - loads that finished (models made ready).
    * `:evictions` - models evicted, for loads and fences.
    * `:refused` - loads and fences refused for lack of memory.
    * `:fences` - fences granted.
    * `:expired` - models unloaded because their keep-alive ran out.
    * `:raised` - reservations raised to what a backend measured.
    * `:max_estimate_error` - the largest difference, by magnitude, between
      what a backend measured and what was reserved on one device
      (`measured - reserved` bytes: positive when a model held more than
      its estimate); `0` until a backend measures.
  """
  @type stats :: %{
          loads: non_neg_integer(),
          evictions: non_neg_integer(),
          refused: non_neg_integer(),
          fences: non_neg_integer(),
          expired: non_neg_integer(),
          raised: non_neg_integer(),
          max_estimate_error: integer()
        }

  @typedoc "Why a load did not happen."
  @type load_error ::
          :already_loaded
          | ModelBudget.insufficient()
          | {:load_failed, term()}
          | {:load_crashed, term()}

  @typedoc "A lease on a model (see `ModelBudget.ModelManager.Lease`)."
  @type lease :: Lease.t()

  @doc """
  A child specification for a supervisor: starts the manager with
  `start_link/1` and `opts`. The child id is the `:name` option when given,
  else this module, so several managers under one supervisor need names (or
  their own ids through `Supervisor.child_spec/2`). Its `:shutdown` is 60
  seconds: a stopping manager unloads each model it holds in turn (see
  "Stopping and restarts"), and a server may take its `:stop_timeout` to
  go. Past that the supervisor kills it, and the backends' own processes
  end what is left.

  ## Examples

      iex> ModelBudget.ModelManager.child_spec(name: :gpu0_models, memory_budget: 2**30)
      %{
        id: :gpu0_models,
        start: {ModelBudget.ModelManager, :start_link, [[name: :gpu0_models, memory_budget: 2**30]]},
        shutdown: 60_000
      }
  """
  @spec child_spec(keyword()) :: Supervisor.child_spec()
  def child_spec(opts) do
    id = if Keyword.keyword?(opts), do: Keyword.get(opts, :name, __MODULE__), else: __MODULE__
    %{id: id, start: {__MODULE__, :start_link, [opts]}, shutdown: 60_000}
  end

  # Every caller's load, unload and fence is a message to the manager, and
  # every step rewrites part of its ledger. Messages kept off its heap are
  # queued without the manager's main lock, so callers on other schedulers
  # do not contend with its work; a young heap of 20,000 words (160 KB)
  # collects its garbage 5x less often (bench/manager.exs's admission
  # rounds, 100 callers, 20,000 admissions: 3,144 collections by default,
  # 602 with it). Measured in alternating runs: off-heap messages 6-15%
  # more admissions/s; the larger heap on top, 0-33% more. Its priority is
  # the :priority option's.
  @spawn_opt [message_queue_data: :off_heap, min_heap_size: 20_000]

  @doc """
  Starts a manager linked to the calling process. It traps exits, so when
  that process exits (for any reason, `:normal` included) or its supervisor
  shuts it down, the manager stops too, after unloading what it holds (see
  "Stopping and restarts" above).

  Options are checked before the process starts: an unknown option, a
  budget `ModelBudget.resolve/1` rejects, a backend that does not implement
  `ModelBudget.Backend`, `:evict_when` rules that do not compile (the message
  names the expression, the column and what was expected), or a malformed
  `:models` list raises `ArgumentError`.

  ## Options

    * `:memory_budget` - the budget, in any shape `ModelBudget.resolve/1`
      accepts; `:auto` is resolved once, here. Defaults to `:infinity`.
    * `:backend` - a module implementing `ModelBudget.Backend`. Defaults to
      `ModelBudget.Backend.default/0`, admission control only.
    * `:models` - `[{id, source}]` or `[{id, source, opts}]`, loaded one after
      another with `load/4` once the manager is running, so a slow load does
      not hold up the supervisor. Failures are logged and do not stop the
      manager or the models after them. Defaults to `[]`.
    * `:catalog` - models known by id and loaded on demand, in the same
      shape as `:models` (load options such as `:keep_alive` and `:pinned`
      included): `checkout/3` and `with_model/4` load one that is not loaded
      by its id alone. An id given twice raises. Defaults to `[]`.
    * `:evict_when` - rules, combined with OR, that make room by evicting
      idle models before a load (see "Eviction" above for the variables);
      `[]` evicts only what a load needs to fit. Defaults to
      `["memory_required > available * 0.70"]`.
    * `:min_idle_ms` - models admitted, loaded, checked in or touched within this many
      milliseconds are not evicted; `:infinity` turns eviction off (a load
      that does not fit is refused). Defaults to `0`.
    * `:clock` - a function of no arguments returning the time in
      milliseconds, for `:keep_alive`, `:min_idle_ms` and `info/2`'s
      `:last_used` (tests pass their own). Defaults to
      `System.monotonic_time(:millisecond)`.
    * `:sweep_ms` - how often the manager sweeps (see `sweep/1`): unloads
      models whose keep-alive ran out. Defaults to `1000`.
    * `:history_limit` - how many ids that are no longer loaded keep their
      `:loads` and `:evictions` counts (the most recently unloaded ones), so
      the table stays bounded with ever new ids; `:infinity` keeps all.
      Defaults to `10_000`.
    * `:name` - any `GenServer` name (an atom, `{:global, term}`,
      `{:via, module, term}`). Defaults to no name.
    * `:cluster` - the name (any term) of a cluster of managers to join
      (see "Several machines" in the README): the manager announces itself
      on its node with this name, its labels, budget and backend, and the
      `:model_budget` application there makes it a member, which follows
      its usage through `subscribe/1` and publishes it to every connected
      node, until the manager stops or its node goes down. Needs the
      application started on the node. Defaults to none.
    * `:labels` - a map of terms describing the manager in its cluster
      (`%{gpu: "h100", zone: "a"}`), which a cluster's loads can select
      members by (their `:where` option). Defaults to `%{}`.
    * `:priority` - the manager process's priority, `:normal` or `:high`.
      Every load, unload and fence waits on this one process; at `:high`
      it runs ahead of normal processes whenever it has work, which admits
      more loads a second when many callers load at once (bench/RESULTS.md),
      at the expense of what else runs then, leases included. Each of its
      steps is short and never blocks (backends load and unload in tasks,
      at normal priority), so it cannot take a scheduler for itself but
      while callers keep it busy. Defaults to `:normal`.

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
    config = Options.start!(opts)

    if config.cluster != nil and not Directory.running?() do
      raise ArgumentError,
            "invalid option :cluster: the :model_budget application is not started on " <>
              "#{inspect(node())}, so #{inspect(config.cluster)} cannot be joined"
    end

    gen_opts = if config.name, do: [name: config.name], else: []
    spawn_opt = [priority: config.priority] ++ @spawn_opt
    GenServer.start_link(__MODULE__, config, [spawn_opt: spawn_opt] ++ gen_opts)
  end

  @doc """
  Loads model `id` from `source` through the backend, if its placement fits.

  Idle models may be evicted first to make room (see "Eviction" above).
  Blocks until they are unloaded and the backend's load has finished (the
  backend's load has no timeout; run it in a task and shut the task down to
  give up: the load is then cancelled). With `:timeout`, a load that does
  not fit yet waits for room first (see "Loads that wait" above). Returns `{:ok, info}` with the model `:ready` and
  `info.evicted` the ids evicted for it, or `{:error, reason}`:

    * `:already_loaded` - `id` is loading, loaded or unloading.
    * `{:insufficient_memory, [device: d, required: r, available: a]}` -
      `ModelBudget.check/3`'s refusal, against everything held or reserved
      (and the loads waiting before it), when evicting every idle model
      would not make room; nothing was evicted. With a `:timeout`, at the
      deadline; at once when the load would not fit even with every unpinned
      model gone.
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
      Under a budget whose VRAM is `:auto` (`memory_budget: :auto`, or
      `vram: :auto`) there is room only on the GPUs found: more raises
      `ArgumentError` naming both numbers (so do `:main_gpu` and
      `:tensor_split` beyond them). A per-device budget that names its GPUs
      plans for them whatever this machine has.
    * `:pinned` - keeps the model resident: it is never evicted (an
      explicit `unload/2` or its `:keep_alive` still unloads it). Defaults
      to `false`.
    * `:keep_alive` - milliseconds, or `:infinity`: once the model has had
      no lease (and no touch) for that long, the manager unloads it, logs
      why and counts it in `stats/1`'s `:expired`; checked every
      `:sweep_ms`. Defaults to `:infinity`.
    * `:timeout` - milliseconds, or `:infinity`, that a load which does not
      fit may wait for room (leases ending, keep-alives running out,
      unloads finishing). Defaults to `0`: refused at once.
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
    Options.load!(opts)
    args = [manager, id, source, opts]
    config = config!(manager, :load, args)

    with {:ok, request} <- sized_request(config, args) do
      GenServer.call(manager, {__MODULE__, :load, request}, :infinity)
    end
  end

  # load/4's request, sized and placed in the caller: `:already_loaded`
  # when the id is known, a backend's refusal to size the source.
  defp sized_request(config, [_manager, id, source, opts] = args) do
    if read(config, :load, args, &Table.member?(&1, id)) do
      {:error, :already_loaded}
    else
      with {:ok, size} <- footprint(config.backend, source, opts) do
        opts = if config.estimate?, do: config.backend.estimate_options(opts), else: opts
        n_gpus = Options.n_gpus!(config, opts)
        {placement, breakdown} = Entry.place(size, Options.placement(opts), n_gpus)
        {:ok, load_request(config, id, source, opts, {size, placement, breakdown})}
      end
    end
  end

  @doc false
  # load/4 past its checks, sizing and placement, for a caller on this node
  # that did them already (a cluster's load, which sized and placed it to
  # choose this manager). The call exits after
  # `call_timeout` (the cluster then unloads what may still be admitted).
  @spec load_placed(
          manager(),
          id(),
          term(),
          keyword(),
          {term(), ModelBudget.placement()},
          timeout()
        ) ::
          {:ok, info()} | {:error, load_error()}
  def load_placed(manager, id, source, opts, sized, call_timeout) do
    config = config!(manager, :load, [manager, id, source, opts], false)
    request = load_request(config, id, source, opts, sized)
    GenServer.call(manager, {__MODULE__, :load, request}, call_timeout)
  end

  @doc false
  # What a load asks of the manager. The caller makes the model's lease gate
  # (a NIF resource, the dearest piece of an admission) so that the manager,
  # which admits one load at a time, does not; a refused load's gate is
  # garbage. `:manager` says whose gate it is: a manager that restarted
  # since makes its own.
  # `sized` is the footprint and its placement, and the model's breakdown
  # where the caller made one (the decision the backend load receives).
  @spec load_request(
          map(),
          id(),
          term(),
          keyword(),
          {term(), ModelBudget.placement()}
          | {term(), ModelBudget.placement(), ModelBudget.breakdown() | nil}
        ) :: map()
  def load_request(config, id, source, opts, {size, placement}),
    do: load_request(config, id, source, opts, {size, placement, nil})

  def load_request(config, id, source, opts, {size, placement, breakdown}) do
    %{
      id: id,
      source: source,
      opts: opts,
      bytes: if(is_integer(size), do: size, else: size.weight_bytes),
      placement: placement,
      breakdown: breakdown,
      manager: config.manager,
      gate: Leases.new_gate(config.flags, config.manager, config.clock.())
    }
  end

  @doc """
  Unloads model `id` and frees its share of the budget.

  Closes the model to new leases (`checkout/2` answers `:not_loaded`, and
  `info/2` shows it `:unloading`), waits for its leases to end, then
  unloads it through the backend and returns once that has finished, with
  the memory released: `:ok`, or `{:error, :not_loaded}`. Unloading a model
  that is still loading cancels the load (its caller gets
  `{:error, {:load_failed, :cancelled}}`). A backend unload that crashes is
  logged; the memory is released anyway.

  ## Options

    * `:timeout` - how long to wait for the leases to end, in milliseconds
      or `:infinity`; then this call returns `{:error, :busy}` and, unless
      another `unload/3` still waits, the model serves again. Once the
      backend's unload has started it is always waited for. Defaults to
      `:infinity`.
    * `:force` - unload at once, ending every lease (their checkins do
      nothing). Defaults to `false`.

  ## Examples

      iex> {:ok, manager} = ModelBudget.ModelManager.start_link(memory_budget: 1_000)
      iex> {:ok, _} = ModelBudget.ModelManager.load(manager, :a, {:bytes, 600}, mode: :direct)
      iex> {:ok, lease} = ModelBudget.ModelManager.checkout(manager, :a)
      iex> ModelBudget.ModelManager.unload(manager, :a, timeout: 0)
      {:error, :busy}
      iex> :ok = ModelBudget.ModelManager.checkin(manager, lease)
      iex> ModelBudget.ModelManager.unload(manager, :a)
      :ok
      iex> ModelBudget.ModelManager.usage(manager)
      %{ram: 0, vram: %{}}
      iex> ModelBudget.ModelManager.unload(manager, :a)
      {:error, :not_loaded}
  """
  @spec unload(manager(), id(), keyword()) :: :ok | {:error, :not_loaded | :busy}
  def unload(manager, id, opts \\ []) do
    opts = Options.unload!(opts)
    GenServer.call(manager, {__MODULE__, :unload, id, opts}, :infinity)
  end

  @doc """
  Takes a lease on model `id`: `{:ok, lease}` while it is ready, else
  `{:error, :not_loaded}` (also while it is loading or unloading).

  The model is not evicted or unloaded (but by `unload/3` with
  `force: true`) until the lease ends: at `checkin/2`, or when no process
  holds it any more (the calling process exits, say). No message goes to
  the manager (see "Leases" above).

  ## Examples

      iex> {:ok, manager} = ModelBudget.ModelManager.start_link([])
      iex> {:ok, _} = ModelBudget.ModelManager.load(manager, :a, {:bytes, 10})
      iex> {:ok, lease} = ModelBudget.ModelManager.checkout(manager, :a)
      iex> ModelBudget.ModelManager.info(manager, :a) |> elem(1) |> Map.fetch!(:leases)
      1
      iex> ModelBudget.ModelManager.checkin(manager, lease)
      :ok
      iex> ModelBudget.ModelManager.checkout(manager, :b)
      {:error, :not_loaded}
  """
  @spec checkout(manager(), id()) :: {:ok, lease()} | {:error, :not_loaded}
  def checkout(manager, id) do
    args = [manager, id]
    config = config!(manager, :checkout, args, false)

    # A lease found proves the manager alive (the gate's NIF looks it up in
    # the process table); only a miss is checked (the request path's most
    # frequent call).
    with {:error, :not_loaded} = missing <- Leases.checkout(config, id) do
      alive!(config, :checkout, args)
      missing
    end
  end

  @doc """
  Takes a lease on model `id`, loading it first when it is not loaded:
  `{:ok, lease}` once it is ready, with no moment between its load and the
  lease in which another load could evict it.

  Without `:load`, a model of the manager's `:catalog` is loaded from its
  catalog entry, the way llama-swap's config and Ollama's names work; an id
  in neither answers `{:error, :not_loaded}` as `checkout/2` does.

  A model that is loading (another caller's load) is waited for, and a load
  that does not fit waits for room (as `load/4` with `:timeout`), both up to
  `:timeout`: then `{:error, :timeout}` (or the load's own
  `{:error, {:insufficient_memory, ...}}`). A load that fails answers as
  `load/4` does. Loads with the same id from many callers at once load it
  once; each gets its own lease.

  ## Options

    * `:load` - `{source, opts}`: what `load/4` takes, used when the model is
      not loaded. Defaults to the `:catalog` entry of `id`, if any.
    * `:timeout` - milliseconds, or `:infinity`, to wait for a load in
      progress or for room. Defaults to `:infinity`.

  ## Examples

      iex> {:ok, manager} = ModelBudget.ModelManager.start_link(memory_budget: 1_000)
      iex> {:ok, lease} = ModelBudget.ModelManager.checkout(manager, :a, load: {{:bytes, 600}, mode: :direct})
      iex> ModelBudget.ModelManager.info(manager, :a) |> elem(1) |> Map.take([:status, :leases])
      %{leases: 1, status: :ready}
      iex> :ok = ModelBudget.ModelManager.checkin(manager, lease)
      iex> ModelBudget.ModelManager.checkout(manager, :b, [])
      {:error, :not_loaded}
  """
  @spec checkout(manager(), id(), keyword()) ::
          {:ok, lease()} | {:error, :not_loaded | :timeout | load_error()}
  def checkout(manager, id, opts) do
    checked = Options.checkout!(opts)
    args = [manager, id, opts]
    config = config!(manager, :checkout, args)

    case checked.load || Map.get(config.catalog, id) do
      nil -> checkout(manager, id)
      {source, load_opts} -> load_and_lease(config, args, source, load_opts, deadline(checked))
    end
  end

  defp deadline(%{timeout: :infinity}), do: :infinity
  defp deadline(%{timeout: ms}), do: System.monotonic_time(:millisecond) + ms

  defp remaining(:infinity), do: :infinity
  defp remaining(deadline), do: max(deadline - System.monotonic_time(:millisecond), 0)

  # A lease if it is open, else our own load with a lease reserved on its
  # gate before the manager sees it; another caller's load is waited for.
  defp load_and_lease(config, [manager, id, _] = args, source, load_opts, deadline) do
    with {:error, :not_loaded} <- Leases.checkout(config, id) do
      load_opts = Keyword.put(load_opts, :timeout, remaining(deadline))

      case sized_request(config, [manager, id, source, load_opts]) do
        {:ok, request} ->
          {:ok, lease} = Leases.reserve(config, id, request.gate)

          case GenServer.call(manager, {__MODULE__, :load, request}, :infinity) do
            {:ok, _info} ->
              {:ok, lease}

            {:error, :already_loaded} ->
              Leases.checkin(lease)
              await_load(config, args, source, load_opts, deadline)

            error ->
              Leases.checkin(lease)
              error
          end

        {:error, :already_loaded} ->
          await_load(config, args, source, load_opts, deadline)

        error ->
          error
      end
    end
  end

  # Someone else's load of `id` is under way: poll until it opens (lease
  # it), goes away (load it ourselves) or the deadline passes.
  defp await_load(config, [_, id, _] = args, source, load_opts, deadline, wait \\ 1) do
    case Leases.checkout(config, id) do
      {:ok, _} = leased ->
        leased

      {:error, :not_loaded} ->
        cond do
          not read(config, :checkout, args, &Table.member?(&1, id)) ->
            load_and_lease(config, args, source, load_opts, deadline)

          remaining(deadline) == 0 ->
            {:error, :timeout}

          true ->
            receive do
            after
              min(wait, remaining(deadline)) -> :ok
            end

            await_load(config, args, source, load_opts, deadline, min(wait * 2, 50))
        end
    end
  end

  @doc """
  Ends a lease from `checkout/2` (from any process); returns `:ok`. A lease
  already ended (checked in, or ended by a forced unload) is left alone.
  `manager` must be the manager that gave the lease.
  """
  @spec checkin(manager(), lease()) :: :ok
  def checkin(_manager, %Lease{} = lease), do: Leases.checkin(lease)

  def checkin(_manager, lease),
    do:
      raise(
        ArgumentError,
        "invalid lease: expected a lease from checkout/2, got: #{inspect(lease)}"
      )

  @doc """
  Runs `fun.(info)` under a lease on model `id` (`info` as `info/2` gives
  it) and returns `{:ok, result}`, or `checkout/2`'s `{:error, :not_loaded}`
  without calling `fun`. The lease ends when `fun` returns, raises, throws
  or exits; the raise (throw, exit) then goes on to the caller.

  ## Examples

      iex> {:ok, manager} = ModelBudget.ModelManager.start_link([])
      iex> {:ok, _} = ModelBudget.ModelManager.load(manager, :a, {:bytes, 10})
      iex> ModelBudget.ModelManager.with_model(manager, :a, fn info -> {info.id, info.leases} end)
      {:ok, {:a, 1}}
      iex> ModelBudget.ModelManager.with_model(manager, :b, fn _ -> :never end)
      {:error, :not_loaded}
  """
  @spec with_model(manager(), id(), (info() -> result)) :: {:ok, result} | {:error, :not_loaded}
        when result: term()
  def with_model(manager, id, fun) when is_function(fun, 1),
    do: under_lease(checkout(manager, id), manager, id, fun)

  def with_model(_manager, _id, fun),
    do: raise(ArgumentError, "invalid fun: expected a function of arity 1, got: #{inspect(fun)}")

  @doc """
  `with_model/3` with `checkout/3`'s options: loads model `id` first when
  it is not loaded (from `:load` or the `:catalog`), then runs `fun.(info)`
  under the lease.

  ## Examples

      iex> {:ok, manager} = ModelBudget.ModelManager.start_link(catalog: [{:a, {:bytes, 10}}])
      iex> ModelBudget.ModelManager.with_model(manager, :a, [], fn info -> {info.status, info.leases} end)
      {:ok, {:ready, 1}}
  """
  @spec with_model(manager(), id(), keyword(), (info() -> result)) ::
          {:ok, result} | {:error, :not_loaded | :timeout | load_error()}
        when result: term()
  def with_model(manager, id, opts, fun) when is_function(fun, 1),
    do: under_lease(checkout(manager, id, opts), manager, id, fun)

  def with_model(_manager, _id, _opts, fun),
    do: raise(ArgumentError, "invalid fun: expected a function of arity 1, got: #{inspect(fun)}")

  # `fun.(info)` under the lease a checkout took, which ends however `fun` does.
  defp under_lease({:ok, lease}, manager, id, fun) do
    config = config!(manager, :with_model, [manager, id, fun])
    {:ok, info} = info_of(config, id)
    {:ok, fun.(info)}
  after
    Leases.checkin(lease)
  end

  defp under_lease(refused, _manager, _id, _fun), do: refused

  @doc """
  Marks model `id` as used now, for the least-recently-used order and the
  keep-alive, without a lease and without a message to the manager.

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
  def touch(manager, id) do
    args = [manager, id]
    config = config!(manager, :touch, args)
    read(config, :touch, args, fn _table -> Leases.touch(config, id) end)
  end

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

    GenServer.call(manager, {__MODULE__, :fence, placement}, :infinity)
  end

  @doc """
  Runs the manager's periodic sweep now, and returns once it is done:
  models whose `:keep_alive` ran out (by the `:clock`) are unloaded (returns before their backend unloads
  finish). The manager also sweeps every `:sweep_ms` by itself.

  ## Examples

      iex> {:ok, manager} = ModelBudget.ModelManager.start_link([])
      iex> {:ok, _} = ModelBudget.ModelManager.load(manager, :a, {:bytes, 1}, keep_alive: 0)
      iex> ModelBudget.ModelManager.sweep(manager)
      :ok
      iex> ModelBudget.ModelManager.stats(manager).expired
      1
  """
  @spec sweep(manager()) :: :ok
  def sweep(manager), do: GenServer.call(manager, {__MODULE__, :sweep}, :infinity)

  @doc """
  The manager's totals since it started (see `t:stats/0`), read without
  calling the manager.

  ## Examples

      iex> {:ok, manager} = ModelBudget.ModelManager.start_link(memory_budget: 1_000)
      iex> {:ok, _} = ModelBudget.ModelManager.load(manager, :a, {:bytes, 600}, mode: :direct, n_gpus: 0)
      iex> {:ok, _} = ModelBudget.ModelManager.load(manager, :b, {:bytes, 600}, mode: :direct, n_gpus: 0)
      iex> ModelBudget.ModelManager.stats(manager)
      %{loads: 2, evictions: 1, refused: 0, fences: 0, expired: 0, raised: 0, max_estimate_error: 0}
  """
  @spec stats(manager()) :: stats()
  def stats(manager) do
    args = [manager]
    read(config!(manager, :stats, args), :stats, args, &Table.stats/1)
  end

  @doc """
  The entry of model `id` (see `t:info/0`), read without calling the manager.

  ## Examples

      iex> {:ok, manager} = ModelBudget.ModelManager.start_link([])
      iex> {:ok, _} = ModelBudget.ModelManager.load(manager, :a, {:bytes, 10}, mode: :direct, n_gpus: 0)
      iex> {:ok, %{id: :a, status: :ready, bytes: 10, leases: 0, placement: %{ram: 10, vram: %{}}}} =
      ...>   ModelBudget.ModelManager.info(manager, :a)
      iex> ModelBudget.ModelManager.info(manager, :b)
      {:error, :not_loaded}
  """
  @spec info(manager(), id()) :: {:ok, info()} | {:error, :not_loaded}
  def info(manager, id), do: info_of(config!(manager, :info, [manager, id]), id)

  defp info_of(config, id) do
    case read(config, :info, [config.manager, id], &Table.info(&1, id)) do
      {:ok, info} -> {:ok, Lifecycle.view(config, info)}
      :error -> {:error, :not_loaded}
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
    config = config!(manager, :list, args)

    config
    |> read(:list, args, &Table.infos/1)
    |> Enum.map(&Lifecycle.view(config, &1))
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
    read(config!(manager, :usage, args), :usage, args, &Table.usage/1)
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

  @doc """
  Subscribes the calling process to the usage of `manager` (see `usage/1`):
  returns the usage now, and from then on, after every step of the manager
  that changes it (an admission, a load that fails, an unload, an eviction,
  a raise to what a backend measured, ...), sends the caller

      {ModelBudget.ModelManager, :usage, manager_pid, usage}

  with the usage after that step, in the order of the changes. Steps that
  leave the usage as it was send nothing. The subscription lasts until
  `unsubscribe/1` or the caller's exit (the manager monitors it); a second
  subscribe by the same process changes nothing. The subscriber may be on
  any node; monitor the manager to hear when it stops, as no message says
  so. Like `load/4`, it waits for the manager's answer without a timeout
  (the manager answers between its steps, which never block).

  ## Examples

      iex> {:ok, manager} = ModelBudget.ModelManager.start_link([])
      iex> ModelBudget.ModelManager.subscribe(manager)
      {:ok, %{ram: 0, vram: %{}}}
      iex> {:ok, _} = ModelBudget.ModelManager.load(manager, :a, {:bytes, 10}, mode: :direct, n_gpus: 0)
      iex> receive do
      ...>   {ModelBudget.ModelManager, :usage, ^manager, usage} -> usage
      ...> end
      %{ram: 10, vram: %{}}
  """
  @spec subscribe(manager()) :: {:ok, ModelBudget.placement()}
  def subscribe(manager),
    do: GenServer.call(manager, {__MODULE__, :subscribe, self()}, :infinity)

  @doc """
  Ends the calling process's subscription to `manager` (see `subscribe/1`);
  returns `:ok`, subscribed or not. Messages sent before it stay in the
  caller's mailbox.

  ## Examples

      iex> {:ok, manager} = ModelBudget.ModelManager.start_link([])
      iex> {:ok, _usage} = ModelBudget.ModelManager.subscribe(manager)
      iex> ModelBudget.ModelManager.unsubscribe(manager)
      :ok
  """
  @spec unsubscribe(manager()) :: :ok
  def unsubscribe(manager),
    do: GenServer.call(manager, {__MODULE__, :unsubscribe, self()}, :infinity)

  ## Client helpers

  # The manager's fixed settings and tables live in a persistent term keyed
  # by its pid: managers have no fixed names, and reads must not call them.
  # `checked?` false leaves the manager's liveness to the caller.
  defp config!(manager, fun, args, checked? \\ true) do
    pid = GenServer.whereis(manager)

    if is_pid(pid) and node(pid) == node() do
      case :persistent_term.get({__MODULE__, pid}, nil) do
        # Named but still in init/1 (a restart, say), or gone: ask it like
        # a call, which waits or exits.
        nil -> initialized_config!(pid, fun, args)
        config when checked? -> alive!(config, fun, args)
        config -> config
      end
    else
      exit({:noproc, {__MODULE__, fun, args}})
    end
  end

  # A manager that died leaves its config until its watcher erases it; its
  # tables go with it, before its monitors fire. Checked on the table, not
  # with Process.alive?/1: that is a signal to the manager and back (OTP 21
  # and later), a round trip the request path must not wait on.
  defp alive!(config, fun, args) do
    if :ets.info(config.table, :owner) == config.manager,
      do: config,
      else: exit({:noproc, {__MODULE__, fun, args}})
  end

  defp initialized_config!(pid, fun, args) do
    GenServer.call(pid, {__MODULE__, :config})
  catch
    :exit, {reason, _} -> exit({reason, {__MODULE__, fun, args}})
  end

  # The tables disappear with their owner; a read racing the manager's death
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

  ## Server

  @impl true
  def init(config) do
    # terminate/2 runs at a supervisor's shutdown too: it unloads in order.
    Process.flag(:trap_exit, true)
    {:ok, task_sup} = Task.Supervisor.start_link()
    table = Table.new()
    flags = Leases.new_flags()

    shared = %{
      manager: self(),
      table: table,
      flags: flags,
      clock: config.clock,
      lease_clock: Leases.lease_clock(config.clock),
      budget: config.budget,
      backend: config.backend,
      n_gpus: default_gpu_count(config.budget),
      gpu_limit: config.gpu_limit,
      catalog: config.catalog,
      # Asked once: whether the backend refines the estimator's options.
      estimate?: Options.estimates?(config.backend)
    }

    publish_config(shared)

    # Announced after the config is published: whoever makes it a member of
    # its cluster reads it like any manager.
    if config.cluster != nil, do: announce(config, shared)

    if config.models != [] do
      manager = self()
      Task.Supervisor.start_child(task_sup, fn -> load_at_start(manager, config.models) end)
    end

    schedule_sweep(config.sweep_ms)

    {:ok,
     %Lifecycle{
       name: config.name,
       table: table,
       flags: flags,
       task_sup: task_sup,
       backend: config.backend,
       inline: ModelBudget.Backend.loads_inline?(config.backend),
       clock: config.clock,
       sweep_ms: config.sweep_ms,
       ledger: Ledger.new(config.budget, config.rules, config.min_idle_ms),
       history: History.new(config.history_limit),
       subscribers: Subscribers.new(ModelBudget.empty_usage())
     }}
  end

  defp announce(config, shared) do
    Directory.announce(%{
      cluster: config.cluster,
      labels: config.labels,
      budget: shared.budget,
      backend: shared.backend,
      n_gpus: shared.n_gpus
    })
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

  defp schedule_sweep(ms), do: Process.send_after(self(), {__MODULE__, :sweep}, ms)

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
  def handle_call({__MODULE__, :load, request}, from, state),
    do: {:noreply, settled(Lifecycle.load(state, request, from))}

  def handle_call({__MODULE__, :unload, id, opts}, from, state),
    do: {:noreply, settled(Lifecycle.unload(state, id, opts, from))}

  def handle_call({__MODULE__, :fence, placement}, from, state),
    do: {:noreply, settled(Lifecycle.fence(state, placement, from))}

  def handle_call({__MODULE__, :sweep}, _from, state),
    do: {:reply, :ok, settled(Lifecycle.sweep(state))}

  def handle_call({__MODULE__, :subscribe, pid}, _from, state) do
    subscribers = Subscribers.add(state.subscribers, pid)
    {:reply, {:ok, state.ledger.usage}, %{state | subscribers: subscribers}}
  end

  def handle_call({__MODULE__, :unsubscribe, pid}, _from, state),
    do: {:reply, :ok, %{state | subscribers: Subscribers.remove(state.subscribers, pid)}}

  def handle_call({__MODULE__, :config}, _from, state),
    do: {:reply, :persistent_term.get({__MODULE__, self()}), state}

  def handle_call(request, from, state) do
    Logger.warning(
      "#{inspect(__MODULE__)} #{inspect(state.name || self())} got an unexpected call " <>
        "#{inspect(request)} from #{inspect(from)}"
    )

    {:reply, {:error, :unexpected_call}, state}
  end

  @impl true
  # Task replies (loads and unloads): {task_ref, result}.
  def handle_info({ref, result}, state) when is_reference(ref) do
    case Effects.down(state, ref) do
      {{:load, id}, state} ->
        Process.demonitor(ref, [:flush])
        {:noreply, settled(Lifecycle.finished_load(state, id, {:ok, result}))}

      {{:unload, id}, state} ->
        Process.demonitor(ref, [:flush])
        {:noreply, settled(Lifecycle.finished_unload(state, id, {:ok, result}))}

      {nil, _} ->
        unexpected(state, "reply", {ref, result})
    end
  end

  def handle_info({:DOWN, ref, :process, _pid, reason} = message, state) do
    {watched, state} = Effects.down(state, ref)

    case watched do
      {:load, id} ->
        {:noreply, settled(Lifecycle.finished_load(state, id, {:exit, reason}))}

      {:unload, id} ->
        {:noreply, settled(Lifecycle.finished_unload(state, id, {:exit, reason}))}

      {:caller, id} ->
        entry = Ledger.fetch!(state.ledger, id)
        {:noreply, settled(Lifecycle.cancel_load(state, entry, []))}

      {:waiter, waiter} ->
        {:noreply, settled(Lifecycle.waiter_died(state, waiter))}

      {:handle, id} ->
        {:noreply, settled(Lifecycle.handle_died(state, id, reason))}

      nil ->
        case Subscribers.down(state.subscribers, ref) do
          {:ok, subscribers} -> {:noreply, %{state | subscribers: subscribers}}
          :error -> unexpected(state, "message", message)
        end
    end
  end

  def handle_info({__MODULE__, :lease_ended, inc}, state),
    do: {:noreply, settled(Lifecycle.lease_ended(state, inc))}

  def handle_info({__MODULE__, :sweep}, state) do
    schedule_sweep(state.sweep_ms)
    {:noreply, settled(Lifecycle.sweep(state))}
  end

  def handle_info({:timeout, _timer, {__MODULE__, {:unload_timeout, _, _} = timer}}, state),
    do: {:noreply, settled(Lifecycle.unload_timeout(state, timer))}

  def handle_info({:timeout, _timer, {__MODULE__, {:load_timeout, ref}}}, state),
    do: {:noreply, settled(Lifecycle.load_timeout(state, ref))}

  # Its task supervisor is linked: without it no load or unload can run.
  def handle_info({:EXIT, pid, reason}, %Lifecycle{task_sup: pid} = state),
    do: {:stop, reason, state}

  def handle_info(message, state), do: unexpected(state, "message", message)

  # The end of every step that may change the ledger: waiting loads admitted
  # where they now fit, then the usage published to the subscribers if it
  # changed.
  defp settled(state) do
    state = Lifecycle.settle(state)
    %{state | subscribers: Subscribers.publish(state.subscribers, state.ledger.usage)}
  end

  # A clean stop (or a crash) unloads what the manager holds, most recently
  # loaded first, so nothing it started outlives it unaccounted for. A
  # `:kill` skips this: the backends' own processes watch the manager.
  @impl true
  def terminate(_reason, %Lifecycle{} = state) do
    state.ledger.entries
    |> Map.values()
    |> Enum.filter(&(&1.status == :ready and &1.handle != nil))
    # A gate's incarnation grows with each admission.
    |> Enum.sort_by(&elem(&1.gate, 0), :desc)
    |> Enum.each(&terminate_unload(state.backend, &1))
  end

  defp terminate_unload(backend, entry) do
    backend.unload(entry.handle)
  catch
    kind, reason ->
      Logger.warning(
        "#{inspect(__MODULE__)}: unloading #{inspect(entry.id)} at stop failed: " <>
          Exception.format(kind, reason)
      )
  end

  defp unexpected(state, what, message) do
    Logger.warning(
      "#{inspect(__MODULE__)} #{inspect(state.name || self())} got an unexpected #{what}: " <>
        inspect(message)
    )

    {:noreply, state}
  end
end
