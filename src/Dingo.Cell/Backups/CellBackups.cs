using Dingo.Cells;
using Dingo.Config;
using Dingo.Model;
using Dingo.Store;
using Microsoft.Extensions.Logging;

namespace Dingo.Backups;

/// <summary>
/// A cell's share of backing up: for every cluster whose leader runs here, a <see cref="BackupDuty"/> (archive WAL,
/// base backups on schedule, retention, state in etcd); and restores for nodes that bootstrap from a backup.
/// </summary>
public sealed class CellBackups(IObjectStore store, BackupSettings settings, EtcdStore etcd, string workRoot, string postgresBin, HaSettings ha, ILogger logger, RestoreDrill? drill = null,
    Dingo.Health.CellMetrics? metrics = null, Dingo.Store.EventJournal? events = null)
{
    public IObjectStore Store => store;
    public BackupSettings Settings => settings;

    /// <summary>
    /// One base backup at a time per cell: each copies a whole data directory (an empty cluster's is 46 MiB) and writes
    /// it to the store, and ten new instances' first backups at once took the disk from the provisions that followed
    /// them (bench/Provision's climb: initdb took 9 s instead of 1). A duty that finds it taken tries again at its next
    /// check, 2 s later, without holding up its other work.
    /// </summary>
    internal SemaphoreSlim BaseBackupGate { get; } = new(1, 1);

    /// <summary>Whether the cell's runtime has made or started no node for the span (IContainerRuntime.NodeWorkQuietFor).</summary>
    public Func<TimeSpan, bool> NodeWorkQuietFor { get; init; } = _ => true;

    private readonly SemaphoreSlim _drillRequestsGate = new(1, 1);
    private HashSet<string> _drillRequests = [];
    private DateTime _drillRequestsAt = DateTime.MinValue;

    /// <summary>
    /// Whether an operator asked for a drill of <paramref name="instanceId"/>: one listing of the platform's requests at
    /// most every 5 s for all of this cell's duties (each duty read its own key every 5 s: with a hundred leaders on a
    /// cell, twenty etcd reads a second for requests that come a few times a year).
    /// </summary>
    internal async Task<bool> DrillRequestedAsync(string instanceId, CancellationToken ct)
    {
        await _drillRequestsGate.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            if (DateTime.UtcNow - _drillRequestsAt >= TimeSpan.FromSeconds(5))
            {
                var prefix = etcd.Keys.DrillRequests;
                _drillRequests = (await etcd.ListRawAsync(prefix, ct).ConfigureAwait(false)).Select(kv => kv.Key[prefix.Length..]).ToHashSet(StringComparer.Ordinal);
                _drillRequestsAt = DateTime.UtcNow;
            }
            return _drillRequests.Contains(instanceId);
        }
        finally
        {
            _drillRequestsGate.Release();
        }
    }

    /// <summary>A drill request just handled: the next question lists again.</summary>
    internal void DrillRequestHandled() => _drillRequestsAt = DateTime.MinValue;

    /// <summary>Starts the duties of the leader of <paramref name="instanceId"/>; dispose the duty when it stops leading.</summary>
    public BackupDuty Lead(string instanceId, string nodeId, string host, int port, Credentials superuser, bool baseBackupNow) =>
        new(this, instanceId, nodeId, host, port, superuser, baseBackupNow);

    /// <summary>
    /// Downloads what restoring <paramref name="source"/> needs into this node's scratch folder. What the source's
    /// archiver last reported (etcd) is read first: the archive must hold at least that much for a restore to latest.
    /// </summary>
    public async Task<ArchiveRestore.Prepared> PrepareRestoreAsync(RestoreSource source, string nodeId, CancellationToken ct)
    {
        var state = (await etcd.GetAsync<BackupState>(etcd.Keys.Backup(source.InstanceId), ct).ConfigureAwait(false))?.Value;
        var claim = state is null ? null : new ArchiveClaim(state.SystemId, state.Timeline, Lsn.Parse(state.ArchivedLsn), state.NodeId, state.UpdatedAt);
        var watch = System.Diagnostics.Stopwatch.StartNew();
        var ok = false;
        try
        {
            var prepared = await new ArchiveRestore(store, logger).PrepareAsync(source.InstanceId, source.PointInTime, Path.Combine(workRoot, "restore", nodeId), ct, claim).ConfigureAwait(false);
            ok = true;
            return prepared;
        }
        finally
        {
            metrics?.Restored(watch.Elapsed, ok);
        }
    }

    public void CleanRestore(string nodeId)
    {
        var dir = Path.Combine(workRoot, "restore", nodeId);
        try { if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true); }
        catch (IOException ex) { logger.LogWarning("could not remove {Dir}: {Error}", dir, ex.Message); }
    }

    /// <summary>One leader's backup work, running until disposed.</summary>
    public sealed class BackupDuty : IAsyncDisposable
    {
        private readonly CellBackups _cell;
        private readonly string _instanceId;
        private readonly string _nodeId;
        private readonly string _host;
        private readonly int _port;
        private readonly Credentials _superuser;
        private readonly CancellationTokenSource _stop = new();
        private readonly Task _archiving;
        private readonly Task _scheduling;
        private readonly WalArchiver _archiver;
        private bool _backupNow;
        private DateTime? _firstPutOffSince;
        private BaseBackupManifest? _last;
        private int _count;
        private string? _backupError;
        private DateTime _nextCheck = DateTime.MinValue;
        private DateTime _nextDrillCheck = DateTime.MinValue;
        private bool _listed;
        private long? _slotBacklog;
        private string? _lastAlarm;

        internal BackupDuty(CellBackups cell, string instanceId, string nodeId, string host, int port, Credentials superuser, bool baseBackupNow)
        {
            _cell = cell;
            _instanceId = instanceId;
            _nodeId = nodeId;
            _host = host;
            _port = port;
            _superuser = superuser;
            _backupNow = baseBackupNow;
            var options = new WalArchiverOptions { FlushDelay = cell.Settings.FlushDelay, BacklogAlarmBytes = cell.Settings.BacklogAlarmBytes };
            _archiver = new WalArchiver(cell.Store, instanceId, host, port, superuser, Path.Combine(cell.WorkRoot, "spool", instanceId), options, cell.Logger);
            _archiving = Task.Run(() => _archiver.RunAsync(_stop.Token));
            _scheduling = Task.Run(() => ScheduleAsync(_stop.Token));
        }

        public ArchiveProgress Progress => _archiver.Progress;

        /// <summary>The instance's commits wait for the store (parameter `store-sync`): the archiver uploads and reports at once.</summary>
        public bool StoreSynchronous { get => _archiver.StoreSynchronous; set => _archiver.StoreSynchronous = value; }

        /// <summary>The instance replicates synchronously (its commits may wait for a standby).</summary>
        public bool Synchronous { get; set; }
        public bool Stopped => _archiving.IsCompleted;

        private async Task ScheduleAsync(CancellationToken ct)
        {
            var log = _cell.Logger;
            while (!ct.IsCancellationRequested)
            {
                // Each step on its own: a store that fails must not keep the alarm from being published.
                foreach (var step in new Func<Task>[]
                         {
                             () => PublishAsync(ct),
                             () => _archiver.Progress.SystemId != 0 && DateTime.UtcNow >= _nextCheck ? BaseBackupIfDueAsync(_archiver.Progress.SystemId, ct) : Task.CompletedTask,
                             () => _last is not null && DateTime.UtcNow >= _nextDrillCheck ? DrillIfDueAsync(ct) : Task.CompletedTask,
                         })
                {
                    try
                    {
                        await step().ConfigureAwait(false);
                    }
                    catch (OperationCanceledException) when (ct.IsCancellationRequested) { return; }
                    catch (Exception ex)
                    {
                        log.LogWarning("backups of {Instance}: {Error}", _instanceId, ex.Message);
                        if (_nextCheck < DateTime.UtcNow + TimeSpan.FromSeconds(10)) _nextCheck = DateTime.UtcNow + TimeSpan.FromSeconds(10);
                    }
                }
                // Every 2 s where commits can wait (they are counted), something is wrong or the first base backup is still
                // to take; an idle, healthy duty every 10 s, when it asks its server anyway (its archive position is published
                // that much later; a hundred duties a cell woke 50 times a second at 2 s, 20 at 5 s).
                var busy = Synchronous || StoreSynchronous || _backupNow || _gated || _last is null || _lastAlarm is not null || _archiver.Progress.Error is not null;
                try { await Task.Delay(TimeSpan.FromSeconds(busy ? 2 : 10), ct).ConfigureAwait(false); }
                catch (OperationCanceledException) { return; }
            }
        }

        private async Task BaseBackupIfDueAsync(ulong systemId, CancellationToken ct)
        {
            var log = _cell.Logger;
            var backups = new BaseBackups(_cell.Store, log);
            if (!_listed)
            {
                // Listed once per duty (the listing covers every WAL object): while this node leads, only it adds backups.
                var all = await backups.ListAsync(_instanceId, ct).ConfigureAwait(false);
                _last = all.LastOrDefault();
                _count = all.Count;
                _listed = true;
            }
            var verdict = BackupSchedule.BaseBackup(_backupNow, _archiver.GapDetected, _last?.SystemId, _last?.FinishedAt, systemId, _cell.Settings.BaseBackupInterval, DateTimeOffset.UtcNow);
            if (!verdict.Due)
            {
                _nextCheck = DateTime.UtcNow + TimeSpan.FromMinutes(1);
                return;
            }
            var settle = _cell.Settings.FirstBackupSettle;
            var first = _last is null && !_backupNow && !_archiver.GapDetected;
            var wait = BackupSchedule.FirstBackupWaits(first, Synchronous || StoreSynchronous, settle, _cell.NodeWorkQuietFor(settle),
                _firstPutOffSince is { } since ? DateTime.UtcNow - since : TimeSpan.Zero, BackupSchedule.FirstBackupMostWait);
            if (wait.Due)
            {
                // Asked again at the duty's next check (2 s: it counts as busy until the first backup is stored).
                if (_firstPutOffSince is null)
                {
                    _firstPutOffSince = DateTime.UtcNow;
                    log.LogInformation("base backup of {Instance}: the first waits until the cell has made or started no node for {Settle} s (at most {Most} s): {Why}",
                        _instanceId, settle.TotalSeconds, BackupSchedule.FirstBackupMostWait.TotalSeconds, wait.Why);
                }
                return;
            }
            var why = _firstPutOffSince is { } putOff ? $"{verdict.Why} (waited {(DateTime.UtcNow - putOff).TotalSeconds:0.#} s: {wait.Why})" : verdict.Why;
            // Another of this cell's is running: the next check, 2 s later (the duty counts as busy meanwhile).
            _gated = !await _cell.BaseBackupGate.WaitAsync(0, ct).ConfigureAwait(false);
            if (_gated) return;
            try
            {
                await TakeBaseBackupAsync(backups, systemId, why, ct).ConfigureAwait(false);
            }
            finally
            {
                _cell.BaseBackupGate.Release();
            }
        }

        private async Task TakeBaseBackupAsync(BaseBackups backups, ulong systemId, string why, CancellationToken ct)
        {
            var log = _cell.Logger;
            var (name, host, port) = await SourceAsync(ct).ConfigureAwait(false);
            log.LogInformation("base backup of {Instance} from {Source}: {Why}", _instanceId, name, why);
            try
            {
                // The client certificate of this platform's CA goes along (a process may trust several: PlatformConnectionTls.Libpq).
                var caPem = await Dingo.Postgres.PlatformCaStore.CertificateAsync(_cell.Etcd, ct).ConfigureAwait(false);
                var ca = caPem is null ? null : Dingo.Security.PlatformCa.FingerprintOf(caPem);
                _last = await backups.TakeAsync(_instanceId, systemId, name, host, port, _superuser, _cell.PostgresBin, Path.Combine(_cell.WorkRoot, "base"), ca, ct).ConfigureAwait(false);
                _backupNow = false;
                _archiver.GapDetected = false;
                _backupError = null;
                await backups.ApplyRetentionAsync(_instanceId, _cell.Settings.Keep, ct).ConfigureAwait(false);
                _count = Math.Min(_count + 1, _cell.Settings.Keep);
                _cell.Events?.Record(_instanceId, _nodeId, EventKind.BaseBackup,
                    $"base backup {_last.Label} taken from {name}: {_last.Bytes / (1024.0 * 1024):0.0} MiB, WAL {_last.StartLsn} to {_last.EndLsn}");
                _nextCheck = DateTime.UtcNow + TimeSpan.FromMinutes(1);
            }
            catch (Exception ex) when (ex is not OperationCanceledException || !ct.IsCancellationRequested)
            {
                _backupError = ex.Message;
                _nextCheck = DateTime.UtcNow + TimeSpan.FromSeconds(30);
                log.LogWarning("base backup of {Instance} from {Source} failed: {Error}", _instanceId, name, ex.Message);
                _cell.Events?.Record(_instanceId, _nodeId, EventKind.BaseBackupFailed, $"base backup from {name} failed: {ex.Message}");
            }
        }

        /// <summary>On request (admin API), or when the last drill (or, before any, the oldest backup) is older than the drill interval.</summary>
        private async Task DrillIfDueAsync(CancellationToken ct)
        {
            var drill = _cell.Drill;
            if (drill is null || !OperatingSystem.IsLinux()) return;
            var etcd = _cell.Etcd;
            var requested = await _cell.DrillRequestedAsync(_instanceId, ct).ConfigureAwait(false);
            var interval = _cell.Settings.DrillInterval;
            // The last result is read once per duty (another leader may have drilled before this one led); after that only
            // this duty writes it.
            if (!_drillRead)
            {
                _lastDrill = (await etcd.GetAsync<DrillResult>(etcd.Keys.Drill(_instanceId), ct).ConfigureAwait(false))?.Value;
                _drillRead = true;
            }
            var last = _lastDrill;
            if (last is not null) _cell.Metrics?.Drill(_instanceId, last);
            _nextDrillCheck = DateTime.UtcNow + TimeSpan.FromSeconds(requested ? 0 : 5);
            if (!BackupSchedule.Drill(requested, last?.At, _last!.FinishedAt, interval, DateTimeOffset.UtcNow).Due) return;
            var p = _archiver.Progress;
            var claim = p.SystemId == 0 ? null : new ArchiveClaim(p.SystemId, p.Timeline, p.ArchivedLsn, _nodeId, p.LastUpload);
            var result = await drill.RunAsync(_instanceId, _superuser, ct, claim).ConfigureAwait(false);
            await etcd.PutAsync(etcd.Keys.Drill(_instanceId), result, ct).ConfigureAwait(false);
            _lastDrill = result;
            _cell.Metrics?.Drill(_instanceId, result);
            _cell.Events?.Record(_instanceId, _nodeId, result.Ok ? EventKind.Drill : EventKind.DrillFailed, result.Detail);
            await etcd.DeleteAsync(etcd.Keys.DrillRequest(_instanceId), ct).ConfigureAwait(false);
            _cell.DrillRequestHandled();
        }

        private DrillResult? _lastDrill;
        private bool _drillRead;

        /// <summary>
        /// WAL the leader keeps only for the archiver (its slot's hold), as the server itself counts it. Asked every 2 s
        /// while the node leads, on one pooled connection: a new one each time cost PostgreSQL a fork and both sides a
        /// SCRAM exchange and a TLS handshake every 2 s per leader, idle or not (3 sessions in 8 s on an idle primary,
        /// LifecycleTests). In a whole test suite it was a small part of the PostgreSQL processes started: 5,616 before,
        /// 5,277 after (process accounting of fresh120 and fresh141).
        /// </summary>
        private async Task<(long? Slot, int Waiting, double WaitSeconds)> ServerFiguresAsync(CancellationToken ct)
        {
            try
            {
                // 10 s: a timed-out open is a backend forked and authenticated for nothing, begun again 2 s later.
                var cs = Dingo.Postgres.DatabaseAdmin.ConnectionString(_host, _port, _superuser, "postgres", openSeconds: 10);
                cs.Pooling = true;
                cs.MaxPoolSize = 1;
                cs.ConnectionIdleLifetime = 30;
                // The pool's pruning timer, every 10 s by default, woke each idle node's duty once more than its own asks.
                cs.ConnectionPruningInterval = 30;
                cs.ApplicationName = Dingo.Ha.PostgresProbe.BackupsApplicationName;
                await using var conn = Dingo.Postgres.PlatformConnectionTls.Connection(cs);
                await conn.OpenAsync(ct).ConfigureAwait(false);
                // Commits waiting for synchronous replication (wait event SyncRep): with store-sync, for the object store.
                await using var cmd = new Npgsql.NpgsqlCommand(
                    """
                    SELECT (SELECT (pg_current_wal_lsn() - restart_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1),
                           count(*)::int,
                           COALESCE(EXTRACT(epoch FROM clock_timestamp() - min(state_change)), 0)::float8
                    FROM pg_stat_activity WHERE wait_event = 'SyncRep'
                    """, conn);
                cmd.Parameters.AddWithValue(WalArchiverOptions.DefaultSlotName);
                await using var r = await cmd.ExecuteReaderAsync(ct).ConfigureAwait(false);
                if (!await r.ReadAsync(ct).ConfigureAwait(false)) return (_slotBacklog, 0, 0);
                return (r.IsDBNull(0) ? null : r.GetInt64(0), r.GetInt32(1), r.GetDouble(2));
            }
            catch (Exception ex) when (ex is Npgsql.NpgsqlException or TimeoutException)
            {
                return (_slotBacklog, _waiting.Count, _waiting.Seconds);
            }
        }

        private (int Count, double Seconds) _waiting;

        /// <summary>A healthy streaming replica spares the primary the read; without one, the primary itself.</summary>
        private async Task<(string Name, string Host, int Port)> SourceAsync(CancellationToken ct)
        {
            var statuses = await _cell.Etcd.ListAsync<NodeStatus>(_cell.Etcd.Keys.Statuses(_instanceId), ct).ConfigureAwait(false);
            var fresh = DateTimeOffset.UtcNow - _cell.Ha.LoopWait * 3 - TimeSpan.FromSeconds(1);
            var replica = statuses.Select(s => s.Value)
                .Where(s => s.NodeId != _nodeId && s.Role == NodeRole.Replica && s.State == NodeState.Running && s.Streaming && s.UpdatedAt >= fresh)
                .OrderBy(s => s.NodeId, StringComparer.Ordinal).FirstOrDefault();
            return replica is not null ? (replica.NodeId, replica.Host, replica.Port) : (_nodeId, _host, _port);
        }

        private async Task PublishAsync(CancellationToken ct)
        {
            var p = _archiver.Progress;
            // Commits can wait only with synchronous replication or store-sync: then they are counted every pass (2 s, the
            // alarm's resolution). Otherwise the server is asked every 10 s, for its slot's backlog: an idle leader's duty
            // cost a query every 2 s for nothing (issue 16, 300 instances a box).
            var ask = Synchronous || StoreSynchronous || p.Error is not null || DateTime.UtcNow - _figuresAt >= TimeSpan.FromSeconds(10);
            var figures = ask ? await ServerFiguresAsync(ct).ConfigureAwait(false) : (_slotBacklog, 0, 0);
            if (ask) _figuresAt = DateTime.UtcNow;
            _slotBacklog = figures.Slot;
            _waiting = (figures.Waiting, figures.WaitSeconds);
            var backlog = Math.Max(p.BacklogBytes, _slotBacklog ?? 0);
            string? alarm = null;
            if (figures.Waiting > 0 && figures.WaitSeconds >= _cell.Settings.CommitWaitAlarm.TotalSeconds)
                alarm = StoreSynchronous
                    ? $"{figures.Waiting} commit(s) waiting for the object store, the oldest for {figures.WaitSeconds:0.0}s (store-sync acknowledges a commit only once the store holds it){(p.Error is { } why ? $": {why}" : "")}"
                    : $"{figures.Waiting} commit(s) waiting for a synchronous standby, the oldest for {figures.WaitSeconds:0.0}s";
            else if (backlog >= _cell.Settings.BacklogAlarmBytes)
                alarm = $"WAL archive backlog {backlog / (1024 * 1024)} MiB (alarm at {_cell.Settings.BacklogAlarmBytes / (1024 * 1024)} MiB): pg_wal on the leader grows until the store takes it";
            else if (p.Error is not null) alarm = $"WAL archiving failing: {p.Error}";
            var state = new BackupState
            {
                NodeId = _nodeId,
                SystemId = p.SystemId,
                Timeline = p.Timeline,
                ArchivedLsn = Lsn.Format(p.ArchivedLsn),
                BacklogBytes = backlog,
                LastUpload = p.LastUpload,
                Alarm = alarm,
                LastBaseBackup = _last?.Label,
                LastBaseBackupAt = _last?.FinishedAt,
                BaseBackups = _count,
                BaseBackupError = _backupError,
                CommitsWaiting = figures.Waiting,
                CommitWaitSeconds = Math.Round(figures.WaitSeconds, 1),
                UpdatedAt = DateTimeOffset.UtcNow,
            };
            _cell.Metrics?.Backup(_instanceId, state, p.BacklogBytes, _last?.Bytes);
            if (alarm is not null && alarm != _lastAlarm)
            {
                _cell.Logger.LogError("backups of {Instance}: {Alarm}", _instanceId, alarm);
                // An event when the alarm starts, not each time its figures move.
                if (_lastAlarm is null) _cell.Events?.Record(_instanceId, _nodeId, EventKind.BackupAlarm, alarm);
            }
            _lastAlarm = alarm;
            // Only news is written (and a heartbeat every 10 s): with a hundred idle instances, a write per instance
            // every 2 s was a steady load on etcd for nothing.
            var same = state with { UpdatedAt = default };
            if (same == _lastPublished && DateTime.UtcNow - _lastPublishedAt < TimeSpan.FromSeconds(10)) return;
            await _cell.Etcd.PutAsync(_cell.Etcd.Keys.Backup(_instanceId), state, ct).ConfigureAwait(false);
            (_lastPublished, _lastPublishedAt) = (same, DateTime.UtcNow);
        }

        // The first ask of an asynchronous instance's server comes one period (10 s) after the duty began, not at once: a
        // new primary's slot holds nothing yet and the archiver's own backlog stands in, while the session (a fork, a TLS
        // handshake, an authentication) ran beside the bind of every provision (20 of them in a burst of 20).
        private DateTime _figuresAt = DateTime.UtcNow;
        /// <summary>A base backup is due and waits for the cell's gate.</summary>
        private bool _gated;
        private BackupState? _lastPublished;
        private DateTime _lastPublishedAt;

        private int _disposed;

        /// <summary>Stops the duty; a second call does nothing.</summary>
        public async ValueTask DisposeAsync()
        {
            if (Interlocked.Exchange(ref _disposed, 1) == 1) return;
            await _stop.CancelAsync().ConfigureAwait(false);
            try { await Task.WhenAll(_archiving, _scheduling).ConfigureAwait(false); }
            catch (OperationCanceledException) { }
            _stop.Dispose();
        }
    }

    internal string WorkRoot => workRoot;
    internal string PostgresBin => postgresBin;
    internal ILogger Logger => logger;
    internal EtcdStore Etcd => etcd;
    internal HaSettings Ha => ha;
    internal RestoreDrill? Drill => drill;
    internal Dingo.Health.CellMetrics? Metrics => metrics;
    internal Dingo.Store.EventJournal? Events => events;
}
