defmodule ModelBudget.Test.LlamaServer do
  @moduledoc false
  # Helpers of the :llama_server tests: which llama-server to run, and which
  # OS processes serve a given model file (read from /proc, so a test sees
  # a server that outlived its load without trusting the backend).

  # $LLAMA_SERVER when it names an executable file, else nil.
  def command do
    case System.get_env("LLAMA_SERVER") do
      path when is_binary(path) and path != "" ->
        if File.regular?(path), do: path, else: nil

      _ ->
        nil
    end
  end

  # What the binary reports of itself (its runtime profile).
  def runtime do
    {:ok, runtime} = ModelBudget.Backend.LlamaServer.Runtime.profile(command())
    runtime
  end

  # Options that keep a server alive past its first decode on this machine:
  # llama.cpp b11434 dies in ggml_backend_amx_mul_mat at the first decode
  # on AMX CPUs (llama.cpp #20824), so a test that needs one turns the
  # extra CPU buffers off there.
  def decode_safe do
    if runtime().cpu_buffers == :x86_amx, do: [cpu_buffers: :none], else: []
  end

  # The OS pids a test's script wrote to `file`, one per word ([] until it exists).
  def pids_in(file) do
    case File.read(file) do
      {:ok, text} -> text |> String.split() |> Enum.map(&String.to_integer/1)
      {:error, _} -> []
    end
  end

  # OS pids whose command line names `path` (the model file).
  def servers_for(path) do
    for dir <- File.ls!("/proc"),
        Regex.match?(~r/^\d+$/, dir),
        {:ok, cmdline} <- [File.read("/proc/#{dir}/cmdline")],
        path in String.split(cmdline, <<0>>),
        do: String.to_integer(dir)
  end

  # Whether the OS process runs: a zombie (an orphan that a PID 1 which
  # does not reap keeps, as in some containers) has ended.
  def alive?(os_pid) do
    case File.read("/proc/#{os_pid}/stat") do
      {:ok, stat} -> not Regex.match?(~r/^.*\) Z /s, stat)
      {:error, _} -> false
    end
  end

  # OS pids of the processes in process group `pgid` that have not ended.
  def group_members(pgid) do
    for dir <- File.ls!("/proc"),
        Regex.match?(~r/^\d+$/, dir),
        {:ok, stat} <- [File.read("/proc/#{dir}/stat")],
        # pid (comm) state ppid pgrp ...; comm may hold spaces and parens.
        [_, state, _ppid, pgrp] <- [Regex.run(~r/^.*\) (\S) (\d+) (\d+) /s, stat)],
        state != "Z" and String.to_integer(pgrp) == pgid,
        do: String.to_integer(dir)
  end

  # The parent of an OS process, from /proc.
  def parent(os_pid) do
    with {:ok, stat} <- File.read("/proc/#{os_pid}/stat"),
         [_, ppid] <- Regex.run(~r/^.*\) \S (\d+) /s, stat) do
      String.to_integer(ppid)
    else
      _ -> nil
    end
  end

  # Its environment and command line, as lists of strings.
  def environ(os_pid), do: split0(File.read("/proc/#{os_pid}/environ"))
  def cmdline(os_pid), do: split0(File.read("/proc/#{os_pid}/cmdline"))

  defp split0({:ok, data}), do: String.split(data, <<0>>, trim: true)
  defp split0({:error, _}), do: []

  # Whether nothing listens on `port` on 127.0.0.1.
  def port_free?(port) do
    case :gen_tcp.listen(port, ip: {127, 0, 0, 1}, reuseaddr: true) do
      {:ok, socket} -> :gen_tcp.close(socket) == :ok
      {:error, _} -> false
    end
  end

  # POSTs `body` (JSON text) to `url`; {status, body}.
  def post(url, body) do
    {:ok, _} = Application.ensure_all_started(:inets)
    request = {String.to_charlist(url), [], ~c"application/json", body}

    {:ok, {{_, status, _}, _headers, response}} =
      :httpc.request(:post, request, [timeout: 60_000], body_format: :binary)

    {status, response}
  end

  @doc """
  A stand-in llama-server (no llama.cpp): writes `health.py` into `dir`
  and returns its path. It answers /health with 200 on the --port asked
  for; flags before llama-server's arguments: --ignore-term ignores
  SIGTERM, --pidfile FILE records its pid, --argv FILE records the
  arguments it was started with.
  """
  def health_py!(dir) do
    path = Path.join(dir, "health.py")

    File.write!(path, """
    import http.server, os, signal, sys
    args = sys.argv[1:]
    while args and args[0] in ("--ignore-term", "--pidfile", "--argv"):
        if args[0] == "--ignore-term":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            args = args[1:]
        elif args[0] == "--pidfile":
            with open(args[1], "w") as f:
                f.write(str(os.getpid()))
            args = args[2:]
        else:
            with open(args[1], "w") as f:
                f.write("\\n".join(args[2:]))
            args = args[2:]
    port = int(args[args.index("--port") + 1])

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"status":"ok"}')

        def log_message(self, *args):
            pass

    http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
    """)

    path
  end

  @doc """
  An executable `name` in `dir` that runs the stand-in (`health_py!/1`)
  with `flags` before the arguments it is given, as its own process.
  """
  def stand_in!(dir, name, flags \\ []) do
    health = health_py!(dir)
    script = Path.join(dir, name)
    words = Enum.map_join([health | flags], " ", &sh_quote/1)
    File.write!(script, "#!/bin/sh\nexec python3 #{words} \"$@\"\n")
    File.chmod!(script, 0o755)
    script
  end

  # A tmp_dir carries the test's name, quotes included.
  defp sh_quote(word), do: "'" <> String.replace(word, "'", "'\\''") <> "'"
end
