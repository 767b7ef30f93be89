using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using Dingo.Config;
using Dingo.Model;
using Dingo.Store;
using Dingo.Tests.Support;
using Npgsql;
using Xunit.Abstractions;
using static Dingo.Tests.Ha.WritableSampler;

namespace Dingo.Tests.Ha;

/// <summary>
/// Three simulated hosts (network namespaces on a bridge), a cell process on each, an etcd of this test on the
/// bridge. The primary's host is cut off: its cell can reach neither etcd nor the other nodes. It must stop
/// accepting writes before any replica starts accepting them, and at no sampled moment do two nodes accept writes.
/// </summary>
[SuiteCost(52)]
public sealed class PartitionTests(ITestOutputHelper output)
{
    private const string HaSettings = "dingo.ha { ttl = 4s, loop-wait = 500ms, rewind-after = 4s, lost-cell-grace = 300s }";

    [Fact]
    public async Task The_primarys_cell_cut_off_from_etcd_demotes_itself_before_a_replica_promotes_and_two_nodes_never_accept_writes()
    {
        Assert.True(NetnsHosts.Supported(out var reason), "network namespaces unavailable: " + reason);
        NetnsHosts? hosts = null;
        BridgeEtcd? etcd = null;
        DingoSettings? settings = null;
        TestPlatform? platform = null;
        WritableSampler? sampler = null;
        Process? probe = null;
        string? probeLog = null, oldPrimary = null;
        var partitionedAt = DateTime.UtcNow;
        var passed = false;
        try
        {
            hosts = await NetnsHosts.CreateAsync(3);
            etcd = await BridgeEtcd.StartAsync(hosts.BridgeAddress);
            settings = TestPlatform.NewSettings(extra: HaSettings, etcdEndpoint: etcd.LoopbackUrl);
            platform = await TestPlatform.StartAsync(cells: 0, settings);
            for (var i = 0; i < hosts.Count; i++) StartCell(hosts, platform, etcd, i);
            var store = platform.Store;
            await WaitUntilAsync(async () => (await store.ListAsync<CellInfo>(store.Keys.Cells, CancellationToken.None)).Count == 3,
                TimeSpan.FromSeconds(60), "the three cells registered in etcd from their namespaces");

            var id = "part-" + Guid.NewGuid().ToString("N")[..8];
            await platform.ProvisionReadyAsync(id, Catalog.ClusterHaPlanId);
            await WaitUntilAsync(() => FullAndHealthyAsync(store, id), TimeSpan.FromSeconds(60), "3 nodes running, 2 replicas streaming");

            var record = (await store.GetAsync<InstanceRecord>(store.Keys.Instance(id), CancellationToken.None))!.Value;
            var specs = (await store.ListAsync<NodeSpec>(store.Keys.Nodes(id), CancellationToken.None)).Select(n => n.Value).ToList();
            int HostOf(string nodeId) => int.Parse(specs.Single(s => s.NodeId == nodeId).CellId["cell-".Length..], CultureInfo.InvariantCulture) - 1;
            var targets = specs.Select(s => new WritableSampler.Target(s.NodeId, hosts.HostAddress(HostOf(s.NodeId)), s.Port)).ToList();
            oldPrimary = (await store.GetAsync<LeaderRecord>(store.Keys.Leader(id), CancellationToken.None))!.Value.NodeId;
            var victim = HostOf(oldPrimary);
            var oldTarget = targets.Single(t => t.NodeId == oldPrimary);
            output.WriteLine($"primary {oldPrimary} on host {victim} ({oldTarget.Host}:{oldTarget.Port}); nodes: {string.Join(", ", targets)}");

            sampler = new WritableSampler(targets, record.Superuser);
            // Inside the primary's namespace, a probe that keeps seeing its PostgreSQL once the test process no longer can.
            probe = StartInsideProbe(hosts, victim, oldTarget, record.Superuser, settings.Cell.PostgresBin);
            probeLog = hosts.LogPath(probe);
            await WaitUntilAsync(() => Task.FromResult(ReadProbe(probeLog).Count(o => o.Writable) >= 3), TimeSpan.FromSeconds(20), "the inside probe seeing the primary writable");
            await WaitUntilAsync(() => Task.FromResult(sampler.Samples.Count(s => s.NodeId == oldPrimary && s.Seen == Seen.Writable) >= 3
                                                       && targets.All(t => sampler.Samples.Any(s => s.NodeId == t.NodeId && s.Seen != Seen.Unreachable))),
                TimeSpan.FromSeconds(20), "the sampler seeing every node");

            partitionedAt = DateTime.UtcNow;
            await hosts.PartitionAsync(victim);
            output.WriteLine($"partitioned host {victim} at {partitionedAt:HH:mm:ss.fff}");
            await WaitUntilAsync(() => Task.FromResult(
                    sampler.Samples.Any(s => s.NodeId != oldPrimary && s.Seen == Seen.Writable && s.T0 > partitionedAt)
                    && ReadProbe(probeLog).Any(o => !o.Writable && o.T0 > partitionedAt)),
                TimeSpan.FromSeconds(60), "a replica writable and the old primary not writable");
            await Task.Delay(3000); // keep sampling: nothing may flip back
            var newPrimary = (await store.GetAsync<LeaderRecord>(store.Keys.Leader(id), CancellationToken.None))?.Value.NodeId;
            Assert.True(newPrimary is not null && newPrimary != oldPrimary, $"the leader key names {newPrimary ?? "nobody"} after the partition");

            var healedAt = DateTime.UtcNow;
            await hosts.HealAsync(victim);
            output.WriteLine($"healed host {victim} at {healedAt:HH:mm:ss.fff}");
            NodeStatus? rejoined = null;
            await WaitUntilAsync(async () =>
            {
                var statuses = await store.ListAsync<NodeStatus>(store.Keys.Statuses(id), CancellationToken.None);
                rejoined = statuses.Select(s => s.Value).FirstOrDefault(s => s.NodeId == oldPrimary && s.UpdatedAt > healedAt
                                                                              && s.State == NodeState.Running && s.Role == NodeRole.Replica && s.Streaming);
                return rejoined is not null;
            }, TimeSpan.FromSeconds(120), $"the old primary {oldPrimary} a streaming replica again");
            var rejoinedAfter = DateTime.UtcNow - healedAt;
            await Task.Delay(1000);
            Assert.Equal(newPrimary, (await store.GetAsync<LeaderRecord>(store.Keys.Leader(id), CancellationToken.None))?.Value.NodeId);

            await sampler.DisposeAsync();
            var stoppedAt = DateTime.UtcNow;
            try { ProcessTree.Kill(probe); } catch (InvalidOperationException) { }
            await probe.WaitForExitAsync();

            var samples = sampler.Samples.OrderBy(s => s.T1).ToList();
            var inside = ReadProbe(probeLog);
            Assert.Contains(samples, s => s.NodeId == oldPrimary && s.Seen == Seen.ReadOnly && s.T0 > healedAt);
            Console.WriteLine("[measure] primary's cell cut off from etcd (ttl 4s, loop-wait 500ms): " + Analyse(output, samples, inside, oldPrimary, partitionedAt, healedAt, stoppedAt, rejoinedAfter,
                node => PromotionFloor(settings.DataDir, node, partitionedAt)));
            passed = true;
        }
        finally
        {
            if (!passed && sampler is not null && oldPrimary is not null && probeLog is not null)
            {
                try { output.WriteLine(Timeline(sampler.Samples.OrderBy(s => s.T1).ToList(), ReadProbe(probeLog), oldPrimary, partitionedAt)); }
                catch (IOException ex) { output.WriteLine($"no timeline: {ex.Message}"); }
            }
            var errors = new List<string>();
            async Task Step(string what, Func<Task> step)
            {
                try { await step(); }
                catch (Exception ex)
                {
                    errors.Add($"{what}: {ex.Message}");
                    output.WriteLine($"cleanup, {what}: {ex}");
                }
            }
            if (sampler is not null) await Step("sampler", () => sampler.DisposeAsync().AsTask());
            if (hosts is not null)
            {
                await Step("keeping logs", () => { KeepLogs(hosts); return Task.CompletedTask; });
                await Step("hosts", () => hosts.DisposeAsync().AsTask());
            }
            if (platform is not null) await Step("platform", () => platform.DisposeAsync().AsTask());
            // Settings passed in: the platform does not own its data; etcd must still run to delete the keys.
            if (settings is not null) await Step("data", () => TestPlatform.DestroyDataAsync(settings));
            if (etcd is not null) await Step("etcd", () => etcd.DisposeAsync().AsTask());
            if (passed && errors.Count > 0) Assert.Fail("cleanup failed: " + string.Join("; ", errors));
        }
    }

