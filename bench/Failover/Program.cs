using System.Globalization;
using Dingo.Model;
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

    private sealed record Run(string Plan, int N, double? FailoverSeconds, int? Lost, int Acked)
    {
        public bool Failed => FailoverSeconds is null || Lost is null;
    }

    public static async Task<int> Main(string[] args)
    {
        var output = new StreamWriter(Console.OpenStandardOutput()) { AutoFlush = true };
        Console.SetOut(Console.Error);

        var runs = 5;
        for (var i = 0; i < args.Length; i++)
        {
            if (args[i] == "--runs" && i + 1 < args.Length && int.TryParse(args[i + 1], CultureInfo.InvariantCulture, out runs) && runs >= 1) { i++; continue; }
            Console.Error.WriteLine("usage: dotnet run -c Release --project bench/Failover -- [--runs N]   (N >= 1, default 5)");
            return 2;
        }

        using var interrupted = new CancellationTokenSource();
        Console.CancelKeyPress += (_, e) => { e.Cancel = true; interrupted.Cancel(); };

        var plans = new[] { "cluster", "cluster-ha" }.Select(name => Catalog.Plans.Single(p => p.Name == name)).ToList();
        var results = new List<Run>();
        var index = 0;
        try
        {
            foreach (var plan in plans)
            {
                for (var n = 1; n <= runs; n++)
                {
                    var run = await RunOnceAsync(plan, n, index++, interrupted.Token);
                    results.Add(run);
                    output.WriteLine($"run plan={run.Plan} n={run.N} failover_s={Seconds(run.FailoverSeconds)} lost={run.Lost?.ToString(CultureInfo.InvariantCulture) ?? "unknown"} acked={run.Acked}");
                }
                var mine = results.Where(r => r.Plan == plan.Name).ToList();
                var times = mine.Select(Time).ToList();
                output.WriteLine($"summary plan={plan.Name} runs={mine.Count} failed={mine.Count(r => r.Failed)} failover_median_s={Format(Median(times))} failover_min_s={Format(times.Min())} failover_max_s={Format(times.Max())} lost_total={mine.Sum(r => r.Lost ?? 0)} acked_total={mine.Sum(r => r.Acked)}");
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

        var all = results.Select(Time).ToList();
        output.WriteLine($"RESULT failover median_s={Format(Median(all))} max_s={Format(all.Max())} lost_cluster={LostOf(results, "cluster")} lost_cluster_ha={LostOf(results, "cluster-ha")} runs={results.Count}");
        return results.Any(r => r.Failed) ? 1 : 0;
    }

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
    /// Instance and node ports of a block of our own, 30000-31999 (below the ephemeral range, outside `dingo up`'s
    /// defaults and outside the blocks FreePorts hands to a test run that may be going on beside the bench).
    /// </summary>
    private static string Ports(int index)
    {
        var block = index % 20 * 50;
        return $"dingo.router {{ port-range-first = {30000 + block}, port-range-last = {30049 + block} }}\n"
               + $"dingo.node-port-range-first = {31000 + block}\ndingo.node-port-range-last = {31049 + block}";
    }

    private static async Task<Run> RunOnceAsync(Plan plan, int n, int index, CancellationToken ct)
    {
        var settings = TestPlatform.NewSettings(extra: HaSettings + "\n" + Ports(index));
        var acked = 0;
        double? failover = null;
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
            await using var writer = new Writer(TestPlatform.ConnectionStringFromUri((string)creds["uri"]!), WriteEvery);
            await writer.CreateTableAsync();
            writer.Start();
            await Task.Delay(Warmup, ct);

            var victim = await PrimaryCellAsync(platform, id);
            var killedAt = DateTime.UtcNow;
            platform.KillCell(int.Parse(victim["cell-".Length..], CultureInfo.InvariantCulture));
            var killDone = DateTime.UtcNow;
            // Attempts started after KillCell returned can only be served by a new primary.
            var lastBeforeKill = Interlocked.Read(ref writer.Attempts);

            DateTime? resumed = null;
            while (resumed is null && DateTime.UtcNow - killedAt < FailoverTimeout)
            {
                await Task.Delay(50, ct);
                resumed = FirstAckAfterAttempt(writer, lastBeforeKill);
            }
            if (resumed is { } r)
            {
                failover = (r - killedAt).TotalSeconds;
                Console.Error.WriteLine($"bench: {plan.Name} #{n}: killed {victim} (kill took {(killDone - killedAt).TotalMilliseconds:0} ms), "
                                        + $"writes resumed after {failover:0.00}s, primary now on {await PrimaryCellAsync(platform, id)}");
                await Task.Delay(WriteOn, ct);
            }
            else Console.Error.WriteLine($"bench: {plan.Name} #{n}: killed {victim}, no write acknowledged within {FailoverTimeout.TotalSeconds:0}s");

            await writer.DisposeAsync();
            acked = writer.Acknowledged.Count;
            lost = await MissingCountAsync(writer, ct);
            failed = failover is null || lost is null;
        }
        catch (Exception ex) when (ex is not OperationCanceledException || !ct.IsCancellationRequested)
        {
            Console.Error.WriteLine($"bench: {plan.Name} #{n} failed: {ex.GetType().Name}: {ex.Message}");
            failover = null;
        }
        finally
        {
            if (platform is not null) await platform.DisposeAsync();
            if (failed) KeepLogs(settings.DataDir);
            await TestPlatform.DestroyDataAsync(settings);
        }
        return new Run(plan.Name, n, failover, lost, acked);
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
