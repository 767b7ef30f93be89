using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using Dingo.Store;
using Dingo.Tests.Support;

namespace Dingo.Bench.Failover;

/// <summary>
/// The peer of `--peer patroni`: Debian's patroni package (3.0.2 on Debian 12) managing PostgreSQL 15 nodes on this
/// machine, with an etcd of its own (v3 API, run as the suite runs ours: data in memory, ahead for CPU) and HAProxy in
/// TCP mode routing to the node whose Patroni REST API answers 200 on <c>/primary</c> — the original Dingo's stack, tuned
/// well past its defaults (<see cref="PeerTimings"/>). One peer cluster per run, as one platform per run on our side.
/// </summary>
internal sealed class PatroniPeer : IAsyncDisposable
{
    public const string PatroniBin = "/usr/bin/patroni";
    public const string HaproxyBin = "/usr/sbin/haproxy";
    public const string PostgresBinDir = "/usr/lib/postgresql/15/bin";

    /// <summary>Patroni's dynamic timings (seconds) and HAProxy's check interval (ms) for the peer.</summary>
    public sealed record PeerTimings(int Ttl, int LoopWait, int RetryTimeout, int CheckIntervalMs)
    {
        public override string ToString() =>
            FormattableString.Invariant($"ttl={Ttl} loop_wait={LoopWait} retry_timeout={RetryTimeout} haproxy_inter={CheckIntervalMs}ms");
    }

    private readonly string _root;
    private readonly string _etcdData;
    private readonly string _scope;
    private readonly List<(Process Process, string Name)> _processes = [];
    private readonly int[] _pgPorts;
    private readonly int[] _apiPorts;
    private readonly HttpClient _http = new() { Timeout = TimeSpan.FromSeconds(1) };

    private PatroniPeer(string root, string etcdData, string scope, int nodes)
    {
        _root = root;
        _etcdData = etcdData;
        _scope = scope;
        _pgPorts = Enumerable.Range(0, nodes).Select(_ => FreePorts.One()).ToArray();
        _apiPorts = Enumerable.Range(0, nodes).Select(_ => FreePorts.One()).ToArray();
    }

    public string EtcdUrl { get; private set; } = "";
    public int RouterPort { get; private set; }

    /// <summary>Through HAProxy, as the application sees the cluster.</summary>
    public string ConnectionString =>
        FormattableString.Invariant($"Host=127.0.0.1;Port={RouterPort};Username=postgres;Database=postgres;Pooling=false");

    public string LeaderKey => $"/service/{_scope}/leader";

    /// <summary>What this machine lacks to run the peer (null: nothing): the Debian packages it comes from.</summary>
    public static string? Missing()
    {
        var missing = new List<string>();
        if (!File.Exists(PatroniBin)) missing.Add("patroni");
        if (!File.Exists(HaproxyBin)) missing.Add("haproxy");
        if (!File.Exists(Path.Combine(PostgresBinDir, "postgres"))) missing.Add("postgresql-15");
        if (!File.Exists("/usr/bin/etcd")) missing.Add("etcd-server");
        return missing.Count == 0 ? null : $"apt-get install {string.Join(' ', missing)}";
    }

    /// <summary>
    /// etcd, <paramref name="nodes"/> Patroni nodes (<paramref name="synchronous"/>: synchronous_mode, as cluster-ha)
    /// and HAProxy, ready when one node leads, every other streams and a write goes through HAProxy.
    /// </summary>
    public static async Task<PatroniPeer> StartAsync(int nodes, bool synchronous, PeerTimings timings, CancellationToken ct)
    {
        var scope = "bench" + Guid.NewGuid().ToString("N")[..8];
        // PostgreSQL's data on the disk ours uses (TestPlatform: the temporary folder), etcd's in memory as ours.
        var peer = new PatroniPeer(Path.Combine(Path.GetTempPath(), "dingo-bench-patroni-" + scope),
            Path.Combine(EtcdForTests.DataRoot, "dingo-bench-patroni-etcd-" + scope), scope, nodes);
        try
        {
            await peer.StartAllAsync(synchronous, timings, ct);
            return peer;
        }
        catch
        {
            Console.Error.WriteLine(peer.LogTail());
            await peer.DisposeAsync();
            throw;
        }
    }

