using System.Globalization;
using Dingo.Cells;
using Dingo.Model;
using Dingo.Postgres;
using Microsoft.Extensions.Logging;
using Npgsql;

namespace Dingo.Backups;

/// <summary>
/// Keeps a promoted node from reusing a timeline number the archive already holds. PostgreSQL picks the new timeline as
/// (newest history file it finds probing current+1, +2, … — without restore_command, in its own pg_wal) + 1, so a branch
/// that was promoted and fenced before this node ever followed it would get its number taken twice. A replica's agent
/// fetches the archive's history files ahead of time (<see cref="RefreshIfDue"/>, in the background: a failover never
/// waits for a listing); right before pg_promote, <see cref="BeforePromotionAsync"/> checks cheaply for newer ones and
/// says which files to put into pg_wal. They go there only then: a history file of another branch in a running
/// standby's pg_wal would make it retarget that branch, or refuse to start ("requested timeline is not a child of this
/// server's history"), which is what Patroni's and CloudNativePG's restore_command can run into.
/// </summary>
public sealed class TimelineHistories(IObjectStore store, string instanceId, ILogger logger)
{
    /// <summary>How often a replica lists the archive's history files.</summary>
    public TimeSpan Interval { get; init; } = TimeSpan.FromSeconds(30);

    private readonly object _gate = new();
    private ulong _systemId;
    private Dictionary<uint, byte[]> _files = [];
    private long _refreshedAt = long.MinValue;
    private Task? _refreshing;
    private string? _lastProblem;

    /// <summary>When the archive was last listed for this system (null: never).</summary>
    public bool Listed(ulong systemId) { lock (_gate) return _systemId == systemId && _refreshedAt != long.MinValue; }

    /// <summary>The archive's history files known for <paramref name="systemId"/>, by timeline.</summary>
    public IReadOnlyDictionary<uint, byte[]> Known(ulong systemId)
    {
        lock (_gate) return _systemId == systemId ? new Dictionary<uint, byte[]>(_files) : new Dictionary<uint, byte[]>();
    }

