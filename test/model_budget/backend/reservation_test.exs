defmodule ModelBudget.Backend.ReservationTest do
  use ExUnit.Case, async: true

  alias ModelBudget.Backend.Reservation

  doctest Reservation

  describe "footprint/2" do
    test "is the byte count, or the size of a regular file" do
      dir = Path.join(System.tmp_dir!(), "reservation_test_#{System.unique_integer([:positive])}")
      File.mkdir_p!(dir)
      on_exit(fn -> File.rm_rf(dir) end)
      path = Path.join(dir, "model.gguf")
      File.write!(path, :binary.copy(<<7>>, 3_000))

      assert Reservation.footprint({:bytes, 5}, []) == {:ok, 5}
      assert Reservation.footprint({:path, path}, []) == {:ok, 3_000}
      assert Reservation.footprint({:path, String.to_charlist(path)}, []) == {:ok, 3_000}
      assert Reservation.footprint({:path, dir}, []) == {:error, {:not_a_regular_file, dir}}
      assert Reservation.footprint({:path, path <> ".x"}, []) == {:error, {:enoent, path <> ".x"}}
    end

    test "raises ArgumentError for any other source" do
      for source <- [{:bytes, -1}, {:bytes, 1.5}, {:path, 1}, :model, {:url, "http://x"}] do
        assert_raise ArgumentError,
                     ~r/invalid source: expected .*, got: #{Regex.escape(inspect(source))}$/,
                     fn ->
                       Reservation.footprint(source, [])
                     end
      end
    end
  end

  describe "load/3 and unload/1" do
    test "reserve nothing beyond the ledger" do
      assert Reservation.load({:bytes, 1}, %{ram: 1, vram: %{}}, []) == {:ok, :reserved}
      assert Reservation.unload(:reserved) == :ok
    end
  end
end
