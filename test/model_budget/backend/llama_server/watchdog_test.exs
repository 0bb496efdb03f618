defmodule ModelBudget.Backend.LlamaServer.WatchdogTest do
  # Real OS processes (small shell scripts), watched through /proc: Linux.
  use ExUnit.Case, async: true

  import ModelBudget.Test.Eventually

  alias ModelBudget.Backend.LlamaServer.Watchdog
  alias ModelBudget.Test.LlamaServer, as: Real

  @moduletag :tmp_dir

  doctest Watchdog

  # A wrapper without `exec`: it forks a child that ignores nothing, records
  # both pids and waits, as a script around llama-server does.
  defp forking!(dir) do
    script = Path.join(dir, "forking wrapper")

    File.write!(script, """
    #!/bin/sh
    echo "args: $*"
    sleep 600 &
    echo "$$ $!" > "${0%/*}/pids"
    wait
    """)

    File.chmod!(script, 0o755)
    script
  end

  # The pids the script writes to dir/pids, killed when the test ends,
  # pass or fail.
  defp pids!(dir) do
    file = Path.join(dir, "pids")
    eventually("the pids written", 10_000, fn -> pids_in(file) != [] end)
    pids_in(file)
  end

  defp pids_in(file), do: Real.pids_in(file)

  setup %{tmp_dir: dir} do
    on_exit(fn ->
      for pid <- pids_in(Path.join(dir, "pids")),
          do: System.cmd("kill", ["-KILL", "#{pid}"], stderr_to_stdout: true)
    end)
  end

  # A PATH of symlinks to only the tools named (no setpriv anywhere).
  defp path_with!(dir, tools) do
    bin = Path.join(dir, "bin")
    File.mkdir_p!(bin)

    for tool <- tools do
      File.ln_s!(System.find_executable(tool), Path.join(bin, tool))
    end

    bin
  end

  # The port's lines until the watchdog's marker, the marker parsed.
  defp await_marker(port) do
    receive do
      {^port, {:data, {:eol, line}}} ->
        case Watchdog.marker(line) do
          nil -> await_marker(port)
          marker -> marker
        end
    after
      10_000 -> flunk("no marker line from the watchdog")
    end
  end

  defp collect(port, acc \\ []) do
    receive do
      {^port, {:data, {:eol, line}}} -> collect(port, [line | acc])
      {^port, {:exit_status, status}} -> {status, Enum.reverse(acc)}
    after
      10_000 -> flunk("the watchdog did not exit")
    end
  end

  # Runs the watchdog (and the server) with PATH set to `path`.
  defp open_with_path(shell, path, executable, args) do
    {:ok, port, :watchdog} =
      Watchdog.open(executable, args, shell: shell, grace_ms: 1_000, env: [{"PATH", path}])

    port
  end

  describe "open/3" do
    test "the marker comes first, then the server's own lines; the exit status is the server's",
         %{tmp_dir: dir} do
      script = Path.join(dir, "talk")

      File.write!(
        script,
        "#!/bin/sh\nprintf '%s|' \"$@\"; echo\necho key=$LLAMA_API_KEY\nexit 3\n"
      )

      File.chmod!(script, 0o755)

      {:ok, port, :watchdog} =
        Watchdog.open(script, ["a b", "", "é", "--model", "/x y.gguf"],
          env: [{"LLAMA_API_KEY", "k1"}]
        )

      {pid, {:group, pid}} = await_marker(port)
      assert {3, ["a b||é|--model|/x y.gguf|", "key=k1"]} = collect(port)
    end

    test "the server is the marker's pid, in its own group; the watchdog's command line names no argument",
         %{tmp_dir: dir} do
      {:ok, port, :watchdog} = Watchdog.open(forking!(dir), ["--model", Path.join(dir, "m.gguf")])
      {os_pid, {:group, pgid}} = await_marker(port)
      [wrapper, child] = pids!(dir)
      assert os_pid == wrapper and pgid == wrapper
      assert Enum.sort(Real.group_members(pgid)) == Enum.sort([wrapper, child])

      {:os_pid, watchdog} = Port.info(port, :os_pid)
      assert Real.parent(wrapper) == watchdog
      refute Enum.any?(Real.cmdline(watchdog), &(&1 =~ "m.gguf"))
      assert Real.cmdline(wrapper) |> Enum.take(-2) == ["--model", Path.join(dir, "m.gguf")]
      refute Enum.any?(Real.environ(wrapper), &String.starts_with?(&1, "MODEL_BUDGET_"))
      Port.close(port)
    end

    test "a closed port (its owner or the VM died) ends the whole group, without setpriv",
         %{tmp_dir: dir} do
      # setsid found on PATH: the group is a session of its own.
      path = path_with!(dir, ["setsid", "sleep", "ps"])
      port = open_with_path("/bin/sh", path, forking!(dir), [])
      {_, {:group, _}} = await_marker(port)
      [wrapper, child] = pids!(dir)

      Port.close(port)

      eventually("the wrapper and its child gone", 5_000, fn ->
        not Real.alive?(wrapper) and not Real.alive?(child)
      end)
    end

    test "without setsid, bash's job control makes the group", %{tmp_dir: dir} do
      bash = System.find_executable("bash") || flunk("no bash")
      path = path_with!(dir, ["sleep"])
      port = open_with_path(bash, path, forking!(dir), [])
      {os_pid, {:group, os_pid}} = await_marker(port)
      [wrapper, child] = pids!(dir)
      assert Real.group_members(wrapper) |> Enum.sort() == Enum.sort([wrapper, child])

      Port.close(port)

      eventually("the wrapper and its child gone", 5_000, fn ->
        not Real.alive?(wrapper) and not Real.alive?(child)
      end)
    end

    test "with neither (dash, no setsid), only the server itself is signalled", %{tmp_dir: dir} do
      dash = System.find_executable("dash") || flunk("no dash")
      path = path_with!(dir, ["sleep"])
      port = open_with_path(dash, path, forking!(dir), [])
      {os_pid, {:pid, os_pid}} = await_marker(port)
      [wrapper, child] = pids!(dir)

      Port.close(port)
      eventually("the wrapper gone", 5_000, fn -> not Real.alive?(wrapper) end)
      # The documented limit of this fallback: what the server forked lives
      # on (the setup kills it).
      assert Real.alive?(child)
    end

    test "a server killed by a signal: the watchdog exits 128 + N", %{tmp_dir: dir} do
      script = Path.join(dir, "segv")
      File.write!(script, "#!/bin/sh\nulimit -c 0\necho dying\nkill -s SEGV $$\n")
      File.chmod!(script, 0o755)
      {:ok, port, :watchdog} = Watchdog.open(script, [])
      await_marker(port)
      assert {139, ["dying"]} = collect(port)
      assert Watchdog.exit_reason(139) == {:signal, :sigsegv}
    end

    test "what a server leaves in its group when it exits is ended too", %{tmp_dir: dir} do
      script = Path.join(dir, "leaves")
      File.write!(script, "#!/bin/sh\nsleep 600 &\necho \"$$ $!\" > \"${0%/*}/pids\"\nexit 0\n")
      File.chmod!(script, 0o755)
      {:ok, port, :watchdog} = Watchdog.open(script, [], grace_ms: 1_000)
      await_marker(port)
      [_, child] = pids!(dir)
      assert {0, []} = collect(port)
      refute Real.alive?(child)
    end

    test "signal/3 reaches the group with the shell's own kill", %{tmp_dir: dir} do
      {:ok, port, :watchdog} = Watchdog.open(forking!(dir), [])
      {_, target} = await_marker(port)
      [wrapper, child] = pids!(dir)
      assert :ok = Watchdog.signal(target, "TERM")
      assert {143, ["args: "]} = collect(port)
      refute Real.alive?(wrapper) or Real.alive?(child)
      # Gone: no error.
      assert :ok = Watchdog.signal(target, "KILL")
    end
  end

  describe "exit_reason/1 and describe/1" do
    test "name the signal of a status above 128, and keep plain exit codes" do
      assert Watchdog.exit_reason(0) == {:exited, 0}
      assert Watchdog.exit_reason(127) == {:exited, 127}
      assert Watchdog.exit_reason(134) == {:signal, :sigabrt}
      assert Watchdog.exit_reason(137) == {:signal, :sigkill}
      assert Watchdog.exit_reason(143) == {:signal, :sigterm}
      assert Watchdog.exit_reason(255) == {:exited, 255}
      assert Watchdog.describe(3) == "status 3"
      assert Watchdog.describe(139) == "status 139 (killed by SIGSEGV)"
    end
  end
end
