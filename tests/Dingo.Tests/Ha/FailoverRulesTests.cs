using Dingo.Config;
using Dingo.Ha;

namespace Dingo.Tests.Ha;

/// <summary>Single decisions of the HA rules, for cases the simulation does not reach.</summary>
public sealed class FailoverRulesTests
{
    private static readonly HaSettings Settings = new()
    {
        Ttl = TimeSpan.FromSeconds(4), LoopWait = TimeSpan.FromMilliseconds(500), MaximumLagOnFailover = 1 << 20,
        RewindAfter = TimeSpan.FromSeconds(8), LostCellGrace = TimeSpan.FromSeconds(60),
    };

    private static HaInput ReadOnlyNodeWithFreeKey(string me, string? initialisedBy) =>
        new(me, Synchronous: true,
            new LocalState(DataInitialised: true, Running: true, Answering: true, InRecovery: true, Lsn: 100, Timeline: 1, Streaming: false,
                FollowingNodeId: null, NotStreamingFor: TimeSpan.Zero, RewindFailed: false),
            EtcdReachable: true, Leader: null, HoldsLease: false, SinceRenewal: TimeSpan.MaxValue, LeaderOptime: 100, Sync: null,
            Members: [], Switchover: null, ClusterInitialised: true, BootstrapCandidate: me == initialisedBy, Now: DateTimeOffset.UtcNow)
        {
            InitialisedBy = initialisedBy,
        };

    [Fact]
    public void A_synchronous_clusters_first_primary_fenced_before_any_standby_was_recorded_may_lead_again()
    {
        // Fenced right after bootstrap (demoted to read-only), before a synchronous standby existed: it alone holds
        // every acknowledged commit, so it must take the key again, or nobody ever could.
        Assert.IsType<HaAction.TakeLeadership>(Failover.Decide(ReadOnlyNodeWithFreeKey("n-a", initialisedBy: "n-a"), Settings));
    }

    [Fact]
    public void Another_read_only_node_of_that_cluster_may_not()
    {
        var decision = Failover.Decide(ReadOnlyNodeWithFreeKey("n-b", initialisedBy: "n-a"), Settings);
        var wait = Assert.IsType<HaAction.Wait>(decision);
        Assert.Contains("not a synchronous standby", wait.Sentence, StringComparison.Ordinal);
    }

    private static HaInput PrimaryCutOffFromEtcd(bool alone, bool reachable) =>
        new("n-a", Synchronous: false,
            new LocalState(DataInitialised: true, Running: true, Answering: true, InRecovery: false, Lsn: 100, Timeline: 1, Streaming: false,
                FollowingNodeId: null, NotStreamingFor: TimeSpan.Zero, RewindFailed: false),
            EtcdReachable: reachable, Leader: new Dingo.Model.LeaderRecord { NodeId = "n-a", Host = "127.0.0.1", Port = 5432 }, HoldsLease: true,
            SinceRenewal: TimeSpan.FromSeconds(3), LeaderOptime: 100, Sync: null,
            Members: [], Switchover: null, ClusterInitialised: true, BootstrapCandidate: false, Now: DateTimeOffset.UtcNow)
        {
            Alone = alone,
        };

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void A_primary_with_other_members_fences_itself_when_it_cannot_renew(bool etcdReachable)
    {
        Assert.IsType<HaAction.Demote>(Failover.Decide(PrimaryCutOffFromEtcd(alone: false, etcdReachable), Settings));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void A_single_node_with_nobody_to_take_over_keeps_serving_when_etcd_is_slow_or_gone(bool etcdReachable)
    {
        // Fencing keeps two primaries apart: with no other member, demoting would only take the database away.
        var decision = Failover.Decide(PrimaryCutOffFromEtcd(alone: true, etcdReachable), Settings);
        Assert.IsNotType<HaAction.Demote>(decision);
        if (!etcdReachable) Assert.Contains("keeps serving", decision.Sentence, StringComparison.Ordinal);
    }
}
