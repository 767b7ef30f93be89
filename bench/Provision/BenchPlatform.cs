using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using Dingo.Config;
using Dingo.Model;
using Dingo.Tests.Support;
using ContainersListParameters = Docker.DotNet.Models.ContainersListParameters;
using Npgsql;

namespace Dingo.Bench.Provision;

/// <summary>
/// A platform for the bench: etcd (the test run's), the broker in this process, three cells as OS processes on
/// the process or the Docker runtime (the run's podman and the local node image, <see cref="TestPodman"/>).
/// </summary>
internal sealed class BenchPlatform : IAsyncDisposable
{
    private static readonly TimeSpan BindableTimeout = TimeSpan.FromMinutes(5);
    private static readonly TimeSpan Poll = TimeSpan.FromMilliseconds(100);

    private readonly TestPlatform _platform;
    private readonly DingoSettings _settings;
    private readonly string _runtime;
    private readonly int _warmPool;
    private readonly HashSet<string> _instances = [];
    private readonly Dictionary<string, string> _uris = [];

    private BenchPlatform(TestPlatform platform, DingoSettings settings, string runtime, int warmPool)
    {
        _warmPool = warmPool;
        _platform = platform;
        _settings = settings;
        _runtime = runtime;
    }

    public static async Task<BenchPlatform> StartAsync(string runtime, int index, int warmPool, double firstBackupSettle, double cloneSettle, double saturatedCpuPressure, CancellationToken ct)
    {
        // Port blocks of the bench's own, below the ephemeral range and away from `dingo up` and test runs (as bench/Chaos),
        // never inside 30000-32759, where FreePorts hands out this process's etcd, broker and Akka ports.
        // Wide enough for the scale phase's 300 solo instances (two public ports each, two per node).
        var (pub, node) = (12000 + index % 2 * 2200, 13000 + index % 2 * 2200);
        var extra = $$"""
            dingo.router { port-range-first = {{pub}}, port-range-last = {{pub + 999}} }
            dingo.node-port-range-first = {{node}}
            dingo.node-port-range-last = {{node + 1199}}
            # The product's defaults (test platforms turn the warm pool off, and pass their cells more often, for the suite's time);
            # the pool's size is the bench's --warm-pool (the product's default, 2, unless asked).
            dingo.cell { warm-pool = {{warmPool}}, reconcile-interval = 1s, lease-ttl = 10s }
            # A new cluster's first base backup waits for its cell to settle (--first-backup-settle: the product's 5 s unless
            # asked; test platforms take it at once).
            dingo.backups.first-backup-settle = {{firstBackupSettle.ToString(CultureInfo.InvariantCulture)}}s
            # A new asynchronous replica clones once its cell has settled (--clone-settle: the product's 5 s unless asked;
            # test platforms clone at once).
            dingo.cell.clone-settle = {{cloneSettle.ToString(CultureInfo.InvariantCulture)}}s
            # ... and waits while the host's CPU pressure is this high (--saturated-cpu-pressure: the product's 50 unless asked;
            # test platforms do not look).
            dingo.cell.saturated-cpu-pressure = {{saturatedCpuPressure.ToString(CultureInfo.InvariantCulture)}}
            # 300 solo instances on three cells: more than the default 50 nodes a cell (an operator's setting).
            dingo.cell.capacity = 110
            """;
        var settings = TestPlatform.NewSettings(quota: 500, extra: extra, runtime: runtime);
        if (runtime == "docker") Console.Error.WriteLine($"bench: podman service at {TestPodman.Endpoint}, image {TestPodman.Image}");
        var platform = await TestPlatform.StartAsync(cells: 0, settings, ct);
        for (var i = 1; i <= 3; i++) platform.StartCellProcess(i);
        var bench = new BenchPlatform(platform, settings, runtime, warmPool);
        try
        {
            await bench.WaitForCellsAsync(3, ct);
        }
        catch
        {
            // Its cells are this run's to stop: left running, they held the run's lock and ports after it ended.
            await bench.DisposeAsync();
            throw;
        }
        return bench;
    }

