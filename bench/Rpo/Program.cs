using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using Dingo.Backups;
using Dingo.Bench.Shared;
using Dingo.Model;
using Microsoft.Extensions.Logging;
using Npgsql;

namespace Dingo.Bench.Rpo;

/// <summary>
/// Recovery point when a whole cluster and its disks are destroyed while writes flow: one PostgreSQL node archived
/// continuously by <see cref="WalArchiver"/> to an object store, a row committed every 100 ms, then at a random
/// moment every PostgreSQL process SIGKILLed, the archiver stopped in the same instant (it lives on the same host),
/// the data directory and the archiver's spool deleted; a new node restored from the store alone. stdout carries
/// only the bench's lines; logs go to stderr.
/// <para>`--mode store-sync`: the node names the archiver in synchronous_standby_names and the archiver runs
/// store-synchronous (docs/backups.md), and the writer commits back to back, so the kill often lands mid-commit. Every
/// acknowledged commit must come back: lost_rows=0 in every run, or the bench fails.</para>
/// </summary>
public static class Program
{
    private static readonly TimeSpan WriteEvery = TimeSpan.FromMilliseconds(100);
    private static readonly TimeSpan KillEarliest = TimeSpan.FromSeconds(3);
    private static readonly TimeSpan KillLatest = TimeSpan.FromSeconds(10);
    private static readonly ILogger Logger = new StderrLogger("backups", LogLevel.Information);

    private sealed record Run(int N, double KillAfterSeconds, int Acked, int LastAcked, int LastRestored, int LostRows, int Holes, double LostSeconds, double RestoreSeconds)
    {
        public bool Failed => Holes > 0;
    }

