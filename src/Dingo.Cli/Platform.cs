using System.Diagnostics;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using Dingo.Config;
using Dingo.Postgres;
using Dingo.Store;

namespace Dingo.Cli;

/// <summary>
/// `dingo up`: the whole platform on loopback as separate processes — etcd, the broker, three cells in
/// three zones — supervised until Ctrl-C, then stopped in order: cells (their PostgreSQL nodes stop with
/// data kept), broker, etcd. A second `dingo up` finds every instance again in etcd and on disk.
/// </summary>
public static class Platform
{
    private static readonly (string Id, string Zone)[] Cells = [("cell-1", "z1"), ("cell-2", "z2"), ("cell-3", "z3")];

    /// <summary>The loopback platform's cells share 127.0.0.1: cell i (from 0) serves /healthz and /readyz on 8091 + i.</summary>
    private static int CellHealthPort(int index) => 8091 + index;

    /// <summary>
    /// How long the platform's etcd keeps past revisions. etcd keeps every revision of every key until it is compacted,
    /// and a platform writes all the time (node reports, leader keys, events), so without compaction its database grows
    /// until it reaches etcd's quota (2 GiB by default) and etcd refuses every write (NOSPACE alarm): no provision,
    /// failover or report until an operator compacts and defragments it. Dingo reads current values only and watches
    /// from the present, never an old revision, so five minutes of history (as Kubernetes' API server keeps) is plenty.
    /// deploy/three-hosts.sh passes the same flags; an etcd of the operator's own needs them too (docs/operator-guide.md).
    /// </summary>
    public static IReadOnlyList<string> EtcdHistoryArgs(string retention = "5m") =>
        ["--auto-compaction-mode", "periodic", "--auto-compaction-retention", retention];