    /// <summary>
    /// Starts a background listing when the last one is older than <see cref="Interval"/>; never waits for it. The node's
    /// system id is read from its PostgreSQL. A failure is logged (once per distinct problem) and retried next interval.
    /// </summary>
    public void RefreshIfDue(string host, int port, Credentials superuser)
    {
        lock (_gate)
        {
            if (_refreshing is { IsCompleted: false }) return;
            if (_refreshedAt != long.MinValue && Environment.TickCount64 - _refreshedAt < (long)Interval.TotalMilliseconds) return;
            _refreshedAt = Environment.TickCount64; // a failed attempt also waits an interval
            _refreshing = Task.Run(async () =>
            {
                using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20));
                try
                {
                    var node = await ReadNodeAsync(host, port, superuser, cts.Token).ConfigureAwait(false);
                    await RefreshAsync(node.SystemId, cts.Token).ConfigureAwait(false);
                    _lastProblem = null;
                }
                catch (Exception ex)
                {
                    if (ex.Message != _lastProblem)
                        logger.LogWarning("timeline histories of {Instance}: could not fetch them from the archive ahead of a promotion: {Error}", instanceId, ex.Message);
                    _lastProblem = ex.Message;
                }
            });
        }
    }

    /// <summary>Lists the system's WAL folder and downloads every history file not yet held (a history file never changes).</summary>
    public async Task RefreshAsync(ulong systemId, CancellationToken ct)
    {
        var objects = await store.ListAsync(ArchiveLayout.Wal(instanceId, systemId), ct).ConfigureAwait(false);
        var archived = objects.Select(o => ArchiveLayout.TryParseHistory(o.Key, out var tli) ? tli : 0u).Where(t => t != 0).ToList();
        await FetchAsync(systemId, archived, ct).ConfigureAwait(false);
        lock (_gate) if (_systemId == systemId) _refreshedAt = Environment.TickCount64;
    }

    /// <summary>
    /// Probes the archive for history files above both <paramref name="above"/> and the newest known, one timeline after
    /// the other until one is missing (PostgreSQL's own rule), and downloads what it finds: one request when nothing is new.
    /// </summary>
    public async Task ProbeNewerAsync(ulong systemId, uint above, CancellationToken ct)
    {
        var known = Known(systemId);
        var next = Math.Max(above, known.Count == 0 ? 0 : known.Keys.Max()) + 1;
        var found = new List<uint>();
        while (await store.ExistsAsync(ArchiveLayout.History(instanceId, systemId, next), ct).ConfigureAwait(false)) found.Add(next++);
        await FetchAsync(systemId, found, ct).ConfigureAwait(false);
    }

    private async Task FetchAsync(ulong systemId, IEnumerable<uint> timelines, CancellationToken ct)
    {
        lock (_gate)
        {
            if (_systemId != systemId) (_systemId, _files, _refreshedAt) = (systemId, [], long.MinValue);
        }
        foreach (var tli in timelines.Order())
        {
            lock (_gate) if (_files.ContainsKey(tli)) continue;
            using var content = new MemoryStream();
            await store.GetAsync(ArchiveLayout.History(instanceId, systemId, tli), content, ct).ConfigureAwait(false);
            lock (_gate) if (_systemId == systemId) _files[tli] = content.ToArray();
        }
    }

    /// <summary>
    /// Right before pg_promote: which history files the node's pg_wal must get. Newer ones are looked for once more (a
    /// probe, or the first listing when none was made) within <paramref name="budget"/>, which is spent on the store
    /// alone: the node's own timelines come in <paramref name="node"/>, read on the HA pass's warm connection. An
    /// unreachable store never blocks a promotion: it is logged and what was fetched before is used.
    /// </summary>
    public async Task<IReadOnlyList<TimelineHistoryFile>> BeforePromotionAsync(NodeTimelines node, TimeSpan budget, CancellationToken ct)
    {
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(ct);
        deadline.CancelAfter(budget);
        try
        {
            if (Listed(node.SystemId)) await ProbeNewerAsync(node.SystemId, node.Timeline, deadline.Token).ConfigureAwait(false);
            else await RefreshAsync(node.SystemId, deadline.Token).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is not OperationCanceledException || !ct.IsCancellationRequested)
        {
            logger.LogWarning("timeline histories of {Instance}: the archive could not be checked before promoting ({Error}); promoting with the {Count} history file(s) fetched before: a timeline number may be taken twice (availability first)",
                instanceId, ex is OperationCanceledException ? $"no answer within {budget.TotalSeconds:0.##}s" : ex.Message, Known(node.SystemId).Count);
        }
        var known = Known(node.SystemId);
        return ToInstall(known.Keys, node.Timeline, node.InPgWal).Select(t => new TimelineHistoryFile(t, known[t])).ToList();
    }

    /// <summary>The archived timelines a node on <paramref name="current"/> lacks in its pg_wal: every one above its own.</summary>
    public static IReadOnlyList<uint> ToInstall(IEnumerable<uint> archived, uint current, IReadOnlySet<uint> inPgWal) =>
        archived.Where(t => t > current && !inPgWal.Contains(t)).Distinct().Order().ToList();

    /// <summary>A node's system id, timeline and the history files its pg_wal holds.</summary>
    public sealed record NodeTimelines(ulong SystemId, uint Timeline, IReadOnlySet<uint> InPgWal);

    /// <summary>
    /// The node's system id, timeline (its last checkpoint's or restartpoint's: a replica that just followed a switch may
    /// be one behind, and then gets a file more, never one fewer) and the history files its pg_wal holds, on a fresh
    /// connection of its own (the background refresh).
    /// </summary>
    internal static async Task<NodeTimelines> ReadNodeAsync(string host, int port, Credentials superuser, CancellationToken ct)
    {
        var cs = DatabaseAdmin.ConnectionString(host, port, superuser, "postgres");
        cs.Timeout = 3;
        cs.Pooling = false;
        await using var conn = PlatformConnectionTls.Connection(cs);
        await conn.OpenAsync(ct).ConfigureAwait(false);
        return await ReadNodeAsync(conn, ct).ConfigureAwait(false);
    }

    /// <summary>The same, on a connection the caller opened.</summary>
    public static async Task<NodeTimelines> ReadNodeAsync(NpgsqlConnection conn, CancellationToken ct)
    {
        await using var cmd = new NpgsqlCommand("""
            SELECT (SELECT system_identifier FROM pg_control_system()),
                   (SELECT timeline_id FROM pg_control_checkpoint()),
                   ARRAY(SELECT name FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{8}\.history$')
            """, conn);
        await using var reader = await cmd.ExecuteReaderAsync(ct).ConfigureAwait(false);
        await reader.ReadAsync(ct).ConfigureAwait(false);
        var present = reader.GetFieldValue<string[]>(2)
            .Select(n => uint.Parse(n.AsSpan(0, 8), NumberStyles.HexNumber, CultureInfo.InvariantCulture)).ToHashSet();
        return new NodeTimelines((ulong)reader.GetInt64(0), (uint)reader.GetInt32(1), present);
    }
}
