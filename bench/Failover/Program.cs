using System.Globalization;
using Dingo.Model;
using Dingo.Store;
using Dingo.Tests.Ha;
using Dingo.Tests.Support;

namespace Dingo.Bench.Failover;

/// <summary>
/// Failover time and acknowledged-commit loss when the primary's whole cell (agent and PostgreSQL) is killed
/// with SIGKILL under a writer committing every 20 ms through the router. A fresh platform per run.
/// stdout carries only the bench's lines; everything the platform logs goes to stderr.
/// </summary>
public static class Program
{
    private const string HaSettings = "dingo.ha { ttl = 4s, loop-wait = 500ms, rewind-after = 4s, lost-cell-grace = 300s }";
    private static readonly TimeSpan WriteEvery = TimeSpan.FromMilliseconds(20);
    private static readonly TimeSpan Warmup = TimeSpan.FromSeconds(2);
    private static readonly TimeSpan FailoverTimeout = TimeSpan.FromSeconds(60);
    private static readonly TimeSpan WriteOn = TimeSpan.FromSeconds(3);
    private const string Usage = "usage: dotnet run -c Release --project bench/Failover -- [--runs N] [--kill cell|host] [--peer patroni [--peer-ttl S] [--peer-loop-wait S] [--peer-retry-timeout S] [--peer-check-ms MS]]";

    /// <param name="Who">"dingo", or the peer's name</param>
    /// <param name="KeyGoneSeconds">kill → the old leader's key gone (released by the dead cell's guard, or expired)</param>
    /// <param name="KeyTakenSeconds">kill → another node holds the key (the rest, to the first write, is its promotion
    /// and the router's switch)</param>
    private sealed record Run(string Who, string Plan, int N, double? FailoverSeconds, int? Lost, int Acked, double? KeyGoneSeconds = null, double? KeyTakenSeconds = null)
    {
        public bool Failed => FailoverSeconds is null || Lost is null;
    }