    public static async Task<int> UpAsync(string home, IReadOnlyList<string> configFiles, DingoSettings settings)
    {
        if (LoopbackProblem(settings) is { } problem)
        {
            Console.Error.WriteLine($"dingo: {problem}");
            return 2;
        }
        var data = settings.DataDir;
        Directory.CreateDirectory(Path.Combine(data, "logs"));
        Directory.CreateDirectory(Path.Combine(data, "run"));
        var (username, password) = await BrokerCredentialsAsync(settings, data);
        var adminPassword = await AdminPasswordAsync(settings, data);

        using var stop = new CancellationTokenSource();
        using var sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, c => { c.Cancel = true; stop.Cancel(); });
        using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c => { c.Cancel = true; stop.Cancel(); });

        var children = new List<Child>();
        try
        {
            var etcdEndpoint = new Uri(settings.EtcdEndpoints[0]);
            KillLeftovers(data);
            if (!PortFree(etcdEndpoint.Host, etcdEndpoint.Port))
            {
                Console.Error.WriteLine($"dingo: port {etcdEndpoint.Port} on {etcdEndpoint.Host} is in use by another program: stop it, or point dingo.etcd.endpoints elsewhere");
                return 1;
            }
            var brokerUri = new Uri(settings.Broker.Url);
            if (!PortFree(brokerUri.Host, brokerUri.Port))
            {
                Console.Error.WriteLine($"dingo: port {brokerUri.Port} on {brokerUri.Host} is in use: stop that program or set DINGO_BROKER_URL");
                return 1;
            }

            var etcd = Child.Start("etcd", "/usr/bin/etcd",
            [
                "--name", "dingo", "--data-dir", Path.Combine(data, "etcd"),
                "--listen-client-urls", $"http://{etcdEndpoint.Host}:{etcdEndpoint.Port}",
                "--advertise-client-urls", $"http://{etcdEndpoint.Host}:{etcdEndpoint.Port}",
                "--listen-peer-urls", $"http://{etcdEndpoint.Host}:{etcdEndpoint.Port + 1}",
                "--initial-advertise-peer-urls", $"http://{etcdEndpoint.Host}:{etcdEndpoint.Port + 1}",
                "--initial-cluster", $"dingo=http://{etcdEndpoint.Host}:{etcdEndpoint.Port + 1}",
                "--log-level", "warn",
                .. EtcdHistoryArgs(),
            ], new Dictionary<string, string>(), data, echo: false);
            children.Add(etcd);
            await WaitForEtcdAsync(settings, stop.Token);

            var env = new Dictionary<string, string>
            {
                ["DINGO_BROKER_USERNAME"] = username,
                ["DINGO_BROKER_PASSWORD"] = password,
                ["DINGO_DATA_DIR"] = data,
            };
            // The seal key the console found (DINGO_SEAL_KEYS is inherited from this process's environment as it is).
            if (settings.Seal.InlineKeys.Length == 0 && settings.Seal.KeyFile.Length > 0) env[Dingo.Security.SealSettings.KeyFileVariable] = settings.Seal.KeyFile;
            var configArgs = configFiles.SelectMany(f => new[] { "--config", f }).ToArray();
            // Only the broker holds the admin credentials; the `./dingo` admin commands read them from the same file.
            var brokerEnv = new Dictionary<string, string>(env)
            {
                ["DINGO_BROKER_ADMIN_USERNAME"] = settings.Broker.AdminUsername,
                ["DINGO_BROKER_ADMIN_PASSWORD"] = adminPassword,
            };
            var broker = Child.Start("broker", "dotnet", [Dll(home, "Dingo.Broker"), .. configArgs], brokerEnv, data, echo: true);
            children.Add(broker);
            foreach (var (index, (id, zone)) in Cells.Index())
            {
                // Three cells on one address: a health port each (8091-8093).
                var cellEnv = new Dictionary<string, string>(env)
                {
                    ["DINGO_CELL_ID"] = id, ["DINGO_CELL_ZONE"] = zone,
                    ["DINGO_CELL_HEALTH_PORT"] = CellHealthPort(index).ToString(System.Globalization.CultureInfo.InvariantCulture),
                };
                children.Add(Child.Start(id, "dotnet", [Dll(home, "Dingo.Cell"), .. configArgs, "--seed", settings.Akka.MemberAddress("127.0.0.1", settings.Broker.AkkaPort)], cellEnv, data, echo: true));
            }
            await WaitForBrokerAsync(settings, stop.Token);

            Console.WriteLine();
            Console.WriteLine("Dingo PostgreSQL is up.");
            Console.WriteLine($"  broker URL:      {settings.Broker.Url}");
            Console.WriteLine($"  broker username: {username}");
            Console.WriteLine($"  broker password: {password}");
            Console.WriteLine($"  admin API:       {settings.Broker.AdminUsername}, password in {Path.Combine(data, AdminCredentialsFile)} (the ./dingo admin commands use it)");
            Console.WriteLine($"  etcd:            {string.Join(",", settings.EtcdEndpoints)}   cells: {string.Join(", ", Cells.Select(c => $"{c.Id} ({c.Zone})"))}");
            Console.WriteLine($"  health:          {settings.Broker.Url}/readyz, cells http://127.0.0.1:{CellHealthPort(0)}-{CellHealthPort(Cells.Length - 1)}/readyz");
            Console.WriteLine($"  data and logs:   {data}");
            Console.WriteLine("  register it:     cf create-service-broker dingo-postgresql " + $"{username} <password> {settings.Broker.Url}");
            Console.WriteLine("Ctrl-C stops everything (instances keep their data for the next `./dingo up`).");
            Console.WriteLine();

            // Supervise: a process that dies while we are up is started again.
            var refused = new HashSet<string>(StringComparer.Ordinal);
            while (!stop.IsCancellationRequested)
            {
                // Often: a cell agent that died must be back before its leaders' guard deadlines (3/4 TTL after the last renewal).
                try { await Task.Delay(200, stop.Token); }
                catch (OperationCanceledException) { break; }
                foreach (var child in children.Where(c => c.HasExited).ToList())
                {
                    if (child.ExitCode == Dingo.Store.SchemaVersion.RefusedExitCode)
                    {
                        // etcd's records are of a newer Dingo: starting it again would only refuse again.
                        if (refused.Add(child.Name))
                            Console.Error.WriteLine($"dingo: {child.Name} refused to run: etcd holds records of a newer Dingo schema (log: {child.LogPath}); not starting it again");
                        continue;
                    }
                    Console.Error.WriteLine($"dingo: {child.Name} exited with code {child.ExitCode}; starting it again (log: {child.LogPath})");
                    children[children.IndexOf(child)] = child.Restart();
                }
            }
            Console.WriteLine("\nstopping: cells first (PostgreSQL nodes stop, data kept), then the broker, then etcd");
            return 0;
        }
        catch (OperationCanceledException)
        {
            return 130;
        }
        catch (Exception ex) when (ex is TimeoutException or InvalidOperationException or System.ComponentModel.Win32Exception)
        {
            Console.Error.WriteLine($"dingo: {ex.Message}");
            return 1;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            // A child could not be started again: its log or pid file cannot be written (the folder was deleted while the
            // platform ran, a full disk). The platform stops whole rather than die half-supervised with a stack trace.
            Console.Error.WriteLine(Directory.Exists(Path.Combine(data, "logs"))
                ? $"dingo: {ex.Message.TrimEnd('.')}; stopping the platform"
                : $"dingo: the platform's folder {data} was deleted while it ran; stopping the platform");
            return 1;
        }
        finally
        {
            // Cells together first (each stops its PostgreSQL nodes), then the broker, then etcd last.
            // A failure stopping one child must not leave the others running.
            var cellsFirst = children.Where(c => c.Name.StartsWith("cell-", StringComparison.Ordinal)).ToList();
            await Task.WhenAll(cellsFirst.Select(c => StopQuietlyAsync(c, TimeSpan.FromSeconds(60))));
            foreach (var c in children.Where(c => !cellsFirst.Contains(c)).Reverse()) await StopQuietlyAsync(c, TimeSpan.FromSeconds(30));
        }
    }

    private static async Task StopQuietlyAsync(Child child, TimeSpan grace)
    {
        try { await child.StopAsync(grace); }
        catch (Exception ex) when (ex is IOException or InvalidOperationException or UnauthorizedAccessException or System.ComponentModel.Win32Exception)
        {
            Console.Error.WriteLine($"dingo: stopping {child.Name}: {ex.Message}");
        }
    }

    private static string Dll(string home, string project)
    {
        foreach (var config in new[] { "Release", "Debug" })
        {
            var path = Path.Combine(home, "src", project, "bin", config, "net10.0", project + ".dll");
            if (File.Exists(path)) return ReadyToRun.Prefer(path);
        }
        throw new InvalidOperationException($"{project} is not built: run ./dingo up (it builds first) or dotnet build -c Release");
    }

    /// <summary>Environment first; else the configured password; else one generated once and kept (mode 0600 from creation).</summary>
    private static async Task<(string Username, string Password)> BrokerCredentialsAsync(DingoSettings settings, string data)
    {
        var username = settings.Broker.Username;
        if (!string.IsNullOrEmpty(settings.Broker.Password)) return (username, settings.Broker.Password);
        var file = Path.Combine(data, "broker-credentials");
        if (File.Exists(file))
        {
            var saved = (await File.ReadAllTextAsync(file)).Trim();
            if (saved.Length > 0) return (username, saved);
        }
        var password = Secrets.Password(32);
        await Dingo.Security.SecretFile.WriteAsync(file, password, CancellationToken.None);
        return (username, password);
    }

    /// <summary>Where `dingo up` keeps the generated admin password (mode 600) when none is configured.</summary>
    public const string AdminCredentialsFile = Dingo.Membership.OperatorCredentials.SavedFile;

    /// <summary>The admin API's password: environment or configuration first; else one generated once and kept (mode 600).</summary>
    private static async Task<string> AdminPasswordAsync(DingoSettings settings, string data)
    {
        if (!string.IsNullOrEmpty(settings.Broker.AdminPassword)) return settings.Broker.AdminPassword;
        var file = Path.Combine(data, AdminCredentialsFile);
        if (File.Exists(file))
        {
            var saved = (await File.ReadAllTextAsync(file)).Trim();
            if (saved.Length > 0) return saved;
        }
        var password = Secrets.Password(32);
        await Dingo.Security.SecretFile.WriteAsync(file, password, CancellationToken.None);
        return password;
    }

    private static bool PortFree(string host, int port)
    {
        try
        {
            using var probe = new TcpClient();
            probe.Connect(host, port);
            return false;
        }
        catch (SocketException)
        {
            return true;
        }
    }

    /// <summary>Processes a crashed earlier `dingo up` left behind (by their recorded PIDs).</summary>
    private static void KillLeftovers(string data)
    {
        foreach (var pidFile in Directory.GetFiles(Path.Combine(data, "run"), "*.pid"))
        {
            if (int.TryParse(File.ReadAllText(pidFile).Trim(), out var pid))
            {
                try
                {
                    var p = Process.GetProcessById(pid);
                    var cmd = File.Exists($"/proc/{pid}/cmdline") ? File.ReadAllText($"/proc/{pid}/cmdline") : "";
                    if (cmd.Contains("etcd", StringComparison.Ordinal) || cmd.Contains("Dingo.", StringComparison.Ordinal))
                    {
                        Console.Error.WriteLine($"dingo: stopping {Path.GetFileNameWithoutExtension(pidFile)} (pid {pid}) left by an earlier run");
                        ProcessTree.Kill(p);
                        p.WaitForExit(10_000);
                    }
                }
                catch (ArgumentException) { /* not running */ }
            }
            File.Delete(pidFile);
        }
    }

    /// <summary>
    /// Why `dingo up` cannot run with these settings, before it changes anything: its etcd is one member on loopback over
    /// plain HTTP, started by itself; TLS with client certificates is for etcd on several hosts (`--hosts 3`, deploy/).
    /// </summary>
    internal static string? LoopbackProblem(DingoSettings settings)
    {
        var endpoint = settings.EtcdEndpoints[0];
        if (!endpoint.StartsWith("http://", StringComparison.OrdinalIgnoreCase) && endpoint.Contains("://", StringComparison.Ordinal))
            return $"`dingo up` runs its own etcd on loopback over plain http://, not {endpoint}: leave dingo.etcd.endpoints (DINGO_ETCD_ENDPOINTS) at http://127.0.0.1:2379, or use `./dingo up --hosts 3` for etcd over TLS";
        return null;
    }

    private static async Task WaitForEtcdAsync(DingoSettings settings, CancellationToken ct)
    {
        await using var store = EtcdStore.Connect(settings);
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (true)
        {
            try
            {
                await store.GetStringAsync(store.Keys.PortCounter, ct);
                return;
            }
            catch (Grpc.Core.RpcException) when (DateTime.UtcNow < deadline)
            {
                await Task.Delay(200, ct);
            }
            catch (Grpc.Core.RpcException ex)
            {
                throw new TimeoutException($"etcd did not answer within 30 s: {ex.Status.Detail}; see .dingo/logs/etcd.log");
            }
        }
    }

    private static async Task WaitForBrokerAsync(DingoSettings settings, CancellationToken ct)
    {
        var url = settings.Broker.Url;
        using var http = BrokerHttp.Create(settings, TimeSpan.FromSeconds(2));
        var deadline = DateTime.UtcNow.AddSeconds(60);
        while (DateTime.UtcNow < deadline)
        {
            try
            {
                if ((await http.GetAsync(new Uri(new Uri(url), "/healthz"), ct)).IsSuccessStatusCode) return;
            }
            catch (HttpRequestException) { }
            catch (TaskCanceledException) when (!ct.IsCancellationRequested) { }
            await Task.Delay(300, ct);
        }
        throw new TimeoutException($"the broker did not answer on {url} within 60 s; see .dingo/logs/broker.log");
    }
}

