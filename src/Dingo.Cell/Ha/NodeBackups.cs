using Dingo.Model;

namespace Dingo.Ha;

/// <summary>
/// The backup duty of a node's HA pass: the leader archives WAL and takes base backups; a node that no longer holds the
/// key stops at once, and a node going away (its actor stopped, the cell shutting down) starts none again.
/// </summary>
internal sealed class NodeBackups(AgentState state)
{
    private readonly Lock _gate = new();
    private Dingo.Backups.CellBackups.BackupDuty? _duty;
    private bool _closed;

    /// <summary>Whether a duty runs (for tests).</summary>
    internal bool Active { get { lock (_gate) return _duty is not null; } }

    /// <param name="holdsLease">this node holds the leader lease after the pass's action</param>
    public async Task KeepAsync(HaAction action, string? failure, InstanceRecord record, bool holdsLease)
    {
        if (state.Backups is not { } backups) return;
        var leading = holdsLease && failure is null && action is HaAction.Lead or HaAction.TakeLeadership or HaAction.Promote;
        if (leading)
        {
            Dingo.Backups.CellBackups.BackupDuty? duty, ended = null;
            lock (_gate)
            {
                if (_closed) return;
                duty = _duty;
                if (duty is { Stopped: true }) (ended, duty, _duty) = (duty, null, null);
            }
            if (ended is not null) await ended.DisposeAsync().ConfigureAwait(false);
            if (duty is null)
            {
                // A pass still running when the node was closed (its actor stopped in the middle of the pass) must not
                // start a duty nobody would stop: its archiver went on connecting to a removed node's port for minutes
                // (bench/Provision: 91 "Failed to connect" lines of a deleted instance).
                var started = backups.Lead(state.Spec.InstanceId, state.Spec.NodeId, state.Address, state.Spec.Port, record.Superuser, baseBackupNow: state.Restored);
                lock (_gate)
                {
                    if (!_closed) (_duty, duty, started) = (started, started, null);
                }
                if (started is not null)
                {
                    await started.DisposeAsync().ConfigureAwait(false);
                    return;
                }
                state.Restored = false;
            }
            (duty!.StoreSynchronous, duty.Synchronous) = (state.StoreSync, state.Synchronous);
        }
        else if (!holdsLease)
        {
            await StopAsync().ConfigureAwait(false);
        }
    }

    /// <summary>Stops this node's archiver and backup schedule: it no longer leads.</summary>
    public async Task StopAsync()
    {
        Dingo.Backups.CellBackups.BackupDuty? duty;
        lock (_gate) (duty, _duty) = (_duty, null);
        if (duty is not null) await duty.DisposeAsync().ConfigureAwait(false);
    }

    /// <summary>Stops them for good: the node is going away, and a pass still running starts none again.</summary>
    public Task CloseAsync()
    {
        lock (_gate) _closed = true;
        return StopAsync();
    }
}