    /// <summary>The assertions, on every sample taken: outside samples of all nodes, inside samples of the old primary.</summary>
    /// <param name="promotionFloor">for a node, a moment before which it certainly did not accept writes (null: unknown)</param>
    internal static string Analyse(ITestOutputHelper output, IReadOnlyList<Sample> samples, IReadOnlyList<InsideSample> inside, string oldPrimary,
        DateTime partitionedAt, DateTime healedAt, DateTime stoppedAt, TimeSpan rejoinedAfter, Func<string, DateTime?> promotionFloor)
    {
        double After(DateTime t) => (t - partitionedAt).TotalSeconds;

        // 1. At no sampled moment two writable nodes: every node keeps the state last seen (an unreachable node
        // keeps its previous state, which for the old primary is what the inside probe says).
        var events = samples.Where(s => s.Seen != Seen.Unreachable).Select(s => (s.T1, s.NodeId, Writable: s.Seen == Seen.Writable))
            .Concat(inside.Select(o => (o.T1, NodeId: oldPrimary, o.Writable)))
            .OrderBy(e => e.T1).ToList();
        var state = new Dictionary<string, bool>();
        var moments = 0;
        var twoWritable = new List<string>();
        foreach (var e in events)
        {
            state[e.NodeId] = e.Writable;
            moments++;
            var writable = state.Where(kv => kv.Value).Select(kv => kv.Key).ToList();
            if (writable.Count > 1) twoWritable.Add($"{e.T1:HH:mm:ss.fff} ({After(e.T1):+0.000;-0.000}s): {string.Join(", ", writable)}");
        }
        output.WriteLine($"{samples.Count} outside samples ({samples.Count(s => s.Seen == Seen.Unreachable)} unreachable), {inside.Count} inside samples, {moments} sampled moments");
        Assert.True(twoWritable.Count == 0, $"two writable nodes at {twoWritable.Count} sampled moments, first: {string.Join("; ", twoWritable.Take(5))}");

        // 2. The old primary stopped accepting writes before any replica could have started to.
        var lastWritable = inside.LastOrDefault(o => o.Writable);
        Assert.True(lastWritable is not null, "the inside probe never saw the old primary writable");
        var demoted = inside.FirstOrDefault(o => o.T0 > lastWritable.T1);
        Assert.True(demoted is not null && demoted.T0 > partitionedAt, $"the inside probe saw the old primary writable until {lastWritable.T1:HH:mm:ss.fff}, partition at {partitionedAt:HH:mm:ss.fff}");
        var promoted = samples.Where(s => s.NodeId != oldPrimary && s.Seen == Seen.Writable).MinBy(s => s.T1);
        Assert.True(promoted is not null && promoted.T0 > partitionedAt, "no replica became writable after the partition");
        // The replica may have become writable right after the last sample that saw it read-only began.
        var before = samples.Where(s => s.NodeId == promoted.NodeId && s.T1 < promoted.T0 && s.Seen == Seen.ReadOnly).MaxBy(s => s.T1);
        var possiblyWritableFrom = before?.T0 ?? promoted.T0;
        // On a loaded machine the samples of one node can be more than a second apart; the promoted server's own record
        // of its promotion narrows the gap from below (never past the sample that saw it writable).
        var floor = promotionFloor(promoted.NodeId);
        if (floor is { } f && f > possiblyWritableFrom) possiblyWritableFrom = f < promoted.T1 ? f : promoted.T1;
        output.WriteLine($"old primary {oldPrimary}: last seen writable {After(lastWritable.T0):0.000}–{After(lastWritable.T1):0.000}s after the partition, not writable by {After(demoted.T1):0.000}s ({demoted.Result})");
        output.WriteLine($"replica {promoted.NodeId}: read-only at {(before is null ? "?" : After(before.T0).ToString("0.000", CultureInfo.InvariantCulture))}s, " +
                         $"promotion's timeline history written at {(floor is null ? "?" : After(floor.Value).ToString("0.000", CultureInfo.InvariantCulture))}s, writable by {After(promoted.T1):0.000}s after the partition");
        Assert.True(demoted.T1 <= possiblyWritableFrom,
            $"the old primary was certainly read-only only at {After(demoted.T1):0.000}s, but {promoted.NodeId} may have been writable from {After(possiblyWritableFrom):0.000}s after the partition");

        // 3. Once demoted, never writable again, whether seen from inside or (after healing) from outside.
        Assert.DoesNotContain(samples, s => s.NodeId == oldPrimary && s.Seen == Seen.Writable && s.T0 > demoted.T0);
        Assert.True(inside.Count(o => o.T0 > partitionedAt) > 10, "the inside probe hardly ran during the partition");

        var figures = $"old primary not writable by {After(demoted.T1):0.00}s " +
                      $"(last writable {After(lastWritable.T0):0.00}s), replica writable by {After(promoted.T1):0.00}s " +
                      $"(first possible {After(possiblyWritableFrom):0.00}s): margin {(possiblyWritableFrom - demoted.T1).TotalSeconds:0.00}s; " +
                      $"after healing ({(healedAt - partitionedAt).TotalSeconds:0.0}s in) the old primary streams again within {rejoinedAfter.TotalSeconds:0.0}s; " +
                      $"{moments} sampled moments over {(stoppedAt - samples[0].T0).TotalSeconds:0}s, never two writable";
        output.WriteLine(figures);
        output.WriteLine(Timeline(samples, inside, oldPrimary, partitionedAt));
        return figures;
    }

