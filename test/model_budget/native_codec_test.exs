defmodule ModelBudget.NativeCodecTest do
  # Each codec of the NIF boundary round-trips through its echo NIF, apart
  # from the domain: what goes in comes back unchanged, and what a codec
  # refuses raises (the budget calls then fall back to their explaining
  # decoders).
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
end
