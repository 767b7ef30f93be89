using Dingo.Ha;
using Dingo.Model;
using Dingo.Tests.Support;

namespace Dingo.Tests.Ha;

/// <summary>
/// A node's state and roles (<see cref="NodeCondition"/>), case by case: the one derivation its status in etcd (failover,
/// routers, provisioning, console) and its health API answer from.
/// </summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class NodeConditionTests
{
    private static LocalState Local(bool initialised, bool running, bool answering, bool inRecovery) =>
        new(initialised, running, answering, inRecovery, Lsn: 0, Timeline: 1, Streaming: false, FollowingNodeId: null,
            NotStreamingFor: TimeSpan.Zero, RewindFailed: false);

    [Theory]
    // initialised | process | answers | in recovery | leading | pass failed || postgres | server role | role | status state | writable
    [InlineData(false, false, false, false, false, false, "initialising", "unknown", "unknown", "initialising", false)]
    [InlineData(false, false, false, false, false, true, "initialising", "unknown", "unknown", "failed", false)]
    [InlineData(true, false, false, false, false, false, "stopped", "unknown", "unknown", "stopped", false)]
    [InlineData(true, false, false, false, true, false, "stopped", "unknown", "unknown", "stopped", false)]
    [InlineData(true, true, false, false, false, false, "starting", "unknown", "unknown", "starting", false)]
    [InlineData(true, true, false, true, true, false, "starting", "unknown", "unknown", "starting", false)]
    // a replica
    [InlineData(true, true, true, true, false, false, "running", "replica", "replica", "running", false)]
    // a leader: key held, out of recovery
    [InlineData(true, true, true, false, true, false, "running", "primary", "primary", "running", true)]
    // a promotion under way: key held, still in recovery; the health API still says replica until PostgreSQL is out
    [InlineData(true, true, true, true, true, false, "running", "replica", "primary", "running", false)]
    // writable without the key (lost it, not yet demoted): the cluster routes to neither side of it
    [InlineData(true, true, true, false, false, false, "running", "primary", "unknown", "running", true)]
    // etcd away: the status says failed; the health API still answers from PostgreSQL
    [InlineData(true, true, true, true, false, true, "running", "replica", "replica", "failed", false)]
    [InlineData(true, true, true, false, true, true, "running", "primary", "primary", "failed", true)]
    public void Derives_state_and_roles(bool initialised, bool running, bool answering, bool inRecovery, bool leading, bool failed,
        string postgres, string serverRole, string role, string state, bool writable)
    {
        var c = NodeCondition.Of(Local(initialised, running, answering, inRecovery), leading, failed);
        Assert.Equal((postgres, serverRole, role, state, writable), (c.Postgres.Wire(), c.ServerRole.Wire(), c.Role.Wire(), c.State.Wire(), c.Writable));
    }

    [Fact]
    public void Before_any_pass_a_node_is_starting_with_no_role()
    {
        var c = NodeCondition.Of(null, leading: false, passFailed: false);
        Assert.Equal((NodeState.Starting, NodeRole.Unknown, NodeRole.Unknown, NodeState.Starting), (c.Postgres, c.ServerRole, c.Role, c.State));
    }

    [Fact]
    public void Health_checks_answer_from_the_same_derivation()
    {
        // The promotion row: the status already says primary (failover treats the leader as healthy), the health API's
        // /primary waits for PostgreSQL to leave recovery, as Patroni's does.
        var c = NodeCondition.Of(Local(true, true, true, inRecovery: true), leading: true, passFailed: false);
        var health = new NodeHealth("n-1", "i-1", c.Postgres, c.ServerRole, IsLeader: true, LagBytes: 0, Streaming: false,
            IsSyncStandby: false, WalLsn: 0, Timeline: 1, LeaderNodeId: "n-1", Decision: "promoting");
        Assert.Equal(NodeRole.Primary, c.Role);
        Assert.Equal(503, NodeHealthServer.Evaluate(NodeHealthServer.Endpoint.Primary, health, default(HealthQuery)));
        var promoted = NodeCondition.Of(Local(true, true, true, inRecovery: false), leading: true, passFailed: true);
        Assert.Equal(NodeState.Failed, promoted.State);
        Assert.Equal(200, NodeHealthServer.Evaluate(NodeHealthServer.Endpoint.Primary,
            health with { State = promoted.Postgres, Role = promoted.ServerRole }, default(HealthQuery)));
    }
}