    /// <summary>
    /// The earliest timeline history file a node's PostgreSQL wrote after <paramref name="after"/> (its modification time),
    /// or null. A promotion writes the new timeline's history file before the server leaves recovery, so the node
    /// accepted no write before it; a history file it received from another leader is older than its own would be,
    /// which only moves the bound earlier. Nodes of the process runtime: &lt;data-dir&gt;/cells/&lt;cell&gt;/nodes/&lt;node&gt;/pgdata.
    /// </summary>
    internal static DateTime? PromotionFloor(string dataDir, string nodeId, DateTime after)
    {
        var cells = Path.Combine(dataDir, "cells");
        if (!Directory.Exists(cells)) return null;
        var times = Directory.EnumerateDirectories(cells)
            .Select(cell => Path.Combine(cell, "nodes", nodeId, "pgdata", "pg_wal"))
            .Where(Directory.Exists)
            .SelectMany(wal => Directory.EnumerateFiles(wal, "*.history"))
            .Select(File.GetLastWriteTimeUtc)
            .Where(t => t > after)
            .ToList();
        return times.Count == 0 ? null : times.Min();
    }

    /// <summary>Each node's changes of state as seen, in seconds from the partition (for reading a failure).</summary>
    internal static string Timeline(IReadOnlyList<Sample> samples, IReadOnlyList<InsideSample> inside, string oldPrimary, DateTime partitionedAt)
    {
        var sb = new System.Text.StringBuilder("timeline (s after the partition):\n");
        void Add(string who, IEnumerable<(DateTime T1, string What)> seen)
        {
            string? last = null;
            foreach (var (t1, what) in seen)
            {
                if (what == last) continue;
                sb.Append(CultureInfo.InvariantCulture, $"  {who}: {what} at {(t1 - partitionedAt).TotalSeconds:+0.000;-0.000}\n");
                last = what;
            }
        }
        foreach (var node in samples.Select(s => s.NodeId).Distinct().Order(StringComparer.Ordinal))
            Add(node, samples.Where(s => s.NodeId == node).Select(s => (s.T1, s.Seen.ToString())));
        Add(oldPrimary + " (inside)", inside.Select(o => (o.T1, o.Result)));
        return sb.ToString();
    }