    public static async Task<int> Main(string[] args)
    {
        var output = new StreamWriter(Console.OpenStandardOutput()) { AutoFlush = true };
        Console.SetOut(Console.Error);

        var runs = 5;
        string? peer = null;
        // cell: the cell process and its PostgreSQL processes (its fencing guard lives on, as after a crash under
        // systemd's KillMode=process); host: the guard too, everything of the cell on the host.
        var guardToo = false;
        // The peer tuned well past Patroni's defaults (ttl 30, loop_wait 10, retry_timeout 10; HAProxy checks every 3 s in
        // Patroni's template): loop_wait + 2 x retry_timeout stays within ttl, as Patroni asks.
        int peerTtl = 10, peerLoop = 2, peerRetry = 4, peerCheckMs = 500;
        for (var i = 0; i < args.Length; i++)
        {
            bool Int(out int value) => int.TryParse(i + 1 < args.Length ? args[i + 1] : "", CultureInfo.InvariantCulture, out value) && value >= 1;
            if (args[i] == "--runs" && Int(out runs)) { i++; continue; }
            if (args[i] == "--peer" && i + 1 < args.Length && args[i + 1] == "patroni") { peer = "patroni"; i++; continue; }
            if (args[i] == "--kill" && i + 1 < args.Length && args[i + 1] is "cell" or "host") { guardToo = args[++i] == "host"; continue; }
            if (args[i] == "--peer-ttl" && Int(out peerTtl)) { i++; continue; }
            if (args[i] == "--peer-loop-wait" && Int(out peerLoop)) { i++; continue; }
            if (args[i] == "--peer-retry-timeout" && Int(out peerRetry)) { i++; continue; }
            if (args[i] == "--peer-check-ms" && Int(out peerCheckMs)) { i++; continue; }
            Console.Error.WriteLine(Usage + "   (every number >= 1; --runs defaults to 5)");
            return 2;
        }
        var timings = new PatroniPeer.PeerTimings(peerTtl, peerLoop, peerRetry, peerCheckMs);
        if (peer is not null && PatroniPeer.Missing() is { } install)
        {
            Console.Error.WriteLine($"bench: --peer patroni needs Debian's packages: {install}");
            return 2;
        }
        output.WriteLine($"config kill={(guardToo ? "host" : "cell")} dingo: ttl=4s loop-wait=500ms release-dead-leader-after=2s (the shipped defaults)"
                         + (peer is null ? "" : $"; peer=patroni {timings}"));

        using var interrupted = new CancellationTokenSource();
        // SIGINT and SIGTERM alike: the run is cancelled and unwinds, so what it started (its platform, the bare PostgreSQL
        // peer) is stopped; a SIGTERM that killed the process outright left the peer running.
        void OnSignal(System.Runtime.InteropServices.PosixSignalContext context) { context.Cancel = true; interrupted.Cancel(); }
        using var sigint = System.Runtime.InteropServices.PosixSignalRegistration.Create(System.Runtime.InteropServices.PosixSignal.SIGINT, OnSignal);
        using var sigterm = System.Runtime.InteropServices.PosixSignalRegistration.Create(System.Runtime.InteropServices.PosixSignal.SIGTERM, OnSignal);

        var plans = new[] { "cluster", "cluster-ha" }.Select(name => Catalog.Plans.Single(p => p.Name == name)).ToList();
        var results = new List<Run>();
        var index = 0;
        try
        {
            foreach (var plan in plans)
            {
                for (var n = 1; n <= runs; n++)
                {
                    // Ours, then the peer's, run by run: a machine that slows down slows both.
                    var run = await RunOnceAsync(plan, n, index++, guardToo, interrupted.Token);
                    results.Add(run);
                    output.WriteLine(Line(run));
                    if (peer is null) continue;
                    run = await RunPeerAsync(plan, n, timings, interrupted.Token);
                    results.Add(run);
                    output.WriteLine(Line(run));
                }
                foreach (var who in new[] { "dingo", peer }.OfType<string>())
                    output.WriteLine(Summary(who, plan.Name, results.Where(r => r.Plan == plan.Name && r.Who == who).ToList()));
            }
        }
        catch (OperationCanceledException) when (interrupted.IsCancellationRequested)
        {
            Console.Error.WriteLine("bench: interrupted");
            return 130;
        }
        catch (Exception ex)
        {
            Console.Error.WriteLine($"bench: {ex.GetType().Name}: {ex.Message}");
            return 1;
        }

        var ours = results.Where(r => r.Who == "dingo").ToList();
        var all = ours.Select(Time).ToList();
        var result = $"RESULT failover median_s={Format(Median(all))} max_s={Format(all.Max())} lost_cluster={LostOf(ours, "cluster")} lost_cluster_ha={LostOf(ours, "cluster-ha")} runs={ours.Count}";
        if (peer is not null)
        {
            var theirs = results.Where(r => r.Who == peer).ToList();
            var times = theirs.Select(Time).ToList();
            result += $" peer_{peer}_median_s={Format(Median(times))} peer_{peer}_max_s={Format(times.Max())} peer_{peer}_lost_cluster={LostOf(theirs, "cluster")} "
                      + $"peer_{peer}_lost_cluster_ha={LostOf(theirs, "cluster-ha")} ratio_median={Ratio(Median(all), Median(times))}";
        }
        output.WriteLine(result);
        return results.Any(r => r.Failed) ? 1 : 0;
    }

    private static string Line(Run r) =>
        $"run {(r.Who == "dingo" ? "" : $"peer={r.Who} ")}plan={r.Plan} n={r.N} failover_s={Seconds(r.FailoverSeconds)} key_gone_s={Seconds(r.KeyGoneSeconds)} "
        + $"key_taken_s={Seconds(r.KeyTakenSeconds)} lost={r.Lost?.ToString(CultureInfo.InvariantCulture) ?? "unknown"} acked={r.Acked}";

