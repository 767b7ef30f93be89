using System.Globalization;
using System.Text.Json.Nodes;
using Dingo.Bench.Shared;
using Dingo.Config;
using Dingo.Model;
using Dingo.Tests.Ha;
using Dingo.Tests.Support;

namespace Dingo.Bench.Chaos;

/// <summary>One instance the bench keeps writing to through the router.</summary>
internal sealed record ChaosInstance(string Id, string Plan, Credentials Superuser, Writer Writer);

/// <summary>
/// The platform under fault: an etcd of the bench's own (one member it can kill and stop), the broker in this
/// process plus a second broker as an OS process (killed during provisions), three cells as OS processes, and one
/// instance per plan with a writer committing a fresh value every 20 ms through the router.
/// </summary>
internal sealed class ChaosPlatform : IAsyncDisposable
{
    public const int Cells = 3;
    private const string HaSettings = "dingo.ha { ttl = 4s, loop-wait = 500ms, rewind-after = 4s, lost-cell-grace = 300s }";
    // A block of our own, 30000-31499: below the ephemeral range, away from `dingo up` and test runs. Wide, because
    // every throwaway instance retires its ports for good.
    private const string Ports = """
        dingo.router { port-range-first = 30000, port-range-last = 30499 }
        dingo.node-port-range-first = 31000
        dingo.node-port-range-last = 31499
        """;
    public static readonly TimeSpan WriteEvery = TimeSpan.FromMilliseconds(20);
    public static readonly TimeSpan AttemptLimit = TimeSpan.FromSeconds(5);

    private readonly List<int> _stopped = [];
    private Uri? _brokerUrl;

    private ChaosPlatform(TestEtcdCluster etcd, DingoSettings settings, TestPlatform platform)
    {
        Etcd = etcd;
        Settings = settings;
        Platform = platform;
    }

    public TestEtcdCluster Etcd { get; }
    public DingoSettings Settings { get; }
    public TestPlatform Platform { get; }
    public List<ChaosInstance> Instances { get; } = [];

    public static async Task<ChaosPlatform> StartAsync(IReadOnlyList<string> plans, bool brokerProcess, CancellationToken ct)
    {
        var etcd = await TestEtcdCluster.StartAsync(members: 1);
        DingoSettings? settings = null;
        TestPlatform? platform = null;
        try
        {
            settings = TestPlatform.NewSettings(quota: 1000, extra: HaSettings + "\n" + Ports, etcdEndpoint: etcd.ClientUrls[0]);
            platform = await TestPlatform.StartAsync(cells: 0, settings, ct);
            var chaos = new ChaosPlatform(etcd, settings, platform);
            for (var i = 1; i <= Cells; i++) platform.StartCellProcess(i);
            await chaos.WaitForCellsAsync(ct);
            if (brokerProcess) await chaos.StartBrokerAsync(ct);
            foreach (var plan in plans)
            {
                var planId = Catalog.Plans.Single(p => p.Name == plan).Id;
                var id = $"chaos-{plan}";
                await platform.ProvisionReadyAsync(id, planId);
                var creds = await platform.BindAsync(id, "w", planId);
                var record = await platform.Store.GetAsync<InstanceRecord>(platform.Store.Keys.Instance(id), ct)
                             ?? throw new InvalidOperationException($"{id} has no instance record");
                var writer = new Writer(TestPlatform.ConnectionStringFromUri((string)creds["uri"]!), WriteEvery, AttemptLimit);
                chaos.Instances.Add(new ChaosInstance(id, plan, record.Value.Superuser, writer));
                await writer.CreateTableAsync();
                writer.Start();
            }
            return chaos;
        }
        catch
        {
            if (platform is not null) await platform.DisposeAsync();
            if (settings is not null) await TestPlatform.DestroyDataAsync(settings);
            await etcd.DisposeAsync();
            throw;
        }
    }

