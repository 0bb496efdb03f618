defmodule ModelBudget.DevicesTest do
  # Not async: some tests set CUDA_VISIBLE_DEVICES, which the probe reads.
  use ExUnit.Case, async: false

  @keys [:gpu_index, :nvml_index, :name, :uuid, :memory_total, :memory_free, :memory_used]

  defp with_env(name, value, fun) do
    old = System.get_env(name)
    if value, do: System.put_env(name, value), else: System.delete_env(name)

    try do
      fun.()
    after
      if old, do: System.put_env(name, old), else: System.delete_env(name)
    end
  end

  defp visible(value, fun), do: with_env("CUDA_VISIBLE_DEVICES", value, fun)

  describe "devices/0" do
    test "lists GPUs numbered from 0 with their memory" do
      gpus = ModelBudget.devices()
      assert Enum.map(gpus, & &1.gpu_index) == Enum.to_list(0..(length(gpus) - 1)//1)

      for gpu <- gpus do
        assert Enum.sort(Map.keys(gpu)) == Enum.sort(@keys)
        assert is_binary(gpu.name) and String.starts_with?(gpu.uuid, "GPU-")
        assert gpu.memory_free <= gpu.memory_total
        assert gpu.memory_used <= gpu.memory_total
      end
    end

    test "is empty, with a reason, when NVML is unavailable" do
      case ModelBudget.gpu_status() do
        {:unavailable, reason} ->
          assert ModelBudget.devices() == []
          assert is_binary(reason) and reason != ""

        {:ok, _version, count} ->
          assert length(ModelBudget.devices()) == count
      end
    end

    test "the NIF refuses a CUDA_VISIBLE_DEVICES that is not a string, without crashing" do
      assert_raise ErlangError, ~r/CUDA_VISIBLE_DEVICES/, fn ->
        ModelBudget.Native.devices(:not_a_string)
      end

      assert ModelBudget.Native.devices(<<255, ?,>>) == []
    end

    test "is what resolve/2 takes for :auto VRAM" do
      gpus = ModelBudget.devices()
      %{vram: vram} = ModelBudget.resolve(%{ram: :infinity, vram: :auto}, gpus)
      assert vram == Map.new(gpus, &{&1.gpu_index, &1.memory_free})
    end
  end

  describe "gpu_status/0" do
    test "answers as this machine's NVIDIA driver allows, and keeps its answer" do
      status = ModelBudget.gpu_status()

      # Asked of the machine first: is NVIDIA's management library there?
      if String.contains?(to_string(:os.cmd(~c"ldconfig -p 2>/dev/null")), "libnvidia-ml") do
        # NVML answers, or says why it cannot (a driver without devices).
        assert match?({:ok, version, count} when is_binary(version) and count >= 0, status) or
                 match?({:unavailable, reason} when is_binary(reason), status)

        refute match?({:unavailable, "NVIDIA management library" <> _}, status)
      else
        assert {:unavailable, reason} = status
        assert reason =~ "libnvidia-ml.so.1"
        assert reason =~ "not found"
      end

      assert ModelBudget.gpu_status() == status
    end
  end

  describe "refresh_devices/0" do
    test "starts NVML again and answers like gpu_status/0" do
      status = ModelBudget.refresh_devices()
      assert status == ModelBudget.gpu_status()
      assert ModelBudget.refresh_devices() == status
    end
  end

  describe "resolve/1 with :auto" do
    test "takes 80% of the memory limit and the probed GPUs' free memory" do
      %{limit: limit} = ModelBudget.system_memory()
      %{mode: :per_device, ram: ram, vram: vram} = ModelBudget.resolve(:auto)
      assert ram == div(limit * 80, 100)
      assert Map.keys(vram) == Enum.map(ModelBudget.devices(), & &1.gpu_index)
    end

    test "answers on the calling scheduler what the dirty-scheduler probe would" do
      # After one probe, the NIF resolves :auto itself when NVML is known to
      # be missing (no GPU to read) and asks for the probe when NVML works
      # (each call reads the driver, which may block).
      {gpus, limit} = ModelBudget.Native.probe_machine(System.get_env("CUDA_VISIBLE_DEVICES"))
      ram = div(limit * 80, 100)
      assert %{ram: ^ram} = ModelBudget.resolve(%{ram: :auto, vram: :infinity})
      # The NIF answers the budget map itself.
      assert ModelBudget.Native.resolve(%{ram: :auto, vram: :infinity}, nil, nil) ==
               %{mode: :per_device, ram: ram, vram: :infinity}

      case ModelBudget.gpu_status() do
        {:unavailable, _} ->
          assert gpus == []

          assert ModelBudget.Native.resolve(:auto, nil, nil) ==
                   %{mode: :per_device, ram: ram, vram: %{}}

          assert ModelBudget.resolve(:auto) == %{mode: :per_device, ram: ram, vram: %{}}

        {:ok, _, _} ->
          assert ModelBudget.Native.resolve(:auto, nil, nil) == {:probe, :gpus}
          assert ModelBudget.Native.resolve(:auto, nil, limit) == {:probe, :gpus}
      end
    end

    test "%{ram: :auto} takes 80% of the limit too" do
      %{limit: limit} = ModelBudget.system_memory()
      assert %{ram: ram, vram: %{0 => 5}} = ModelBudget.resolve(%{ram: :auto, vram: [5]})
      assert ram == div(limit * 80, 100)
    end
  end

  describe "on a GPU" do
    @describetag :gpu

    test "gpu_status/0 and devices/0 agree with nvidia-smi" do
      visible(nil, fn ->
        assert {:ok, version, count} = ModelBudget.gpu_status()
        assert count > 0 and version != ""
        gpus = ModelBudget.devices()
        assert length(gpus) == count

        for gpu <- gpus do
          assert gpu.memory_total > 0
          assert gpu.gpu_index == gpu.nvml_index
        end

        if smi = System.find_executable("nvidia-smi") do
          {out, 0} =
            System.cmd(smi, ["--query-gpu=uuid,memory.total", "--format=csv,noheader,nounits"])

          expected =
            for line <- String.split(out, "\n", trim: true) do
              [uuid, mib] = String.split(line, ", ")
              {uuid, String.to_integer(mib)}
            end

          assert Enum.map(gpus, &{&1.uuid, div(&1.memory_total, 2 ** 20)}) == expected
        end
      end)
    end

    test "CUDA_VISIBLE_DEVICES picks, orders and renumbers GPUs" do
      all = visible(nil, &ModelBudget.devices/0)
      last = List.last(all)

      assert [%{gpu_index: 0, uuid: uuid, nvml_index: nvml}] =
               visible(last.uuid, &ModelBudget.devices/0)

      assert {uuid, nvml} == {last.uuid, last.nvml_index}

      assert [%{gpu_index: 0, uuid: ^uuid}] =
               visible(binary_part(uuid, 0, 12), &ModelBudget.devices/0)

      assert [%{uuid: ^uuid}] =
               visible("#{last.nvml_index},#{length(all)}", &ModelBudget.devices/0)

      for hidden <- ["", "-1", "#{length(all)}", "0,0"] do
        assert visible(hidden, &ModelBudget.devices/0) == [], inspect(hidden)
        assert {:ok, _, 0} = visible(hidden, &ModelBudget.gpu_status/0)
        assert %{vram: vram} = visible(hidden, fn -> ModelBudget.resolve(:auto) end)
        assert vram == %{}
      end

      reversed = Enum.map_join(Enum.reverse(all), ",", & &1.nvml_index)
      listed = visible(reversed, &ModelBudget.devices/0)
      assert Enum.map(listed, & &1.uuid) == Enum.map(Enum.reverse(all), & &1.uuid)
      assert Enum.map(listed, & &1.gpu_index) == Enum.to_list(0..(length(all) - 1))
    end

    test "resolve(:auto) budgets each visible GPU's free memory" do
      visible(nil, fn ->
        %{vram: vram} = ModelBudget.resolve(:auto)
        gpus = ModelBudget.devices()
        assert Map.keys(vram) == Enum.map(gpus, & &1.gpu_index)

        for gpu <- gpus do
          assert vram[gpu.gpu_index] > 0 and vram[gpu.gpu_index] <= gpu.memory_total
        end
      end)
    end
  end
end