    private static string Summary(string who, string plan, IReadOnlyList<Run> mine)
    {
        var times = mine.Select(Time).ToList();
        return $"summary {(who == "dingo" ? "" : $"peer={who} ")}plan={plan} runs={mine.Count} failed={mine.Count(r => r.Failed)} failover_median_s={Format(Median(times))} "
               + $"failover_min_s={Format(times.Min())} failover_max_s={Format(times.Max())} "
               + $"key_gone_median_s={Format(Median(mine.Select(r => r.KeyGoneSeconds ?? double.PositiveInfinity).ToList()))} "
               + $"key_taken_median_s={Format(Median(mine.Select(r => r.KeyTakenSeconds ?? double.PositiveInfinity).ToList()))} "
               + $"lost_total={mine.Sum(r => r.Lost ?? 0)} acked_total={mine.Sum(r => r.Acked)}";
    }

    private static string Ratio(double ours, double theirs) =>
        double.IsPositiveInfinity(ours) || double.IsPositiveInfinity(theirs) || theirs <= 0 ? "unknown" : (ours / theirs).ToString("0.00", CultureInfo.InvariantCulture);

    /// <summary>A failed run counts as an infinitely long failover.</summary>
    private static double Time(Run r) => r.Failed ? double.PositiveInfinity : r.FailoverSeconds!.Value;

    private static int LostOf(IEnumerable<Run> runs, string plan) => runs.Where(r => r.Plan == plan).Sum(r => r.Lost ?? 0);

    private static double Median(IReadOnlyList<double> values)
    {
        var sorted = values.OrderBy(v => v).ToList();
        var mid = sorted.Count / 2;
        return sorted.Count % 2 == 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
    }

    private static string Format(double seconds) => double.IsPositiveInfinity(seconds) ? "inf" : seconds.ToString("0.00", CultureInfo.InvariantCulture);

    private static string Seconds(double? seconds) => seconds is { } s ? Format(s) : "timeout";

    /// <summary>
    /// Instance and node ports of a block of our own, 12000-13999 (as bench/Chaos): below the ephemeral range, away from
    /// the low ends `dingo up` allocates from and from the test platforms' blocks, and never inside 30000-32759, where
    /// FreePorts hands out the etcd, broker and Akka ports of this very process (a run's router found its port 30000
    /// taken that way: "Address already in use", and the run failed).
    /// </summary>
    private static string Ports(int index)
    {
        var block = index % 20 * 50;
        return $"dingo.router {{ port-range-first = {12000 + block}, port-range-last = {12049 + block} }}\n"
               + $"dingo.node-port-range-first = {13000 + block}\ndingo.node-port-range-last = {13049 + block}";
    }

    private sealed record Measured(double? Failover, double? KeyGone, double? KeyTaken);

    /// <summary>
    /// The kill and what follows it, the same for ours and the peer: from the kill, the leader key read every 10 ms
    /// (<paramref name="holder"/>: who holds it now), until the first acknowledged commit of an attempt started after it.
    /// </summary>
    private static async Task<Measured> KillAndMeasureAsync(string label, Writer writer, Action kill, string oldLeader,
        Func<CancellationToken, Task<string?>> holder, Func<Task<string>> whereNow, CancellationToken ct)
    {
        using var watching = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var killedAt = DateTime.UtcNow;
        var keyWatch = WatchKeyAsync(holder, oldLeader, killedAt, watching.Token);
        kill();
        var killDone = DateTime.UtcNow;
        // Attempts started after the kill returned can only be served by a new primary.
        var lastBeforeKill = Interlocked.Read(ref writer.Attempts);
        DateTime? resumed = null;
        while (resumed is null && DateTime.UtcNow - killedAt < FailoverTimeout)
        {
            await Task.Delay(50, ct);
            resumed = FirstAckAfterAttempt(writer, lastBeforeKill);
        }
        await watching.CancelAsync();
        var (gone, taken) = await keyWatch;
        if (resumed is not { } r)
        {
            Console.Error.WriteLine($"bench: {label}: killed {oldLeader}, no write acknowledged within {FailoverTimeout.TotalSeconds:0}s");
            return new Measured(null, gone, taken);
        }
        var failover = (r - killedAt).TotalSeconds;
        Console.Error.WriteLine($"bench: {label}: killed {oldLeader} (kill took {(killDone - killedAt).TotalMilliseconds:0} ms), key gone after {Seconds(gone)}s, "
                                + $"taken after {Seconds(taken)}s, writes resumed after {failover:0.00}s, primary now on {await whereNow()}");
        await Task.Delay(WriteOn, ct);
        return new Measured(failover, gone, taken);
    }

