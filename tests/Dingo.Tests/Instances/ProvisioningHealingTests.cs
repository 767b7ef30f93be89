using Dingo.Instances;
using Dingo.Model;
using Dingo.Tests.Support;

namespace Dingo.Tests.Instances;

/// <summary>
/// The instance decision's branches that run outside a provision (issue 15): replacing nodes of lost cells, draining a
/// cell, shrinking and growing back, each a row of situations with the decision and the sentence an operator reads.
/// A three-node cluster (n-1 leads on cell-1, n-2 on cell-2, n-3 on cell-3) on four cells.
/// </summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class ProvisioningHealingTests
{
    private static readonly DateTimeOffset T0 = new(2026, 12, 6, 3, 0, 0, TimeSpan.Zero);
    private static readonly TimeSpan Timeout = TimeSpan.FromMinutes(5);

    private static CellInfo Cell(int n) => new() { Id = $"cell-{n}", Zone = $"z{n}", Capacity = 10, Address = "127.0.0.1", Runtime = "process" };

    private static NodeSpec Node(int n, int cell, int createdSecond = 0) =>
        new() { NodeId = $"n-{n}", InstanceId = "i-1", CellId = $"cell-{cell}", Port = 15000 + n, CreatedAt = T0.AddSeconds(createdSecond) };

    private static NodeStatus Running(NodeSpec node, bool leader) => new()
    {
        NodeId = node.NodeId, InstanceId = "i-1", CellId = node.CellId, State = NodeState.Running, Detail = "d", Host = "127.0.0.1", Port = node.Port,
        Role = leader ? NodeRole.Primary : NodeRole.Replica, Streaming = !leader, Writable = leader,
    };

    /// <param name="nodes">the nodes; n-1 holds the leader key unless <paramref name="leader"/> says otherwise</param>
    /// <param name="notStreaming">nodes whose status is missing (a replacement still building)</param>
    private static InstanceSnapshot Snapshot(NodeSpec[] nodes, int nodeCount = 3, OperationKind? operation = null, string[]? lost = null, string[]? drained = null,
        string leader = "n-1", string[]? notStreaming = null, int cells = 4)
    {
        var instance = new InstanceRecord
        {
            Id = "i-1", ServiceId = Catalog.ServiceId, PlanId = Catalog.ClusterHaPlanId, OrganizationGuid = "o", SpaceGuid = "s",
            Port = 20001, NodeCount = nodeCount, Superuser = new Credentials("dingo_admin", "pw"), Desired = DesiredState.Present,
        };
        var op = operation is null
            ? new OperationRecord { Id = "op", Kind = OperationKind.Provision, State = OperationState.Succeeded, Description = "ready", StartedAt = T0, UpdatedAt = T0 }
            : new OperationRecord { Id = "op", Kind = operation.Value, State = OperationState.InProgress, Description = "accepted", StartedAt = T0, UpdatedAt = T0 };
        var statuses = nodes.Where(n => !(notStreaming ?? []).Contains(n.NodeId)).Select(n => Running(n, n.NodeId == leader)).ToList();
        var leaderNode = nodes.FirstOrDefault(n => n.NodeId == leader);
        return new InstanceSnapshot(instance, op, nodes, statuses, Enumerable.Range(1, cells).Select(Cell).ToList(),
            nodes.GroupBy(n => n.CellId).ToDictionary(g => g.Key, g => g.Count()),
            leaderNode is null ? null : new LeaderRecord { NodeId = leader, Host = "127.0.0.1", Port = leaderNode.Port }, T0.AddSeconds(5))
        {
            LostCells = (lost ?? []).ToHashSet(),
            DrainedCells = (drained ?? []).ToHashSet(),
        };
    }

    private static readonly NodeSpec[] Three = [Node(1, 1), Node(2, 2, 1), Node(3, 3, 2)];

    // ---- replace-lost ----

    [Fact]
    public void A_node_on_a_lost_cell_is_replaced_while_another_keeps_the_data()
    {
        var d = Assert.IsType<InstanceDecision.ReplaceLost>(Provisioning.Decide(Snapshot(Three, lost: ["cell-2"]), Timeout));
        Assert.Equal("n-2", Assert.Single(d.Lost).NodeId);
        Assert.Equal("replacing n-2 (on lost cell-2)", d.Description);
    }

    [Fact]
    public void Replacing_runs_during_an_operation_too()
    {
        var d = Provisioning.Decide(Snapshot(Three, operation: OperationKind.Update, lost: ["cell-3"]), Timeout);
        Assert.Equal("replacing n-3 (on lost cell-3)", Assert.IsType<InstanceDecision.ReplaceLost>(d).Description);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    public void Nodes_are_never_replaced_when_every_copy_of_the_data_is_on_lost_cells(int nodeCount)
    {
        // A lone node (solo), or all three: a fresh replacement would be an empty database, not the instance's data.
        var nodes = Three.Take(nodeCount).ToArray();
        var lost = nodes.Select(n => n.CellId).ToArray();
        Assert.IsNotType<InstanceDecision.ReplaceLost>(Provisioning.Decide(Snapshot(nodes, nodeCount: nodeCount, lost: lost), Timeout));
    }

    [Fact]
    public void A_replacement_never_goes_to_a_lost_or_drained_cell()
    {
        // After the lost node was dropped: the cluster grows back on the one cell that is neither lost nor drained.
        var d = Provisioning.Decide(Snapshot([Node(1, 1), Node(3, 3, 2)], cells: 5, lost: ["cell-2"], drained: ["cell-4"]), Timeout);
        var place = Assert.IsType<InstanceDecision.PlaceNode>(d);
        Assert.Equal("cell-5", place.Cell.Id);
        Assert.Equal("placing node 3 of 3 on cell-5 (z5)", place.Description);
    }

    // ---- grow back ----

    [Fact]
    public void A_cluster_below_its_size_grows_back_without_an_operation()
    {
        var d = Assert.IsType<InstanceDecision.PlaceNode>(Provisioning.Decide(Snapshot([Node(1, 1), Node(3, 3, 2)]), Timeout));
        Assert.Equal("placing node 3 of 3 on cell-2 (z2)", d.Description);
    }

    [Fact]
    public void Growing_back_waits_for_a_leader()
    {
        var d = Provisioning.Decide(Snapshot([Node(1, 1), Node(3, 3, 2)], leader: "none"), Timeout);
        Assert.Equal("no action: provision succeeded", Assert.IsType<InstanceDecision.Idle>(d).Description);
    }

    [Fact]
    public void With_no_free_cell_growing_back_rests_and_says_why()
    {
        var d = Provisioning.Decide(Snapshot([Node(1, 1), Node(3, 3, 2)], cells: 3, drained: ["cell-2"]), Timeout);
        var idle = Assert.IsType<InstanceDecision.Idle>(d);
        Assert.StartsWith("no action: below its planned size, waiting for a cell:", idle.Description);
    }

    // ---- shrink ----

    [Fact]
    public void Shrinking_removes_the_newest_replicas_never_the_leader()
    {
        var d = Provisioning.Decide(Snapshot(Three, nodeCount: 1, operation: OperationKind.Update), Timeout);
        var remove = Assert.IsType<InstanceDecision.RemoveNodes>(d);
        Assert.Equal(["n-3", "n-2"], remove.Nodes.Select(n => n.NodeId));
        Assert.Equal("removing n-3, n-2 to shrink to 1 node(s)", remove.Description);
    }

    [Fact]
    public void Shrinking_keeps_the_leader_even_when_it_is_the_newest()
    {
        var d = Provisioning.Decide(Snapshot(Three, nodeCount: 2, operation: OperationKind.Update, leader: "n-3"), Timeout);
        Assert.Equal("n-2", Assert.Single(Assert.IsType<InstanceDecision.RemoveNodes>(d).Nodes).NodeId);
    }

    // ---- drain ----

    [Fact]
    public void Draining_places_a_replacement_elsewhere_first()
    {
        var d = Provisioning.Decide(Snapshot(Three, drained: ["cell-2"]), Timeout);
        var place = Assert.IsType<InstanceDecision.PlaceNode>(d);
        Assert.Equal("cell-4", place.Cell.Id);
        Assert.Equal("draining: placing node 4 of 3 on cell-4 (z4)", place.Description);
    }

    [Fact]
    public void Draining_with_nowhere_to_go_waits_and_says_why()
    {
        var d = Provisioning.Decide(Snapshot(Three, drained: ["cell-2"], cells: 3), Timeout);
        Assert.StartsWith("draining: waiting for a cell:", Assert.IsType<InstanceDecision.Wait>(d).Description);
    }

    [Fact]
    public void Draining_waits_for_the_replacement_to_stream_before_removing_the_drained_node()
    {
        var nodes = Three.Append(Node(4, 4, 3)).ToArray();
        var building = Provisioning.Decide(Snapshot(nodes, drained: ["cell-2"], notStreaming: ["n-4"]), Timeout);
        Assert.Equal("draining: waiting for the replacement to stream", Assert.IsType<InstanceDecision.Wait>(building).Description);

        var ready = Provisioning.Decide(Snapshot(nodes, drained: ["cell-2"]), Timeout);
        var remove = Assert.IsType<InstanceDecision.RemoveNodes>(ready);
        Assert.Equal("n-2", Assert.Single(remove.Nodes).NodeId);
        Assert.Equal("draining: removing n-2 from cell-2", remove.Description);
    }

    [Fact]
    public void A_drained_leader_stays_until_the_primary_has_switched_over()
    {
        var nodes = Three.Append(Node(4, 4, 3)).ToArray();
        var d = Provisioning.Decide(Snapshot(nodes, drained: ["cell-1"]), Timeout);
        Assert.Equal("draining: waiting for the primary to switch over away from the drained cell", Assert.IsType<InstanceDecision.Wait>(d).Description);
    }

    [Fact]
    public void Draining_waits_while_an_operation_runs()
    {
        // The operation (here an update) goes first; the drain resumes when it has finished.
        var d = Provisioning.Decide(Snapshot(Three, operation: OperationKind.Update, drained: ["cell-2"]), Timeout);
        Assert.IsNotType<InstanceDecision.RemoveNodes>(d);
        Assert.DoesNotContain("draining", d.Description, StringComparison.Ordinal);
    }
}
