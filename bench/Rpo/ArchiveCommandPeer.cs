using System.Diagnostics;
using System.Globalization;
using Dingo.Backups;
using Dingo.Bench.Shared;
using Dingo.Cells;
using Dingo.Model;
using Microsoft.Extensions.Logging;

namespace Dingo.Bench.Rpo;

/// <summary>
/// The peer: PostgreSQL's own archiving as the original product and most others use it — `archive_command` copying each
/// finished 16 MiB segment to the store, `archive_timeout` forcing a switch (Crunchy's 60 s by default; WAL-E's product
/// used 600 s, CloudNativePG 300 s) — put through the same writer, kill and restore as ours: a base backup
/// (pg_basebackup, tar), the archive folder, and a node restored from those two alone.
/// </summary>
internal static class ArchiveCommandPeer
{
    public static async Task<(IReadOnlyList<RowWriter.Row> Acked, IReadOnlyList<RowWriter.Row> Restored, DateTime WritingFrom, double RestoreSeconds)> RunOnceAsync(
        int n, TimeSpan archiveTimeout, TimeSpan writeEvery, TimeSpan killAfter, ILogger logger, CancellationToken ct)
    {
        var instance = "rpo-peer-" + Guid.NewGuid().ToString("N")[..8];
        var superuser = new Credentials("dingo_admin", "Pw" + Guid.NewGuid().ToString("N"));
        await using var nodes = BenchNodes.Create("dingo-rpo-peer-");
        var a = await nodes.CreateAndStartAsync("node-a", instance, superuser, ct);
        await Sql.ExecAsync(a, RowWriter.CreateTable, ct);

        // The "store": a folder the postgres user writes into.
        var archive = Path.Combine(nodes.Root, "archive");
        Directory.CreateDirectory(archive);
        await ChildProcesses.RunCheckedAsync("chown", ["postgres:postgres", archive], null, TimeSpan.FromSeconds(10), ct);
        await Sql.ExecAsync(a, "ALTER SYSTEM SET archive_mode = on", ct);
        await Sql.ExecAsync(a, $"ALTER SYSTEM SET archive_command = 'test ! -f {archive}/%f && cp %p {archive}/%f && sync {archive}/%f'", ct);
        await Sql.ExecAsync(a, string.Create(CultureInfo.InvariantCulture, $"ALTER SYSTEM SET archive_timeout = '{(int)archiveTimeout.TotalSeconds}s'"), ct);
        await nodes.Runtime.StopAsync(a.NodeId, ct);
        await nodes.Runtime.StartAsync(a, null, ct);
        await Sql.WaitServingAsync(a, ct);

        var backup = Path.Combine(nodes.Root, "backup");
        await ChildProcesses.RunCheckedAsync(Path.Combine(BenchNodes.PgBin, "pg_basebackup"),
            ["-h", a.ListenAddress, "-p", a.Port.ToString(CultureInfo.InvariantCulture), "-U", superuser.Username, "-D", backup, "-Ft", "-X", "stream", "-c", "fast", "-w"],
            new Dictionary<string, string> { ["PGPASSWORD"] = superuser.Password }, TimeSpan.FromMinutes(2), ct);

        var postmaster = await nodes.PostmasterPidAsync(a.NodeId, ct);
        using var writerStop = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var writer = new RowWriter(Sql.ConnectionString(a), writeEvery);
        var writing = writer.RunAsync(writerStop.Token);
        await Task.Delay(killAfter, ct);
        // The host vanishes, as in our runs: PostgreSQL SIGKILLed (an archive_command in flight dies with it).
        var killed = PostgresSignals.KillPostgres(postmaster);
        await writerStop.CancelAsync();
        await writing;
        await PostgresSignals.WaitGoneAsync(killed, ct);
        await nodes.Runtime.RemoveAsync(a.NodeId, ct);
        var acked = writer.Acknowledged;
        var segments = Directory.GetFiles(archive).Length;
        Console.Error.WriteLine($"bench: peer run {n}: after {killAfter.TotalSeconds:0.00}s SIGKILLed PostgreSQL; {acked.Count} commits acknowledged; {segments} segment(s) archived");

        // Only the base backup and the archive folder are left.
        var watch = Stopwatch.StartNew();
        var input = new RestoreInput(backup, archive, null) { Goal = new RestoreGoal(instance, 1, 0, null, null) };
        var b = await nodes.RestoreAsync("node-b", instance, superuser, input, ct);
        var restoreSeconds = watch.Elapsed.TotalSeconds;
        var rows = await Program.ReadRowsAsync(b, ct);
        logger.LogInformation("peer run {N}: {Rows} rows restored", n, rows.Count);
        return (acked, rows, writer.StartedAt, restoreSeconds);
    }
}