    private static void StartCell(NetnsHosts hosts, TestPlatform platform, BridgeEtcd etcd, int i)
    {
        var settings = platform.Settings;
        // Last --config wins: this cell's router listens on its own host's address.
        var conf = Path.Combine(settings.DataDir, $"cell-{i + 1}.conf");
        File.WriteAllText(conf, $"dingo.router.bind-address = \"{hosts.HostAddress(i)}\"\n");
        hosts.Start(i, DotnetHost(),
        [
            Path.Combine(AppContext.BaseDirectory, "Dingo.Cell.dll"),
            "--config", Path.Combine(TestPlatform.RepoRoot(), "hocon", "dingo.conf"),
            "--config", Path.Combine(settings.DataDir, "test.conf"),
            "--config", conf,
            "--seed", platform.Seed,
        ], new Dictionary<string, string>
        {
            ["DINGO_CELL_ID"] = $"cell-{i + 1}",
            ["DINGO_CELL_ZONE"] = $"z{i + 1}",
            ["DINGO_CELL_ADDRESS"] = hosts.HostAddress(i),
            // The test's samplers log in as the superuser from the host side of the bridge, which is no cell.
            ["DINGO_CELL_ADMIN_NETWORKS"] = hosts.BridgeAddress,
            ["DINGO_ETCD_ENDPOINTS"] = etcd.BridgeUrl,
            ["DINGO_DATA_DIR"] = settings.DataDir,
        });
    }

