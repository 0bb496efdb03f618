defmodule ModelBudget.PSTest do
  use ExUnit.Case, async: true

  alias ModelBudget.{ModelManager, PS, TestClock}

  doctest ModelBudget.PS

  @ram [mode: :direct, n_gpus: 0]

  describe "managers/0" do
    test "lists live managers, named or not, and forgets stopped ones" do
      named = start_supervised!({ModelManager, name: :ps_unit_named}, id: :named)
      unnamed = start_supervised!({ModelManager, []}, id: :unnamed)
      assert named in PS.managers()
      assert unnamed in PS.managers()
      assert PS.managers() == Enum.sort(PS.managers())

      :ok = stop_supervised(:unnamed)
      refute unnamed in PS.managers()
      assert named in PS.managers()
    end
  end

  describe "collect/1" do
    test "each manager's name, budget, usage and models, read on its node" do
      {clock, advance} = TestClock.new()

      manager =
        start_supervised!({ModelManager, name: :ps_unit, memory_budget: 1_000, clock: clock})

      {:ok, _} = ModelManager.load(manager, :a, {:bytes, 100}, @ram ++ [keep_alive: 5_000])
      advance.(1_500)

      assert {:ok, %{cluster: nil, nodes: [node], managers: managers}} = PS.collect([])
      assert node == node()

      assert [m] = Enum.filter(managers, &(&1.manager == manager))

      assert %{
               node: ^node,
               name: :ps_unit,
               labels: nil,
               budget: %{mode: :combined, limit: 1_000},
               usage: %{ram: 100, vram: %{}},
               error: nil,
               models: [%{id: :a, idle_ms: 1_500, expires_in_ms: 3_500}]
             } = m
    end

    test "a node that cannot be reached is an error naming it" do
      node = :"ps_unit_nobody_#{System.unique_integer([:positive])}@127.0.0.1"

      assert PS.collect(nodes: [node], timeout: 1_000) ==
               {:error, "#{node}: cannot be reached"}
    end

    test "a cluster without members is an error naming it" do
      assert PS.collect(cluster: :ps_unit_nobody) ==
               {:error, "cluster ps_unit_nobody has no members seen from #{node()}"}
    end
  end

  describe "to_json/1" do
    test "encodes as ModelBudget.JSON, unlimited limits as null" do
      report = %{
        cluster: {:pool, 1},
        nodes: [:n@h],
        managers: [
          %{
            node: :n@h,
            manager: self(),
            name: nil,
            labels: %{gpu: "h100", zone: {:rack, 3}},
            budget: %{mode: :per_device, ram: :infinity, vram: :infinity},
            usage: %{ram: 5, vram: %{1 => 7}},
            models: [],
            error: :noconnection
          }
        ]
      }

      {:ok, json} =
        report |> PS.to_json() |> ModelBudget.JSON.encode!() |> ModelBudget.JSON.decode()

      assert json["cluster"] == "{:pool, 1}"
      assert [m] = json["managers"]
      assert m["manager"] == inspect(self())
      assert m["labels"] == %{"gpu" => "h100", "zone" => "{:rack, 3}"}
      assert m["budget"] == %{"mode" => "per_device", "ram" => nil, "vram" => nil}
      assert m["error"] == "cannot be reached"

      assert m["devices"] == [
               %{
                 "device" => "ram",
                 "gpu" => nil,
                 "used" => 5,
                 "limit" => nil,
                 "used_percent" => nil
               },
               %{
                 "device" => "gpu",
                 "gpu" => 1,
                 "used" => 7,
                 "limit" => nil,
                 "used_percent" => nil
               }
             ]
    end
  end

  describe "ModelBudget.PS.Text" do
    test "a member that does not answer: its row says why" do
      report = %{
        cluster: :pool,
        nodes: [:n@h],
        managers: [
          %{
            node: :n@h,
            manager: self(),
            name: :far,
            labels: %{},
            budget: %{mode: :combined, limit: 10},
            usage: %{ram: 1, vram: %{}},
            models: [],
            error: :timeout
          }
        ]
      }

      assert PS.Text.render(report) ==
               """
               no models loaded

               MANAGER  NODE  LABELS  MODELS  USED / BUDGET
               :far     n@h   -            0  unreachable: did not answer in time\
               """
    end
  end

  describe "duration/1" do
    test "two units at most, rounded down" do
      for {ms, text} <- [
            {1, "1ms"},
            {999, "999ms"},
            {1_000, "1s"},
            {61_000, "1m 1s"},
            {3_599_999, "59m 59s"},
            {3_660_000, "1h 1m"},
            {86_400_000, "1d"},
            {86_459_000, "1d"},
            {90_000_000, "1d 1h"}
          ] do
        assert PS.duration(ms) == text
      end
    end
  end
end