    public static async Task<int> Main(string[] args)
    {
        var output = new StreamWriter(Console.OpenStandardOutput()) { AutoFlush = true };
        Console.SetOut(Console.Error);

        var runs = 5;
        var storeKind = "local";
        var storeSync = false;
        var peerTimeout = TimeSpan.FromSeconds(60);
        var peer = true;
        int? seed = null;
        for (var i = 0; i < args.Length; i++)
        {
            if (args[i] == "--runs" && i + 1 < args.Length && int.TryParse(args[i + 1], CultureInfo.InvariantCulture, out runs) && runs >= 3) { i++; continue; }
            if (args[i] == "--store" && i + 1 < args.Length && args[i + 1] is "local" or "s3") { storeKind = args[++i]; continue; }
            if (args[i] == "--seed" && i + 1 < args.Length && int.TryParse(args[i + 1], CultureInfo.InvariantCulture, out var s)) { seed = s; i++; continue; }
            if (args[i] == "--mode" && i + 1 < args.Length && args[i + 1] is "async" or "store-sync") { storeSync = args[++i] == "store-sync"; continue; }
            if (args[i] == "--peer-archive-timeout" && i + 1 < args.Length && int.TryParse(args[i + 1], CultureInfo.InvariantCulture, out var pt) && pt >= 1) { peerTimeout = TimeSpan.FromSeconds(pt); i++; continue; }
            if (args[i] == "--no-peer") { peer = false; continue; }
            Console.Error.WriteLine("usage: dotnet run -c Release --project bench/Rpo -- [--runs N] [--store local|s3] [--mode async|store-sync] [--peer-archive-timeout S] [--no-peer] [--seed S]   (N >= 3, default 5; local store; async; peer archive_timeout 60 s)");
            return 2;
        }
        if (!Environment.IsPrivilegedProcess)
            Console.Error.WriteLine("bench: not root; LocalProcessRuntime runs PostgreSQL as this user");

        using var interrupted = new CancellationTokenSource();
        void OnSignal(PosixSignalContext context) { context.Cancel = true; interrupted.Cancel(); }
        using var sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal);
        using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal);
        var ct = interrupted.Token;

        var random = seed is { } fixedSeed ? new Random(fixedSeed) : new Random();
        var results = new List<Run?>();
        var peerResults = new List<Run?>();
        S3rver? s3 = null;
        var localStore = Path.Combine(Path.GetTempPath(), "dingo-rpo-store-" + Guid.NewGuid().ToString("N")[..10]);
        try
        {
            IObjectStore store;
            if (storeKind == "s3")
            {
                s3 = await S3rver.StartAsync(ct);
                store = s3.Store;
            }
            else store = new LocalFolderObjectStore(localStore);
            var writeEvery = storeSync ? TimeSpan.Zero : WriteEvery;
            output.WriteLine($"config runs={runs} store={storeKind} mode={(storeSync ? "store-sync" : "async")} write_every_ms={writeEvery.TotalMilliseconds:0} "
                             + $"kill_after_s={KillEarliest.TotalSeconds:0}-{KillLatest.TotalSeconds:0} flush_delay_ms={(storeSync ? 0 : new WalArchiverOptions().FlushDelay.TotalMilliseconds):0}");

            for (var n = 1; n <= runs; n++)
            {
                var killAfter = KillEarliest + (KillLatest - KillEarliest) * random.NextDouble();
                results.Add(await AttemptAsync("", () => RunOnceAsync(n, store, killAfter, storeSync, writeEvery, ct)));
                if (!peer) continue;
                // The peer, same kill moment, same writer: PostgreSQL's archive_command and archive_timeout.
                peerResults.Add(await AttemptAsync("peer=archive_command ", async () =>
                {
                    var (acked, restored, from, restoreSeconds) = await ArchiveCommandPeer.RunOnceAsync(n, peerTimeout, writeEvery, killAfter, Logger, ct);
                    return Measure(n, killAfter, acked, restored, from, restoreSeconds);
                }));

                // One run, ours or the peer's: its line, or the line saying how it failed (then null: it counts as all lost).
                async Task<Run?> AttemptAsync(string label, Func<Task<Run>> body)
                {
                    try
                    {
                        var r = await body();
                        output.WriteLine($"run {label}n={n} kill_after_s={F2(r.KillAfterSeconds)} acked={r.Acked} last_acked={r.LastAcked} "
                                         + $"last_restored={r.LastRestored} lost_rows={r.LostRows} holes={r.Holes} lost_s={F2(r.LostSeconds)} restore_s={F2(r.RestoreSeconds)}");
                        return r;
                    }
                    catch (Exception ex) when (ex is not OperationCanceledException || !ct.IsCancellationRequested)
                    {
                        Console.Error.WriteLine($"bench: {label}run {n} failed: {ex}");
                        output.WriteLine($"run {label}n={n} kill_after_s={F2(killAfter.TotalSeconds)} failed=\"{ex.GetType().Name}: {ex.Message.Replace('"', '\'').ReplaceLineEndings(" ")}\"");
                        return null;
                    }
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
            Console.Error.WriteLine($"bench: {ex.GetType().Name}: {ex.Message}");
            return 1;
        }
        finally
        {
            if (s3 is not null) await s3.DisposeAsync();
            try { if (Directory.Exists(localStore)) Directory.Delete(localStore, recursive: true); }
            catch (IOException ex) { Console.Error.WriteLine($"bench: could not delete {localStore}: {ex.Message}"); }
        }

        // A failed run (error, or acknowledged rows missing below restored ones) counts as everything lost.
        var lost = results.Select(r => r is { Failed: false } ? r.LostSeconds : double.PositiveInfinity).ToList();
        var lostRows = results.Sum(r => r?.LostRows ?? 0);
        var peerText = "";
        if (peerResults.Count > 0)
        {
            var peerLost = peerResults.Select(r => r is { Failed: false } ? r.LostSeconds : double.PositiveInfinity).ToList();
            peerText = $" peer_archive_command_timeout_s={peerTimeout.TotalSeconds:0} peer_max_lost_s={F2(peerLost.Max())} peer_median_lost_s={F2(Median(peerLost))} "
                       + $"peer_lost_rows={peerResults.Sum(r => r?.LostRows ?? 0)} peer_acked={peerResults.Sum(r => r?.Acked ?? 0)}";
        }
        output.WriteLine($"RESULT rpo mode={(storeSync ? "store-sync" : "async")} max_lost_s={F2(lost.Max())} median_lost_s={F2(Median(lost))} lost_rows={lostRows} "
                         + $"acked={results.Sum(r => r?.Acked ?? 0)} runs={lost.Count}{peerText}");
        return results.Any(r => r is null or { Failed: true }) || storeSync && lostRows > 0 ? 1 : 0;
    }

    private static async Task<Run> RunOnceAsync(int n, IObjectStore store, TimeSpan killAfter, bool storeSync, TimeSpan writeEvery, CancellationToken ct)
    {
        var instance = "rpo-" + Guid.NewGuid().ToString("N")[..10];
        var superuser = new Credentials("dingo_admin", "Pw" + Guid.NewGuid().ToString("N"));
        await using var nodes = BenchNodes.Create("dingo-rpo-");
        var a = await nodes.CreateAndStartAsync("node-a", instance, superuser, ct);
        await Sql.ExecAsync(a, RowWriter.CreateTable, ct);

        // The archiver and its spool belong to the node's host: they go down with it.
        var spool = Path.Combine(nodes.Root, "spool");
        using var archiverStop = CancellationTokenSource.CreateLinkedTokenSource(ct);
        using var writerStop = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var archiver = new WalArchiver(store, instance, a.ListenAddress, a.Port, superuser, spool, new WalArchiverOptions(), Logger) { StoreSynchronous = storeSync };
        var archiving = archiver.RunAsync(archiverStop.Token);
        Task? writing = null;
        try
        {
            await new BaseBackups(store, Logger).TakeAsync(instance, await Sql.SystemIdAsync(a, ct), a.NodeId, a.ListenAddress, a.Port, superuser,
                BenchNodes.PgBin, Path.Combine(nodes.Root, "work"), caFingerprint: null, ct);
            var postmaster = await nodes.PostmasterPidAsync(a.NodeId, ct);
            if (storeSync)
            {
                // What a store-sync leader's agent writes (SynchronousCommit.Decide, no replica), then the archiver streaming as the synchronous standby.
                await Sql.ExecAsync(a, $"ALTER SYSTEM SET synchronous_standby_names = '{Dingo.Ha.SynchronousCommit.Decide(false, true, [], []).Setting}'", ct);
                await Sql.ExecAsync(a, "SELECT pg_reload_conf()", ct);
                var deadline = Stopwatch.StartNew();
                while (await Sql.ScalarAsync<string>(a, $"SELECT COALESCE((SELECT sync_state FROM pg_stat_replication WHERE application_name = '{WalArchiver.ApplicationName}'), '')", ct) != "sync")
                {
                    if (deadline.Elapsed > TimeSpan.FromSeconds(30)) throw new TimeoutException("the archiver did not become the synchronous standby within 30 s");
                    await Task.Delay(50, ct);
                }
            }

            var writer = new RowWriter(Sql.ConnectionString(a), writeEvery);
            writing = writer.RunAsync(writerStop.Token);
            await Task.Delay(killAfter, ct);

            // The host vanishes: PostgreSQL killed, the archiver stopped mid-flight (no draining), in one instant.
            var killed = PostgresSignals.KillPostgres(postmaster);
            var killedAt = Stopwatch.GetTimestamp();
            // The token is cancelled before CancelAsync returns; its callbacks (Npgsql's) may run a few ms longer.
            var cancelling = archiverStop.CancelAsync();
            var cancelMicros = Stopwatch.GetElapsedTime(killedAt).TotalMicroseconds;
            await cancelling;
            await writerStop.CancelAsync();
            await writing;
            await archiving;
            await PostgresSignals.WaitGoneAsync(killed, ct);
            await nodes.Runtime.RemoveAsync(a.NodeId, ct);
            if (Directory.Exists(spool)) Directory.Delete(spool, recursive: true);
            var acked = writer.Acknowledged;
            Console.Error.WriteLine($"bench: run {n}: after {killAfter.TotalSeconds:0.00}s SIGKILLed {killed.Count} PostgreSQL processes, archiver cancelled {cancelMicros:0} µs later; "
                                    + $"{acked.Count} commits acknowledged (writer stopped by: {writer.StoppedBy ?? "cancellation"}); "
                                    + $"archive had reached {Lsn.Format(archiver.Progress.ArchivedLsn)} ({archiver.Progress.LastUpload:HH:mm:ss.fff})");

            // Only the object store is left.
            var watch = Stopwatch.StartNew();
            var prepared = await new ArchiveRestore(store, Logger).PrepareAsync(instance, null, Path.Combine(nodes.Root, "restore"), ct);
            var b = await nodes.RestoreAsync("node-b", instance, superuser, prepared.Input, ct);
            var restoreSeconds = watch.Elapsed.TotalSeconds;
            var restored = await ReadRowsAsync(b, ct);
            return Measure(n, killAfter, acked, restored, writer.StartedAt, restoreSeconds);
        }
        finally
        {
            await archiverStop.CancelAsync();
            await writerStop.CancelAsync();
            // Both end on cancellation; a failure of theirs was reported by the run already.
            try { await archiving; } catch (Exception ex) { Console.Error.WriteLine($"bench: archiver: {ex.Message}"); }
            if (writing is not null) try { await writing; } catch (Exception ex) { Console.Error.WriteLine($"bench: writer: {ex.Message}"); }
        }
    }

    private static Run Measure(int n, TimeSpan killAfter, IReadOnlyList<RowWriter.Row> acked, IReadOnlyList<RowWriter.Row> restored, DateTime writingFrom, double restoreSeconds)
    {
        var present = restored.ToDictionary(r => r.N);
        var lastRestored = restored.Count == 0 ? 0 : restored.Max(r => r.N);
        var lastAcked = acked.Count == 0 ? null : acked.MaxBy(r => r.N);
        var lostRows = acked.Count(r => !present.ContainsKey(r.N));
        // A restore brings back a prefix of the history: an acknowledged row missing below a restored one is corruption.
        var holes = acked.Count(r => r.N < lastRestored && !present.ContainsKey(r.N));
        double lost = 0;
        if (lastAcked is not null && lastRestored < lastAcked.N)
            lost = (lastAcked.At - (lastRestored > 0 ? present[lastRestored].At : writingFrom)).TotalSeconds;
        return new Run(n, killAfter.TotalSeconds, acked.Count, lastAcked?.N ?? 0, lastRestored, lostRows, holes, lost, restoreSeconds);
    }

    internal static async Task<List<RowWriter.Row>> ReadRowsAsync(Dingo.Cells.NodeLaunchSpec spec, CancellationToken ct)
    {
        await using var conn = Sql.Connection(spec);
        await conn.OpenAsync(ct);
        await using var cmd = new NpgsqlCommand("SELECT n, at FROM rpo ORDER BY n", conn);
        await using var reader = await cmd.ExecuteReaderAsync(ct);
        var rows = new List<RowWriter.Row>();
        while (await reader.ReadAsync(ct)) rows.Add(new RowWriter.Row(reader.GetInt32(0), reader.GetDateTime(1)));
        return rows;
    }

    private static double Median(IReadOnlyList<double> values)
    {
        var sorted = values.Order().ToList();
        var mid = sorted.Count / 2;
        return sorted.Count % 2 == 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
    }

    private static string F2(double v) => double.IsPositiveInfinity(v) ? "inf" : v.ToString("0.00", CultureInfo.InvariantCulture);
}
