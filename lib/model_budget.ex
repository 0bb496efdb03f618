defmodule ModelBudget do
  @moduledoc """
  Decides whether ML models fit in this machine's memory, where they go
  (RAM and each GPU), and whether a new placement fits next to what is
  already loaded.

  The arithmetic runs in Rust (a NIF); every function here is a plain
  function call. Byte counts are always integers.

  A typical flow: resolve the `:memory_budget` option once, place each model
  with `distribute/3`, admit it with `check/3`, and keep the running total
  with `fold/2` and `release/2`:

      iex> budget = ModelBudget.resolve(%{ram: 64 * 2**30, vram: [24 * 2**30]})
      iex> placement = ModelBudget.distribute(20 * 2**30, [mode: :direct], 1)
      iex> ModelBudget.check(budget, placement, ModelBudget.empty_usage())
      :ok
      iex> used = ModelBudget.fold(ModelBudget.empty_usage(), placement)
      iex> ModelBudget.check(budget, placement, used)
      {:error, {:insufficient_memory, [device: {:gpu, 0}, required: 21474836480, available: 4294967296]}}

  Bad input raises `ArgumentError` naming the argument and the value.
  """

  alias ModelBudget.Native
  require ModelBudget.Native.Errors, as: Errors

  @typedoc "A byte ceiling on one device."
  @type limit :: non_neg_integer() | :infinity

  @typedoc "Bytes in RAM and on each GPU, by CUDA index. GPUs holding nothing are absent."
  @type placement :: %{ram: non_neg_integer(), vram: %{non_neg_integer() => non_neg_integer()}}

  @typedoc "A resolved memory budget."
  @type budget ::
          %{mode: :unlimited}
          | %{mode: :combined, limit: pos_integer()}
          | %{
              mode: :per_device,
              ram: limit(),
              vram: :infinity | %{non_neg_integer() => limit()}
            }

  @typedoc "The device a failed check names: the combined pool, RAM, or one GPU."
  @type device :: :total | :ram | {:gpu, non_neg_integer()}

  @typedoc "Why a placement does not fit."
  @type insufficient ::
          {:insufficient_memory,
           [device: device(), required: non_neg_integer(), available: non_neg_integer()]}

  @typedoc """
  The `:memory_budget` option as a user writes it: `:infinity` or `nil`
  (no limit), a positive byte count (one pool of RAM plus all VRAM), `:auto`,
  or a map `%{ram: ram, vram: vram}` with a limit per device; a map with
  only one of the two leaves the other `:infinity`.
  """
  @type budget_option ::
          nil
          | :infinity
          | :auto
          | pos_integer()
          | %{
              optional(:ram) => non_neg_integer() | :infinity | nil | :auto,
              optional(:vram) =>
                :infinity
                | nil
                | :auto
                | [limit()]
                | %{non_neg_integer() => limit()}
            }

  @typedoc "A GPU as `devices/0` reports it."
  @type gpu :: %{
          gpu_index: non_neg_integer(),
          nvml_index: non_neg_integer(),
          name: String.t(),
          uuid: String.t(),
          memory_total: non_neg_integer(),
          memory_free: non_neg_integer(),
          memory_used: non_neg_integer()
        }

  @typedoc "A GPU as a device probe reports it; other keys are ignored."
  @type gpu_device :: %{
          required(:gpu_index) => non_neg_integer(),
          required(:memory_free) => non_neg_integer(),
          optional(atom()) => term()
        }

  @doc """
  Resolves a `:memory_budget` option into a `t:budget/0`, probing this
  machine for whatever the option leaves to `:auto`.

  Same as `resolve/2` with the GPUs `devices/0` reports, probed only when
  the option leaves VRAM to `:auto`. `:auto` RAM is 80% of
  `system_memory/0`'s `:limit` (the cgroup limit inside a container with
  one), read once and re-used until `refresh_devices/0`; so after the first
  call `resolve(:auto)` costs microseconds.

  ## Examples

      iex> ModelBudget.resolve(:infinity)
      %{mode: :unlimited}

      iex> ModelBudget.resolve(32 * 2**30)
      %{mode: :combined, limit: 34359738368}

      iex> %{mode: :per_device, ram: ram} = ModelBudget.resolve(:auto)
      iex> ram > 0
      true
  """
  @spec resolve(budget_option()) :: budget()
  def resolve(option), do: resolve_with(option, nil, nil)

  @doc """
  Resolves a `:memory_budget` option against `gpu_devices`, a list of maps
  with at least `:gpu_index` and `:memory_free` (the shape of
  `LlamaCppEx.devices/0`'s GPU entries), used for `:auto` VRAM.

    * `:infinity` or `nil` - `%{mode: :unlimited}`.
    * a positive integer `n` - `%{mode: :combined, limit: n}`: one pool for
      RAM and all VRAM together.
    * `:auto` - 80% of the memory this process may use for RAM, and each
      GPU's free memory for VRAM.
    * `%{ram: ram, vram: vram}` - a limit per device. `ram` is a byte count,
      `:infinity`, `nil` or `:auto`; `vram` is `:infinity`, `nil`, `:auto`, a
      list of limits indexed by GPU, or a map of GPU index to limit. GPUs the
      map does not name are unbounded. Either key may be left out: the
      missing one is `:infinity` (`%{vram: [24 * 2**30]}` limits GPU 0 only).

  ## Examples

      iex> gpus = [%{gpu_index: 0, memory_free: 20_000}, %{gpu_index: 1, memory_free: 10_000}]
      iex> ModelBudget.resolve(%{ram: 1_000_000, vram: :auto}, gpus)
      %{mode: :per_device, ram: 1000000, vram: %{0 => 20000, 1 => 10000}}

      iex> ModelBudget.resolve(%{ram: nil, vram: [100, :infinity]}, [])
      %{mode: :per_device, ram: :infinity, vram: %{0 => 100, 1 => :infinity}}

      iex> ModelBudget.resolve(%{vram: [100]}, [])
      %{mode: :per_device, ram: :infinity, vram: %{0 => 100}}

      iex> ModelBudget.resolve("8GB", [])
      ** (ArgumentError) invalid memory budget: expected :infinity, nil, :auto, a positive integer, or a map with :ram and :vram keys, got: "8GB"
  """
  @spec resolve(budget_option(), [gpu_device()]) :: budget()
  def resolve(option, gpu_devices), do: resolve_with(option, gpu_devices, nil)

  # Resolves with the GPUs and memory limit given (`nil`: probe them). The
  # NIF answers {:probe, what} when the option needs a probe the caller did
  # not supply and whose answer it does not know without blocking; probes
  # run on dirty schedulers, the resolve itself not. Probing GPUs fetches
  # the (cached) memory limit in the same trip.
  @doc false
  def resolve_with(option, gpus, ram_limit) do
    case Errors.call(Native.resolve(option, gpus, ram_limit)) do
      {:probe, :gpus} ->
        {gpus, limit} = Native.probe_machine(cuda_visible_devices())
        resolve_with(option, gpus, ram_limit || limit)

      {:probe, :ram} ->
        resolve_with(option, gpus, Native.memory_limit())

      budget ->
        budget
    end
  end

  @doc """
  The NVIDIA GPUs that CUDA programs started from this process would see,
  with their memory now, in CUDA's order. Suitable for `resolve/2`.

  Each GPU is a map with:

    * `:gpu_index` - the index CUDA programs (llama.cpp, PyTorch) use for
      it: its position in `CUDA_VISIBLE_DEVICES`, from 0, or NVML's index
      when the variable is unset.
    * `:nvml_index` - the index `nvidia-smi` shows, which ignores
      `CUDA_VISIBLE_DEVICES`.
    * `:name` - for example `"NVIDIA H100 80GB HBM3"`.
    * `:uuid` - `"GPU-..."`, as `nvidia-smi` shows it.
    * `:memory_total`, `:memory_free`, `:memory_used` - bytes, as
      `nvidia-smi` reports them (memory the driver reserves is neither free
      nor used). All three are `0` for a GPU that stopped answering after
      the probe started, so that `:auto` budgets give it nothing.

  `CUDA_VISIBLE_DEVICES` is read on every call with `System.get_env/1`
  (so `System.put_env/2` applies, as it does to programs started through
  ports) and applied as the CUDA driver applies it: the listed GPUs
  (indices, or `GPU-` UUIDs and unique prefixes of them) in the listed
  order; the first invalid entry hides itself and every entry after it, so
  `""` and `"-1"` hide every GPU; a GPU listed twice hides them all. NVML
  numbers GPUs in PCI bus order, which is CUDA's order for identical GPUs
  or with `CUDA_DEVICE_ORDER=PCI_BUS_ID`. MIG instances are not probed: a
  `MIG-` entry that names one hides it and the entries after it.

  The probe reads NVML (`libnvidia-ml.so.1`, loaded at run time) on a dirty
  I/O scheduler. NVML is started on the first call and re-used; without the
  NVIDIA driver this returns `[]` and `gpu_status/0` says why.

  ## Examples

      iex> gpus = ModelBudget.devices()
      iex> Enum.map(gpus, & &1.gpu_index) == Enum.to_list(0..(length(gpus) - 1)//1)
      true
      iex> %{mode: :per_device} = ModelBudget.resolve(%{ram: :infinity, vram: :auto}, gpus)
  """
  @spec devices() :: [gpu()]
  def devices, do: Native.devices(cuda_visible_devices())

  @doc """
  Whether GPUs can be probed: `{:ok, driver_version, count}` with the NVIDIA
  driver's version and the number of GPUs `devices/0` lists, or
  `{:unavailable, reason}` with a sentence saying why not: the library was
  not found (no driver installed), the kernel driver is not loaded, the
  driver and library versions differ, no permission to talk to the driver,
  the library is too old, or what NVML answered.

  A failed start is remembered (NVML is not retried on every call); call
  `refresh_devices/0` to try again.

  ## Examples

      iex> case ModelBudget.gpu_status() do
      ...>   {:ok, version, count} -> is_binary(version) and count == length(ModelBudget.devices())
      ...>   {:unavailable, reason} -> is_binary(reason) and ModelBudget.devices() == []
      ...> end
      true
  """
  @spec gpu_status() :: {:ok, String.t(), non_neg_integer()} | {:unavailable, String.t()}
  def gpu_status, do: Native.gpu_status(cuda_visible_devices())

  @doc """
  Starts NVML again and re-reads this machine's memory limit, then returns
  `gpu_status/0`'s answer. Use it after installing or loading the driver,
  after a failure `gpu_status/0` reported, or after a container's memory
  limit changed.

  ## Examples

      iex> ModelBudget.refresh_devices() == ModelBudget.gpu_status()
      true
  """
  @spec refresh_devices() :: {:ok, String.t(), non_neg_integer()} | {:unavailable, String.t()}
  def refresh_devices, do: Native.refresh_devices(cuda_visible_devices())

  # The VM's copy of the environment, which System.put_env/2 changes and
  # ports pass on to the CUDA programs they start.
  defp cuda_visible_devices, do: System.get_env("CUDA_VISIBLE_DEVICES")

  @doc """
  This machine's RAM in bytes: `:total` physical memory, `:available` for new
  allocations, and `:limit`, the smaller of physical memory and the cgroup
  (v1 or v2) memory limit when the process runs in a container with one.

  ## Examples

      iex> %{total: total, available: available, limit: limit} = ModelBudget.system_memory()
      iex> limit <= total and available <= total
      true
  """
  @spec system_memory() :: %{
          total: non_neg_integer(),
          available: non_neg_integer(),
          limit: non_neg_integer()
        }
  def system_memory, do: Native.system_memory()

  @doc """
  Spreads a model over RAM and `n_gpus` GPUs the way llama.cpp's load options
  would place it, returning a `t:placement/0`. Splits are exact: the per-GPU
  bytes always sum to the total (largest remainder).

  `model` is either a byte count or a `%ModelBudget.Model{}`:

    * **a byte count** (the file size) - a conservative estimate: any offload
      is charged as a full offload (it may refuse a load that would fit,
      never the reverse) and the KV cache is `n_ctx * kv_bytes_per_token`.
    * **a `%ModelBudget.Model{}`** (from `ModelBudget.Model.read/1`) - placed
      layer by layer as llama.cpp does: token embeddings stay in RAM; the
      output head counts as layer `n_layers` and `n_gpu_layers: k` offloads
      the last `k` of those `n_layers + 1` (the head first, `-1` means all);
      with mmap the host maps one range of the file, from its first tensor
      to its last that no extra CPU buffer takes; each
      offloaded block's KV cache sits with it (in RAM without
      `:offload_kqv`), sized from the real KV heads and head dimensions and
      the cache types, the slots and sliding windows; the weights the CPU
      copies into its extra buffers (`:cpu_buffers`), compute buffers, the logits output buffer, llama-server's
      prompt cache and `:gpu_overhead` are added. See `breakdown/3` for the
      parts. The defaults are llama-server's (build 11434).

  `opts` may be a caller's whole load options: unknown keys are ignored,
  known keys with bad values raise `ArgumentError`, and so does a key one or
  two edits from an option (`n_gpu_layer: 0`), naming the option it
  resembles, since a typo would otherwise silently change the placement.

  ## Options

    * `:mode` - `:server` adds the KV cache, `:direct` adds none.
      Defaults to `:server`.
    * `:n_gpu_layers` - `0` keeps everything in RAM; a negative value
      offloads everything. Defaults to `99`.
    * `:split_mode` - `:none` puts everything on `:main_gpu`; `:layer` gives
      each block to one GPU by the cumulative `:tensor_split` fractions;
      `:row` spreads each block's matrices over the GPUs by the fractions.
      Defaults to `:none`.
    * `:tensor_split` - non-negative weights per GPU (integers or floats);
      zeros and missing entries exclude a GPU; empty means an equal split.
      More entries than GPUs, or all zeros, is an error. Defaults to `[]`.
    * `:main_gpu` - the GPU for `split_mode: :none` (and the home of KV and
      compute for `:row`); must be below `n_gpus`. Defaults to `0`.
    * `:offload_kqv` - whether the KV cache sits on the GPU(s); when `false`
      it is charged to RAM. Defaults to `true`.
    * `:n_ctx` - context tokens in total, as llama.cpp's `-c`: the slots
      share them. Defaults to `32768` (4 slots of 8192) for a byte count and
      to the model's trained context for a model (llama-server's `-c 0`); a
      model's context is padded to 256, as llama.cpp does.
    * `:n_parallel` - slots (llama.cpp's `-np`). They divide `:n_ctx`; for a
      model they also size the output buffer and, with caches apart,
      sliding-window caches. Defaults to `4`, llama-server's automatic choice.

  Only for a byte count:

    * `:kv_bytes_per_token` - KV bytes per token. Defaults to `2048`.

  Only for a `%ModelBudget.Model{}`:

    * `:kv_unified` - whether the slots share one KV cache (`--kv-unified`);
      apart, each slot keeps `n_ctx / n_parallel` cells and its own sliding
      window. Defaults to `true`, as llama-server.
    * `:n_batch` - the logical batch (`--batch-size`); the compute buffer is
      sized for `min(n_ubatch, n_batch, n_ctx)` tokens. Defaults to `2048`.
    * `:cpu_buffers` - the runtime profile: which extra CPU buffers the
      llama.cpp build uses on this machine, each taking the weight matrices
      its kernels read into a host buffer of its own, in llama.cpp's order
      (`AMX`, then `KLEIDIAI`, then `CPU_REPACK`): `:x86_amx` (a native
      build on a CPU with AMX: Sapphire Rapids and later), `:x86_avx512`,
      `:x86_avx2` (also PyPI's generic x86-64 wheels, on any x86 CPU),
      `:arm_dotprod`, `:arm_kleidiai`, `:none` (`--no-repack`), or `:auto`
      (a native build on this machine's CPU; `ModelBudget.Backend.LlamaServer`
      asks its binary instead). Defaults to `:auto`.
    * `:repack` - the older name of `:cpu_buffers`: `true` is `:x86_avx2`,
      `false` is `:none`, and it takes `:cpu_buffers`'s values.
    * `:mmap` - whether the file is memory-mapped: mapped, the whole host
      part of the file counts and the extra buffers' copies come on top;
      loaded, they replace their original. Defaults to `true`.
    * `:cache_ram` - bytes of llama-server's prompt cache in RAM
      (`--cache-ram`, which fills while it serves), in `:server` mode.
      Defaults to `8589934592` (8192 MiB, llama-server's default); `0` for a
      program that is not llama-server.
    * `:cache_type_k`, `:cache_type_v` - KV element types such as `:f16`,
      `:q8_0` or `:q4_0` (all of them:
      `ModelBudget.LoadOptions.fetch!(:cache_type_k).choices`). Defaults to
      `:f16`.
    * `:n_ubatch` - micro-batch size that sizes compute buffers. Defaults to `512`.
    * `:flash_attn` - whether attention runs fused (smaller compute
      buffers). Defaults to `true` (llama.cpp's `auto` on a backend that has it).
    * `:gpu_overhead` - bytes added to each GPU that receives anything (the
      driver's context). Defaults to `536870912` (512 MiB).

  Each path ignores the other's options. The options, their values and
  defaults are one table in the core, `ModelBudget.LoadOptions.all/0`
  (`mix model_budget.plan --help` prints it).

  With `n_gpus` of `0` everything is charged to RAM.

  ## Examples

      iex> ModelBudget.distribute(1_000, [mode: :direct], 0)
      %{ram: 1000, vram: %{}}

      iex> ModelBudget.distribute(1_000, [mode: :direct, split_mode: :layer, tensor_split: [3, 1]], 2)
      %{ram: 0, vram: %{0 => 750, 1 => 250}}

      iex> ModelBudget.distribute(1_000, [n_ctx: 10, kv_bytes_per_token: 5, offload_kqv: false], 1)
      %{ram: 50, vram: %{0 => 1000}}

      iex> ModelBudget.distribute(1_000, [n_gpu_layer: 0], 1)
      ** (ArgumentError) invalid option :n_gpu_layer: no such option; did you mean :n_gpu_layers?

      iex> ModelBudget.distribute(1_000, [split_mode: :sideways], 1)
      ** (ArgumentError) invalid option :split_mode: expected :none, :layer or :row, got: :sideways
  """
  @spec distribute(non_neg_integer() | ModelBudget.Model.t(), keyword(), non_neg_integer()) ::
          placement()
  def distribute(model, opts, n_gpus)

  def distribute(%{__struct__: ModelBudget.Model} = model, opts, n_gpus),
    do: Errors.call(Native.distribute_model(model, opts, n_gpus))

  def distribute(file_bytes, opts, n_gpus) do
    Errors.call(Native.distribute(file_bytes, opts, n_gpus))
  end

  @doc """
  The runtime profile (`:cpu_buffers`) of a llama.cpp built for this
  machine's CPU (`GGML_NATIVE`, as `scripts/llama_server.sh` builds it):
  what `cpu_buffers: :auto` means without a binary to ask. A CPU with
  AMX-INT8 and AVX512-VNNI gives `:x86_amx`; then AVX-512, AVX2, Arm's
  dot product; else `:none`.

  ## Examples

      iex> ModelBudget.cpu_buffers() in [:none, :x86_avx2, :x86_avx512, :x86_amx, :arm_dotprod]
      true
  """
  @spec cpu_buffers() :: cpu_buffers()
  def cpu_buffers, do: Native.cpu_buffers_detect()

  @typedoc "One device's share of a model-aware placement, in bytes."
  @type share :: %{
          weights: non_neg_integer(),
          amx: non_neg_integer(),
          kleidiai: non_neg_integer(),
          repack: non_neg_integer(),
          kv_cache: non_neg_integer(),
          compute: non_neg_integer(),
          output: non_neg_integer(),
          prompt_cache: non_neg_integer(),
          overhead: non_neg_integer(),
          total: non_neg_integer()
        }

  @typedoc "A runtime profile: the extra CPU buffers a llama.cpp build uses."
  @type cpu_buffers :: :none | :x86_avx2 | :x86_avx512 | :x86_amx | :arm_dotprod | :arm_kleidiai

  @typedoc "Where a model goes, part by part, as `breakdown/3` returns it."
  @type breakdown :: %{
          n_ctx: pos_integer(),
          cpu_buffers: cpu_buffers(),
          ram: share(),
          vram: %{non_neg_integer() => share()}
        }

  @doc """
  The parts of `distribute/3`'s placement of `model` per device, each
  buffer llama.cpp allocates (the lines it logs at load), plus each device's
  `:total`, and the `:n_ctx` the KV cache was sized for (llama.cpp's: padded
  to 256, and a multiple of the slots when they keep caches apart), and the
  `:cpu_buffers` runtime profile it was sized for (`:auto` resolved). The
  totals are exactly `distribute/3`'s placement.

    * `:weights` - model weights; on the host with mmap, the mapped range.
    * `:amx` - weight matrices the CPU copies into its AMX layout (the
      `AMX` buffer; Q4_K, Q5_K and Q8_0 grow by 4/144, 4/176 and 4/34).
    * `:kleidiai` - the same for Arm's KleidiAI kernels (`KLEIDIAI`).
    * `:repack` - weight matrices the CPU copies into its repacked layout
      (llama.cpp's `CPU_REPACK` buffer). These three are on the host only;
      see `:cpu_buffers`.
    * `:kv_cache` - the KV cache of the blocks on that device.
    * `:compute` - the compute graph's buffer.
    * `:output` - logits of one token per slot (`n_parallel * n_vocab`
      floats, on the host).
    * `:prompt_cache` - llama-server's prompt cache at its limit
      (`:cache_ram`, host only, `:server` mode).
    * `:overhead` - `:gpu_overhead` on each GPU used.

  Compute buffers follow how llama.cpp reserves its worst-case graph: one
  micro-batch of `min(n_ubatch, n_batch, n_ctx)` tokens, with the graph
  allocator reusing freed memory, so a buffer is its largest stage (the
  feed-forward block, or attention without flash attention) plus the
  attention masks. The estimate is held to real llama.cpp on every recorded
  truth set (`test/fixtures/truth/`, one per machine and build: an AVX2 set
  of 102 cases and an AMX set of 28; `make calibrate` records one on this
  machine): weights, extra CPU buffers, KV and output exact, compute
  within 8%, totals within 0.4%.

  Takes the options of `distribute/3`.
  """
  @spec breakdown(ModelBudget.Model.t(), keyword(), non_neg_integer()) :: breakdown()
  def breakdown(model, opts, n_gpus), do: Errors.call(Native.breakdown(model, opts, n_gpus))

  @typedoc "A footprint estimate from `estimate/3`, in bytes."
  @type estimate :: %{
          total_system_bytes: non_neg_integer(),
          model_weight_bytes: non_neg_integer(),
          runtime_overhead: non_neg_integer(),
          available_bytes: non_neg_integer(),
          kv_cache_budget: non_neg_integer()
        }

  @doc """
  Estimates a model's footprint from its parameter count and bits per weight
  on a machine with `total_available_mib` MiB (oxibonsai's `MemoryBudget`,
  with checked integer arithmetic):

    * `:total_system_bytes` - `total_available_mib * 2^20`.
    * `:model_weight_bytes` - `model_params * bits_per_weight / 8`, rounded up.
    * `:runtime_overhead` - a tenth of the total, at most 256 MiB.
    * `:available_bytes` - what is left after both, never below 0.
    * `:kv_cache_budget` - 80% of `:available_bytes`.

  NaN, infinite, negative or zero bits, more than 64 bits, and results beyond
  2^64 bytes raise `ArgumentError`.

  ## Examples

      iex> ModelBudget.estimate(16_384, 8_000_000_000, 4.5)
      %{
        total_system_bytes: 17179869184,
        model_weight_bytes: 4500000000,
        runtime_overhead: 268435456,
        available_bytes: 12411433728,
        kv_cache_budget: 9929146982
      }

      iex> ModelBudget.estimate(16_384, 8_000_000_000, -4)
      ** (ArgumentError) invalid bits_per_weight: expected a number in (0, 64], got: -4.0
  """
  @spec estimate(non_neg_integer(), non_neg_integer(), number()) :: estimate()
  def estimate(total_available_mib, model_params, bits_per_weight),
    do: Errors.call(Native.estimate(total_available_mib, model_params, bits_per_weight))

  @doc """
  The largest context (tokens) whose KV cache fits in `bytes_or_estimate`: a
  byte count, or an `estimate/3` map (its `:kv_cache_budget`). Returns
  `:infinity` when every layer has a sliding window that fits.

  `model_or_dims` is a `%ModelBudget.Model{}` (KV heads per layer, both head
  dimensions and sliding windows are counted) or a keyword list `[n_layers:,
  n_head_kv:, head_dim:]` for a model whose layers are alike.

  ## Options

    * `:cache_type_k`, `:cache_type_v` - KV element types, as in
      `distribute/3`. Defaults to `:f16`.
    * `:n_ubatch` - a sliding-window layer keeps the window plus one
      micro-batch, padded to 256 cells. Defaults to `512`.

  ## Examples

      iex> ModelBudget.max_context_length(2**30, [n_layers: 32, n_head_kv: 8, head_dim: 128], [])
      8192

      iex> ModelBudget.max_context_length(2**30, [n_layers: 32, n_head_kv: 8, head_dim: 128], cache_type_k: :q8_0, cache_type_v: :q8_0)
      15360

      iex> est = ModelBudget.estimate(16_384, 8_000_000_000, 4.5)
      iex> ModelBudget.max_context_length(est, [n_layers: 32, n_head_kv: 8, head_dim: 128], [])
      75520
  """
  @spec max_context_length(
          non_neg_integer() | estimate(),
          ModelBudget.Model.t() | keyword(),
          keyword()
        ) ::
          non_neg_integer() | :infinity
  def max_context_length(bytes_or_estimate, model_or_dims, opts),
    do: Errors.call(Native.max_context_length(bytes_or_estimate, model_or_dims, opts))

  @doc """
  Whether a context of `n_ctx` tokens fits in `bytes_or_estimate`, with the
  arguments and options of `max_context_length/3`.

  ## Examples

      iex> dims = [n_layers: 32, n_head_kv: 8, head_dim: 128]
      iex> ModelBudget.fits_context?(2**30, dims, n_ctx: 8192)
      true
      iex> ModelBudget.fits_context?(2**30, dims, n_ctx: 8193)
      false
  """
  @spec fits_context?(
          non_neg_integer() | estimate(),
          ModelBudget.Model.t() | keyword(),
          keyword()
        ) ::
          boolean()
  def fits_context?(bytes_or_estimate, model_or_dims, opts) do
    unless is_list(opts) and Keyword.keyword?(opts) do
      raise ArgumentError, "invalid opts: expected a keyword list, got: #{inspect(opts)}"
    end

    n_ctx = Keyword.get(opts, :n_ctx)

    unless is_integer(n_ctx) and n_ctx > 0 do
      raise ArgumentError,
            "invalid option :n_ctx: expected a positive integer, got: #{inspect(n_ctx)}"
    end

    case max_context_length(bytes_or_estimate, model_or_dims, opts) do
      :infinity -> true
      max -> n_ctx <= max
    end
  end

  @doc """
  Checks whether `placement` fits `budget` on top of `used`.

  Returns `:ok`, or `{:error, {:insufficient_memory, [device: d, required: r,
  available: a]}}` for the first device that is short: `d` is `:total` for a
  combined budget, else `:ram` or `{:gpu, index}`; `available` is
  `max(limit - used, 0)`. A fit exactly at the limit is `:ok`. RAM is
  checked before GPUs, GPUs in index order; GPUs a per-device budget does not
  name are unbounded.

  ## Examples

      iex> ModelBudget.check(%{mode: :combined, limit: 100}, %{ram: 60, vram: %{0 => 40}}, ModelBudget.empty_usage())
      :ok

      iex> ModelBudget.check(%{mode: :combined, limit: 100}, %{ram: 60, vram: %{}}, %{ram: 50, vram: %{}})
      {:error, {:insufficient_memory, [device: :total, required: 60, available: 50]}}
  """
  @spec check(budget(), placement(), placement()) :: :ok | {:error, insufficient()}
  def check(budget, placement, used), do: Errors.call(Native.check(budget, placement, used))

  @doc """
  Adds `placement` into the usage accumulator `used`: RAM summed, VRAM
  merged per GPU.

  ## Examples

      iex> ModelBudget.fold(%{ram: 1, vram: %{0 => 2}}, %{ram: 10, vram: %{0 => 3, 1 => 4}})
      %{ram: 11, vram: %{0 => 5, 1 => 4}}
  """
  @spec fold(placement(), placement()) :: placement()
  def fold(used, placement), do: Errors.call(Native.fold(used, placement))

  @doc """
  Takes `placement` back out of `used`, the inverse of `fold/2`, for unloads.
  Releasing more than is held on any device raises `ArgumentError`; GPUs that
  reach zero are removed.

  ## Examples

      iex> ModelBudget.release(%{ram: 11, vram: %{0 => 5, 1 => 4}}, %{ram: 10, vram: %{0 => 3, 1 => 4}})
      %{ram: 1, vram: %{0 => 2}}

      iex> ModelBudget.release(%{ram: 1, vram: %{}}, %{ram: 2, vram: %{}})
      ** (ArgumentError) invalid placement: releases 2 bytes of RAM but only 1 are held
  """
  @spec release(placement(), placement()) :: placement()
  def release(used, placement), do: Errors.call(Native.release(used, placement))

  @doc """
  The usage of nothing: `%{ram: 0, vram: %{}}`.

  ## Examples

      iex> ModelBudget.empty_usage()
      %{ram: 0, vram: %{}}
  """
  @spec empty_usage() :: placement()
  def empty_usage, do: Native.empty_usage()
end