    private static string DotnetHost() =>
        Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } path && File.Exists(path) ? path
        : Path.GetFileNameWithoutExtension(Environment.ProcessPath) == "dotnet" ? Environment.ProcessPath! : "dotnet";

    /// <summary>
    /// A probe on host i: one psql session on the node's own address asks every 100 ms, and writes one line per answer:
    /// the server's clock_timestamp() (Unix ms, twice: the moment of the answer) and `t|off` (writable) or `f|on`
    /// (read-only). When the session ends (the server stopped or killed) or cannot start, a line with the time it was
    /// seen and `down`, and a new session 100 ms later. A session of its own, not a psql per sample: under a loaded
    /// machine five processes started per sample made the samples seconds apart ("the inside probe hardly ran").
    /// </summary>
    internal static Process StartInsideProbe(NetnsHosts hosts, int i, WritableSampler.Target node, Credentials superuser, string postgresBin)
    {
        const string script = """
            while :; do
              while :; do
                # SIGPIPE is ignored (inherited from .NET): a failed write, once psql is gone, ends this loop.
                echo "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint, NOT pg_is_in_recovery(), current_setting('transaction_read_only');" 2>/dev/null || break
                sleep 0.1
              done | stdbuf -oL "$1" -X -A -t -q -v ON_ERROR_STOP=1 -h "$2" -p "$3" -U "$4" -d postgres 2>/dev/null \
                   | while IFS='|' read -r ms writable readonly; do echo "$ms $ms $writable|$readonly"; done
              t=$(date +%s%3N)
              echo "$t $t down"
              sleep 0.1
            done
            """;
        return hosts.Start(i, "/bin/bash", ["-c", script, "probe", Path.Combine(postgresBin, "psql"), node.Host, node.Port.ToString(CultureInfo.InvariantCulture), superuser.Username],
            new Dictionary<string, string>
            {
                ["PGPASSWORD"] = superuser.Password,
                ["PGCONNECT_TIMEOUT"] = "1",
                ["PGOPTIONS"] = "-c statement_timeout=1000",
            });
    }

    internal sealed record InsideSample(DateTime T0, DateTime T1, string Result)
    {
        public bool Writable => Result == "t|off";
    }

    internal static List<InsideSample> ReadProbe(string path)
    {
        var list = new List<InsideSample>();
        if (!File.Exists(path)) return list; // the shell creates it on starting
        string[] lines;
        using (var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite))
        using (var reader = new StreamReader(stream))
            lines = reader.ReadToEnd().Split('\n');
        foreach (var line in lines)
        {
            var parts = line.Split(' ', 3);
            if (parts.Length == 3 && long.TryParse(parts[0], out var t0) && long.TryParse(parts[1], out var t1) && parts[2].Length > 0)
                list.Add(new InsideSample(DateTimeOffset.FromUnixTimeMilliseconds(t0).UtcDateTime, DateTimeOffset.FromUnixTimeMilliseconds(t1).UtcDateTime, parts[2]));
        }
        return list;
    }

    /// <summary>Cell and probe logs outlive the test, for reading after a failure (as TestPlatform does).</summary>
    private static void KeepLogs(NetnsHosts hosts)
    {
        var logs = Path.Combine(Path.GetTempPath(), "dingo-test-logs");
        Directory.CreateDirectory(logs);
        foreach (var log in Directory.Exists(hosts.LogDirectory) ? Directory.GetFiles(hosts.LogDirectory) : [])
            File.Copy(log, Path.Combine(logs, $"partition-{hosts.Id}-{Path.GetFileName(log)}"), overwrite: true);
    }

    private static async Task<bool> FullAndHealthyAsync(EtcdStore store, string id)
    {
        var specs = await store.ListAsync<NodeSpec>(store.Keys.Nodes(id), CancellationToken.None);
        var statuses = (await store.ListAsync<NodeStatus>(store.Keys.Statuses(id), CancellationToken.None)).Select(s => s.Value).ToList();
        var leader = await store.GetAsync<LeaderRecord>(store.Keys.Leader(id), CancellationToken.None);
        return specs.Count == 3 && leader is not null
               && statuses.Count(s => specs.Any(n => n.Value.NodeId == s.NodeId) && s.State == NodeState.Running) == 3
               && statuses.Count(s => s.Role == NodeRole.Replica && s.Streaming && specs.Any(n => n.Value.NodeId == s.NodeId)) == 2;
    }

    private static async Task WaitUntilAsync(Func<Task<bool>> condition, TimeSpan timeout, string what)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (!await condition())
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"not within {timeout.TotalSeconds:0}s: {what}");
            await Task.Delay(200);
        }
    }
}

