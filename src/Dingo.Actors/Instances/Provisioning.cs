using Dingo.Config;
using Dingo.Model;

namespace Dingo.Instances;

/// <summary>Everything one reconcile pass of an instance looks at, read from etcd at one moment.</summary>
public sealed record InstanceSnapshot(
    InstanceRecord Instance,
    OperationRecord? Operation,
    IReadOnlyList<NodeSpec> Nodes,
    IReadOnlyList<NodeStatus> Statuses,
    IReadOnlyList<CellInfo> Cells,
    IReadOnlyDictionary<string, int> CellLoad,
    LeaderRecord? Leader,
    DateTimeOffset Now)
{
    /// <summary>Cells declared lost (gone past the grace period): their nodes get replaced.</summary>
    public IReadOnlySet<string> LostCells { get; init; } = new HashSet<string>();
    /// <summary>Cells being drained by an operator: no new nodes go there.</summary>
    public IReadOnlySet<string> DrainedCells { get; init; } = new HashSet<string>();
    /// <summary>The instance's backups as its leader's cell last published them (null: nothing yet).</summary>
    public BackupState? Backup { get; init; }
    /// <summary>Per cell, the first nodes of instances it holds (each instance's earliest node): where new primaries start.</summary>
    public IReadOnlyDictionary<string, int> FirstNodeLoad { get; init; } = new Dictionary<string, int>();
}

public abstract record InstanceDecision(string Description)
{
    /// <summary>Nothing to do now; look again soon.</summary>
    public sealed record Wait(string Description) : InstanceDecision(Description);
    public sealed record PlaceNode(CellInfo Cell, string Description) : InstanceDecision(Description);
    /// <summary>Self-healing: drop nodes on lost cells and place replacements (no operation involved).</summary>
    public sealed record ReplaceLost(IReadOnlyList<NodeSpec> Lost, string Description) : InstanceDecision(Description);
    public sealed record RemoveNodes(IReadOnlyList<NodeSpec> Nodes, string Description) : InstanceDecision(Description);
    public sealed record Succeed(string Description) : InstanceDecision(Description);
    public sealed record Fail(string Description) : InstanceDecision(Description);
    public sealed record FinishDeletion(string Description) : InstanceDecision(Description);
    /// <summary>No operation is running and nothing differs: the actor may rest.</summary>
    public sealed record Idle(string Description) : InstanceDecision(Description);
}

/// <summary>
/// The instance's reconcile decision: state in, one decision out, with the sentence last_operation shows.
/// Side effects live in <see cref="InstanceReconciler"/>.
/// </summary>
public static class Provisioning
{
    /// <summary>How long a node may keep failing before a provision is reported failed (dingo.broker.provision-failure-grace).</summary>
    public static readonly TimeSpan FailureGrace = BrokerSettings.DefaultProvisionFailureGrace;

    /// <summary>How long an operation waits for enough cells (some may be starting or restarting) before failing.</summary>
    public static readonly TimeSpan CellWaitGrace = TimeSpan.FromSeconds(30);

