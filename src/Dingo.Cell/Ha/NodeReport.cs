using Dingo.Model;
using Dingo.Store;

namespace Dingo.Ha;

/// <summary>
/// The report piece of a node's HA pass (observe, decide with <see cref="Failover"/>, act, report): the status the pass
/// leaves in etcd, built by <see cref="Status"/> from what the pass saw and did, and written only when something a
/// reader decides on changed, or as a heartbeat (<see cref="Due"/>). Both are pure; NodeReportTests has their tables.
/// </summary>
internal sealed class NodeReport(EtcdStore store, NodeSpec spec, TimeSpan loopWait)
{
    /// <summary>A quiet node's heartbeat: nobody judges a member alone by its age (a node that joins wakes it first).</summary>
    internal static readonly TimeSpan QuietHeartbeat = TimeSpan.FromSeconds(30);

    private NodeStatus? _lastStable;
    private NodeStatus? _lastWritten;
    private long _lastLease;
    private DateTime _lastWrittenAt;

    /// <summary>The status of one pass: state and role from <see cref="NodeCondition"/>, the rest as observed.</summary>
    /// <param name="connections">client connections at the pass's probe (null: not asked)</param>
    public static NodeStatus Status(NodeSpec spec, string cellId, string address, HaInput input, HaAction action, string? failure,
        int restarts, DateTimeOffset? failingSince, int? connections, DateTimeOffset now)
    {
        var local = input.Local;
        var leading = input.Leader?.NodeId == spec.NodeId || action is HaAction.TakeLeadership or HaAction.Promote;
        var condition = NodeCondition.Of(local, leading, passFailed: failure is not null);
        return new NodeStatus
        {
            NodeId = spec.NodeId,
            InstanceId = spec.InstanceId,
            CellId = cellId,
            State = condition.State,
            Detail = failure is null ? action.Sentence : $"{action.Sentence} — failed: {failure}",
            Host = address,
            Port = spec.Port,
            Role = condition.Role,
            Restarts = restarts,
            Lsn = local.Lsn,
            Timeline = local.Timeline,
            Streaming = local.Streaming,
            Following = local.InRecovery ? local.FollowingNodeId : null,
            Writable = condition.Writable,
            Decision = action.Sentence,
            FailingSince = failingSince,
            Connections = local.Answering ? connections : null,
            NoData = !local.DataInitialised,
            UpdatedAt = now,
        };
    }

    /// <summary>
    /// Written when anything but the time changed (the connection count rides along and never causes a write), under a
    /// new lease, or as a heartbeat well inside the freshness others judge members by (Failover: loop-wait x 3 + 1 s).
    /// </summary>
    public static bool Due(NodeStatus status, long lease, NodeStatus? lastWritten, long lastLease, TimeSpan sinceWritten, TimeSpan heartbeat) =>
        Comparable(status) != lastWritten || lease != lastLease || sinceWritten >= heartbeat;

    /// <summary>
    /// Whether this pass changed nothing a reader decides on, against the last pass (a busy primary's WAL position moves
    /// every pass and does not count): <see cref="PassCadence"/> lets such a quiet node pass rarely.
    /// </summary>
    public bool Unchanged(NodeStatus status)
    {
        var stable = Comparable(status) with { Lsn = 0 };
        var unchanged = stable == _lastStable;
        _lastStable = stable;
        return unchanged;
    }

    /// <summary>Puts the status under the cell's lease when <see cref="Due"/>.</summary>
    /// <param name="quiet">the node is quiet: its heartbeat is <see cref="QuietHeartbeat"/>, else two loop-waits</param>
    public async Task WriteAsync(NodeStatus status, long lease, bool quiet, CancellationToken ct)
    {
        if (!Due(status, lease, _lastWritten, _lastLease, DateTime.UtcNow - _lastWrittenAt, quiet ? QuietHeartbeat : loopWait * 2)) return;
        await store.PutAsync(store.Keys.Status(spec.InstanceId, spec.NodeId), status, ct, lease).ConfigureAwait(false);
        (_lastWritten, _lastLease, _lastWrittenAt) = (Comparable(status), lease, DateTime.UtcNow);
    }

    private static NodeStatus Comparable(NodeStatus status) => status with { UpdatedAt = default, Connections = null };
}