/// <summary>A supervised child process in its own session (so Ctrl-C reaches only us, and we stop children in order).</summary>
internal sealed class Child
{
    private readonly string _file;
    private readonly string[] _args;
    private readonly IReadOnlyDictionary<string, string> _env;
    private readonly string _data;
    private readonly bool _echo;
    private readonly Process _process;
    private readonly StreamWriter _log;

    private Child(string name, string file, string[] args, IReadOnlyDictionary<string, string> env, string data, bool echo)
    {
        Name = name;
        _file = file;
        _args = args;
        _env = env;
        _data = data;
        _echo = echo;
        LogPath = Path.Combine(data, "logs", name + ".log");
        _log = new StreamWriter(LogPath, append: true) { AutoFlush = true };
        var psi = new ProcessStartInfo("setsid") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(file);
        foreach (var a in args) psi.ArgumentList.Add(a);
        foreach (var (k, v) in env) psi.Environment[k] = v;
        _process = Process.Start(psi) ?? throw new InvalidOperationException($"could not start {name}");
        _process.OutputDataReceived += (_, e) => Line(e.Data);
        _process.ErrorDataReceived += (_, e) => Line(e.Data);
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
        File.WriteAllText(Path.Combine(data, "run", name + ".pid"), _process.Id.ToString());
    }

