using Dingo.Health;
using Dingo.Model;
using Dingo.Postgres;
using Npgsql;

namespace Dingo.Ha;

/// <summary>What the node's PostgreSQL says about itself, and the SQL the HA executor runs on it.</summary>
public sealed class PostgresProbe(string host, int port, Credentials superuser)
{
    /// <summary>The platform's own pooled sessions on a node, left out of its client count.</summary>
    public const string HaApplicationName = "dingo-ha", BackupsApplicationName = "dingo-backups";

    /// <summary>
    /// Pooled: the HA loop asks every node several questions every loop-wait, and a fresh connection each time costs
    /// PostgreSQL a fork and the client a SCRAM exchange. With many nodes on a cell that was most of the cell's CPU.
    /// </summary>
    /// <param name="timeoutSeconds">
    /// the open's deadline (and the wait for a pooled session): 10 s, as the pass never waits for a probe longer than its
    /// budget (<see cref="ObserveDetached"/>). At 2 s, a saturated machine's opens (5 s and more) were abandoned after
    /// PostgreSQL had forked and authenticated for them, and tried again at the next pass.
    /// </param>
    private NpgsqlConnection Connect(int timeoutSeconds = 10)
    {
        var cs = DatabaseAdmin.ConnectionString(host, port, superuser, "postgres");
        cs.Timeout = timeoutSeconds;
        cs.CommandTimeout = 10;
        cs.Pooling = true;
        cs.MaxPoolSize = 3;
        cs.ConnectionIdleLifetime = 60;
        // Npgsql prunes idle connections every 10 s by default: a wake-up of its own for each node, on top of a quiet
        // node's pass every idle-loop-wait. Pruning twice a lifetime is enough.
        cs.ConnectionPruningInterval = 30;
        cs.ApplicationName = HaApplicationName;
        return PlatformConnectionTls.Connection(cs);
    }

    /// <summary>A primary's current WAL position, a standby's furthest received or replayed one, in bytes.</summary>
    private const string PositionSql = """
        CASE WHEN pg_is_in_recovery()
             THEN greatest(coalesce(pg_last_wal_receive_lsn(), '0/0'), coalesce(pg_last_wal_replay_lsn(), '0/0')) - '0/0'
             ELSE pg_current_wal_lsn() - '0/0' END
        """;

    /// <summary>The WAL position as the node has it right now (the HA pass's observation may be older), one short query.</summary>
    public async Task<long> WalPositionAsync(CancellationToken ct)
    {
        await using var conn = Connect();
        await conn.OpenAsync(ct).ConfigureAwait(false);
        await using var cmd = new NpgsqlCommand("SELECT " + PositionSql, conn);
        return (long)(decimal)(await cmd.ExecuteScalarAsync(ct).ConfigureAwait(false))!;
    }

    /// <summary>When the last <see cref="ObserveAsync"/> asked twice: how long each try took and why the first failed (for a slow pass's log line).</summary>
    public string? LastRetry { get; private set; }

    /// <summary>
    /// The HA pass's question, on the probe's own deadlines (the open's and the command's timeouts) and never cancelled by
    /// the pass, which waits for it only as long as its budget allows (WaitAsync) and goes on without it. A cancelled
    /// probe cost a saturated machine twice: PostgreSQL forks a process for every cancel request, and a pooled session
    /// whose cancel went unanswered in time is broken, so the next probe forked a new session and repeated the SCRAM
    /// exchange (bench/Provision's Docker burst: 30 and more freshly forked backends waiting for a core at once). A late
    /// answer returns its session to the pool; at most the pool's three run at once per node, the next waits for one.
    /// </summary>
    public Task<PostgresObservation> ObserveDetached()
    {
        var observing = ObserveAsync(CancellationToken.None);
        // Its failure after the pass stopped waiting is nobody's: observed here.
        _ = observing.ContinueWith(static t => _ = t.Exception, CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted, TaskScheduler.Default);
        return observing;
    }