    /// <summary>
    /// The writer on <paramref name="connectionString"/> (its table, then a commit every 20 ms), the warm-up, the kill
    /// and its measure, then the commits acknowledged and those missing afterwards.
    /// </summary>
    private static async Task<(Measured Measured, int Acked, int? Lost)> WriteKillAndCountAsync(string connectionString,
        Func<Writer, Task<Measured>> killAndMeasure, CancellationToken ct)
    {
        await using var writer = new Writer(connectionString, WriteEvery);
        await writer.CreateTableAsync();
        writer.Start();
        await Task.Delay(Warmup, ct);
        var measured = await killAndMeasure(writer);
        await writer.DisposeAsync();
        return (measured, writer.Acknowledged.Count, await MissingCountAsync(writer, ct));
    }

    private static async Task<Run> RunOnceAsync(Plan plan, int n, int index, bool guardToo, CancellationToken ct)
    {
        var settings = TestPlatform.NewSettings(extra: HaSettings + "\n" + Ports(index));
        var acked = 0;
        Measured? measured = null;
        int? lost = null;
        var failed = true;
        TestPlatform? platform = null;
        try
        {
            platform = await TestPlatform.StartAsync(cells: 0, settings, ct);
            for (var i = 1; i <= 3; i++) platform.StartCellProcess(i);
            var id = "bench-" + Guid.NewGuid().ToString("N")[..8];
            await platform.ProvisionReadyAsync(id, plan.Id);
            var creds = await platform.BindAsync(id, "w", plan.Id);
            var p = platform;
            (measured, acked, lost) = await WriteKillAndCountAsync(TestPlatform.ConnectionStringFromUri((string)creds["uri"]!), async writer =>
            {
                var victim = await PrimaryCellAsync(p, id);
                var oldLeader = (await p.Store.GetAsync<LeaderRecord>(p.Store.Keys.Leader(id), ct))!.Value.NodeId;
                return await KillAndMeasureAsync($"{plan.Name} #{n}", writer, () => p.KillCell(int.Parse(victim["cell-".Length..], CultureInfo.InvariantCulture), guardToo),
                    oldLeader, async c => (await p.Store.GetAsync<LeaderRecord>(p.Store.Keys.Leader(id), c))?.Value.NodeId, () => PrimaryCellAsync(p, id), ct);
            }, ct);
            failed = measured.Failover is null || lost is null;
        }
        catch (Exception ex) when (ex is not OperationCanceledException || !ct.IsCancellationRequested)
        {
            Console.Error.WriteLine($"bench: {plan.Name} #{n} failed: {ex.GetType().Name}: {ex.Message}");
            measured = measured is null ? null : measured with { Failover = null };
        }
        finally
        {
            if (platform is not null) await platform.DisposeAsync();
            if (failed) KeepLogs(settings.DataDir);
            await TestPlatform.DestroyDataAsync(settings);
        }
        return new Run("dingo", plan.Name, n, measured?.Failover, lost, acked, measured?.KeyGone, measured?.KeyTaken);
    }

