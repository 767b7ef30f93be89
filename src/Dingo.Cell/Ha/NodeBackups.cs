using Dingo.Model;

namespace Dingo.Ha;

/// <summary>
/// The backup duty of a node's HA pass: the leader archives WAL and takes base backups; a node that no longer holds the
/// key stops at once.
/// </summary>
internal sealed class NodeBackups(AgentState state)
{
    private Dingo.Backups.CellBackups.BackupDuty? _duty;

    /// <param name="holdsLease">this node holds the leader lease after the pass's action</param>
    public async Task KeepAsync(HaAction action, string? failure, InstanceRecord record, bool holdsLease)
    {
        if (state.Backups is not { } backups) return;
        var leading = holdsLease && failure is null && action is HaAction.Lead or HaAction.TakeLeadership or HaAction.Promote;
        if (leading)
        {
            if (_duty is not { Stopped: false })
            {
                if (_duty is not null) await _duty.DisposeAsync().ConfigureAwait(false);
                _duty = backups.Lead(state.Spec.InstanceId, state.Spec.NodeId, state.Address, state.Spec.Port, record.Superuser, baseBackupNow: state.Restored);
                state.Restored = false;
            }
            (_duty.StoreSynchronous, _duty.Synchronous) = (state.StoreSync, state.Synchronous);
        }
        else if (!holdsLease)
        {
            await StopAsync().ConfigureAwait(false);
        }
    }

    /// <summary>Stops this node's archiver and backup schedule (no longer leading, or the node is going away).</summary>
    public async Task StopAsync()
    {
        var duty = _duty;
        _duty = null;
        if (duty is not null) await duty.DisposeAsync().ConfigureAwait(false);
    }
}