    private async Task StartAllAsync(bool synchronous, PeerTimings timings, CancellationToken ct)
    {
        Directory.CreateDirectory(_root);
        // etcd, as the platform's: data in memory, nice -10 (Support/EtcdForTests).
        var client = FreePorts.One();
        var peerPort = FreePorts.One();
        EtcdUrl = $"http://127.0.0.1:{client}";
        var (etcdFile, etcdArgs) = EtcdForTests.Command(
        [
            "--name", "peer", "--data-dir", _etcdData,
            "--listen-client-urls", EtcdUrl, "--advertise-client-urls", EtcdUrl,
            "--listen-peer-urls", $"http://127.0.0.1:{peerPort}", "--initial-advertise-peer-urls", $"http://127.0.0.1:{peerPort}",
            "--initial-cluster", $"peer=http://127.0.0.1:{peerPort}", "--log-level", "error",
        ]);
        Start("etcd", etcdFile, etcdArgs, asPostgres: false);
        await using (var store = new EtcdStore([EtcdUrl], "/probe"))
            await UntilAsync(async () =>
            {
                try { await store.GetStringAsync("/probe/x", ct); return true; }
                catch (Grpc.Core.RpcException) { return false; }
            }, TimeSpan.FromSeconds(20), "the peer's etcd answering", ct);

        // Patroni runs PostgreSQL as the postgres user; everything of it lives under its own folder.
        for (var i = 0; i < _pgPorts.Length; i++)
        {
            var dir = NodeDir(i);
            Directory.CreateDirectory(dir);
            await File.WriteAllTextAsync(Path.Combine(dir, "patroni.yml"), PatroniYaml(i, synchronous, timings), ct);
        }
        Chown(_root);
        // The first node first, so it is the one that initialises; the others clone from it.
        StartPatroni(0);
        await UntilAsync(async () => await StatusAsync(_apiPorts[0], "primary", ct) == 200, TimeSpan.FromSeconds(60), "the first Patroni node leading", ct);
        for (var i = 1; i < _pgPorts.Length; i++) StartPatroni(i);
        // Running as a replica is not streaming yet (a first connection refused waits wal_retrieve_retry_interval, 5 s):
        // the leader itself must list every other node as streaming, as ours is checked before its faults.
        await UntilAsync(async () =>
        {
            for (var i = 1; i < _pgPorts.Length; i++)
                if (await StatusAsync(_apiPorts[i], "replica", ct) != 200) return false;
            return await StreamingAsync(_pgPorts[0], ct) == _pgPorts.Length - 1 && (!synchronous || await AnySyncAsync(ct));
        }, TimeSpan.FromSeconds(90), "every other Patroni node streaming" + (synchronous ? ", one synchronous" : ""), ct);

        RouterPort = FreePorts.One();
        var cfg = Path.Combine(_root, "haproxy.cfg");
        await File.WriteAllTextAsync(cfg, HaproxyConfig(timings), ct);
        Start("haproxy", HaproxyBin, ["-f", cfg, "-db"], asPostgres: false);
    }

    /// <summary>Standbys the node at <paramref name="port"/> streams to (0 when it does not answer).</summary>
    private static async Task<long> StreamingAsync(int port, CancellationToken ct)
    {
        try
        {
            await using var conn = new Npgsql.NpgsqlConnection(FormattableString.Invariant($"Host=127.0.0.1;Port={port};Username=postgres;Database=postgres;Pooling=false;Timeout=2"));
            await conn.OpenAsync(ct);
            await using var cmd = new Npgsql.NpgsqlCommand("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'", conn);
            return (long)(await cmd.ExecuteScalarAsync(ct))!;
        }
        catch (Npgsql.NpgsqlException)
        {
            return 0;
        }
    }

    private async Task<bool> AnySyncAsync(CancellationToken ct)
    {
        for (var i = 0; i < _apiPorts.Length; i++)
            if (await StatusAsync(_apiPorts[i], "sync", ct) == 200) return true;
        return false;
    }

    private string NodeDir(int i) => Path.Combine(_root, $"node{i}");

