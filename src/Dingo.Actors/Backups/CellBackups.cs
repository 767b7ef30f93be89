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
public sealed class CellBackups(IObjectStore store, BackupSettings settings, EtcdStore etcd, string workRoot, string postgresBin, HaSettings ha, ILogger logger)
{
    public IObjectStore Store => store;
    public BackupSettings Settings => settings;

    /// <summary>Starts the duties of the leader of <paramref name="instanceId"/>; dispose the duty when it stops leading.</summary>
    public BackupDuty Lead(string instanceId, string nodeId, string host, int port, Credentials superuser, bool baseBackupNow) =>
        new(this, instanceId, nodeId, host, port, superuser, baseBackupNow);

    /// <summary>Downloads what restoring <paramref name="source"/> needs into this node's scratch folder.</summary>
    public async Task<ArchiveRestore.Prepared> PrepareRestoreAsync(RestoreSource source, string nodeId, CancellationToken ct) =>
        await new ArchiveRestore(store, logger).PrepareAsync(source.InstanceId, source.PointInTime, Path.Combine(workRoot, "restore", nodeId), ct).ConfigureAwait(false);

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
        private BaseBackupManifest? _last;
        private int _count;
        private string? _backupError;
        private DateTime _nextCheck = DateTime.MinValue;

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
        public bool Stopped => _archiving.IsCompleted;

        private async Task ScheduleAsync(CancellationToken ct)
        {
            var log = _cell.Logger;
            while (!ct.IsCancellationRequested)
            {
                try
                {
                    var progress = _archiver.Progress;
                    if (progress.SystemId != 0 && DateTime.UtcNow >= _nextCheck) await BaseBackupIfDueAsync(progress.SystemId, ct).ConfigureAwait(false);
                    await PublishAsync(ct).ConfigureAwait(false);
                }
                catch (OperationCanceledException) when (ct.IsCancellationRequested) { return; }
                catch (Exception ex)
                {
                    log.LogWarning("backups of {Instance}: {Error}", _instanceId, ex.Message);
                }
                try { await Task.Delay(TimeSpan.FromSeconds(2), ct).ConfigureAwait(false); }
                catch (OperationCanceledException) { return; }
            }
        }

        private async Task BaseBackupIfDueAsync(ulong systemId, CancellationToken ct)
        {
            var log = _cell.Logger;
            var backups = new BaseBackups(_cell.Store, log);
            var all = await backups.ListAsync(_instanceId, ct).ConfigureAwait(false);
            _last = all.LastOrDefault();
            _count = all.Count;
            if (_archiver.GapDetected) _backupNow = true;
            var due = _backupNow || _last is null || _last.SystemId != systemId
                      || _last.FinishedAt + _cell.Settings.BaseBackupInterval <= DateTimeOffset.UtcNow;
            if (!due)
            {
                _nextCheck = DateTime.UtcNow + TimeSpan.FromMinutes(1);
                return;
            }
            var (name, host, port) = await SourceAsync(ct).ConfigureAwait(false);
            try
            {
                _last = await backups.TakeAsync(_instanceId, systemId, name, host, port, _superuser, _cell.PostgresBin, Path.Combine(_cell.WorkRoot, "base"), ct).ConfigureAwait(false);
                _backupNow = false;
                _archiver.GapDetected = false;
                _backupError = null;
                await backups.ApplyRetentionAsync(_instanceId, _cell.Settings.Keep, ct).ConfigureAwait(false);
                _count = Math.Min(_count + 1, _cell.Settings.Keep);
                _nextCheck = DateTime.UtcNow + TimeSpan.FromMinutes(1);
            }
            catch (Exception ex) when (ex is not OperationCanceledException || !ct.IsCancellationRequested)
            {
                _backupError = ex.Message;
                _nextCheck = DateTime.UtcNow + TimeSpan.FromSeconds(30);
                log.LogWarning("base backup of {Instance} from {Source} failed: {Error}", _instanceId, name, ex.Message);
            }
        }

        /// <summary>A healthy streaming replica spares the primary the read; without one, the primary itself.</summary>
        private async Task<(string Name, string Host, int Port)> SourceAsync(CancellationToken ct)
        {
            var statuses = await _cell.Etcd.ListAsync<NodeStatus>(_cell.Etcd.Keys.Statuses(_instanceId), ct).ConfigureAwait(false);
            var fresh = DateTimeOffset.UtcNow - _cell.Ha.LoopWait * 3 - TimeSpan.FromSeconds(1);
            var replica = statuses.Select(s => s.Value)
                .Where(s => s.NodeId != _nodeId && s.Role == "replica" && s.State == NodeState.Running && s.Streaming && s.UpdatedAt >= fresh)
                .OrderBy(s => s.NodeId, StringComparer.Ordinal).FirstOrDefault();
            return replica is not null ? (replica.NodeId, replica.Host, replica.Port) : (_nodeId, _host, _port);
        }

        private async Task PublishAsync(CancellationToken ct)
        {
            var p = _archiver.Progress;
            string? alarm = null;
            if (p.BacklogBytes >= _cell.Settings.BacklogAlarmBytes)
                alarm = $"WAL archive backlog {p.BacklogBytes / (1024 * 1024)} MiB (alarm at {_cell.Settings.BacklogAlarmBytes / (1024 * 1024)} MiB): pg_wal on the leader grows until the store takes it";
            else if (p.Error is not null) alarm = $"WAL archiving failing: {p.Error}";
            var state = new BackupState
            {
                NodeId = _nodeId,
                SystemId = p.SystemId,
                Timeline = p.Timeline,
                ArchivedLsn = Lsn.Format(p.ArchivedLsn),
                BacklogBytes = p.BacklogBytes,
                LastUpload = p.LastUpload,
                Alarm = alarm,
                LastBaseBackup = _last?.Label,
                LastBaseBackupAt = _last?.FinishedAt,
                BaseBackups = _count,
                BaseBackupError = _backupError,
                UpdatedAt = DateTimeOffset.UtcNow,
            };
            await _cell.Etcd.PutAsync(_cell.Etcd.Keys.Backup(_instanceId), state, ct).ConfigureAwait(false);
        }

        public async ValueTask DisposeAsync()
        {
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
}