/// <summary>
/// Every 100 ms, for each node independently (a node that does not answer delays only its own samples):
/// `SELECT NOT pg_is_in_recovery(), current_setting('transaction_read_only')` with a 1 s timeout, on one session per
/// node that is kept open between samples and opened again after any error. Each statement runs in a transaction of
/// its own, so it sees the node as a new client would at that moment (a standby promoted meanwhile answers writable).
/// A node accepts writes when it is not in recovery and transactions are not read-only. One session per node instead
/// of a connection per sample: a SCRAM login every 100 ms per node cost PostgreSQL and the test process more CPU than
/// the faults under test (7,000 backends per suite run), which slowed the cells whose timing the tests judge.
/// </summary>
public sealed class WritableSampler : IAsyncDisposable
{
    public sealed record Target(string NodeId, string Host, int Port);

    public enum Seen { Writable, ReadOnly, Unreachable }

    /// <summary>One look at one node from the test process: started at T0, answered (or given up) at T1.</summary>
    public sealed record Sample(string NodeId, DateTime T0, DateTime T1, Seen Seen, string? Error);

    private static readonly TimeSpan Every = TimeSpan.FromMilliseconds(100);
    private readonly CancellationTokenSource _stop = new();
    private readonly Task[] _loops;
    private readonly ConcurrentQueue<Sample> _samples = new();
    private int _disposed;

    public WritableSampler(IEnumerable<Target> targets, Credentials superuser)
    {
        _loops = targets.Select(t => Task.Run(() => LoopAsync(t, superuser, _stop.Token))).ToArray();
    }

    public IReadOnlyCollection<Sample> Samples => _samples;

    private async Task LoopAsync(Target target, Credentials superuser, CancellationToken ct)
    {
        var cs = new NpgsqlConnectionStringBuilder
        {
            Host = target.Host, Port = target.Port, Username = superuser.Username, Password = superuser.Password,
            Database = "postgres", Timeout = 1, CommandTimeout = 1, Pooling = false,
            // A query that times out breaks the session at once (it is opened again), without waiting for the answer to a
            // cancel request that a stopped server would never send.
            CancellationTimeout = -1,
        }.ConnectionString;
        NpgsqlConnection? conn = null;
        try
        {
            while (!ct.IsCancellationRequested)
            {
                var t0 = DateTime.UtcNow;
                Seen seen;
                string? error = null;
                try
                {
                    using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
                    cts.CancelAfter(TimeSpan.FromMilliseconds(1500));
                    if (conn is null)
                    {
                        conn = new NpgsqlConnection(cs);
                        await conn.OpenAsync(cts.Token);
                    }
                    await using var cmd = new NpgsqlCommand("SELECT NOT pg_is_in_recovery(), current_setting('transaction_read_only')", conn);
                    await using var r = await cmd.ExecuteReaderAsync(cts.Token);
                    await r.ReadAsync(cts.Token);
                    seen = r.GetBoolean(0) && r.GetString(1) == "off" ? Seen.Writable : Seen.ReadOnly;
                }
                catch (Exception) when (ct.IsCancellationRequested)
                {
                    break;
                }
                catch (Exception ex)
                {
                    seen = Seen.Unreachable;
                    error = ex.Message;
                    // Whatever broke (a killed or stopped server, a timeout, a restart), the next sample starts afresh.
                    if (conn is not null) await conn.DisposeAsync();
                    conn = null;
                }
                var t1 = DateTime.UtcNow;
                _samples.Enqueue(new Sample(target.NodeId, t0, t1, seen, error));
                var wait = t0 + Every - DateTime.UtcNow;
                try { if (wait > TimeSpan.Zero) await Task.Delay(wait, ct); }
                catch (OperationCanceledException) { break; }
            }
        }
        finally
        {
            if (conn is not null) await conn.DisposeAsync();
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 1) return;
        await _stop.CancelAsync();
        await Task.WhenAll(_loops);
        _stop.Dispose();
    }
}