    public async Task<PostgresObservation> ObserveAsync(CancellationToken ct)
    {
        var started = System.Diagnostics.Stopwatch.GetTimestamp();
        try
        {
            return await ObserveOnceAsync(ct).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is NpgsqlException { IsTransient: true } or System.IO.IOException or NpgsqlException { InnerException: System.IO.IOException }
                                   && ex is not NpgsqlException { InnerException: TimeoutException } && !ct.IsCancellationRequested)
        {
            // A pooled connection of a server that has restarted since (a demotion, a crash): forget them all and ask once
            // on a fresh connection, so a restart is never mistaken for a node that does not answer. Not after a timeout
            // (a slow or hung server, or the pool's sessions all busy): clearing the pool then broke the sessions of the
            // probes still waiting for their answers, and each came back as a new fork and SCRAM exchange.
            var first = System.Diagnostics.Stopwatch.GetElapsedTime(started);
            var again = System.Diagnostics.Stopwatch.GetTimestamp();
            var reason = ex is PostgresException pg ? pg.SqlState : ex.GetType().Name;
            try
            {
                using (var conn = Connect()) NpgsqlConnection.ClearPool(conn);
                return await ObserveOnceAsync(ct).ConfigureAwait(false);
            }
            finally
            {
                LastRetry = FormattableString.Invariant($"asked twice: the first try failed after {first.TotalMilliseconds:0} ms ({reason}), the second took {System.Diagnostics.Stopwatch.GetElapsedTime(again).TotalMilliseconds:0} ms");
            }
        }
    }

    /// <summary>How long the last try's open took (a new session's TCP, TLS and SCRAM exchange; a pooled one costs nothing); null before one.</summary>
    public TimeSpan? LastOpen { get; private set; }

    private async Task<PostgresObservation> ObserveOnceAsync(CancellationToken ct)
    {
        await using var conn = Connect();
        var opening = System.Diagnostics.Stopwatch.GetTimestamp();
        await conn.OpenAsync(ct).ConfigureAwait(false);
        LastOpen = System.Diagnostics.Stopwatch.GetElapsedTime(opening);
        await using var cmd = new NpgsqlCommand($"""
            SELECT pg_is_in_recovery(),
                   {PositionSql},
                   (SELECT timeline_id FROM pg_control_checkpoint()),
                   (SELECT status FROM pg_stat_wal_receiver LIMIT 1),
                   (SELECT sender_host FROM pg_stat_wal_receiver LIMIT 1),
                   (SELECT sender_port FROM pg_stat_wal_receiver LIMIT 1),
                   CASE WHEN pg_is_in_recovery() AND pg_last_wal_receive_lsn() <> pg_last_wal_replay_lsn()
                        THEN coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0)::float8
                        ELSE 0 END,
                   (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND application_name NOT IN ('{HaApplicationName}', '{BackupsApplicationName}'))::int,
                   current_setting('synchronous_standby_names'),
                   (SELECT coalesce(array_agg(slot_name::text || CASE WHEN active THEN ':active' ELSE '' END), ARRAY[]::text[]) FROM pg_replication_slots WHERE slot_type = 'physical')
            """, conn);
        await using var r = await cmd.ExecuteReaderAsync(ct).ConfigureAwait(false);
        await r.ReadAsync(ct).ConfigureAwait(false);
        return new PostgresObservation(
            r.GetBoolean(0),
            (long)r.GetDecimal(1),
            r.IsDBNull(2) ? 0 : r.GetInt32(2),
            !r.IsDBNull(3) && r.GetString(3) == "streaming",
            r.IsDBNull(4) ? null : r.GetString(4),
            r.IsDBNull(5) ? null : r.GetInt32(5),
            Math.Max(0, r.GetDouble(6)),
            r.GetInt32(7))
        {
            // A leader's pass decides its slots and synchronous setting with these, instead of asking twice more.
            SynchronousStandbyNames = r.GetString(8),
            Slots = r.GetFieldValue<string[]>(9).ToDictionary(e => e.EndsWith(":active", StringComparison.Ordinal) ? e[..^7] : e, e => e.EndsWith(":active", StringComparison.Ordinal)),
        };
    }