    private async Task WaitForCellsAsync(CancellationToken ct)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while ((await Platform.Store.ListAsync<CellInfo>(Platform.Store.Keys.Cells, ct)).Count < Cells)
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"fewer than {Cells} cells registered within 60 s");
            await Task.Delay(200, ct);
        }
    }

    /// <summary>The second broker's URL, once it answers the catalog.</summary>
    public Uri BrokerUrl => _brokerUrl ?? throw new InvalidOperationException("no broker process was started");

    /// <summary>Starts broker-1 as an OS process (again) and waits until it answers the catalog, at most 60 s.</summary>
    public async Task StartBrokerAsync(CancellationToken ct)
    {
        var url = Platform.StartBrokerProcess(1);
        using var http = TestPlatform.ClientFor(url);
        http.Timeout = TimeSpan.FromSeconds(5);
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while (true)
        {
            try
            {
                using var response = await http.GetAsync("/v2/catalog", ct);
                if (response.IsSuccessStatusCode) break;
            }
            catch (HttpRequestException) { }
            catch (TaskCanceledException) when (!ct.IsCancellationRequested) { }
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"broker-1 did not answer on {url} within 60 s");
            await Task.Delay(200, ct);
        }
        _brokerUrl = url;
    }

    public void KillBroker()
    {
        _brokerUrl = null;
        Platform.KillBroker(1);
    }

    public static int CellNumber(string cellId) => int.Parse(cellId["cell-".Length..], CultureInfo.InvariantCulture);

    /// <summary>The node holding the instance's leader key, and its spec.</summary>
    public async Task<NodeSpec> PrimaryAsync(string instanceId, CancellationToken ct)
    {
        var leader = await Platform.Store.GetAsync<LeaderRecord>(Platform.Store.Keys.Leader(instanceId), ct)
                     ?? throw new InvalidOperationException($"{instanceId} has no leader key");
        return await NodeAsync(instanceId, leader.Value.NodeId, ct);
    }

    public async Task<NodeSpec> NodeAsync(string instanceId, string nodeId, CancellationToken ct) =>
        (await Platform.Store.GetAsync<NodeSpec>(Platform.Store.Keys.Node(instanceId, nodeId), ct))?.Value
        ?? throw new InvalidOperationException($"{instanceId}: node {nodeId} has no spec");

    public async Task<IReadOnlyList<NodeSpec>> NodesAsync(string instanceId, CancellationToken ct) =>
        (await Platform.Store.ListAsync<NodeSpec>(Platform.Store.Keys.Nodes(instanceId), ct)).Select(n => n.Value).ToList();

    /// <summary>The node's data directory on the process runtime (as CellApp lays it out).</summary>
    public string PgData(NodeSpec node) =>
        Path.Combine(Path.GetFullPath(Settings.DataDir), "cells", node.CellId, "nodes", node.NodeId, "pgdata");

    /// <summary>The node's postmaster PID from postmaster.pid, if that process runs.</summary>
    public int PostmasterPid(NodeSpec node)
    {
        var file = Path.Combine(PgData(node), "postmaster.pid");
        var first = File.Exists(file) ? File.ReadLines(file).FirstOrDefault() : null;
        if (int.TryParse(first, CultureInfo.InvariantCulture, out var pid) && Directory.Exists($"/proc/{pid}")) return pid;
        throw new InvalidOperationException($"node {node.NodeId} on {node.CellId} has no running postmaster");
    }

    /// <summary>SIGSTOP to processes, remembered so that they get SIGCONT even if the bench fails before it does.</summary>
    public IReadOnlyList<int> Stop(Func<IReadOnlyList<int>> stop)
    {
        lock (_stopped)
        {
            var pids = stop();
            _stopped.AddRange(pids);
            return pids;
        }
    }

    public void Continue(IReadOnlyList<int> pids)
    {
        lock (_stopped)
        {
            PostgresSignals.Continue(pids);
            foreach (var pid in pids) _stopped.Remove(pid);
        }
    }

    /// <summary>The instances' records and statuses are written through the in-process broker and the cells.</summary>
    public async Task<(int Status, JsonObject Body)> SendAsync(HttpMethod method, string path, string? body, CancellationToken ct) =>
        await Platform.SendAsync(method, path, body, ct);

    public async ValueTask DisposeAsync()
    {
        // Nothing stays frozen, and etcd runs again: the cells stop cleanly and the keys can be deleted.
        lock (_stopped)
        {
            PostgresSignals.Continue(_stopped);
            _stopped.Clear();
        }
        try { Etcd.Pid(0); }
        catch (InvalidOperationException) { Etcd.Start(0); }
        foreach (var instance in Instances) await instance.Writer.DisposeAsync();
        try
        {
            await Platform.DisposeAsync();
            var logs = Path.Combine(Path.GetTempPath(), "dingo-bench-logs");
            Directory.CreateDirectory(logs);
            foreach (var log in Directory.Exists(Settings.DataDir) ? Directory.GetFiles(Settings.DataDir, "*.log") : [])
                File.Copy(log, Path.Combine(logs, $"chaos-{Path.GetFileName(log)}"), overwrite: true);
            Console.Error.WriteLine($"bench: cell and broker logs in {logs}/chaos-*.log");
        }
        finally
        {
            await TestPlatform.DestroyDataAsync(Settings);
            await Etcd.DisposeAsync();
        }
    }
}
