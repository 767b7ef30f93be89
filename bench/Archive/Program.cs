using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using Dingo.Backups;
using Dingo.Bench.Shared;
using Dingo.Cells;
using Dingo.Model;
using Microsoft.Extensions.Logging;

namespace Dingo.Bench.Archive;

/// <summary>
/// WAL archiving throughput of <see cref="WalArchiver"/> into a local-folder store against pg_receivewal into a local
/// folder, on one PostgreSQL 15 of the bench's own. Each round writes the WAL first, with both stopped, then times
/// each one's catch-up over the same range, from one segment boundary to another; the order alternates by round.
/// stdout carries only the bench's lines; logs go to stderr.
/// </summary>
public static class Program
{
    private const ulong SegmentSize = 16 * 1024 * 1024;
    private const double MiB = 1024 * 1024;
    private static readonly TimeSpan CatchUpTimeout = TimeSpan.FromMinutes(30);
    private static readonly ILogger Logger = new StderrLogger("archiver", LogLevel.Information);

    /// <param name="OursFrom">Where our archiver resumed: <paramref name="From"/>, or a few bytes on when the server
    /// wrote WAL after the previous round's boundary before that archiver was stopped.</param>
    private sealed record Round(int N, bool OursFirst, ulong From, ulong To, ulong OursFrom, TimeSpan Ours, TimeSpan ReceiveWal)
    {
        public double Mib => (To - From) / MiB;
        public double OursMibS => (To - OursFrom) / MiB / Ours.TotalSeconds;
        public double ReceiveWalMibS => Mib / ReceiveWal.TotalSeconds;
    }