    /// <summary>
    /// What <see cref="EnsureSlotsAsync"/> does to a server whose physical slots are <paramref name="existing"/> (name →
    /// active): creates every wanted slot missing, drops every inactive slot not wanted (an active one is in use).
    /// </summary>
    public static (IReadOnlyList<string> Create, IReadOnlyList<string> Drop) SlotChanges(IReadOnlyDictionary<string, bool> existing, IReadOnlyCollection<string> wanted) =>
        (wanted.Where(n => !existing.ContainsKey(n)).ToList(), existing.Where(e => !e.Value && !wanted.Contains(e.Key)).Select(e => e.Key).ToList());

    /// <summary>True when <see cref="EnsureSlotsAsync"/> would change nothing on a server whose slots are <paramref name="existing"/>.</summary>
    public static bool SlotsAsWanted(IReadOnlyDictionary<string, bool> existing, IReadOnlyCollection<string> wanted) =>
        SlotChanges(existing, wanted) is { Create.Count: 0, Drop.Count: 0 };

    /// <summary>The node's system id, timeline and the history files in its pg_wal, on the pass's warm pooled connection.</summary>
    public async Task<Dingo.Backups.TimelineHistories.NodeTimelines> ReadTimelinesAsync(CancellationToken ct)
    {
        await using var conn = Connect();
        await conn.OpenAsync(ct).ConfigureAwait(false);
        return await Dingo.Backups.TimelineHistories.ReadNodeAsync(conn, ct).ConfigureAwait(false);
    }

    public async Task PromoteAsync(CancellationToken ct)
    {
        await using var conn = Connect();
        await conn.OpenAsync(ct).ConfigureAwait(false);
        // pg_promote's own wait looks every 100 ms whether recovery ended: a tenth of a second on every failover for
        // nothing. And a standby whose WAL stream broke a moment before (its primary just died) notices the request, then
        // sleeps out wal_retrieve_retry_interval before it acts on it: pg_promote took 0.9-1.1 s that way (bench/Chaos,
        // "received promote request" 0.9 s before "redo done"). Every new request wakes that sleep, so the request is
        // repeated every 100 ms (harmless: the postmaster removes a leftover request file when it next starts) and the
        // end of recovery looked for every 10 ms.
        var until = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        var requested = DateTime.MinValue;
        await using var inRecovery = new NpgsqlCommand("SELECT pg_is_in_recovery()", conn);
        await using var promote = new NpgsqlCommand("SELECT pg_promote(false)", conn);
        while (await inRecovery.ExecuteScalarAsync(ct).ConfigureAwait(false) is true)
        {
            if (DateTime.UtcNow > until) throw new InvalidOperationException("the promotion did not finish within 30 s");
            if (DateTime.UtcNow - requested >= TimeSpan.FromMilliseconds(100))
            {
                try
                {
                    if (await promote.ExecuteScalarAsync(ct).ConfigureAwait(false) is not true)
                        throw new InvalidOperationException("pg_promote refused to signal the promotion");
                }
                catch (PostgresException ex) when (ex.SqlState == PostgresErrorCodes.ObjectNotInPrerequisiteState)
                {
                    // "recovery is not in progress": it ended between the two questions.
                }
                requested = DateTime.UtcNow;
            }
            await Task.Delay(10, ct).ConfigureAwait(false);
        }
        // Promotion only requests a checkpoint; until one completes, the control file still names the old timeline and
        // pg_rewind of the old primary against this node answers "no rewind required" wrongly. Done in the background,
        // so the new primary serves at once.
        _ = Task.Run(async () =>
        {
            try
            {
                await using var c = Connect(5);
                await c.OpenAsync(CancellationToken.None).ConfigureAwait(false);
                await using var checkpoint = new NpgsqlCommand("CHECKPOINT", c) { CommandTimeout = 300 };
                await checkpoint.ExecuteNonQueryAsync(CancellationToken.None).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is NpgsqlException or TimeoutException or InvalidOperationException)
            {
                // The next checkpoint comes by itself; pg_rewind then sees the new timeline.
            }
        }, CancellationToken.None);
    }

