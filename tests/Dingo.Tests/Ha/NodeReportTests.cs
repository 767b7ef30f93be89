using Dingo.Ha;
using Dingo.Model;
using Dingo.Tests.Support;

namespace Dingo.Tests.Ha;

/// <summary>
/// The report piece of a node's HA pass (<see cref="NodeReport"/>): the status a pass leaves in etcd, and when it is
/// written at all (etcd's load from idle nodes is mostly these writes).
/// </summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class NodeReportTests
{
    private static readonly DateTimeOffset T0 = new(2026, 12, 6, 5, 0, 0, TimeSpan.Zero);
    private static readonly NodeSpec Spec = new() { NodeId = "n-1", InstanceId = "i-1", CellId = "cell-1", Port = 15001 };

    private static HaInput Input(bool answering, bool inRecovery, string? leader, string? following = "n-0") => new(
        "n-1", Synchronous: false,
        new LocalState(true, true, answering, inRecovery, Lsn: 4096, Timeline: 2, Streaming: inRecovery, following, TimeSpan.Zero, false),
        EtcdReachable: true, leader is null ? null : new LeaderRecord { NodeId = leader, Host = "127.0.0.1", Port = 15000 },
        HoldsLease: leader == "n-1", SinceRenewal: TimeSpan.Zero, LeaderOptime: null, Sync: null, Members: [], Switchover: null,
        ClusterInitialised: true, BootstrapCandidate: false, T0);

    private static NodeStatus Status(HaInput input, HaAction action, string? failure = null, int? connections = 7) =>
        NodeReport.Status(Spec, "cell-1", "10.0.0.1", input, action, failure, restarts: 2, failingSince: failure is null ? null : T0, connections, T0);

    [Fact]
    public void A_leader_reports_primary_with_its_connections()
    {
        var s = Status(Input(answering: true, inRecovery: false, leader: "n-1"), new HaAction.Lead("no action: I hold the leader key"));
        Assert.Equal((NodeState.Running, NodeRole.Primary, true, null, 7, 2), (s.State, s.Role, s.Writable, s.Following, s.Connections, s.Restarts));
        Assert.Equal(("10.0.0.1", 15001, "cell-1", "no action: I hold the leader key"), (s.Host, s.Port, s.CellId, s.Detail));
    }

    [Fact]
    public void A_replica_reports_whom_it_follows_and_a_failed_pass_says_why()
    {
        var replica = Status(Input(answering: true, inRecovery: true, leader: "n-0"), new HaAction.FollowLeader(new LeaderRecord { NodeId = "n-0", Host = "127.0.0.1", Port = 15000 }, "following n-0"), failure: "etcd unreachable");
        Assert.Equal((NodeState.Failed, NodeRole.Replica, "n-0", T0), (replica.State, replica.Role, replica.Following, replica.FailingSince));
        Assert.Equal("following n-0 — failed: etcd unreachable", replica.Detail);
        Assert.Equal("following n-0", replica.Decision);
        // Not answering: no role, no connection count.
        var down = Status(Input(answering: false, inRecovery: true, leader: "n-0"), new HaAction.FollowLeader(new LeaderRecord { NodeId = "n-0", Host = "127.0.0.1", Port = 15000 }, "starting PostgreSQL"));
        Assert.Equal((NodeRole.Unknown, (int?)null), (down.Role, down.Connections));
    }

    [Theory]
    // what differs from the last written || due
    [InlineData("nothing", 0, false)]
    [InlineData("time and connections only", 0, false)]
    [InlineData("lsn", 0, true)]
    [InlineData("decision", 0, true)]
    [InlineData("lease", 0, true)]
    [InlineData("nothing", 1, false)]   // a second since the last write: inside the 1.5 s heartbeat
    [InlineData("nothing", 2, true)]    // past it
    public void A_status_is_written_when_something_but_the_time_changed_or_as_a_heartbeat(string change, int seconds, bool due)
    {
        var last = Status(Input(true, false, "n-1"), new HaAction.Lead("no action: I hold the leader key"));
        var now = change switch
        {
            "time and connections only" => last with { UpdatedAt = T0.AddSeconds(9), Connections = 99 },
            "lsn" => last with { Lsn = last.Lsn + 1 },
            "decision" => last with { Decision = "demoting" },
            _ => last,
        };
        var heartbeat = TimeSpan.FromSeconds(1.5);
        var written = last with { UpdatedAt = default, Connections = null };
        Assert.Equal(due, NodeReport.Due(now, change == "lease" ? 8 : 7, written, 7, TimeSpan.FromSeconds(seconds), heartbeat));
    }
}
