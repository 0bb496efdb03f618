defmodule ModelBudget.Backend.ReservationTest do
  use ExUnit.Case, async: true

  alias ModelBudget.Backend.Reservation

  doctest Reservation

  describe "footprint/2" do
    setup do
      dir = Path.join(System.tmp_dir!(), "reservation_test_#{System.unique_integer([:positive])}")
      File.mkdir_p!(dir)
      on_exit(fn -> File.rm_rf(dir) end)
      %{dir: dir}
    end

    test "is the byte count, or the size of a file that is not a model format", %{dir: dir} do
      path = Path.join(dir, "model.onnx")
      File.write!(path, :binary.copy(<<7>>, 3_000))

      assert Reservation.footprint({:bytes, 5}, []) == {:ok, 5}
      assert Reservation.footprint({:path, path}, []) == {:ok, 3_000}
      assert Reservation.footprint({:path, String.to_charlist(path)}, []) == {:ok, 3_000}
      assert Reservation.footprint({:path, path <> ".x"}, []) == {:error, {:enoent, path <> ".x"}}

      assert Reservation.footprint({:path, "/dev/null"}, []) ==
               {:error, {:not_a_regular_file, "/dev/null"}}
    end

    test "reads the header of a GGUF or safetensors model", %{dir: dir} do
      gguf = ModelBudget.Test.ModelFixtures.mixtral_gguf!(Path.join(dir, "mixtral.gguf"))
      {:ok, model} = ModelBudget.Model.read(gguf)
      assert Reservation.footprint({:path, gguf}, []) == {:ok, model}
      assert Reservation.footprint({:model, model}, []) == {:ok, model}

      File.mkdir_p!(Path.join(dir, "qwen"))
      qwen = ModelBudget.Test.ModelFixtures.qwen25_safetensors!(Path.join(dir, "qwen"))

      assert {:ok, %ModelBudget.Model{format: :safetensors}} =
               Reservation.footprint({:path, qwen}, [])
    end

    test "a malformed model file or an empty folder is an error naming the path", %{dir: dir} do
      bad = Path.join(dir, "broken.gguf")
      File.write!(bad, "GGUF" <> <<3::little-32, 0::64>>)
      assert {:error, {{:invalid_model, _why}, ^bad}} = Reservation.footprint({:path, bad}, [])
      empty = Path.join(dir, "empty")
      File.mkdir_p!(empty)
      assert {:error, {{:invalid_model, _}, ^empty}} = Reservation.footprint({:path, empty}, [])
    end

    test "raises ArgumentError for any other source" do
      for source <- [
            {:bytes, -1},
            {:bytes, 1.5},
            {:path, 1},
            :model,
            {:model, %{}},
            {:url, "http://x"}
          ] do
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

  describe "with the manager" do
    test "a model file is placed layer by layer, not as a full offload" do
      dir = Path.join(System.tmp_dir!(), "reservation_mgr_#{System.unique_integer([:positive])}")
      File.mkdir_p!(dir)
      on_exit(fn -> File.rm_rf(dir) end)
      path = ModelBudget.Test.ModelFixtures.llama_gguf!(Path.join(dir, "llama.gguf"))
      {:ok, model} = ModelBudget.Model.read(path)

      manager = start_supervised!({ModelBudget.ModelManager, memory_budget: :infinity})
      opts = [n_gpu_layers: 10, n_gpus: 1, n_ctx: 8192, n_parallel: 1]
      assert {:ok, info} = ModelBudget.ModelManager.load(manager, :llama, {:path, path}, opts)
      assert info.placement == ModelBudget.distribute(model, opts, 1)
      assert info.bytes == model.weight_bytes
      assert info.placement.vram[0] < ModelBudget.distribute(model.file_bytes, opts, 1).vram[0]
    end
  end
end
