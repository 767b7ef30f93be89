using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using Dingo.Backups;
using Dingo.Bench.Rpo;
using Dingo.Bench.Shared;
using Dingo.Cells;
using Dingo.Ha;
using Dingo.Model;
using Microsoft.Extensions.Logging;
using Npgsql;

namespace Dingo.Bench.Commit;

/// <summary>
/// What a commit costs under each of Dingo's guarantees, against a plain PostgreSQL measured in the same run: clients
/// commit one-row transactions back to back for a while, every commit's latency is recorded. Modes:
/// <list type="bullet">
/// <item>plain: PostgreSQL alone (the peer: synchronous_commit on, its own fsync)</item>
/// <item>async: a leader with Dingo's WAL archiver streaming in its default mode (the `solo` and `cluster` plans: commits wait for nothing else)</item>
/// <item>cluster-ha: a leader with two streaming standbys, ANY 1 of them synchronous (as a cluster-ha leader sets it)</item>
/// <item>store-sync: the archiver as the synchronous standby, reporting flushed only what the store acknowledged</item>
/// </list>
/// The store-sync mode runs once per store (local folder, s3rver). stdout carries only the bench's lines.
/// </summary>
public static class Program
{
    private static readonly ILogger Logger = new StderrLogger("commit", LogLevel.Warning);

    private sealed record Figures(string Mode, string Store, int Clients, long Commits, double Seconds, double P50Ms, double P99Ms)
    {
        public double Tps => Commits / Seconds;
    }

