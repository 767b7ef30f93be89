using Dingo.Tests.Support;
using Dingo.Instances;
using Dingo.Model;

namespace Dingo.Tests.Instances;

/// <summary>The instance decision as a table of situations, each with the sentence last_operation shows.</summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class ProvisioningTests
{
    private static readonly DateTimeOffset T0 = new(2026, 11, 25, 12, 0, 0, TimeSpan.Zero);
    private static readonly CellInfo Cell1 = new() { Id = "cell-1", Zone = "z1", Capacity = 10, Address = "127.0.0.1", Runtime = "process" };
    private static readonly NodeSpec Node1 = new() { NodeId = "n-1", InstanceId = "i-1", CellId = "cell-1", Port = 15001 };

    private static InstanceSnapshot Snapshot(
        DesiredState desired = DesiredState.Present, OperationState opState = OperationState.InProgress, OperationKind opKind = OperationKind.Provision,
        NodeSpec[]? nodes = null, NodeStatus[]? statuses = null, CellInfo[]? cells = null, LeaderRecord? leader = null, TimeSpan? age = null)
    {
        var instance = new InstanceRecord
        {
            Id = "i-1", ServiceId = Catalog.ServiceId, PlanId = Catalog.SoloPlanId, OrganizationGuid = "o", SpaceGuid = "s",
            Port = 20001, NodeCount = 1, Superuser = new Credentials("dingo_admin", "pw"), Desired = desired,
        };
        var op = new OperationRecord { Id = "op", Kind = opKind, State = opState, Description = "accepted", StartedAt = T0, UpdatedAt = T0 };
        return new InstanceSnapshot(instance, op, nodes ?? [], statuses ?? [], cells ?? [Cell1],
            new Dictionary<string, int>(), leader, T0 + (age ?? TimeSpan.FromSeconds(1)));
    }

    private static NodeStatus Status(NodeState state, string detail = "d") =>
        new() { NodeId = "n-1", InstanceId = "i-1", CellId = "cell-1", State = state, Detail = detail, Host = "127.0.0.1", Port = 15001 };

    private static readonly TimeSpan Timeout = TimeSpan.FromMinutes(5);

    [Fact]
    public void A_new_instance_gets_a_node_placed_on_a_cell()
    {
        var d = Assert.IsType<InstanceDecision.PlaceNode>(Provisioning.Decide(Snapshot(), Timeout));
        Assert.Equal("cell-1", d.Cell.Id);
        Assert.Equal("placing node 1 of 1 on cell-1 (z1)", d.Description);
    }

    [Fact]
    public void With_no_cell_it_waits_and_says_why()
    {
        var d = Assert.IsType<InstanceDecision.Wait>(Provisioning.Decide(Snapshot(cells: []), Timeout));
        Assert.Equal("waiting for a cell: no cell is registered", d.Description);
    }

    [Theory]
    [InlineData(NodeState.Initialising, "initialising database on cell-1")]
    [InlineData(NodeState.Starting, "starting PostgreSQL on cell-1")]
    [InlineData(NodeState.Stopped, "starting PostgreSQL on cell-1")]
    public void Progress_of_the_node_is_reported(NodeState state, string expected)
    {
        var d = Provisioning.Decide(Snapshot(nodes: [Node1], statuses: [Status(state)]), Timeout);
        Assert.IsType<InstanceDecision.Wait>(d);
        Assert.Equal(expected, d.Description);
    }

    [Fact]
    public void A_running_node_without_the_leader_key_is_not_yet_ready()
    {
        var d = Provisioning.Decide(Snapshot(nodes: [Node1], statuses: [Status(NodeState.Running)]), Timeout);
        Assert.Equal("waiting for a primary to take the leader key", Assert.IsType<InstanceDecision.Wait>(d).Description);
    }

    [Fact]
    public void A_running_leader_succeeds_the_provision()
    {
        var leader = new LeaderRecord { NodeId = "n-1", Host = "127.0.0.1", Port = 15001 };
        var d = Provisioning.Decide(Snapshot(nodes: [Node1], statuses: [Status(NodeState.Running)], leader: leader), Timeout);
        Assert.Equal("ready: primary n-1 on cell-1, reachable on port 20001", Assert.IsType<InstanceDecision.Succeed>(d).Description);
    }

    [Theory]
    // store-sync, the leader's cell published a base backup → succeeds
    [InlineData(false, false, true)]
    [InlineData(true, false, false)]
    [InlineData(true, true, true)]
    public void A_store_sync_instance_is_ready_only_once_the_store_holds_a_base_backup(bool storeSync, bool baseBackup, bool succeeds)
    {
        var leader = new LeaderRecord { NodeId = "n-1", Host = "127.0.0.1", Port = 15001 };
        var s = Snapshot(nodes: [Node1], statuses: [Status(NodeState.Running)], leader: leader);
        s = s with
        {
            Instance = s.Instance with { ParametersJson = storeSync ? """{"store-sync":true}""" : "{}" },
            Backup = new BackupState { NodeId = "n-1", LastBaseBackup = baseBackup ? "20261205T120000000Z" : null },
        };
        var d = Provisioning.Decide(s, Timeout);
        if (succeeds) Assert.IsType<InstanceDecision.Succeed>(d);
        else Assert.Contains("waiting for the first base backup", Assert.IsType<InstanceDecision.Wait>(d).Description, StringComparison.Ordinal);
    }

    [Theory]
    // plan, store-sync, operation kind, replica state → succeeds now (else waits for the replica)
    [InlineData("cluster", false, OperationKind.Provision, NodeState.Initialising, true)]   // bindable while the replica clones
    [InlineData("cluster", false, OperationKind.Provision, NodeState.Starting, true)]
    [InlineData("cluster", false, OperationKind.Provision, NodeState.Failed, true)]         // a replica that fails keeps trying; the instance serves
    [InlineData("cluster-ha", false, OperationKind.Provision, NodeState.Initialising, false)] // its promise needs a synchronous standby
    [InlineData("cluster", true, OperationKind.Provision, NodeState.Initialising, false)]   // store-sync with replicas: as synchronous
    [InlineData("cluster", false, OperationKind.Update, NodeState.Initialising, false)]     // a resize waits for its new replica
    public void A_new_asynchronous_cluster_is_ready_once_its_primary_serves(string planName, bool storeSync, OperationKind kind, NodeState replicaState, bool succeeds)
    {
        var plan = Catalog.Plans.Single(p => p.Name == planName);
        var node2 = Node1 with { NodeId = "n-2", CellId = "cell-2", Port = 15002 };
        var leader = new LeaderRecord { NodeId = "n-1", Host = "127.0.0.1", Port = 15001 };
        var primary = Status(NodeState.Running) with { Role = NodeRole.Primary, Writable = true };
        var replica = Status(replicaState, "cloning from the leader n-1 (pg_basebackup)") with { NodeId = "n-2", CellId = "cell-2", Port = 15002 };
        var s = Snapshot(opKind: kind, nodes: [Node1, node2], statuses: [primary, replica], cells: [Cell1, Cell1 with { Id = "cell-2", Zone = "z2" }], leader: leader);
        s = s with
        {
            Instance = s.Instance with { PlanId = plan.Id, NodeCount = 2, ParametersJson = storeSync ? """{"store-sync":true}""" : "{}" },
            Backup = new BackupState { NodeId = "n-1", LastBaseBackup = "20261205T120000000Z" },
        };
        var d = Provisioning.Decide(s, Timeout);
        if (succeeds)
            Assert.Equal("ready: primary n-1 on cell-1, reachable on port 20001; replica(s) n-2 being built (asynchronous replication)", Assert.IsType<InstanceDecision.Succeed>(d).Description);
        else
            Assert.IsNotType<InstanceDecision.Succeed>(d);
    }

    [Fact]
    public void A_node_failing_for_long_fails_the_provision_with_its_reason()
    {
        var failing = Status(NodeState.Failed, "initdb: disk full") with { FailingSince = T0 - TimeSpan.FromSeconds(40) };
        var d = Provisioning.Decide(Snapshot(nodes: [Node1], statuses: [failing]), Timeout);
        Assert.Equal("node n-1 on cell-1 failed: initdb: disk full", Assert.IsType<InstanceDecision.Fail>(d).Description);
    }

    [Fact]
    public void The_operator_sets_how_long_a_failing_node_may_fail_before_the_provision_does()
    {
        // Failing for 7 s (the snapshot is taken 1 s after T0): within the default 30 s and an 8 s grace, past a 6 s one.
        var failing = Status(NodeState.Failed, "restore: WAL segment missing") with { FailingSince = T0 - TimeSpan.FromSeconds(6) };
        Assert.IsType<InstanceDecision.Wait>(Provisioning.Decide(Snapshot(nodes: [Node1], statuses: [failing]), Timeout));
        Assert.IsType<InstanceDecision.Wait>(Provisioning.Decide(Snapshot(nodes: [Node1], statuses: [failing]), Timeout, TimeSpan.FromSeconds(8)));
        Assert.Equal("node n-1 on cell-1 failed: restore: WAL segment missing",
            Assert.IsType<InstanceDecision.Fail>(Provisioning.Decide(Snapshot(nodes: [Node1], statuses: [failing]), Timeout, TimeSpan.FromSeconds(6))).Description);
    }

    [Fact]
    public void A_passing_node_failure_is_shown_not_fatal()
    {
        var failing = Status(NodeState.Failed, "cloning: connection refused") with { FailingSince = T0 };
        var d = Provisioning.Decide(Snapshot(nodes: [Node1], statuses: [failing]), Timeout);
        Assert.Equal("node n-1 on cell-1: cloning: connection refused", Assert.IsType<InstanceDecision.Wait>(d).Description);
    }

    [Fact]
    public void A_provision_past_its_timeout_fails_naming_the_last_step()
    {
        var d = Provisioning.Decide(Snapshot(cells: [], age: TimeSpan.FromMinutes(6)), Timeout);
        Assert.StartsWith("provision did not finish within 300s; last step: accepted", Assert.IsType<InstanceDecision.Fail>(d).Description);
    }

    [Fact]
    public void Cells_that_cannot_hold_the_cluster_are_waited_for_a_while_then_fail_the_provision_naming_them()
    {
        var early = Snapshot(nodes: [Node1], age: TimeSpan.FromSeconds(5));
        early = early with { Instance = early.Instance with { NodeCount = 3 } };
        Assert.StartsWith("waiting for a cell: every registered cell already holds", Assert.IsType<InstanceDecision.Wait>(Provisioning.Decide(early, Timeout)).Description);
        var s = Snapshot(nodes: [Node1], age: TimeSpan.FromSeconds(31));
        s = s with { Instance = s.Instance with { NodeCount = 3 } };
        var d = Assert.IsType<InstanceDecision.Fail>(Provisioning.Decide(s, Timeout));
        Assert.Equal("cannot place node 2 of 3: every registered cell already holds a node of this instance (registered: cell-1 (z1); a cluster needs one cell per node)", d.Description);
    }

    [Fact]
    public void A_node_on_a_vanished_cell_is_waited_for_not_replaced()
    {
        var d = Provisioning.Decide(Snapshot(nodes: [Node1], cells: []), Timeout);
        Assert.Contains("not registered", Assert.IsType<InstanceDecision.Wait>(d).Description);
    }

    [Fact]
    public void Deletion_removes_nodes_then_waits_for_the_cell_then_finishes()
    {
        var remove = Provisioning.Decide(Snapshot(desired: DesiredState.Absent, opKind: OperationKind.Deprovision, nodes: [Node1]), Timeout);
        Assert.Equal("removing 1 node(s) from cell-1", Assert.IsType<InstanceDecision.RemoveNodes>(remove).Description);
        var wait = Provisioning.Decide(Snapshot(desired: DesiredState.Absent, opKind: OperationKind.Deprovision, statuses: [Status(NodeState.Running)]), Timeout);
        Assert.Contains("to stop PostgreSQL and delete the data", Assert.IsType<InstanceDecision.Wait>(wait).Description);
        var done = Provisioning.Decide(Snapshot(desired: DesiredState.Absent, opKind: OperationKind.Deprovision), Timeout);
        Assert.IsType<InstanceDecision.FinishDeletion>(done);
    }

    [Fact]
    public void A_finished_instance_is_left_alone()
    {
        Assert.IsType<InstanceDecision.Idle>(Provisioning.Decide(Snapshot(opState: OperationState.Succeeded, nodes: [Node1]), Timeout));
    }

    [Fact]
    public void The_cells_parameter_restricts_placement()
    {
        var s = Snapshot(cells: [Cell1, Cell1 with { Id = "cell-2", Zone = "z2" }]);
        s = s with { Instance = s.Instance with { ParametersJson = "{\"cells\":[\"cell-2\"]}" } };
        Assert.Equal("cell-2", Assert.IsType<InstanceDecision.PlaceNode>(Provisioning.Decide(s, Timeout)).Cell.Id);
    }
}
