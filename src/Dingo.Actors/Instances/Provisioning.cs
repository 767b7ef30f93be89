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
    DateTimeOffset Now);

public abstract record InstanceDecision(string Description)
{
    /// <summary>Nothing to do now; look again soon.</summary>
    public sealed record Wait(string Description) : InstanceDecision(Description);
    public sealed record PlaceNode(CellInfo Cell, string Description) : InstanceDecision(Description);
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
    public static InstanceDecision Decide(InstanceSnapshot s, TimeSpan provisionTimeout)
    {
        var op = s.Operation;
        if (s.Instance.Desired == DesiredState.Absent) return DecideDeletion(s);
        if (op is null || !op.InProgress) return new InstanceDecision.Idle($"no action: {op?.Kind ?? "instance"} {op?.State ?? "idle"}");

        var elapsed = s.Now - op.StartedAt;
        if (elapsed > provisionTimeout)
            return new InstanceDecision.Fail($"{op.Kind} did not finish within {provisionTimeout.TotalSeconds:0}s; last step: {op.Description}");

        var alive = s.Cells.ToDictionary(c => c.Id);
        if (s.Nodes.Count < s.Instance.NodeCount)
        {
            var allowed = RequestedCells(s.Instance);
            var placement = Placement.Choose(s.Cells, s.CellLoad, s.Nodes.Select(n => n.CellId).ToHashSet(), allowed);
            if (placement.Cell is null)
            {
                // No cell yet is often a platform still starting: wait, and fail only at the timeout.
                return new InstanceDecision.Wait($"waiting for a cell: {placement.Reason}");
            }
            return new InstanceDecision.PlaceNode(placement.Cell, $"placing node on {placement.Cell.Id} ({placement.Cell.Zone})");
        }

        foreach (var node in s.Nodes.OrderBy(n => n.NodeId, StringComparer.Ordinal))
        {
            var status = s.Statuses.FirstOrDefault(x => x.NodeId == node.NodeId);
            if (!alive.ContainsKey(node.CellId)) return new InstanceDecision.Wait($"waiting for {node.CellId}: the cell holding node {node.NodeId} is not registered");
            if (status is null) return new InstanceDecision.Wait($"waiting for {node.CellId} to take node {node.NodeId}");
            switch (status.State)
            {
                case NodeState.Failed:
                    return new InstanceDecision.Fail($"node {node.NodeId} on {node.CellId} failed: {status.Detail}");
                case NodeState.Initialising:
                    return new InstanceDecision.Wait($"initialising database on {node.CellId}");
                case NodeState.Starting:
                    return new InstanceDecision.Wait($"starting PostgreSQL on {node.CellId}");
                case NodeState.Running:
                    break;
                default:
                    return new InstanceDecision.Wait($"node {node.NodeId} on {node.CellId}: {status.Detail}");
            }
        }
        if (s.Leader is null) return new InstanceDecision.Wait("waiting for a primary to take the leader key");
        return new InstanceDecision.Succeed($"ready: primary {s.Leader.NodeId}, reachable on port {s.Instance.Port}");
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