    public static InstanceDecision Decide(InstanceSnapshot s, TimeSpan provisionTimeout, TimeSpan? failureGrace = null)
    {
        var grace = failureGrace ?? FailureGrace;
        var op = s.Operation;
        if (s.Instance.Desired == DesiredState.Absent) return DecideDeletion(s);
        var inProgress = op is { InProgress: true };

        // Self-healing runs whether or not an operation is in progress: a node on a lost cell is replaced, as
        // long as another node keeps the data (a lone node's data would be lost with a fresh replacement).
        var lost = s.Nodes.Where(n => s.LostCells.Contains(n.CellId)).ToList();
        if (lost.Count > 0 && lost.Count < s.Nodes.Count)
            return new InstanceDecision.ReplaceLost(lost, $"replacing {string.Join(", ", lost.Select(n => $"{n.NodeId} (on lost {n.CellId})"))}");

        // Draining: a replacement is built elsewhere first; the drained node goes once the others are healthy
        // and the primary has moved away (the drain asked it to switch over).
        var drained = s.Nodes.Where(n => s.DrainedCells.Contains(n.CellId)).ToList();
        if (drained.Count > 0 && !inProgress)
        {
            if (s.Nodes.Count - drained.Count < s.Instance.NodeCount)
            {
                var place = Place(s);
                return place is InstanceDecision.PlaceNode p ? p with { Description = $"draining: {p.Description}" } : new InstanceDecision.Wait($"draining: {place.Description}");
            }
            var healthy = s.Nodes.Except(drained).All(n => s.Statuses.Any(x => x.NodeId == n.NodeId && x.State == NodeState.Running
                && (x.NodeId == s.Leader?.NodeId || (x.Role == NodeRole.Replica && x.Streaming))));
            var movable = drained.Where(n => n.NodeId != s.Leader?.NodeId).ToList();
            if (healthy && movable.Count > 0)
                return new InstanceDecision.RemoveNodes(movable, $"draining: removing {string.Join(", ", movable.Select(n => n.NodeId))} from {string.Join(", ", movable.Select(n => n.CellId).Distinct())}");
            return new InstanceDecision.Wait(drained.Any(n => n.NodeId == s.Leader?.NodeId)
                ? "draining: waiting for the primary to switch over away from the drained cell"
                : "draining: waiting for the replacement to stream");
        }

        if (!inProgress)
        {
            // A cluster below its planned size (after a replacement) grows back without an operation.
            if (s.Nodes.Count < s.Instance.NodeCount && s.Nodes.Count > 0 && s.Leader is not null)
            {
                var grow = Place(s);
                if (grow is InstanceDecision.PlaceNode) return grow;
                return new InstanceDecision.Idle($"no action: below its planned size, {grow.Description}");
            }
            return new InstanceDecision.Idle($"no action: {op?.Kind.Wire() ?? "instance"} {op?.State.Wire() ?? "idle"}");
        }

        var elapsed = s.Now - op!.StartedAt;
        if (elapsed > provisionTimeout)
            return new InstanceDecision.Fail($"{op.Kind.Wire()} did not finish within {provisionTimeout.TotalSeconds:0}s; last step: {op.Description}");

        if (s.Nodes.Count < s.Instance.NodeCount) return Place(s);
        if (s.Nodes.Count > s.Instance.NodeCount)
        {
            // Shrink: newest replicas go first; the leader never.
            var extra = s.Nodes.Where(n => n.NodeId != s.Leader?.NodeId).OrderByDescending(n => n.CreatedAt)
                .Take(s.Nodes.Count - s.Instance.NodeCount).ToList();
            if (extra.Count > 0) return new InstanceDecision.RemoveNodes(extra, $"removing {string.Join(", ", extra.Select(n => n.NodeId))} to shrink to {s.Instance.NodeCount} node(s)");
        }

        if (PrimaryServesAsynchronousCluster(s) is { } early) return early;

        var alive = s.Cells.ToDictionary(c => c.Id);
        foreach (var node in s.Nodes.OrderBy(n => n.CreatedAt).ThenBy(n => n.NodeId, StringComparer.Ordinal))
        {
            var status = s.Statuses.FirstOrDefault(x => x.NodeId == node.NodeId);
            if (!alive.ContainsKey(node.CellId)) return new InstanceDecision.Wait($"waiting for {node.CellId}: the cell holding node {node.NodeId} is not registered");
            if (status is null) return new InstanceDecision.Wait($"waiting for {node.CellId} to take node {node.NodeId}");
            switch (status.State)
            {
                case NodeState.Failed:
                    // A node keeps retrying; a provision gives up once the failure has lasted (a passing one only shows).
                    if (op.Kind == OperationKind.Provision && s.Now - (status.FailingSince ?? s.Now) >= grace)
                        return new InstanceDecision.Fail($"node {node.NodeId} on {node.CellId} failed: {status.Detail}");
                    return new InstanceDecision.Wait($"node {node.NodeId} on {node.CellId}: {status.Detail}");
                case NodeState.Initialising:
                    return new InstanceDecision.Wait(status.Detail.StartsWith("cloning", StringComparison.Ordinal)
                        ? $"building replica {node.NodeId} on {node.CellId} (pg_basebackup)"
                        : status.Detail.StartsWith("bootstrapping", StringComparison.Ordinal) || s.Nodes.Count == 1
                            ? $"initialising database on {node.CellId}"
                            : $"node {node.NodeId} on {node.CellId}: {status.Detail}");
                case NodeState.Starting or NodeState.Stopped:
                    return new InstanceDecision.Wait($"starting PostgreSQL on {node.CellId}");
                case NodeState.Running:
                    break;
                default:
                    return new InstanceDecision.Wait($"node {node.NodeId} on {node.CellId}: {status.Detail}");
            }
        }
        if (s.Leader is null) return new InstanceDecision.Wait("waiting for a primary to take the leader key");
        var replicas = s.Statuses.Where(x => x.NodeId != s.Leader.NodeId && s.Nodes.Any(n => n.NodeId == x.NodeId)).ToList();
        var notStreaming = replicas.Where(r => r.Role != NodeRole.Replica || !r.Streaming).ToList();
        if (notStreaming.Count > 0)
            return new InstanceDecision.Wait($"waiting for {string.Join(", ", notStreaming.Select(r => r.NodeId))} to stream from the primary {s.Leader.NodeId}");
        // Store-sync promises that every acknowledged commit can be restored from the store alone: only true once the
        // store holds a base backup to replay it onto (taken as the cluster starts, seconds after its primary answers).
        if (Dingo.Ha.SynchronousCommit.StoreSync(s.Instance) && s.Backup is not { LastBaseBackup: not null })
            return new InstanceDecision.Wait($"waiting for the first base backup of {s.Instance.Id}: with store-sync, commits are recoverable from the store only from it on");
        var leaderCell = s.Nodes.FirstOrDefault(n => n.NodeId == s.Leader.NodeId)?.CellId ?? "?";
        return new InstanceDecision.Succeed(replicas.Count == 0
            ? $"ready: primary {s.Leader.NodeId} on {leaderCell}, reachable on port {s.Instance.Port}"
            : $"ready: primary {s.Leader.NodeId} on {leaderCell}, {replicas.Count} replica(s) streaming, reachable on port {s.Instance.Port}");
    }

