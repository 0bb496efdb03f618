defmodule ModelBudget.ModelManager.Entry do
  @moduledoc false
  # One model in a manager's ledger, from admission until its memory is
  # released: what it is, what it holds, and what in the manager waits on it.
  # `info/1` is the public view (`t:ModelBudget.ModelManager.info/0`), less
  # the fields read live from the lease gate (:leases, :last_used).

  alias ModelBudget.ModelManager.Leases

  @enforce_keys [:id, :source, :opts, :placement, :bytes, :gate]
  defstruct [
    :id,
    :source,
    :opts,
    :placement,
    :bytes,
    :gate,
    breakdown: nil,
    status: :loading,
    held: nil,
    pinned: false,
    keep_alive: :infinity,
    handle: nil,
    measured: nil,
    loaded_at: nil,
    evicted: [],
    evicted_for: nil,
    awaiting: MapSet.new(),
    loads: 0,
    evictions: 0,
    caller: nil,
    running: false,
    unload_waiters: [],
    draining: false,
    cancelled: false
  ]

  @typedoc "What an evicted model's unload lets go on: a load (by id) or a fence (by ref)."
  @type evicted_for :: nil | {:load, term()} | {:fence, reference()}

  @typedoc """
  A caller of unload/3 waiting for the model to go, and its timeout
  timer's message (ModelManager.Effects keeps the timer by it), or nil.
  """
  @type unload_waiter :: {GenServer.from(), {:unload_timeout, term(), reference()} | nil}

  @typedoc """
  An entry. `:opts` are the load's options as the backend refined them,
  `:placement` what was admitted and `:breakdown` the model's parts where
  it was read (`place/3`): the decision its backend load receives
  (`decision/1`). `:held` is what it counts in the ledger: its placement, or less
  while a load that evicted it takes its memory over (the hand-over).
  `:awaiting` are the ids evicted for this load whose unloads have not
  returned; its backend load starts when it is empty. `:draining` is an
  unload waiting for the model's leases to end; `:cancelled` a load whose
  task was killed and whose outcome is not known yet.
  """
  @type t :: %__MODULE__{
          id: term(),
          status: :loading | :ready | :unloading,
          source: term(),
          opts: keyword(),
          placement: ModelBudget.placement(),
          held: ModelBudget.placement(),
          breakdown: ModelBudget.breakdown() | nil,
          bytes: non_neg_integer(),
          pinned: boolean(),
          keep_alive: non_neg_integer() | :infinity,
          gate: Leases.gate(),
          handle: term(),
          measured: map() | nil,
          loaded_at: integer() | nil,
          evicted: [term()],
          evicted_for: evicted_for(),
          awaiting: MapSet.t(),
          loads: non_neg_integer(),
          evictions: non_neg_integer(),
          caller: GenServer.from() | nil,
          running: boolean(),
          unload_waiters: [unload_waiter()],
          draining: boolean(),
          cancelled: boolean()
        }

  @doc "A new entry for an admitted load of `caller`; it holds its placement."
  @spec new(map(), Leases.gate(), {non_neg_integer(), non_neg_integer()}, GenServer.from() | nil) ::
          t()
  def new(request, gate, {loads, evictions}, caller \\ nil) do
    %__MODULE__{
      id: request.id,
      source: request.source,
      opts: request.opts,
      placement: request.placement,
      held: request.placement,
      breakdown: Map.get(request, :breakdown),
      bytes: request.bytes,
      pinned: Keyword.get(request.opts, :pinned, false),
      keep_alive: Keyword.get(request.opts, :keep_alive, :infinity),
      gate: gate,
      loads: loads,
      evictions: evictions,
      caller: caller
    }
  end

  @doc """
  Places a load in its caller: `size` (a byte count, or a model read from
  its header) with the placement options `opts` on `n_gpus` GPUs. Returns
  `{placement, breakdown}`: a model's breakdown (`ModelBudget.breakdown/3`,
  one estimate) and the placement its totals make, exactly
  `ModelBudget.distribute/3`'s; `distribute/3`'s placement and `nil` for a
  byte count.
  """
  @spec place(non_neg_integer() | ModelBudget.Model.t(), keyword(), non_neg_integer()) ::
          {ModelBudget.placement(), ModelBudget.breakdown() | nil}
  def place(%ModelBudget.Model{} = model, opts, n_gpus) do
    breakdown = ModelBudget.breakdown(model, opts, n_gpus)
    vram = for {gpu, %{total: total}} <- breakdown.vram, total > 0, into: %{}, do: {gpu, total}
    {%{ram: breakdown.ram.total, vram: vram}, breakdown}
  end

  def place(bytes, opts, n_gpus), do: {ModelBudget.distribute(bytes, opts, n_gpus), nil}

  @doc "What the manager decided for the load of `entry` (`t:ModelBudget.Backend.decision/0`)."
  @spec decision(t()) :: ModelBudget.Backend.decision()
  def decision(%__MODULE__{} = e),
    do: %{placement: e.placement, breakdown: e.breakdown, opts: e.opts}

  @doc "The fields `info/2` shows that the manager keeps (see `t:ModelBudget.ModelManager.info/0`)."
  @spec info(t()) :: map()
  def info(%__MODULE__{} = e) do
    %{
      id: e.id,
      status: e.status,
      source: e.source,
      placement: e.placement,
      bytes: e.bytes,
      pinned: e.pinned,
      keep_alive: e.keep_alive,
      handle: e.handle,
      measured: e.measured,
      loaded_at: e.loaded_at,
      evicted: e.evicted,
      loads: e.loads,
      evictions: e.evictions,
      cpu_buffers: Keyword.get(e.opts, :cpu_buffers)
    }
  end
end
