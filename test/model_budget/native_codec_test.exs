defmodule ModelBudget.NativeCodecTest do
  # Each codec of the NIF boundary round-trips through its echo NIF, apart
  # from the domain: what goes in comes back unchanged, and what a codec
  # refuses raises (the budget calls then name the argument and the value).
  use ExUnit.Case, async: true

  alias ModelBudget.Native

  @u64_max 2 ** 64 - 1

  # A refused term raises: badarg, or the derived codec's own reason.
  defp refused(fun, term), do: assert(catch_error(fun.(term)))

  describe "unit enums" do
    test "modes, split modes and cache types round-trip; other atoms are refused" do
      for m <- [:server, :direct], do: assert(Native.echo_mode(m) == m)
      for m <- [:none, :layer, :row], do: assert(Native.echo_split_mode(m) == m)

      for t <- [:f32, :f16, :bf16, :q8_0, :q4_0, :q4_1, :q5_0, :q5_1, :iq4_nl],
          do: assert(Native.echo_cache_type(t) == t)

      for {fun, bad} <- [
            {&Native.echo_mode/1, :fast},
            {&Native.echo_split_mode/1, "layer"},
            {&Native.echo_cache_type/1, :q8},
            {&Native.echo_cache_type/1, nil}
          ],
          do: refused(fun, bad)
    end
  end

  describe "tagged enum" do
    test "devices round-trip as atoms and {:gpu, index}" do
      for d <- [:total, :ram, {:gpu, 0}, {:gpu, 4_294_967_295}],
          do: assert(Native.echo_device(d) == d)

      for bad <- [:vram, {:gpu, -1}, {:gpu, 2 ** 32}, {:gpu}, {:cpu, 0}],
          do: refused(&Native.echo_device/1, bad)
    end
  end

  describe "limits and GPU maps" do
    test "limits are byte counts or :infinity" do
      for l <- [0, @u64_max, :infinity], do: assert(Native.echo_limit(l) == l)
      for bad <- [-1, @u64_max + 1, nil, 1.0], do: refused(&Native.echo_limit/1, bad)
    end

    test "GPU maps keep their entries, in any number" do
      for map <- [%{}, %{0 => 1}, %{3 => @u64_max, 1 => 0}, Map.new(0..40, &{&1, &1 * 7})] do
        assert Native.echo_gpu_bytes(map) == map
      end

      assert Native.echo_gpu_limits(%{0 => :infinity, 2 => 5}) == %{0 => :infinity, 2 => 5}

      for bad <- [[{0, 1}], %{-1 => 1}, %{0 => -1}, %{"0" => 1}, %{0 => :infinity}],
          do: refused(&Native.echo_gpu_bytes/1, bad)
    end
  end

  describe "placements" do
    test "round-trip; GPUs holding zero are dropped (the canonical form)" do
      for p <- [%{ram: 0, vram: %{}}, %{ram: @u64_max, vram: %{0 => 1, 9 => @u64_max}}] do
        assert Native.echo_placement(p) == p
      end

      assert Native.echo_placement(%{ram: 1, vram: %{0 => 0, 1 => 2}}) == %{
               ram: 1,
               vram: %{1 => 2}
             }
    end

    test "anything but exactly :ram and :vram is refused" do
      for bad <- [
            %{ram: 1},
            %{ram: 1, vram: %{}, gpu: 0},
            %{ram: -1, vram: %{}},
            %{ram: 1, vram: []},
            [ram: 1, vram: %{}]
          ],
          do: refused(&Native.echo_placement/1, bad)
    end
  end

  describe "budgets" do
    test "each shape round-trips" do
      for b <- [
            %{mode: :unlimited},
            %{mode: :combined, limit: 1},
            %{mode: :per_device, ram: :infinity, vram: :infinity},
            %{mode: :per_device, ram: 5, vram: %{0 => :infinity, 1 => 7}}
          ] do
        assert Native.echo_budget(b) == b
      end
    end

    test "a mode that does not match the keys, extra keys or a zero combined limit are refused" do
      for bad <- [
            %{mode: :combined},
            %{mode: :unlimited, limit: 5},
            %{mode: :combined, limit: 0},
            %{mode: :per_device, ram: 1},
            %{mode: :per_device, ram: 1, vram: :infinity, extra: 0},
            %{mode: :combined, ram: 1, vram: :infinity}
          ],
          do: refused(&Native.echo_budget/1, bad)
    end
  end

  describe "insufficient details" do
    test "the keyword list round-trips in DESIGN.md's order" do
      for d <- [
            [device: :total, required: 2, available: 1],
            [device: {:gpu, 3}, required: @u64_max, available: 0]
          ] do
        assert Native.echo_insufficient(d) == d
      end

      refused(&Native.echo_insufficient/1, required: 2, device: :ram, available: 1)
    end
  end

  # The budget calls answer the contract's maps, built in the NIF: each
  # shape of GPU map must come back as the same map.
  describe "the budget calls' answers" do
    @empty %{ram: 0, vram: %{}}

    # GPU maps of every shape: none, one GPU, 0..k-1 for k up to 17, and
    # maps that are not 0, 1, ...
    defp gpu_maps(value) do
      dense = for k <- 1..17, do: Map.new(0..(k - 1), &{&1, value.(&1)})
      sparse = [%{5 => value.(5)}, %{1 => value.(1), 2 => value.(2)}, %{0 => value.(0), 2 => 1}]
      [%{} | dense ++ sparse ++ [Map.new(1..16, &{&1, value.(&1)})]]
    end

    test "a placement of any GPU map comes back whole through fold/2, release/2 and the NIF" do
      for vram <- gpu_maps(&(&1 * 1_000 + 1)) ++ gpu_maps(fn _ -> @u64_max end) do
        p = %{ram: 7, vram: vram}
        assert ModelBudget.fold(p, @empty) == p
        assert ModelBudget.fold(@empty, p) == p
        assert ModelBudget.release(p, @empty) == p
        assert Native.fold(p, @empty) == p
      end
    end

    test "a per-device budget of any GPU map comes back whole through resolve/2" do
      limit = fn gpu -> if rem(gpu, 3) == 2, do: :infinity, else: gpu * 10 + 1 end

      for vram <- gpu_maps(limit) do
        assert ModelBudget.resolve(%{ram: 5, vram: vram}, []) ==
                 %{mode: :per_device, ram: 5, vram: vram}

        # The same limits as a list, and as :auto from GPU entries.
        if Map.keys(vram) == Enum.to_list(0..(map_size(vram) - 1)//1) do
          list = for gpu <- 0..(map_size(vram) - 1)//1, do: vram[gpu]

          assert ModelBudget.resolve(%{ram: :infinity, vram: list}, []) ==
                   %{mode: :per_device, ram: :infinity, vram: vram}
        end

        gpus = for {gpu, l} <- vram, is_integer(l), do: %{gpu_index: gpu, memory_free: l}
        auto = Map.new(gpus, &{&1.gpu_index, &1.memory_free})

        assert ModelBudget.resolve(%{ram: 5, vram: :auto}, gpus) ==
                 %{mode: :per_device, ram: 5, vram: auto}
      end

      assert ModelBudget.resolve(%{ram: 5, vram: :infinity}, []) ==
               %{mode: :per_device, ram: 5, vram: :infinity}
    end

    test "distribute/3 over 1 to 20 GPUs gives every GPU its share, as a map" do
      for n <- 1..20 do
        p = ModelBudget.distribute(1_000_003, [mode: :direct, split_mode: :layer], n)
        assert Map.keys(p.vram) |> Enum.sort() == Enum.to_list(0..(n - 1))
        assert Enum.sum(Map.values(p.vram)) == 1_000_003
      end
    end
  end
end