    public async Task ReloadAsync(CancellationToken ct)
    {
        await using var conn = Connect();
        await conn.OpenAsync(ct).ConfigureAwait(false);
        await using var cmd = new NpgsqlCommand("SELECT pg_reload_conf()", conn);
        await cmd.ExecuteScalarAsync(ct).ConfigureAwait(false);
    }

    /// <summary>Standbys streaming from this primary, by application_name (their node ids).</summary>
    public async Task<IReadOnlyList<string>> StreamingStandbysAsync(CancellationToken ct)
    {
        await using var conn = Connect();
        await conn.OpenAsync(ct).ConfigureAwait(false);
        await using var cmd = new NpgsqlCommand("SELECT application_name FROM pg_stat_replication WHERE state = 'streaming' ORDER BY 1", conn);
        var names = new List<string>();
        await using var r = await cmd.ExecuteReaderAsync(ct).ConfigureAwait(false);
        while (await r.ReadAsync(ct).ConfigureAwait(false)) names.Add(r.GetString(0));
        return names;
    }

    /// <summary>synchronous_standby_names as PostgreSQL holds it now ('' : asynchronous).</summary>
    public async Task<string> SynchronousSettingAsync(CancellationToken ct)
    {
        await using var conn = Connect();
        await conn.OpenAsync(ct).ConfigureAwait(false);
        await using var cmd = new NpgsqlCommand("SHOW synchronous_standby_names", conn);
        return (string?)await cmd.ExecuteScalarAsync(ct).ConfigureAwait(false) ?? "";
    }

    /// <summary>Sets synchronous_standby_names (a <see cref="SynchronousCommit.Plan"/>'s setting) and reloads.</summary>
    public async Task SetSynchronousSettingAsync(string setting, CancellationToken ct)
    {
        foreach (var s in SynchronousCommit.NamedStandbys(setting))
            if (!s.All(c => char.IsAsciiLetterOrDigit(c) || c == '-' || c == '_')) throw new ArgumentException($"unsafe standby name '{s}'");
        if (setting.Contains('\\', StringComparison.Ordinal) || setting.Contains('\'', StringComparison.Ordinal)) throw new ArgumentException("unsafe synchronous_standby_names");
        await using var conn = Connect();
        await conn.OpenAsync(ct).ConfigureAwait(false);
        await using (var set = new NpgsqlCommand($"ALTER SYSTEM SET synchronous_standby_names = '{setting}'", conn))
            await set.ExecuteNonQueryAsync(ct).ConfigureAwait(false);
        await using var reload = new NpgsqlCommand("SELECT pg_reload_conf()", conn);
        await reload.ExecuteScalarAsync(ct).ConfigureAwait(false);
    }

    /// <summary>Creates the members' physical replication slots and drops slots of nodes that left.</summary>
    public async Task EnsureSlotsAsync(IReadOnlyCollection<string> slotNames, CancellationToken ct)
    {
        await using var conn = Connect();
        await conn.OpenAsync(ct).ConfigureAwait(false);
        var existing = new Dictionary<string, bool>();
        await using (var list = new NpgsqlCommand("SELECT slot_name, active FROM pg_replication_slots WHERE slot_type = 'physical'", conn))
        await using (var r = await list.ExecuteReaderAsync(ct).ConfigureAwait(false))
            while (await r.ReadAsync(ct).ConfigureAwait(false)) existing[r.GetString(0)] = r.GetBoolean(1);
        var (missing, unwanted) = SlotChanges(existing, slotNames);
        foreach (var slot in missing)
        {
            await using var create = new NpgsqlCommand("SELECT pg_create_physical_replication_slot($1, true)", conn);
            create.Parameters.AddWithValue(slot);
            await create.ExecuteNonQueryAsync(ct).ConfigureAwait(false);
        }
        foreach (var slot in unwanted)
        {
            await using var drop = new NpgsqlCommand("SELECT pg_drop_replication_slot($1)", conn);
            drop.Parameters.AddWithValue(slot);
            await drop.ExecuteNonQueryAsync(ct).ConfigureAwait(false);
        }
    }

    public static string SlotName(string nodeId) => nodeId.Replace('-', '_').ToLowerInvariant();
}