    public string Name { get; }
    public string LogPath { get; }
    public bool HasExited => _process.HasExited;
    public int ExitCode => _process.ExitCode;

    public static Child Start(string name, string file, string[] args, IReadOnlyDictionary<string, string> env, string data, bool echo) =>
        new(name, file, args, env, data, echo);

    public Child Restart() => new(Name, _file, _args, _env, _data, _echo);

    private void Line(string? line)
    {
        if (line is null) return;
        lock (_log) _log.WriteLine(line);
        if (_echo) Console.WriteLine($"[{Name}] {line}");
    }

    public async Task StopAsync(TimeSpan grace)
    {
        if (!_process.HasExited)
        {
            // SIGTERM: the process shuts down cleanly (cells stop their nodes first).
            _ = kill(_process.Id, 15);
            using var cts = new CancellationTokenSource(grace);
            try { await _process.WaitForExitAsync(cts.Token); }
            catch (OperationCanceledException)
            {
                Console.Error.WriteLine($"dingo: {Name} did not stop within {grace.TotalSeconds:0}s; killing it");
                ProcessTree.Kill(_process);
                await _process.WaitForExitAsync();
            }
        }
        try { File.Delete(Path.Combine(_data, "run", Name + ".pid")); }
        catch (DirectoryNotFoundException) { }
        lock (_log) _log.Dispose();
    }

    [DllImport("libc", SetLastError = true)]
    private static extern int kill(int pid, int sig);
}