    /// <summary>
    /// A new asynchronous cluster (`cluster`, without store-sync) is bindable as soon as its primary serves: its replicas
    /// are placed and build on (a clone and a start, a second or two) without holding the application back, as a replica
    /// rebuilt later does. The plan never promised that a commit reached a replica. Synchronous clusters (`cluster-ha`,
    /// store-sync with replicas) wait for their standbys, as their promise needs one; a resize (an update) waits too.
    /// </summary>
    private static InstanceDecision? PrimaryServesAsynchronousCluster(InstanceSnapshot s)
    {
        if (s.Operation is not { Kind: OperationKind.Provision } || s.Nodes.Count < 2 || s.Nodes.Count < s.Instance.NodeCount || s.Leader is null) return null;
        if (Catalog.FindPlan(s.Instance.PlanId) is not { Synchronous: false } || Dingo.Ha.SynchronousCommit.StoreSync(s.Instance)) return null;
        var leaderNode = s.Nodes.FirstOrDefault(n => n.NodeId == s.Leader.NodeId);
        var leader = s.Statuses.FirstOrDefault(x => x.NodeId == s.Leader.NodeId);
        if (leaderNode is null || leader is not { State: NodeState.Running } || !(leader.Writable || leader.Role == NodeRole.Primary)) return null;
        var building = s.Nodes.Where(n => n.NodeId != leaderNode.NodeId
            && !s.Statuses.Any(x => x.NodeId == n.NodeId && x is { State: NodeState.Running, Role: NodeRole.Replica, Streaming: true })).Select(n => n.NodeId).ToList();
        var replicas = s.Nodes.Count - 1 - building.Count;
        return new InstanceDecision.Succeed(building.Count == 0
            ? $"ready: primary {leaderNode.NodeId} on {leaderNode.CellId}, {replicas} replica(s) streaming, reachable on port {s.Instance.Port}"
            : $"ready: primary {leaderNode.NodeId} on {leaderNode.CellId}, reachable on port {s.Instance.Port}; replica(s) {string.Join(", ", building)} being built (asynchronous replication)");
    }

    private static InstanceDecision Place(InstanceSnapshot s)
    {
        var allowed = RequestedCells(s.Instance);
        var cells = s.Cells.Where(c => !s.DrainedCells.Contains(c.Id) && !s.LostCells.Contains(c.Id)).ToList();
        var placement = Placement.Choose(cells, s.CellLoad, s.Nodes.Select(n => n.CellId).ToHashSet(), allowed,
            firstNodes: s.Nodes.Count == 0 ? s.FirstNodeLoad : null);
        if (placement.Cell is null)
        {
            // No cell yet is often a platform still starting: wait, and fail only at the timeout. Cells that are
            // there but cannot hold the cluster will not change by waiting: say so now.
            var waited = s.Operation is { } op ? s.Now - op.StartedAt : TimeSpan.Zero;
            if (s.Cells.Count == 0 || waited < CellWaitGrace) return new InstanceDecision.Wait($"waiting for a cell: {placement.Reason}");
            return new InstanceDecision.Fail($"cannot place node {s.Nodes.Count + 1} of {s.Instance.NodeCount}: {placement.Reason} " +
                $"(registered: {string.Join(", ", s.Cells.Select(c => $"{c.Id} ({c.Zone})"))}; a cluster needs one cell per node)");
        }
        return new InstanceDecision.PlaceNode(placement.Cell, $"placing node {s.Nodes.Count + 1} of {s.Instance.NodeCount} on {placement.Cell.Id} ({placement.Cell.Zone})");
    }

    private static InstanceDecision DecideDeletion(InstanceSnapshot s)
    {
        if (s.Nodes.Count > 0)
        {
            var cells = string.Join(", ", s.Nodes.Select(n => n.CellId).Distinct());
            return new InstanceDecision.RemoveNodes(s.Nodes, $"removing {s.Nodes.Count} node(s) from {cells}");
        }
        var lingering = s.Statuses.Where(st => s.Cells.Any(c => c.Id == st.CellId)).ToList();
        if (lingering.Count > 0)
            return new InstanceDecision.Wait($"waiting for {string.Join(", ", lingering.Select(l => l.CellId).Distinct())} to stop PostgreSQL and delete the data");
        return new InstanceDecision.FinishDeletion("deleted: nodes and data removed, port retired");
    }

    /// <summary>The `cells` provision parameter, when given.</summary>
    public static IReadOnlyCollection<string>? RequestedCells(InstanceRecord instance)
    {
        using var doc = System.Text.Json.JsonDocument.Parse(instance.ParametersJson);
        if (doc.RootElement.ValueKind == System.Text.Json.JsonValueKind.Object
            && doc.RootElement.TryGetProperty("cells", out var cells)
            && cells.ValueKind == System.Text.Json.JsonValueKind.Array)
        {
            return cells.EnumerateArray().Where(c => c.ValueKind == System.Text.Json.JsonValueKind.String).Select(c => c.GetString()!).ToHashSet();
        }
        return null;
    }
}