    public static async Task<int> Main(string[] args)
    {
        var output = new StreamWriter(Console.OpenStandardOutput()) { AutoFlush = true };
        Console.SetOut(Console.Error);

        var mib = 512;
        var rounds = 5;
        var receiveNoSync = false;
        for (var i = 0; i < args.Length; i++)
        {
            if (args[i] == "--mib" && i + 1 < args.Length && int.TryParse(args[i + 1], CultureInfo.InvariantCulture, out mib) && mib is >= 64 and <= 4096) { i++; continue; }
            if (args[i] == "--rounds" && i + 1 < args.Length && int.TryParse(args[i + 1], CultureInfo.InvariantCulture, out rounds) && rounds >= 1) { i++; continue; }
            if (args[i] == "--pg-receivewal-no-sync") { receiveNoSync = true; continue; }
            Console.Error.WriteLine("usage: dotnet run -c Release --project bench/Archive -- [--mib M] [--rounds R] [--pg-receivewal-no-sync]   (WAL per round, 64-4096, default 512; default 5 rounds)");
            return 2;
        }
#if DEBUG
        Console.Error.WriteLine("bench: this is a Debug build; figures worth comparing need -c Release");
#endif

        using var interrupted = new CancellationTokenSource();
        void OnSignal(PosixSignalContext context) { context.Cancel = true; interrupted.Cancel(); }
        using var sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal);
        using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal);
        var ct = interrupted.Token;

        try
        {
            await using var nodes = BenchNodes.Create("dingo-archive-", sharedBuffers: "256MB");
            return await RunAsync(output, nodes, mib, rounds, receiveNoSync, ct);
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
    }

    private static async Task<int> RunAsync(StreamWriter output, BenchNodes nodes, int mib, int rounds, bool receiveNoSync, CancellationToken ct)
    {
        var instance = "archive-" + Guid.NewGuid().ToString("N")[..10];
        var superuser = new Credentials("dingo_admin", "Pw" + Guid.NewGuid().ToString("N"));
        var node = await nodes.CreateAndStartAsync("node-a", instance, superuser, ct);
        var segmentSize = ArchiveLayout.ParseSize(await Sql.ScalarAsync<string>(node, "SHOW wal_segment_size", ct));
        if (segmentSize != SegmentSize) throw new InvalidOperationException($"wal_segment_size is {segmentSize} bytes, the bench expects 16 MiB");
        // Rounds of WAL wait unread in pg_wal: no checkpoint in the middle of writing it, and no slot invalidated.
        // Nor any autovacuum writing WAL of its own while an archiver is timed.
        foreach (var setting in new[] { "max_wal_size = '8GB'", "max_slot_wal_keep_size = -1", "autovacuum = off" })
            await Sql.ExecAsync(node, "ALTER SYSTEM SET " + setting, ct);
        await Sql.ExecAsync(node, "SELECT pg_reload_conf()", ct);
        await Sql.ExecAsync(node, "CREATE TABLE load(id bigint, pad text)", ct);

        var store = new LocalFolderObjectStore(Path.Combine(nodes.Root, "store"));
        var spool = Path.Combine(nodes.Root, "spool");
        var receiver = await ReceiveWal.CreateAsync(node, nodes.Root, receiveNoSync, ct);
        var systemId = await Sql.SystemIdAsync(node, ct);

        // Both to the same segment boundary before the first round: ours from a fresh store begins at the current
        // segment, pg_receivewal at its slot's.
        var archiver = new WalArchiver(store, instance, node.ListenAddress, node.Port, superuser, spool, new WalArchiverOptions(), Logger);
        ulong start;
        using (var stop = CancellationTokenSource.CreateLinkedTokenSource(ct))
        {
            var running = archiver.RunAsync(stop.Token);
            await WaitUntilAsync(() => archiver.Progress.SystemId != 0, running, "the archiver starts", ct);
            start = await SwitchAsync(node, ct);
            await WaitUntilAsync(() => archiver.Progress.ArchivedLsn >= start, running, $"the archiver reaches {Lsn.Format(start)}", ct);
            await stop.CancelAsync();
            await running;
            var (_, receivedFrom) = await receiver.CatchUpAsync(start, ct);
            Console.Error.WriteLine($"bench: both archives start at {Lsn.Format(start)} (pg_receivewal began at {Lsn.Format(receivedFrom)}, its slot's segment)");
        }
        output.WriteLine($"config mib={mib} rounds={rounds} segment_mib=16 shared_buffers=256MB store=local-folder "
                         + $"flush_bytes_mib={new WalArchiverOptions().FlushBytes / MiB:0} pg_receivewal={(receiveNoSync ? "no-sync" : "defaults")}");

        var from = start;
        var results = new List<Round>();
        for (var n = 1; n <= rounds; n++)
        {
            var generate = Stopwatch.StartNew();
            var to = await GenerateWalAsync(node, from, (ulong)mib * 1024 * 1024, ct);
            Console.Error.WriteLine($"bench: round {n}: {(to - from) / MiB:0} MiB of WAL {Lsn.Format(from)}..{Lsn.Format(to)} written in {generate.Elapsed.TotalSeconds:0.0}s");

            var oursFirst = n % 2 == 1;
            TimeSpan ours = default, theirs = default;
            var oursFrom = from;
            foreach (var which in oursFirst ? new[] { true, false } : [false, true])
            {
                // Neither pays for the other's (or the load's) dirty pages.
                await ChildProcesses.RunCheckedAsync("sync", [], null, TimeSpan.FromMinutes(5), ct);
                if (which) (ours, oursFrom) = await OursAsync(store, instance, systemId, node, superuser, spool, from, to, ct);
                else theirs = await TheirsAsync(receiver, from, to, ct);
            }
            var round = new Round(n, oursFirst, from, to, oursFrom, ours, theirs);
            results.Add(round);
            output.WriteLine($"round n={n} order={(oursFirst ? "ours,pg_receivewal" : "pg_receivewal,ours")} wal_mib={round.Mib:0.0} "
                             + $"ours_s={ours.TotalSeconds:0.000} ours_mib_s={F1(round.OursMibS)} "
                             + $"pg_receivewal_s={theirs.TotalSeconds:0.000} pg_receivewal_mib_s={F1(round.ReceiveWalMibS)}");
            from = to;
        }

        var (segments, identical) = await CompareAsync(store, instance, systemId, receiver.Dir, start, from, ct);
        output.WriteLine($"check segments={segments} identical={identical}");
        var oursMibS = Median(results.Select(r => r.OursMibS));
        var theirsMibS = Median(results.Select(r => r.ReceiveWalMibS));
        output.WriteLine($"RESULT archive ours_mib_s={F1(oursMibS)} pg_receivewal_mib_s={F1(theirsMibS)} ratio={oursMibS / theirsMibS:0.00}");
        return identical == segments ? 0 : 1;
    }

    /// <summary>
    /// A fresh archiver on the store catches up from where the store ends (<paramref name="from"/>, or just past it:
    /// it may have stored a few bytes the server wrote after the boundary in the moment before it was stopped) to
    /// <paramref name="to"/>, then stops.
    /// </summary>
    private static async Task<(TimeSpan Elapsed, ulong From)> OursAsync(LocalFolderObjectStore store, string instance, ulong systemId, NodeLaunchSpec node, Credentials superuser,
        string spool, ulong from, ulong to, CancellationToken ct)
    {
        var resumesAt = await ArchivedEndAsync(store, instance, systemId, ct);
        if (resumesAt < from || resumesAt - from >= 1024 * 1024)
            throw new InvalidOperationException($"the store ends at {Lsn.Format(resumesAt)}, not at {Lsn.Format(from)}");
        if (resumesAt != from) Console.Error.WriteLine($"bench: the store ends {resumesAt - from} bytes past {Lsn.Format(from)}; ours resumes there");
        var archiver = new WalArchiver(store, instance, node.ListenAddress, node.Port, superuser, spool, new WalArchiverOptions(), Logger);
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var watch = Stopwatch.StartNew();
        var running = archiver.RunAsync(stop.Token);
        await WaitUntilAsync(() => archiver.Progress.ArchivedLsn >= to, running, $"the archiver reaches {Lsn.Format(to)}", ct, pollMs: 2);
        var elapsed = watch.Elapsed;
        // Anything the archiver logs after this line (a warning as its stream is cut) is outside the timed part.
        Console.Error.WriteLine($"bench: the archiver reached {Lsn.Format(to)} after {elapsed.TotalSeconds:0.000}s; stopping it");
        await stop.CancelAsync();
        await running;
        return (elapsed, resumesAt);
    }

    private static async Task<TimeSpan> TheirsAsync(ReceiveWal receiver, ulong from, ulong to, CancellationToken ct)
    {
        var (elapsed, started) = await receiver.CatchUpAsync(to, ct);
        if (started != from) throw new InvalidOperationException($"pg_receivewal started at {Lsn.Format(started)}, not at {Lsn.Format(from)}");
        return elapsed;
    }

    private static async Task<ulong> ArchivedEndAsync(IObjectStore store, string instance, ulong systemId, CancellationToken ct) =>
        (await ArchiveCatalog.ReadAsync(store, instance, systemId, SegmentSize, ct)).ArchivedEnd(1);

    /// <summary>Wide rows (about 1 KB each) until <paramref name="bytes"/> of WAL follow <paramref name="from"/>, then a segment switch.</summary>
    private static async Task<ulong> GenerateWalAsync(NodeLaunchSpec node, ulong from, ulong bytes, CancellationToken ct)
    {
        var id = 0L;
        while (await Sql.FlushLsnAsync(node, ct) - from < bytes)
        {
            await Sql.ExecAsync(node, $"INSERT INTO load SELECT g, repeat(md5(g::text), 30) FROM generate_series({id + 1}, {id + 10_000}) g", ct);
            id += 10_000;
        }
        // Checkpointed now, so no checkpoint falls into a timed catch-up.
        await Sql.ExecAsync(node, "CHECKPOINT", ct);
        return await SwitchAsync(node, ct);
    }

    /// <summary>Closes the current segment; returns the boundary where the next begins, once PostgreSQL has flushed up to it.</summary>
    private static async Task<ulong> SwitchAsync(NodeLaunchSpec node, CancellationToken ct)
    {
        var switchEnd = (ulong)await Sql.ScalarAsync<decimal>(node, "SELECT pg_switch_wal() - '0/0'", ct);
        var boundary = (switchEnd + SegmentSize - 1) / SegmentSize * SegmentSize;
        while (await Sql.FlushLsnAsync(node, ct) < boundary) await Task.Delay(10, ct);
        return boundary;
    }

    private static async Task WaitUntilAsync(Func<bool> condition, Task running, string what, CancellationToken ct, int pollMs = 20)
    {
        var deadline = Stopwatch.StartNew();
        while (!condition())
        {
            if (running.IsCompleted) throw new InvalidOperationException($"the archiver ended before {what}");
            if (deadline.Elapsed > CatchUpTimeout) throw new TimeoutException($"timed out waiting until {what}");
            await Task.Delay(pollMs, ct);
        }
    }

    /// <summary>Every segment of the measured range, ours from the store against pg_receivewal's file, by SHA-256.</summary>
    private static async Task<(int Segments, int Identical)> CompareAsync(LocalFolderObjectStore store, string instance, ulong systemId, string receiveDir,
        ulong from, ulong to, CancellationToken ct)
    {
        var segments = 0;
        var identical = 0;
        for (var lsn = from; lsn < to; lsn += SegmentSize)
        {
            var segment = WalSegment.Containing(1, lsn, SegmentSize);
            segments++;
            var ours = Path.Combine(store.Folder, ArchiveLayout.Segment(instance, systemId, segment));
            var theirs = Path.Combine(receiveDir, segment.Name);
            if (!File.Exists(ours) || !File.Exists(theirs))
            {
                Console.Error.WriteLine($"bench: segment {segment.Name} missing: ours {File.Exists(ours)}, pg_receivewal {File.Exists(theirs)}");
                continue;
            }
            var oursHash = await HashAsync(ours, ct);
            var theirsHash = await HashAsync(theirs, ct);
            if (oursHash.AsSpan().SequenceEqual(theirsHash)) identical++;
            else Console.Error.WriteLine($"bench: segment {segment.Name} differs between the store and pg_receivewal");
        }
        return (segments, identical);
    }

    private static async Task<byte[]> HashAsync(string path, CancellationToken ct)
    {
        await using var file = File.OpenRead(path);
        return await SHA256.HashDataAsync(file, ct);
    }

    private static double Median(IEnumerable<double> values)
    {
        var sorted = values.Order().ToList();
        var mid = sorted.Count / 2;
        return sorted.Count % 2 == 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
    }

    private static string F1(double v) => v.ToString("0.0", CultureInfo.InvariantCulture);
}
