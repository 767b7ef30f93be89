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
}