    /// <summary>The same run against Patroni, etcd and HAProxy (<see cref="PatroniPeer"/>): the plan's node count and replication.</summary>
    private static async Task<Run> RunPeerAsync(Plan plan, int n, PatroniPeer.PeerTimings timings, CancellationToken ct)
    {
        var label = $"patroni {plan.Name} #{n}";
        var acked = 0;
        Measured? measured = null;
        int? lost = null;
        var failed = true;
        PatroniPeer? peer = null;
        try
        {
            peer = await PatroniPeer.StartAsync(plan.NodeCount, plan.Synchronous, timings, ct);
            await using var etcd = new EtcdStore([peer.EtcdUrl], "/service");
            var p = peer;
            (measured, acked, lost) = await WriteKillAndCountAsync(peer.ConnectionString, async writer =>
            {
                var victim = await p.PrimaryAsync(ct);
                if (victim < 0) throw new InvalidOperationException("no Patroni node says it is the primary");
                return await KillAndMeasureAsync(label, writer, () => p.Kill(victim), $"node{victim}",
                    c => etcd.GetStringAsync(p.LeaderKey, c), async () => $"node{await p.PrimaryAsync(ct)}", ct);
            }, ct);
            failed = measured.Failover is null || lost is null;
        }
        catch (Exception ex) when (ex is not OperationCanceledException || !ct.IsCancellationRequested)
        {
            Console.Error.WriteLine($"bench: {label} failed: {ex.GetType().Name}: {ex.Message}");
            measured = measured is null ? null : measured with { Failover = null };
        }
        finally
        {
            if (failed && peer is not null) Console.Error.WriteLine(peer.LogTail());
            if (peer is not null) await peer.DisposeAsync();
        }
        return new Run("patroni", plan.Name, n, measured?.Failover, lost, acked, measured?.KeyGone, measured?.KeyTaken);
    }

    /// <summary>
    /// Reads the leader key every 10 ms from the kill on: when the old leader no longer held it, and when another node
    /// did (seconds after <paramref name="killedAt"/>; null when not seen before the watch was stopped).
    /// </summary>
    private static async Task<(double? Gone, double? Taken)> WatchKeyAsync(Func<CancellationToken, Task<string?>> holder, string oldLeader, DateTime killedAt, CancellationToken ct)
    {
        double? gone = null, taken = null;
        try
        {
            while (taken is null && !ct.IsCancellationRequested)
            {
                var now = await holder(ct);
                var at = (DateTime.UtcNow - killedAt).TotalSeconds;
                if (now != oldLeader) gone ??= at;
                if (now is not null && now != oldLeader) taken = at;
                await Task.Delay(10, ct);
            }
        }
        catch (OperationCanceledException) { }
        catch (Grpc.Core.RpcException ex) { Console.Error.WriteLine($"bench: watching the leader key: {ex.Status.Detail}"); }
        return (gone, taken);
    }

    private static DateTime? FirstAckAfterAttempt(Writer writer, long attempt)
    {
        DateTime? first = null;
        foreach (var (n, at) in writer.Acknowledged)
            if (n > attempt && (first is null || at < first)) first = at;
        return first;
    }

    /// <summary>Acknowledged commits missing from the table, read through the router (a few tries); null when unreadable.</summary>
    private static async Task<int?> MissingCountAsync(Writer writer, CancellationToken ct)
    {
        for (var attempt = 1; attempt <= 5; attempt++)
        {
            try { return (await writer.MissingAsync()).Count; }
            catch (Exception ex) when (ex is not OperationCanceledException)
            {
                Console.Error.WriteLine($"bench: reading the counter table failed ({ex.GetType().Name}: {ex.Message}), try {attempt}/5");
                await Task.Delay(1000, ct);
            }
        }
        return null;
    }

    private static async Task<string> PrimaryCellAsync(TestPlatform p, string id)
    {
        var leader = await p.Store.GetAsync<LeaderRecord>(p.Store.Keys.Leader(id), CancellationToken.None)
                     ?? throw new InvalidOperationException($"{id} has no leader key");
        var node = await p.Store.GetAsync<NodeSpec>(p.Store.Keys.Node(id, leader.Value.NodeId), CancellationToken.None)
                   ?? throw new InvalidOperationException($"{id}: the leader's node {leader.Value.NodeId} has no spec");
        return node.Value.CellId;
    }

    /// <summary>The cell logs of a failed run, kept for reading after it (the platform's data is deleted).</summary>
    private static void KeepLogs(string dataDir)
    {
        if (!Directory.Exists(dataDir)) return;
        var logs = Path.Combine(Path.GetTempPath(), "dingo-bench-logs");
        Directory.CreateDirectory(logs);
        foreach (var log in Directory.GetFiles(dataDir, "cell-*.log"))
            File.Copy(log, Path.Combine(logs, $"{Path.GetFileName(dataDir)}-{Path.GetFileName(log)}"), overwrite: true);
        Console.Error.WriteLine($"bench: cell logs of the failed run kept in {logs}");
    }
}
