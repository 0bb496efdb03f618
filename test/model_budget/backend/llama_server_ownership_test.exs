defmodule ModelBudget.Backend.LlamaServerOwnershipTest do
  # "The manager owns what it starts": every OS process a load starts, and
  # all it forks, ends with the manager, however the manager ends; every
  # wait is bounded; a server listens beyond loopback only with a key; the
  # AMX crash is retried without extra CPU buffers. Real OS processes,
  # watched through /proc (Linux): the real llama-server where the tests
  # are tagged :llama_server, small scripts (sh, python3) elsewhere. They
  # start processes, so they run one at a time.
  use ExUnit.Case, async: false

  import ExUnit.CaptureLog
  import ModelBudget.Test.Eventually

  alias ModelBudget.Backend.LlamaServer
  alias ModelBudget.Backend.LlamaServer.Log
  alias ModelBudget.ModelManager
  alias ModelBudget.Test.LlamaModel
  alias ModelBudget.Test.LlamaServer, as: Real

  @moduletag :tmp_dir
  @moduletag timeout: 180_000

  # As in llama_server_test.exs: one thread, no prompt cache; a fake
  # `:command` gets a profile named, so that it is not asked for one.
  defp opts(extra \\ []) do
    profile =
      cond do
        Keyword.has_key?(extra, :cpu_buffers) -> []
        Keyword.has_key?(extra, :command) -> [cpu_buffers: :none]
        true -> Real.decode_safe()
      end

    Keyword.merge(
      [command: Real.command(), n_gpus: 0, cache_ram: 0, extra_args: ["--threads", "1"]] ++
        profile,
      extra
    )
  end

  # The tiny model is written once (it takes seconds) and copied per test:
  # each test watches the servers of its own file.
  setup_all do
    dir =
      Path.join(System.tmp_dir!(), "model_budget_ownership_#{System.unique_integer([:positive])}")

    File.mkdir_p!(dir)
    template = Path.join(dir, "tiny.gguf")
    LlamaModel.write!(template)
    on_exit(fn -> File.rm_rf(dir) end)
    %{template: template}
  end

  defp model!(dir, template) do
    path = Path.join(dir, "tiny.gguf")
    File.cp!(template, path)
    # Whatever a failed test leaves serving this model is killed.
    on_exit(fn -> kill(Real.servers_for(path)) end)
    path
  end

  # Stopped or killed by the tests themselves: not restarted.
  defp manager! do
    spec = {ModelManager, backend: LlamaServer, min_idle_ms: 0}
    start_supervised!(Supervisor.child_spec(spec, restart: :temporary))
  end

  defp kill(os_pids) do
    for pid <- List.wrap(os_pids),
        do: System.cmd("kill", ["-KILL", "#{pid}"], stderr_to_stdout: true)

    :ok
  end

  defp script!(dir, name, text) do
    script = Path.join(dir, name)
    File.write!(script, text)
    File.chmod!(script, 0o755)
    script
  end

  # A wrapper without `exec`: llama-server runs as its child.
  defp forking_wrapper!(dir) do
    script!(dir, "llama-wrapper", """
    #!/bin/sh
    '#{Real.command()}' "$@"
    echo "wrapper: llama-server exited with $?"
    """)
  end

  # The pids a script writes to `file`; whatever it names is killed when
  # the test ends, pass or fail.
  defp pid_file(dir, name) do
    file = Path.join(dir, name)
    on_exit(fn -> kill(pids_in(file)) end)
    file
  end

  defp pids_in(file), do: Real.pids_in(file)

  defp read_pids(file) do
    eventually("#{Path.basename(file)} written", 10_000, fn -> pids_in(file) != [] end)
    pids_in(file)
  end

  # `fun`'s result, once it returns: a wait that is bounded returns well
  # within this guard (no timing is asserted; a hang fails here, not at the
  # test's timeout).
  defp returns(fun) do
    task = Task.async(fun)

    case Task.yield(task, 60_000) || Task.shutdown(task, :brutal_kill) do
      {:ok, result} -> result
      _ -> flunk("did not return within 60 s: the wait is not bounded")
    end
  end

  defp gone?(path, os_pids),
    do: Real.servers_for(path) == [] and not Enum.any?(os_pids, &Real.alive?/1)

  defp chunks(args), do: Enum.chunk_every(args, 2, 1, :discard)

  describe "the manager ends, the servers end" do
    @tag :llama_server
    test "GenServer.stop: the server is gone within seconds", %{tmp_dir: dir, template: template} do
      path = model!(dir, template)
      manager = manager!()
      {:ok, info} = ModelManager.load(manager, :tiny, {:path, path}, opts())
      %LlamaServer{os_pid: os_pid, pid: pid} = info.handle
      assert Real.servers_for(path) == [os_pid]

      GenServer.stop(manager)

      eventually("the server gone", 5_000, fn -> gone?(path, [os_pid]) end)
      refute Process.alive?(pid)
    end

    @tag :llama_server
    test "Process.exit(manager, :kill), a forking wrapper: the wrapper and llama-server gone",
         %{tmp_dir: dir, template: template} do
      path = model!(dir, template)
      manager = manager!()
      load_opts = opts(command: forking_wrapper!(dir), cpu_buffers: :none)
      {:ok, info} = ModelManager.load(manager, :tiny, {:path, path}, load_opts)
      wrapper = info.handle.os_pid
      # The wrapper and the real server under it, both naming the model.
      assert [_, _] = servers = Real.servers_for(path)
      assert wrapper in servers
      assert Enum.sort(Real.group_members(wrapper)) == Enum.sort(servers)

      Process.exit(manager, :kill)

      eventually("the wrapper and the server gone", 5_000, fn -> gone?(path, servers) end)
    end
  end

  describe "a manager restarted under its supervisor" do
    @tag :llama_server
    test "loads its :models again with one server per id: the old ones are killed, not counted",
         %{tmp_dir: dir, template: template} do
      path = model!(dir, template)
      name = {:global, {__MODULE__, make_ref()}}

      start_supervised!(
        {ModelManager,
         name: name,
         backend: LlamaServer,
         memory_budget: 2 ** 30,
         models: [{:tiny, {:path, path}, opts()}]}
      )

      ready = fn ->
        match?({:ok, %{status: :ready}}, ModelManager.info(name, :tiny))
      end

      eventually("the model loaded at start", 60_000, ready)
      {:ok, %{handle: %LlamaServer{os_pid: old}}} = ModelManager.info(name, :tiny)
      first = GenServer.whereis(name)

      Process.exit(first, :kill)

      eventually("the manager restarted", 10_000, fn ->
        GenServer.whereis(name) not in [nil, first]
      end)

      eventually("the model loaded again", 60_000, ready)
      {:ok, %{handle: %LlamaServer{os_pid: new}}} = ModelManager.info(name, :tiny)

      # One server for the id: the old one is gone, the ledger counts the new.
      eventually("the old server gone", 5_000, fn -> not Real.alive?(old) end)
      assert Real.servers_for(path) == [new]
      assert [%{id: :tiny}] = ModelManager.list(name)
    end
  end

  describe "bounded waits" do
    @tag :llama_server
    test "unload of a forking wrapper returns at once, and nothing is left", %{
      tmp_dir: dir,
      template: template
    } do
      path = model!(dir, template)
      manager = manager!()
      load_opts = opts(command: forking_wrapper!(dir), cpu_buffers: :none, stop_timeout: 3_000)
      {:ok, _info} = ModelManager.load(manager, :tiny, {:path, path}, load_opts)
      assert [_, _] = servers = Real.servers_for(path)

      # SIGTERM to the group ends both; at worst SIGKILL after :stop_timeout
      # and 5 s for the exit. (Before, this unload never returned.)
      assert returns(fn -> ModelManager.unload(manager, :tiny) end) == :ok
      eventually("the wrapper and the server gone", 5_000, fn -> gone?(path, servers) end)
      assert ModelManager.usage(manager) == %{ram: 0, vram: %{}}
    end

    @tag :llama_server
    test "a ready timeout with a forking wrapper kills the real server too", %{
      tmp_dir: dir,
      template: template
    } do
      path = model!(dir, template)
      manager = manager!()
      load_opts = opts(command: forking_wrapper!(dir), cpu_buffers: :none, ready_timeout: 1)

      assert {:error, {:load_failed, {:ready_timeout, 1, _lines}}} =
               ModelManager.load(manager, :tiny, {:path, path}, load_opts)

      eventually("the wrapper and the server gone", 5_000, fn -> gone?(path, []) end)
    end

    test "a ready timeout with a forking wrapper: the group killed within :ready_timeout and a little",
         %{tmp_dir: dir, template: template} do
      path = model!(dir, template)

      script =
        script!(dir, "never-ready", """
        #!/bin/sh
        sleep 600 &
        echo "$$ $!" > "${0%/*}/pids"
        wait
        """)

      pids = pid_file(dir, "pids")
      manager = manager!()
      load_opts = opts(command: script, ready_timeout: 500)

      result = returns(fn -> ModelManager.load(manager, :tiny, {:path, path}, load_opts) end)
      assert {:error, {:load_failed, {:ready_timeout, 500, []}}} = result
      [wrapper, child] = read_pids(pids)
      eventually("the wrapper and its child gone", 2_000, fn -> gone?(path, [wrapper, child]) end)
      assert ModelManager.usage(manager) == %{ram: 0, vram: %{}}
    end

    test "unload of a wrapper whose child ignores SIGTERM: SIGKILL to the group after :stop_timeout",
         %{tmp_dir: dir, template: template} do
      path = model!(dir, template)
      health = Real.health_py!(dir)

      script =
        script!(dir, "stubborn-wrapper", """
        #!/bin/sh
        python3 "#{health}" --ignore-term --pidfile "${0%/*}/child" "$@"
        """)

      child_file = pid_file(dir, "child")
      manager = manager!()
      load_opts = opts(command: script, stop_timeout: 300)
      {:ok, info} = ModelManager.load(manager, :stubborn, {:path, path}, load_opts)
      wrapper = info.handle.os_pid
      [child] = read_pids(child_file)
      assert Real.parent(child) == wrapper

      assert returns(fn -> ModelManager.unload(manager, :stubborn) end) == :ok
      eventually("the wrapper and its child gone", 5_000, fn -> gone?(path, [wrapper, child]) end)
      assert Real.port_free?(info.handle.port)
    end
  end

  # A VM of its own (the project's compiled code on its code path) starts
  # a manager and a real server, with a PATH of only setsid, sleep and ps
  # (no setpriv). Returns its port, its OS pid, the server's and what
  # it found for setpriv.
  defp vm_with_server!(dir, path) do
    bin = Path.join(dir, "bin")
    File.mkdir_p!(bin)

    for tool <- ~w(setsid sleep ps),
        do: File.ln_s!(System.find_executable(tool), Path.join(bin, tool))

    load_opts = opts(cpu_buffers: :none, stop_timeout: 2_000)

    script = """
    System.put_env("PATH", #{inspect(bin)})
    {:ok, _} = Application.ensure_all_started(:model_budget)
    {:ok, manager} =
      ModelBudget.ModelManager.start_link(backend: ModelBudget.Backend.LlamaServer, min_idle_ms: 0)
    {:ok, info} =
      ModelBudget.ModelManager.load(manager, :tiny, {:path, #{inspect(path)}}, #{inspect(load_opts)})
    IO.puts("ready \#{System.pid()} \#{info.handle.os_pid} \#{inspect(System.find_executable("setpriv"))}")
    Process.sleep(:infinity)
    """

    build = Mix.Project.build_path()

    port =
      Port.open({:spawn_executable, System.find_executable("elixir")}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        {:line, 65_536},
        args: [
          "-pa",
          Path.join(build, "lib/model_budget/ebin"),
          "-pa",
          Path.join(build, "consolidated"),
          "-e",
          script
        ]
      ])

    {:os_pid, launcher} = Port.info(port, :os_pid)
    on_exit(fn -> kill(launcher) end)
    {vm, server, setpriv} = await_ready(port, [])
    on_exit(fn -> kill([vm, server]) end)
    {port, vm, server, setpriv}
  end

  defp await_ready(port, seen) do
    receive do
      {^port, {:data, {:eol, "ready " <> rest}}} ->
        [vm, server, setpriv] = String.split(rest, " ")
        {String.to_integer(vm), String.to_integer(server), setpriv}

      {^port, {:data, {_, line}}} ->
        await_ready(port, [line | seen])

      {^port, {:exit_status, status}} ->
        flunk("the VM exited with #{status}:\n" <> Enum.join(Enum.reverse(seen), "\n"))
    after
      120_000 -> flunk("the VM did not load:\n" <> Enum.join(Enum.reverse(seen), "\n"))
    end
  end

  describe "the VM ends, the servers end" do
    @describetag :llama_server

    for signal <- ["KILL", "TERM"] do
      test "SIG#{signal} to the VM: its llama-server is gone within seconds, without setpriv",
           %{tmp_dir: dir, template: template} do
        path = model!(dir, template)
        {port, vm, server, setpriv} = vm_with_server!(dir, path)
        assert setpriv == "nil"
        assert Real.servers_for(path) == [server]
        # llama-server itself, run by the watchdog (sh), not by setpriv.
        assert hd(Real.cmdline(server)) == Real.command()
        assert Real.cmdline(Real.parent(server)) |> hd() |> Path.basename() =~ "sh"

        System.cmd("kill", ["-s", unquote(signal), "#{vm}"])

        eventually("the VM gone", 10_000, fn -> not Real.alive?(vm) end)
        eventually("its llama-server gone", 5_000, fn -> gone?(path, [server]) end)
        assert_receive {^port, {:exit_status, _}}, 10_000
      end
    end
  end

  describe "beyond loopback only on purpose" do
    test "a host beyond loopback without an :api_key, or extra_args saying where, are refused",
         %{tmp_dir: dir, template: template} do
      path = model!(dir, template)
      manager = manager!()

      error =
        assert_raise ArgumentError, fn ->
          ModelManager.load(
            manager,
            :open,
            {:path, path},
            opts(host: "0.0.0.0", cpu_buffers: :none)
          )
        end

      assert error.message =~ "invalid option :host: \"0.0.0.0\""
      assert error.message =~ ":api_key"

      for {arg, option} <- [{"--host", ":host"}, {"--port", ":port"}, {"--api-key", ":api_key"}] do
        assert_raise ArgumentError, ~r/use the #{option} option instead/, fn ->
          load_opts = opts(extra_args: [arg, "x"], cpu_buffers: :none)
          ModelManager.load(manager, :open, {:path, path}, load_opts)
        end
      end

      assert ModelManager.list(manager) == []
      assert Real.servers_for(path) == []
    end

    @tag :llama_server
    test "with an :api_key: the key in the server's environment, never on its command line",
         %{tmp_dir: dir, template: template} do
      path = model!(dir, template)
      manager = manager!()
      key = "mb-key-#{System.unique_integer([:positive])}"
      load_opts = opts(host: "0.0.0.0", api_key: key)
      {:ok, info} = ModelManager.load(manager, :open, {:path, path}, load_opts)
      %LlamaServer{base_url: base_url, port: port, os_pid: os_pid} = info.handle

      # Where it really listens.
      assert base_url == "http://0.0.0.0:#{port}"
      assert ["--host", "0.0.0.0"] in chunks(Real.cmdline(os_pid))
      assert "LLAMA_API_KEY=#{key}" in Real.environ(os_pid)
      refute Enum.any?(Real.cmdline(os_pid), &String.contains?(&1, key))
      refute Enum.any?(Real.cmdline(Real.parent(os_pid)), &String.contains?(&1, key))
      refute inspect(ModelManager.info(manager, :open)) =~ key

      loopback = "http://127.0.0.1:#{port}"
      assert {200, _} = get(loopback <> "/health")
      assert {401, _} = get(loopback <> "/v1/models")
      assert {200, _} = get(loopback <> "/v1/models", key)

      assert :ok = ModelManager.unload(manager, :open)
      assert Real.servers_for(path) == []
    end
  end

  defp get(url, key \\ nil) do
    headers = if key, do: [{~c"authorization", String.to_charlist("Bearer " <> key)}], else: []

    {:ok, {{_, status, _}, _, body}} =
      :httpc.request(:get, {String.to_charlist(url), headers}, [timeout: 10_000], [])

    {status, body}
  end

  @amx_line "load_tensors:          AMX model buffer size =  4491.48 MiB"
  @cpu_line "load_tensors:   CPU_Mapped model buffer size =     1.25 MiB"

  # A stand-in for b11434 on an AMX CPU: with extra CPU buffers it logs an
  # AMX buffer (unless `amx?` is false) and dies by SIGSEGV; with
  # --no-repack it serves. Each run's arguments go to `runs`.
  defp amx_fake!(dir, amx? \\ true) do
    health = Real.health_py!(dir)

    script!(dir, "llama-server", """
    #!/bin/sh
    echo "$*" >> "${0%/*}/runs"
    case " $* " in
      *" --no-repack "*)
        echo "#{@cpu_line}"
        exec python3 "#{health}" "$@" ;;
    esac
    #{if amx?, do: "echo \"#{@amx_line}\"", else: ""}
    echo "llama_kv_cache:        CPU KV buffer size =     2.00 MiB"
    ulimit -c 0
    kill -s SEGV $$
    """)
  end

  defp runs(dir), do: dir |> Path.join("runs") |> File.read!() |> String.split("\n", trim: true)

  describe "the AMX crash (llama.cpp #20824)" do
    test "a SIGSEGV at start-up after an AMX buffer: retried once without extra buffers, remembered",
         %{tmp_dir: dir, template: template} do
      path = model!(dir, template)
      script = amx_fake!(dir)
      manager = manager!()
      load_opts = opts(command: script, cpu_buffers: :x86_amx)

      {result, log} =
        with_log(fn -> ModelManager.load(manager, :tiny, {:path, path}, load_opts) end)

      assert {:ok, info} = result
      assert log =~ "llama.cpp #20824"
      assert log =~ "--no-repack"
      assert info.handle.cpu_buffers == :none

      assert [first, second] = runs(dir)
      assert "--repack" in String.split(first)
      refute "--no-repack" in String.split(first)
      assert "--no-repack" in String.split(second)

      # What the server that runs holds: no AMX buffer.
      {:ok, %{measured: measured}} = ModelManager.info(manager, :tiny)
      assert measured.buffers == [Log.buffer(@cpu_line)]
      assert measured.ram == Log.buffer(@cpu_line).bytes

      # The binary is known now: placed and started without extra buffers.
      assert LlamaServer.estimate_options(load_opts)[:cpu_buffers] == :none

      assert LlamaServer.estimate_options(Keyword.put(load_opts, :amx_retry, false))[:cpu_buffers] ==
               :x86_amx

      {result, log} =
        with_log(fn -> ModelManager.load(manager, :again, {:path, path}, load_opts) end)

      assert {:ok, again} = result
      refute log =~ "#20824"
      assert again.handle.cpu_buffers == :none
      assert again.cpu_buffers == :none
      assert [_, _, third] = runs(dir)
      assert "--no-repack" in String.split(third)

      assert :ok = ModelManager.unload(manager, :tiny)
      assert :ok = ModelManager.unload(manager, :again)
    end

    test "amx_retry: false: the crash is the load's error, named by its signal", %{
      tmp_dir: dir,
      template: template
    } do
      path = model!(dir, template)
      script = amx_fake!(dir)
      manager = manager!()
      load_opts = opts(command: script, cpu_buffers: :x86_amx, amx_retry: false)

      assert {:error, {:load_failed, {:server_crashed, :sigsegv, lines}}} =
               ModelManager.load(manager, :tiny, {:path, path}, load_opts)

      assert @amx_line in lines
      assert [_] = runs(dir)
      assert ModelManager.usage(manager) == %{ram: 0, vram: %{}}
    end

    test "a SIGSEGV without an AMX buffer is not retried", %{tmp_dir: dir, template: template} do
      path = model!(dir, template)
      script = amx_fake!(dir, false)
      manager = manager!()

      assert {:error, {:load_failed, {:server_crashed, :sigsegv, lines}}} =
               ModelManager.load(
                 manager,
                 :tiny,
                 {:path, path},
                 opts(command: script, cpu_buffers: :x86_amx)
               )

      refute @amx_line in lines
      assert [_] = runs(dir)
    end
  end
end