/// <summary>
/// An etcd of one test (Debian's /usr/bin/etcd), listening on a bridge address (for cells in namespaces) and on
/// loopback (for the broker and the test), data in a temporary folder. Killed by pid and its data deleted on
/// disposal, or when the test process exits.
/// </summary>
public sealed class BridgeEtcd : IAsyncDisposable
{
    private readonly Process _process;
    private readonly string _dataDir;
    private readonly EventHandler _onExit;
    private readonly ConcurrentQueue<string> _stderr = new();
    private int _disposed;

    private BridgeEtcd(Process process, string dataDir, string bridgeUrl, string loopbackUrl)
    {
        _process = process;
        _dataDir = dataDir;
        BridgeUrl = bridgeUrl;
        LoopbackUrl = loopbackUrl;
        _onExit = (_, _) => Stop();
        AppDomain.CurrentDomain.ProcessExit += _onExit;
    }

    public string BridgeUrl { get; }
    public string LoopbackUrl { get; }

    public static async Task<BridgeEtcd> StartAsync(string bridgeAddress)
    {
        var client = FreePorts.One();
        var peer = FreePorts.One();
        var data = Path.Combine(EtcdForTests.DataRoot, $"dingo-part-etcd-{Guid.NewGuid():N}");
        var (etcdFile, etcdArgs) = EtcdForTests.Command(new[]
                 {
                     "--name", "part", "--data-dir", data,
                     "--listen-client-urls", $"http://{bridgeAddress}:{client},http://127.0.0.1:{client}",
                     "--advertise-client-urls", $"http://{bridgeAddress}:{client}",
                     "--listen-peer-urls", $"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", $"http://127.0.0.1:{peer}",
                     "--initial-cluster", $"part=http://127.0.0.1:{peer}", "--log-level", "error",
                 });
        var psi = new ProcessStartInfo(etcdFile) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in etcdArgs) psi.ArgumentList.Add(a);
        var etcd = new BridgeEtcd(Process.Start(psi) ?? throw new InvalidOperationException("could not start etcd"), data,
            $"http://{bridgeAddress}:{client}", $"http://127.0.0.1:{client}");
        etcd._process.OutputDataReceived += (_, _) => { };
        etcd._process.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is null) return;
            etcd._stderr.Enqueue(e.Data);
            while (etcd._stderr.Count > 20 && etcd._stderr.TryDequeue(out var _)) { }
        };
        etcd._process.BeginOutputReadLine();
        etcd._process.BeginErrorReadLine();
        try
        {
            foreach (var url in new[] { etcd.LoopbackUrl, etcd.BridgeUrl })
            {
                await using var store = new EtcdStore([url], "/probe");
                var deadline = DateTime.UtcNow.AddSeconds(20);
                while (true)
                {
                    try
                    {
                        await store.GetStringAsync("/probe/x", CancellationToken.None);
                        break;
                    }
                    catch (Grpc.Core.RpcException) when (DateTime.UtcNow < deadline && !etcd._process.HasExited)
                    {
                        await Task.Delay(100);
                    }
                }
            }
            return etcd;
        }
        catch (Exception ex)
        {
            var tail = string.Join("\n", etcd._stderr);
            await etcd.DisposeAsync();
            throw new InvalidOperationException($"etcd on {etcd.BridgeUrl} did not answer: {ex.Message}\n{tail}", ex);
        }
    }

    private void Stop()
    {
        try
        {
            if (!_process.HasExited)
            {
                _process.Kill();
                _process.WaitForExit(5000);
            }
        }
        catch (InvalidOperationException) { }
        for (var attempt = 0; attempt < 5 && Directory.Exists(_dataDir); attempt++)
        {
            try { Directory.Delete(_dataDir, recursive: true); }
            catch (IOException) { Thread.Sleep(200); }
        }
    }

    public ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 1) return ValueTask.CompletedTask;
        try { Stop(); }
        finally
        {
            AppDomain.CurrentDomain.ProcessExit -= _onExit;
            _process.Dispose();
        }
        return ValueTask.CompletedTask;
    }
}
