using Dingo.Ha;
using Dingo.Model;
using Dingo.Tests.Support;

namespace Dingo.Tests.Ha;

/// <summary>
/// What a leader's commits wait for (<see cref="SynchronousCommit"/>), case by case. StoreSyncTests shows the archiver
/// releasing commits only with what the store holds, against PostgreSQL; bench/Rpo --mode store-sync kills it all.
/// </summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class SynchronousCommitTests
{
    [Theory]
    // synchronous plan, store-sync, streaming standbys, named now → setting, standbys etcd must hold, waits for the store
    [InlineData(false, false, "", "", "", "", false)]                                              // solo, cluster
    [InlineData(false, false, "b", "", "", "", false)]                                             // cluster: replicas never waited for
    [InlineData(true, false, "", "", "", "", false)]                                               // cluster-ha, nobody streams: as before
    [InlineData(true, false, "c,b", "", "ANY 1 (\"b\", \"c\")", "b,c", false)]                     // cluster-ha: any one of them
    [InlineData(false, true, "", "", "FIRST 1 (\"dingo_archiver\")", "", true)]                    // solo + store-sync
    [InlineData(false, true, "b", "", "FIRST 2 (\"dingo_archiver\", \"b\")", "b", true)]           // cluster + store-sync: the replica too
    [InlineData(true, true, "c,b", "", "FIRST 2 (\"dingo_archiver\", \"b\")", "b", true)]          // the first by name
    [InlineData(true, true, "c,b", "c", "FIRST 2 (\"dingo_archiver\", \"c\")", "c", true)]         // the one named stays named while it streams
    [InlineData(true, true, "b", "c", "FIRST 2 (\"dingo_archiver\", \"b\")", "b", true)]           // the named one stopped streaming
    [InlineData(true, true, "", "b", "FIRST 1 (\"dingo_archiver\")", "", true)]                    // nobody streams: the store still, never nothing
    public void Decides_what_commits_wait_for(bool synchronousPlan, bool storeSync, string streaming, string named, string setting, string standbys, bool store)
    {
        var plan = SynchronousCommit.Decide(synchronousPlan, storeSync, Split(streaming), Split(named));
        Assert.Equal(setting, plan.Setting);
        Assert.Equal(Split(standbys), plan.Standbys);
        Assert.Equal(store, plan.WaitsForStore);
        Assert.DoesNotContain(SynchronousCommit.Archiver, plan.Standbys);
        Assert.False(string.IsNullOrWhiteSpace(plan.Sentence));
    }

    [Theory]
    [InlineData("", "")]
    [InlineData("ANY 1 (\"b\", \"c\")", "b,c")]
    [InlineData("FIRST 2 (\"dingo_archiver\", \"b\")", "b")]
    [InlineData("FIRST 1 (\"dingo_archiver\")", "")]
    [InlineData("b", "b")]                                                                          // written by hand: a bare name
    public void Reads_the_standbys_a_setting_names_back(string setting, string standbys) =>
        Assert.Equal(Split(standbys), SynchronousCommit.NamedStandbys(setting));

    [Theory]
    [InlineData("{}", false)]
    [InlineData("""{"store-sync": true}""", true)]
    [InlineData("""{"store-sync": false}""", false)]
    [InlineData("""{"store-sync": "true"}""", false)]                                              // refused by the broker; never read as on
    [InlineData("not json", false)]
    public void Store_sync_is_on_only_when_the_parameter_is_true(string parameters, bool on)
    {
        var record = new InstanceRecord
        {
            Id = "i", ServiceId = "s", PlanId = "p", OrganizationGuid = "o", SpaceGuid = "sp", ParametersJson = parameters,
            Port = 1, NodeCount = 1, Superuser = new Credentials("u", "p"),
        };
        Assert.Equal(on, SynchronousCommit.StoreSync(record));
    }

    [Theory]
    [InlineData(false, false, 2, false)]
    [InlineData(true, false, 3, true)]
    [InlineData(false, true, 1, false)]   // a solo has no standby to fail over to
    [InlineData(false, true, 2, true)]    // cluster + store-sync: only the standby that holds every acknowledged commit may take over
    public void Store_sync_with_replicas_fails_over_as_a_synchronous_cluster(bool synchronousPlan, bool storeSync, int nodes, bool synchronous) =>
        Assert.Equal(synchronous, SynchronousCommit.Synchronous(synchronousPlan, storeSync, nodes));

    private static List<string> Split(string names) => names.Split(',', StringSplitOptions.RemoveEmptyEntries).Order(StringComparer.Ordinal).ToList();
}