    public static async Task<int> Main(string[] args)
    {
        var output = new StreamWriter(Console.OpenStandardOutput()) { AutoFlush = true };
        Console.SetOut(Console.Error);
        var seconds = 5;
        var clients = new List<int> { 1, 8 };
        var stores = new List<string> { "local", "s3" };
        for (var i = 0; i < args.Length; i++)
        {
            if (args[i] == "--seconds" && i + 1 < args.Length && int.TryParse(args[i + 1], CultureInfo.InvariantCulture, out seconds) && seconds >= 1) { i++; continue; }
            if (args[i] == "--clients" && i + 1 < args.Length)
            {
                clients = args[++i].Split(',').Select(c => int.Parse(c, CultureInfo.InvariantCulture)).ToList();
                if (clients.Any(c => c is < 1 or > 64)) { Console.Error.WriteLine("--clients: 1 to 64 each"); return 2; }
                continue;
            }
            if (args[i] == "--stores" && i + 1 < args.Length) { stores = args[++i].Split(',').ToList(); if (stores.Any(s => s is not ("local" or "s3"))) return Usage(); continue; }
            return Usage();
        }

        using var interrupted = new CancellationTokenSource();
        void OnSignal(PosixSignalContext context) { context.Cancel = true; interrupted.Cancel(); }
        using var sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal);
        using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal);
        var ct = interrupted.Token;

        output.WriteLine($"config seconds={seconds} clients={string.Join(',', clients)} stores={string.Join(',', stores)} statement=\"INSERT one row; COMMIT\"");
        var results = new List<Figures>();
        S3rver? s3 = null;
        var localStore = Path.Combine(Path.GetTempPath(), "dingo-commit-store-" + Guid.NewGuid().ToString("N")[..10]);
        try
        {
            if (stores.Contains("s3")) s3 = await S3rver.StartAsync(ct);
            // Each guarantee right after a plain PostgreSQL measured the same way, so the ratio compares like with like.
            var setups = new List<(string Mode, string Store)> { ("async", "local"), ("cluster-ha", "-") };
            setups.AddRange(stores.Select(s => ("store-sync", s)));
            foreach (var (mode, storeKind) in setups)
            {
                IObjectStore store = storeKind == "s3" ? s3!.Store : new LocalFolderObjectStore(localStore);
                foreach (var c in clients)
                {
                    var peer = await MeasureAsync("plain", "-", c, seconds, null, ct);
                    results.Add(peer);
                    Print(output, peer, null);
                    var ours = await MeasureAsync(mode, storeKind, c, seconds, store, ct);
                    results.Add(ours);
                    Print(output, ours, peer);
                }
            }
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
            Console.Error.WriteLine("bench: interrupted; cleaning up");
            return 130;
        }
        catch (Exception ex)
        {
            Console.Error.WriteLine($"bench: {ex}");
            return 1;
        }
        finally
        {
            if (s3 is not null) await s3.DisposeAsync();
            try { if (Directory.Exists(localStore)) Directory.Delete(localStore, recursive: true); }
            catch (IOException ex) { Console.Error.WriteLine($"bench: could not delete {localStore}: {ex.Message}"); }
        }

        var line = new List<string>();
        foreach (var group in results.Where(r => r.Mode != "plain").GroupBy(r => (r.Mode, r.Store)))
        {
            var one = group.FirstOrDefault(r => r.Clients == clients.Min());
            var many = group.FirstOrDefault(r => r.Clients == clients.Max());
            var name = group.Key.Store == "-" ? group.Key.Mode : $"{group.Key.Mode}_{group.Key.Store}";
            if (one is not null) line.Add(Inv($"{name}_p50_ms={one.P50Ms:0.00} {name}_p99_ms={one.P99Ms:0.00}"));
            if (many is not null) line.Add(Inv($"{name}_tps_{many.Clients}={many.Tps:0}"));
        }
        var plain = results.Where(r => r.Mode == "plain").ToList();
        var plainOne = plain.Where(r => r.Clients == clients.Min()).Select(r => r.P50Ms).Order().ToList();
        var plainMany = plain.Where(r => r.Clients == clients.Max()).Select(r => r.Tps).Order().ToList();
        line.Add(Inv($"peer_plain_p50_ms={plainOne[plainOne.Count / 2]:0.00} peer_plain_tps_{clients.Max()}={plainMany[plainMany.Count / 2]:0}"));
        output.WriteLine("RESULT commit " + string.Join(' ', line));
        return 0;
    }

    private static int Usage()
    {
        Console.Error.WriteLine("usage: dotnet run -c Release --project bench/Commit -- [--seconds S] [--clients 1,8] [--stores local,s3]");
        return 2;
    }

    private static void Print(StreamWriter output, Figures f, Figures? peer)
    {
        var ratio = peer is null ? "" : Inv($" p50_ratio={f.P50Ms / peer.P50Ms:0.00} tps_ratio={f.Tps / peer.Tps:0.00}");
        output.WriteLine(Inv($"run mode={f.Mode} store={f.Store} clients={f.Clients} commits={f.Commits} tps={f.Tps:0} p50_ms={f.P50Ms:0.00} p99_ms={f.P99Ms:0.00}{ratio}"));
    }

    private static string Inv(FormattableString s) => s.ToString(CultureInfo.InvariantCulture);

    /// <summary>A fresh cluster for the mode, clients committing for the given time, then everything removed.</summary>
    private static async Task<Figures> MeasureAsync(string mode, string storeKind, int clients, int seconds, IObjectStore? store, CancellationToken ct)
    {
        var instance = "commit-" + Guid.NewGuid().ToString("N")[..10];
        var superuser = new Credentials("dingo_admin", "Pw" + Guid.NewGuid().ToString("N"));
        await using var nodes = BenchNodes.Create("dingo-commit-");
        var leader = await nodes.CreateAndStartAsync("node-a", instance, superuser, ct);
        await Sql.ExecAsync(leader, "CREATE TABLE c(id bigserial PRIMARY KEY, client int NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())", ct);
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(ct);
        Task? archiving = null;
        try
        {
            if (mode is "async" or "store-sync")
            {
                var archiver = new WalArchiver(store!, instance, leader.ListenAddress, leader.Port, superuser, Path.Combine(nodes.Root, "spool"), new WalArchiverOptions(), Logger)
                    { StoreSynchronous = mode == "store-sync" };
                archiving = archiver.RunAsync(stop.Token);
                await WaitAsync(() => archiver.Progress.SystemId != 0, "the archiver streams", ct);
                if (mode == "store-sync") await SetSynchronousAsync(leader, SynchronousCommit.Decide(false, true, [], []).Setting, 1, ct);
            }
            if (mode == "cluster-ha")
            {
                var names = new List<string>();
                foreach (var id in new[] { "node-b", "node-c" })
                {
                    var spec = new NodeLaunchSpec(id, instance, "127.0.0.1", BenchNodes.FreePort(), superuser);
                    var source = new ReplicationSource(leader.ListenAddress, leader.Port, superuser);
                    await nodes.Runtime.CloneAsync(spec, source, ct);
                    await nodes.Runtime.StartAsync(spec, new StandbyConfig(source, "", id), ct);
                    await Sql.WaitServingAsync(spec, ct);
                    names.Add(id);
                }
                await SetSynchronousAsync(leader, SynchronousCommit.Decide(true, false, names, []).Setting, 2, ct);
            }

            var latencies = new List<double>[clients];
            var watch = Stopwatch.StartNew();
            var deadline = TimeSpan.FromSeconds(seconds);
            var tasks = Enumerable.Range(0, clients).Select(async c =>
            {
                var mine = latencies[c] = new List<double>(capacity: 50_000);
                await using var conn = Sql.Connection(leader);
                await conn.OpenAsync(ct);
                await using var cmd = new NpgsqlCommand("INSERT INTO c(client) VALUES ($1)", conn);
                cmd.Parameters.AddWithValue(c);
                await cmd.PrepareAsync(ct);
                while (watch.Elapsed < deadline)
                {
                    var start = Stopwatch.GetTimestamp();
                    await cmd.ExecuteNonQueryAsync(ct);
                    mine.Add(Stopwatch.GetElapsedTime(start).TotalMilliseconds);
                }
            }).ToList();
            await Task.WhenAll(tasks);
            var elapsed = watch.Elapsed.TotalSeconds;
            var all = latencies.SelectMany(l => l).Order().ToList();
            Console.Error.WriteLine(Inv($"bench: {mode}/{storeKind} x{clients}: {all.Count} commits in {elapsed:0.00}s"));
            return new Figures(mode, storeKind, clients, all.Count, elapsed, Percentile(all, 0.50), Percentile(all, 0.99));
        }
        finally
        {
            await stop.CancelAsync();
            if (archiving is not null) try { await archiving; } catch (Exception ex) { Console.Error.WriteLine($"bench: archiver: {ex.Message}"); }
        }
    }

    /// <summary>synchronous_standby_names as a Dingo leader sets it, then until that many standbys are synchronous.</summary>
    private static async Task SetSynchronousAsync(NodeLaunchSpec leader, string setting, int synchronous, CancellationToken ct)
    {
        await Sql.ExecAsync(leader, $"ALTER SYSTEM SET synchronous_standby_names = '{setting}'", ct);
        await Sql.ExecAsync(leader, "SELECT pg_reload_conf()", ct);
        var sync = 0L;
        await WaitAsync(() =>
        {
            sync = Sql.ScalarAsync<long>(leader, "SELECT count(*) FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum')", ct).GetAwaiter().GetResult();
            return sync >= synchronous;
        }, $"{synchronous} synchronous standby(s) under '{setting}'", ct);
    }

    private static async Task WaitAsync(Func<bool> condition, string what, CancellationToken ct)
    {
        var watch = Stopwatch.StartNew();
        while (!condition())
        {
            if (watch.Elapsed > TimeSpan.FromSeconds(60)) throw new TimeoutException($"not within 60 s: {what}");
            await Task.Delay(50, ct);
        }
    }

    private static double Percentile(IReadOnlyList<double> sorted, double p) =>
        sorted.Count == 0 ? double.NaN : sorted[Math.Min(sorted.Count - 1, (int)Math.Ceiling(p * sorted.Count) - 1)];
}
