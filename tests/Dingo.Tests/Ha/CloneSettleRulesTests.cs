using Dingo.Ha;
using Dingo.Model;
using Dingo.Tests.Support;

namespace Dingo.Tests.Ha;

/// <summary>When a new replica's clone waits for its cell to settle (<see cref="CloneSettle"/>), case by case.</summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class CloneSettleRulesTests
{
    [Theory]
    // asynchronous (nothing waits for the replica), settle s, cell quiet, waited s → waits, sentence contains
    [InlineData(true, 5, false, 0, true, "still making or starting primaries")]
    [InlineData(true, 5, false, 29.9, true, "at most 30 s")]
    [InlineData(true, 5, false, 30, false, "put off for 30 s")]              // never more than 30 s without its replica
    [InlineData(true, 5, true, 0, false, "no primary for 5 s")]
    [InlineData(false, 5, false, 0, false, "clones at once")]                 // cluster-ha, store-sync: commits wait for it
    [InlineData(true, 0, false, 0, false, "clone-settle = 0")]
    public void A_new_asynchronous_replica_clones_once_its_cell_has_settled(bool asynchronous, double settleSeconds, bool cellQuiet, double waitedSeconds, bool waits, string says)
    {
        var v = CloneSettle.Waits(asynchronous, TimeSpan.FromSeconds(settleSeconds), cellQuiet, TimeSpan.FromSeconds(waitedSeconds));
        Assert.Equal(waits, v.Waits);
        Assert.Contains(says, v.Why, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(Catalog.ClusterPlanId, "{}", true)]
    [InlineData(Catalog.ClusterPlanId, "{\"store-sync\":true}", false)]       // a commit waits for the store, the provision for its standbys
    [InlineData(Catalog.ClusterHaPlanId, "{}", false)]                        // commits wait for a synchronous standby
    public void Only_where_nothing_waits_for_the_replicas(string plan, string parameters, bool nothingWaits)
    {
        var record = new InstanceRecord
        {
            Id = "i", ServiceId = Catalog.ServiceId, PlanId = plan, OrganizationGuid = "o", SpaceGuid = "s", Port = 1, NodeCount = 2,
            Superuser = new Credentials("u", "p"), ParametersJson = parameters,
        };
        Assert.Equal(nothingWaits, CloneSettle.NothingWaitsForReplicas(record));
    }
}