    private string PatroniYaml(int i, bool synchronous, PeerTimings t)
    {
        var dir = NodeDir(i);
        var sb = new StringBuilder();
        sb.AppendLine(CultureInfo.InvariantCulture, $"scope: {_scope}");
        sb.AppendLine("namespace: /service/");
        sb.AppendLine(CultureInfo.InvariantCulture, $"name: node{i}");
        sb.AppendLine("log:\n  level: WARNING");
        sb.AppendLine(CultureInfo.InvariantCulture, $"restapi:\n  listen: 127.0.0.1:{_apiPorts[i]}\n  connect_address: 127.0.0.1:{_apiPorts[i]}");
        sb.AppendLine(CultureInfo.InvariantCulture, $"etcd3:\n  host: {EtcdUrl["http://".Length..]}");
        sb.AppendLine("bootstrap:\n  dcs:");
        sb.AppendLine(CultureInfo.InvariantCulture, $"    ttl: {t.Ttl}\n    loop_wait: {t.LoopWait}\n    retry_timeout: {t.RetryTimeout}");
        sb.AppendLine("    maximum_lag_on_failover: 1048576");
        sb.AppendLine(CultureInfo.InvariantCulture, $"    synchronous_mode: {(synchronous ? "true" : "false")}");
        sb.AppendLine("    postgresql:\n      use_pg_rewind: true\n      use_slots: true\n      parameters:");
        sb.AppendLine("        wal_level: replica\n        hot_standby: 'on'\n        max_wal_senders: 10\n        max_replication_slots: 10\n        wal_log_hints: 'on'");
        sb.AppendLine("  initdb:\n  - encoding: UTF8\n  - data-checksums");
        sb.AppendLine("postgresql:");
        sb.AppendLine(CultureInfo.InvariantCulture, $"  listen: 127.0.0.1:{_pgPorts[i]}\n  connect_address: 127.0.0.1:{_pgPorts[i]}");
        sb.AppendLine(CultureInfo.InvariantCulture, $"  data_dir: {Path.Combine(dir, "data")}\n  bin_dir: {PostgresBinDir}\n  pgpass: {Path.Combine(dir, "pgpass")}");
        // Loopback only, trust: a throwaway cluster of the bench's (ours runs with passwords and TLS on the same path).
        sb.AppendLine("  pg_hba:\n  - local all all trust\n  - host all all 127.0.0.1/32 trust\n  - host replication all 127.0.0.1/32 trust");
        sb.AppendLine("  authentication:\n    superuser:\n      username: postgres\n    replication:\n      username: postgres\n    rewind:\n      username: postgres");
        sb.AppendLine(CultureInfo.InvariantCulture, $"  parameters:\n    unix_socket_directories: '{dir}'\n    shared_buffers: 32MB");
        return sb.ToString();
    }

    private string HaproxyConfig(PeerTimings t)
    {
        var sb = new StringBuilder();
        sb.AppendLine("global\n    maxconn 256\n");
        sb.AppendLine("defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 30m\n    timeout server 30m\n    timeout check 1s\n");
        sb.AppendLine("listen primary");
        sb.AppendLine(CultureInfo.InvariantCulture, $"    bind 127.0.0.1:{RouterPort}");
        sb.AppendLine("    option httpchk OPTIONS /primary\n    http-check expect status 200");
        sb.AppendLine(CultureInfo.InvariantCulture, $"    default-server inter {t.CheckIntervalMs}ms fall 2 rise 1 on-marked-down shutdown-sessions");
        for (var i = 0; i < _pgPorts.Length; i++)
            sb.AppendLine(CultureInfo.InvariantCulture, $"    server node{i} 127.0.0.1:{_pgPorts[i]} maxconn 100 check port {_apiPorts[i]}");
        return sb.ToString();
    }

    private void StartPatroni(int i) => Start($"node{i}", PatroniBin, [Path.Combine(NodeDir(i), "patroni.yml")], asPostgres: true);

    /// <summary>The node whose REST API says it is the primary, or -1.</summary>
    public async Task<int> PrimaryAsync(CancellationToken ct)
    {
        for (var i = 0; i < _apiPorts.Length; i++)
            if (await StatusAsync(_apiPorts[i], "primary", ct) == 200) return i;
        return -1;
    }

    /// <summary>As TestPlatform.KillCell: SIGKILL of the node's Patroni, then of every PostgreSQL process of its data.</summary>
    public void Kill(int node)
    {
        var name = $"node{node}";
        foreach (var (process, n) in _processes)
            if (n == name) { try { process.Kill(); } catch (InvalidOperationException) { } }
        var data = Path.Combine(NodeDir(node), "data") + "/";
        foreach (var pid in PidsWithCwdUnder(data)) KillNow(pid);
        foreach (var pid in PidsWithCwdUnder(data)) KillNow(pid);
    }

    private async Task<int> StatusAsync(int apiPort, string path, CancellationToken ct)
    {
        try
        {
            using var response = await _http.GetAsync($"http://127.0.0.1:{apiPort}/{path}", ct);
            return (int)response.StatusCode;
        }
        catch (Exception ex) when (ex is HttpRequestException or TaskCanceledException && !ct.IsCancellationRequested)
        {
            return 0;
        }
    }

    private static async Task UntilAsync(Func<Task<bool>> check, TimeSpan timeout, string what, CancellationToken ct)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (!await check())
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"patroni peer: {what} not within {timeout.TotalSeconds:0}s");
            await Task.Delay(100, ct);
        }
    }

    /// <summary>Through the suite's own starter (Support/RunProcesses): under setpriv --pdeathsig, so it dies with the bench.</summary>
    private void Start(string name, string file, IEnumerable<string> args, bool asPostgres)
    {
        Directory.CreateDirectory(_logs);
        var process = RunProcesses.Start(file, args, onOutput: line => Keep(name, line),
            user: asPostgres ? "postgres" : null, workingDirectory: _root);
        _processes.Add((process, name));
    }

    private readonly ConcurrentQueue<string> _log = new();
    private readonly ConcurrentDictionary<string, StreamWriter> _files = new();

    /// <summary>Every line to the process's own file (kept for a failed run); the last 200 in memory for the tail.</summary>
    private void Keep(string name, string? line)
    {
        if (line is null) return;
        var file = _files.GetOrAdd(name, n => new StreamWriter(Path.Combine(_logs, n + ".log"), append: true) { AutoFlush = true });
        lock (file) file.WriteLine(line);
        _log.Enqueue($"{name}: {line}");
        while (_log.Count > 200) _log.TryDequeue(out _);
    }

    private string _logs => Path.Combine(Path.GetTempPath(), "dingo-bench-patroni-logs-" + _scope);

    /// <summary>The last lines the peer's processes wrote, and where all of them are kept (for a failed run).</summary>
    public string LogTail()
    {
        var kept = Path.Combine(Path.GetTempPath(), "dingo-bench-logs", "patroni-" + _scope);
        try
        {
            Directory.CreateDirectory(kept);
            foreach (var log in Directory.Exists(_logs) ? Directory.GetFiles(_logs) : []) File.Copy(log, Path.Combine(kept, Path.GetFileName(log)), overwrite: true);
        }
        catch (IOException ex) { kept = $"(not kept: {ex.Message})"; }
        return $"patroni peer output (last lines; all of it in {kept}):\n" + string.Join('\n', _log.TakeLast(40));
    }

    private static void Chown(string path)
    {
        using var chown = Process.Start(new ProcessStartInfo("chown", ["-R", "postgres:postgres", path]) { UseShellExecute = false })!;
        chown.WaitForExit();
        if (chown.ExitCode != 0) throw new InvalidOperationException($"chown -R postgres {path} failed");
    }

    private static IEnumerable<int> PidsWithCwdUnder(string dir)
    {
        foreach (var entry in Directory.GetDirectories("/proc").Select(Path.GetFileName))
        {
            if (!int.TryParse(entry, CultureInfo.InvariantCulture, out var pid)) continue;
            string cwd;
            try { cwd = new DirectoryInfo($"/proc/{pid}/cwd").ResolveLinkTarget(false)?.FullName ?? ""; }
            catch (Exception) { continue; }
            if ((cwd + "/").StartsWith(dir, StringComparison.Ordinal)) yield return pid;
        }
    }

    private static void KillNow(int pid)
    {
        try { Process.GetProcessById(pid).Kill(); }
        catch (ArgumentException) { }
        catch (InvalidOperationException) { }
    }

    public async ValueTask DisposeAsync()
    {
        // HAProxy and the Patroni nodes, then whatever PostgreSQL they left, then etcd, then the folder.
        foreach (var (process, name) in _processes.Where(p => p.Name != "etcd"))
        {
            try { process.Kill(); process.WaitForExit(5000); } catch (InvalidOperationException) { }
            process.Dispose();
        }
        foreach (var pid in PidsWithCwdUnder(_root + "/")) KillNow(pid);
        await Task.Delay(200);
        foreach (var pid in PidsWithCwdUnder(_root + "/")) KillNow(pid);
        foreach (var (process, _) in _processes.Where(p => p.Name == "etcd"))
        {
            try { process.Kill(); process.WaitForExit(5000); } catch (InvalidOperationException) { }
            process.Dispose();
        }
        _http.Dispose();
        foreach (var file in _files.Values) { lock (file) file.Dispose(); }
        foreach (var folder in new[] { _root, _etcdData, _logs })
        {
            try { if (Directory.Exists(folder)) Directory.Delete(folder, recursive: true); }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException) { Console.Error.WriteLine($"patroni peer: could not delete {folder}: {ex.Message}"); }
        }
    }
}
