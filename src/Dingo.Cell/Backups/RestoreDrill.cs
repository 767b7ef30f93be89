using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Dingo.Cells;
using Dingo.Model;
using Microsoft.Extensions.Logging;
using Npgsql;

namespace Dingo.Backups;

/// <summary>
/// A restore drill: the latest backup of an instance restored, from the object store only, into a scratch node on
/// this cell (a local PostgreSQL process on a free loopback port), checked, and removed. The answer to "would the
/// restore work if we needed it now?" before anyone needs it.
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class RestoreDrill(IObjectStore store, string workRoot, string postgresBin, string? runAsUser, ILoggerFactory loggers)
{
    /// <param name="claim">how far the leader's archiver says the archive reaches: the drill must restore at least that far</param>
    public async Task<DrillResult> RunAsync(string instanceId, Credentials superuser, CancellationToken ct, ArchiveClaim? claim = null)
    {
        var watch = Stopwatch.StartNew();
        var logger = loggers.CreateLogger("Dingo.Backups.Drill");
        var nodeId = "drill-" + instanceId;
        var root = Path.Combine(workRoot, "drills");
        var runtime = new LocalProcessRuntime(new LocalProcessRuntimeOptions(Path.Combine(root, "nodes"), postgresBin, runAsUser), loggers.CreateLogger<LocalProcessRuntime>());
        string? label = null;
        try
        {
            var prepared = await new ArchiveRestore(store, logger).PrepareAsync(instanceId, null, Path.Combine(root, "restore", instanceId), ct, claim).ConfigureAwait(false);
            label = prepared.Backup.Label;
            var spec = new NodeLaunchSpec(nodeId, instanceId, "127.0.0.1", FreePort(), superuser);
            await runtime.RestoreAsync(spec, prepared.Input, ct).ConfigureAwait(false);
            await runtime.StartAsync(spec, null, ct).ConfigureAwait(false);
            var check = await CheckAsync(spec, ct).ConfigureAwait(false);
            var detail = $"restored base backup {label} and {prepared.Segments} WAL segment(s) up to {Lsn.Format(prepared.Goal.End)} on timeline {prepared.Goal.Timeline} in {watch.Elapsed.TotalSeconds:0.0}s; {check}";
            logger.LogInformation("restore drill of {Instance}: {Detail}", instanceId, detail);
            return new DrillResult { InstanceId = instanceId, Ok = true, Detail = detail, BaseBackup = label, Seconds = watch.Elapsed.TotalSeconds, At = DateTimeOffset.UtcNow };
        }
        catch (Exception ex) when (ex is not OperationCanceledException || !ct.IsCancellationRequested)
        {
            logger.LogError("restore drill of {Instance} FAILED: {Error}", instanceId, ex.Message);
            return new DrillResult { InstanceId = instanceId, Ok = false, Detail = ex.Message, BaseBackup = label, Seconds = watch.Elapsed.TotalSeconds, At = DateTimeOffset.UtcNow };
        }
        finally
        {
            using var cleanup = new CancellationTokenSource(TimeSpan.FromSeconds(60));
            try { await runtime.RemoveAsync(nodeId, cleanup.Token).ConfigureAwait(false); }
            catch (Exception ex) when (ex is IOException or InvalidOperationException or OperationCanceledException) { logger.LogWarning("drill cleanup: {Error}", ex.Message); }
            try { Directory.Delete(Path.Combine(root, "restore", instanceId), recursive: true); } catch (DirectoryNotFoundException) { } catch (IOException) { }
        }
    }

    /// <summary>Every database opens and answers; reports their count and the number of user tables.</summary>
    private static async Task<string> CheckAsync(NodeLaunchSpec spec, CancellationToken ct)
    {
        var deadline = Stopwatch.StartNew();
        List<string> databases = [];
        while (true)
        {
            try
            {
                await using var conn = Open(spec, "postgres");
                await conn.OpenAsync(ct).ConfigureAwait(false);
                await using var cmd = new NpgsqlCommand("SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1", conn);
                await using var r = await cmd.ExecuteReaderAsync(ct).ConfigureAwait(false);
                while (await r.ReadAsync(ct).ConfigureAwait(false)) databases.Add(r.GetString(0));
                break;
            }
            catch (NpgsqlException) when (deadline.Elapsed < TimeSpan.FromSeconds(30))
            {
                await Task.Delay(200, ct).ConfigureAwait(false);
            }
        }
        long tables = 0;
        foreach (var db in databases)
        {
            await using var conn = Open(spec, db);
            await conn.OpenAsync(ct).ConfigureAwait(false);
            await using var cmd = new NpgsqlCommand("SELECT count(*) FROM pg_stat_user_tables", conn);
            tables += (long)(await cmd.ExecuteScalarAsync(ct).ConfigureAwait(false))!;
        }
        return $"{databases.Count} database(s) open ({string.Join(", ", databases)}), {tables} user table(s)";
    }

    private static NpgsqlConnection Open(NodeLaunchSpec spec, string database) => new(new NpgsqlConnectionStringBuilder
    {
        Host = spec.ListenAddress, Port = spec.Port, Username = spec.Superuser.Username, Password = spec.Superuser.Password,
        Database = database, Pooling = false, Timeout = 5,
    }.ConnectionString);

    private static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}