    private async Task WaitForCellsAsync(int count, CancellationToken ct)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while (DateTime.UtcNow < deadline)
        {
            var cells = await _platform.Store.ListAsync<CellInfo>(_platform.Store.Keys.Cells, ct);
            if (cells.Count >= count) return;
            await Task.Delay(200, ct);
        }
        throw new TimeoutException($"fewer than {count} cells registered within 60 s");
    }

    /// <summary>
    /// Provision request → last_operation succeeded → binding → `SELECT 1` through the binding's URI. Returns the
    /// seconds from the request to the answered query.
    /// </summary>
    /// <param name="poll">how often last_operation is asked: 100 ms unless given (a platform asks every few seconds; Cloud
    /// Foundry's default is a minute, or the broker's Retry-After)</param>
    public async Task<double> ProvisionBindableAsync(string id, string planId, CancellationToken ct, TimeSpan? poll = null)
    {
        var started = Stopwatch.StartNew();
        _instances.Add(id);
        var (status, body) = await _platform.SendAsync(HttpMethod.Put, $"/v2/service_instances/{id}?accepts_incomplete=true", TestPlatform.ProvisionBody(planId), ct);
        if (status != 202) throw new InvalidOperationException($"provision {id} answered {status}: {body.ToJsonString()}");
        while (true)
        {
            if (started.Elapsed > BindableTimeout) throw new TimeoutException($"{id} not provisioned within {BindableTimeout}");
            var (s, op) = await _platform.SendAsync(HttpMethod.Get, $"/v2/service_instances/{id}/last_operation", null, ct);
            if (s != 200) throw new InvalidOperationException($"last_operation of {id} answered {s}: {op.ToJsonString()}");
            var state = (string?)op["state"];
            if (state == "succeeded") break;
            if (state != "in progress") throw new InvalidOperationException($"provision {id} ended {op.ToJsonString()}");
            await Task.Delay(poll ?? Poll, ct);
        }
        var provisioned = started.Elapsed.TotalSeconds;
        var requestedAt = DateTimeOffset.UtcNow - started.Elapsed;
        var placed = (await _platform.Store.ListAsync<NodeSpec>(_platform.Store.Keys.Nodes(id), ct)).Select(n => (n.Value.CreatedAt - requestedAt).TotalSeconds).Order();
        Console.Error.WriteLine($"bench: {id}: nodes placed at {string.Join(", ", placed.Select(F))} s, last_operation succeeded by {F(provisioned)} s");
        var bind = new JsonObject { ["service_id"] = Catalog.ServiceId, ["plan_id"] = planId, ["app_guid"] = "bench" }.ToJsonString();
        var (bs, binding) = await _platform.SendAsync(HttpMethod.Put, $"/v2/service_instances/{id}/service_bindings/b-{id}", bind, ct);
        if (bs != 201) throw new InvalidOperationException($"bind {id} answered {bs}: {binding.ToJsonString()}");
        var uri = (string)binding["credentials"]!["uri"]!;
        _uris[id] = uri;
        var bound = started.Elapsed.TotalSeconds;
        var tries = 0;
        while (true)
        {
            try
            {
                tries++;
                await QueryAsync(uri, ct);
                var bindable = started.Elapsed.TotalSeconds;
                Console.Error.WriteLine($"bench: {id}: bind answered by {F(bound)} s, first query by {F(bindable)} s (try {tries})");
                return bindable;
            }
            catch (Exception ex) when (ex is NpgsqlException or TimeoutException && started.Elapsed < BindableTimeout)
            {
                await Task.Delay(Poll, ct);
            }
        }
    }

    /// <summary>
    /// Until each cell's warm pool is full: a platform up for a while, not one still filling it. The process runtime's
    /// entries are folders with a "ready" file; the Docker runtime's, marker containers (kind "warm") on the engine.
    /// </summary>
    public async Task WaitWarmAsync(CancellationToken ct)
    {
        const int cells = 3;
        if (_warmPool == 0) return;
        var watch = Stopwatch.StartNew();
        using var client = _runtime == "docker" ? TestPodman.Client() : null;
        async Task<int[]> ReadyAsync()
        {
            if (client is null)
                return Enumerable.Range(1, cells).Select(n => Path.Combine(_settings.DataDir, "cells", $"cell-{n}", "nodes", "@warm"))
                    .Select(root => Directory.Exists(root) ? Directory.EnumerateFiles(root, "ready", SearchOption.AllDirectories).Count() : 0).ToArray();
            var markers = await client.Containers.ListContainersAsync(new ContainersListParameters { All = true }, ct);
            string? Label(Docker.DotNet.Models.ContainerListResponse c, string key) => c.Labels is { } l && l.TryGetValue(key, out var v) ? v : null;
            var ours = markers.Where(c => Label(c, "dingo.kind") == "warm" && Label(c, "dingo.platform") == _settings.Cell.Docker.Platform).ToList();
            return Enumerable.Range(1, cells).Select(n => ours.Count(c => Label(c, "dingo.cell") == $"cell-{n}")).ToArray();
        }
        int[] ready;
        while ((ready = await ReadyAsync()).Any(r => r < _warmPool))
        {
            if (watch.Elapsed > TimeSpan.FromSeconds(180)) throw new TimeoutException($"warm pools not full within 180 s: {string.Join(", ", ready.Select((r, i) => $"cell-{i + 1} {r}"))}");
            await Task.Delay(200, ct);
        }
        Console.Error.WriteLine($"bench: warm pools full ({_warmPool} per cell) after {watch.Elapsed.TotalSeconds:0.0} s of waiting");
    }

    /// <summary>
    /// Not measured: until the instance's replicas stream and its first base backup is stored. A `cluster` is bindable
    /// before its replica is built; one at a time means the next provision does not share two cores with this one's
    /// clone and base backup.
    /// </summary>
    public async Task SettleAsync(string id, CancellationToken ct)
    {
        await _platform.WaitFullAndHealthyAsync(id, BindableTimeout);
        var watch = Stopwatch.StartNew();
        while ((await _platform.Store.GetAsync<BackupState>(_platform.Store.Keys.Backup(id), ct))?.Value is not { LastBaseBackup: not null })
        {
            if (watch.Elapsed > BindableTimeout) throw new TimeoutException($"{id}: no base backup within {BindableTimeout}");
            await Task.Delay(Poll, ct);
        }
    }

    private static string F(double s) => s.ToString("0.00", CultureInfo.InvariantCulture);

    private static async Task QueryAsync(string uri, CancellationToken ct)
    {
        // Npgsql's default open timeout (15 s), as an application's: a client that gave up after 5 s and tried again cost a
        // saturated primary a fork, a TLS handshake and a SCRAM exchange for each try it abandoned.
        await using var connection = new NpgsqlConnection(TestPlatform.ConnectionStringFromUri(uri, timeoutSeconds: 15));
        await connection.OpenAsync(ct);
        await using var command = new NpgsqlCommand("SELECT 1", connection);
        await command.ExecuteScalarAsync(ct);
    }

    /// <summary>Instances answering a query through their binding now.</summary>
    public async Task<int> CountServingAsync(CancellationToken ct)
    {
        var serving = 0;
        foreach (var uri in _uris.Values)
        {
            try
            {
                await QueryAsync(uri, ct);
                serving++;
            }
            catch (Exception ex) when (ex is NpgsqlException or TimeoutException)
            {
                Console.Error.WriteLine($"bench: {ex.GetType().Name}: {ex.Message}");
            }
        }
        return serving;
    }

    /// <summary>Deletes every instance the bench made and waits until each delete has finished.</summary>
    public async Task DeprovisionAllAsync(CancellationToken ct)
    {
        var ids = _instances.ToList();
        await Task.WhenAll(ids.Select(async id =>
        {
            var planId = (await _platform.Store.GetAsync<InstanceRecord>(_platform.Store.Keys.Instance(id), ct))?.Value.PlanId ?? Catalog.SoloPlanId;
            var (status, body) = await _platform.SendAsync(HttpMethod.Delete, $"/v2/service_instances/{id}?accepts_incomplete=true&service_id={Catalog.ServiceId}&plan_id={planId}", null, ct);
            if (status is not (202 or 200 or 410)) throw new InvalidOperationException($"deprovision {id} answered {status}: {body.ToJsonString()}");
            var deadline = DateTime.UtcNow + BindableTimeout;
            while (status == 202 && DateTime.UtcNow < deadline)
            {
                var (s, op) = await _platform.SendAsync(HttpMethod.Get, $"/v2/service_instances/{id}/last_operation", null, ct);
                if (s == 410 || (s == 200 && (string?)op["state"] != "in progress")) break;
                await Task.Delay(200, ct);
            }
        }));
        _instances.Clear();
        _uris.Clear();
        // The cells stop the nodes after the records are gone; wait for every node's status to disappear.
        var until = DateTime.UtcNow + TimeSpan.FromSeconds(120);
        while (DateTime.UtcNow < until && (await _platform.Store.ListAsync<NodeStatus>(_platform.Store.Keys.AllStatus, ct)).Count > 0)
            await Task.Delay(500, ct);
    }

    /// <summary>
    /// Proportional set size (shared pages split between the processes that map them) of every PostgreSQL process
    /// of the platform's nodes, summed: each node's postmaster and its children. Returns the node count and MiB.
    /// </summary>
    public async Task<(int Nodes, double Mib)> NodeMemoryMibAsync(CancellationToken ct)
    {
        var postmasters = new List<int>();
        if (_runtime == "process")
        {
            foreach (var pidFile in Directory.EnumerateFiles(_settings.DataDir, "postmaster.pid", SearchOption.AllDirectories))
            {
                var first = File.ReadLines(pidFile).FirstOrDefault();
                if (int.TryParse(first, CultureInfo.InvariantCulture, out var pid) && Directory.Exists($"/proc/{pid}")) postmasters.Add(pid);
            }
        }
        else
        {
            using var client = TestPodman.Client();
            var containers = await client.Containers.ListContainersAsync(new ContainersListParameters(), ct);
            foreach (var c in containers.Where(c => c.Labels.TryGetValue("dingo.instance", out var i) && _instances.Contains(i)))
            {
                var inspect = await client.Containers.InspectContainerAsync(c.ID, ct);
                if (inspect.State.Pid > 0) postmasters.Add((int)inspect.State.Pid);
            }
        }
        var children = ChildrenByParent();
        return (postmasters.Count, postmasters.Sum(root => TreePssKib(root, children)) / 1024);
    }

    /// <summary>PSS (KiB) of a process and all its descendants.</summary>
    public static double TreePssKib(int root, Dictionary<int, List<int>>? children = null)
    {
        children ??= ChildrenByParent();
        double kib = 0;
        var stack = new Stack<int>([root]);
        while (stack.Count > 0)
        {
            var pid = stack.Pop();
            kib += PssKib(pid);
            if (children.TryGetValue(pid, out var kids)) foreach (var k in kids) stack.Push(k);
        }
        return kib;
    }

    /// <summary>Resident memory of the three cell agents (MiB), for the record.</summary>
    public double CellRssMib() => _platform.CellProcessIds().Sum(pid => RssKib(pid)) / 1024.0;

    /// <summary>Until every instance provisioned has its first base backup (<see cref="Shared.FirstBackups"/>).</summary>
    public Task WaitFirstBackupsAsync(CancellationToken ct) => Shared.FirstBackups.WaitAsync(_platform.Store, _instances.ToList(), TimeSpan.FromMinutes(10), ct);

    /// <summary>Percent of one core the cells, their guards and their PostgreSQL processes used over <paramref name="span"/>.</summary>
    /// <summary>
    /// The machine's CPU by group: the cells, their guards, the bench's own process (the broker), etcd, the podman service
    /// (with the runc it reaps), conmon; PostgreSQL, initdb and pg_basebackup as the process runtime runs them. What runs
    /// inside containers is under "rest".
    /// </summary>
    public Shared.MachineCpu ReadMachineCpu()
    {
        var cells = _platform.CellProcessIds();
        var self = Environment.ProcessId;
        return Shared.MachineCpu.Read((pid, name) => cells.Contains(pid) ? "cells" : pid == self ? "bench_and_broker" : name switch
        {
            "etcd" => "etcd",
            "podman" => "podman",
            "conmon" => "conmon",
            _ when name.StartsWith("Dingo.Cell", StringComparison.Ordinal) => "guards",
            _ => null,
        });
    }

    public async Task<(double Cells, double Guards, double Postgres)> CpuPercentAsync(TimeSpan span, CancellationToken ct)
    {
        var cells = _platform.CellProcessIds();
        var before = Shared.ProcessCpu.Ticks(cells, _settings.DataDir);
        var watch = Stopwatch.StartNew();
        await Task.Delay(span, ct);
        var after = Shared.ProcessCpu.Ticks(cells, _settings.DataDir);
        var seconds = watch.Elapsed.TotalSeconds;
        return (Shared.ProcessCpu.Percent(before, after, "cell", seconds), Shared.ProcessCpu.Percent(before, after, "guard", seconds),
            Shared.ProcessCpu.Percent(before, after, "postgres", seconds));
    }

    private static Dictionary<int, List<int>> ChildrenByParent()
    {
        var map = new Dictionary<int, List<int>>();
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), CultureInfo.InvariantCulture, out var pid)) continue;
            try
            {
                var stat = File.ReadAllText(Path.Combine(dir, "stat"));
                // pid (comm) state ppid …: comm may hold spaces and parentheses, so read after the last ')'.
                var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
                var ppid = int.Parse(fields[1], CultureInfo.InvariantCulture);
                if (!map.TryGetValue(ppid, out var list)) map[ppid] = list = [];
                list.Add(pid);
            }
            catch (IOException) { }
        }
        return map;
    }

    private static double PssKib(int pid) => ReadKib($"/proc/{pid}/smaps_rollup", "Pss:");

    private static double RssKib(int pid) => ReadKib($"/proc/{pid}/status", "VmRSS:");

    private static double ReadKib(string file, string field)
    {
        try
        {
            foreach (var line in File.ReadLines(file))
                if (line.StartsWith(field, StringComparison.Ordinal))
                    return double.Parse(line[field.Length..].Trim().Split(' ')[0], CultureInfo.InvariantCulture);
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return 0;
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            await _platform.DisposeAsync();
            // The cells' logs outlive the platform, for reading after the run.
            var logs = Path.Combine(Path.GetTempPath(), "dingo-bench-logs");
            Directory.CreateDirectory(logs);
            foreach (var log in Directory.Exists(_settings.DataDir) ? Directory.GetFiles(_settings.DataDir, "cell-*.log") : [])
                File.Copy(log, Path.Combine(logs, $"provision-{_runtime}-{Path.GetFileName(log)}"), overwrite: true);
            Console.Error.WriteLine($"bench: cell logs in {logs}/provision-{_runtime}-cell-*.log");
        }
        finally { await TestPlatform.DestroyDataAsync(_settings); }
    }
}
