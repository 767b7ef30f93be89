using Dingo.Tests.Support;
using Dingo.Cells;
using Dingo.Model;

namespace Dingo.Tests.Cells;

/// <summary>
/// The rule book for an unwanted node's data: one row per case, what the cell does and the sentence it logs.
/// Data goes only on a positive instruction from the etcd the cell placed it from.
/// </summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class OrphanDataRulesTests
{
    private static readonly DateTimeOffset Now = new(2026, 12, 2, 12, 0, 0, TimeSpan.Zero);
    private static readonly TimeSpan Grace = TimeSpan.FromMinutes(10);
    private static readonly Safety Safe = new(true, "the primary n-b runs at least as far on as this node last was");
    private static readonly Safety NotSafe = new(false, "no other node of its instance leads, and the backup archive does not hold its last WAL position yet");
    private static readonly InstanceTombstone Deleted = new() { InstanceId = "i-1", DeletedAt = Now.AddDays(-1) };
    private static NodeTombstone Removed(string cell = "cell-1") =>
        new() { NodeId = "n-a", InstanceId = "i-1", CellId = cell, Reason = "removing n-a to shrink to 1 node(s)", RemovedAt = Now.AddHours(-1) };

    /// <summary>A node removed by a shrink, long past the grace, its data safe elsewhere: the one case the data goes after a grace.</summary>
    private static OrphanFacts Base() => new("n-a", "cell-1", EtcdMismatch: null, InstanceId: "i-1", InstanceRecordState.Present,
        InstanceTombstone: null, NodeTombstone: Removed(), UnwantedSince: Now - Grace - TimeSpan.FromSeconds(1), Grace, Now, Safety: Safe);

    public static TheoryData<string, OrphanFacts, OrphanAction, string, bool> Cases() => new()
    {
        // case                                                      facts                                                                              action                    sentence contains                               unexplained
        { "removed by a shrink, past the grace, safe elsewhere",      Base(),                                                                            OrphanAction.Remove,      "the primary n-b runs",                          false },
        { "... but etcd is another cluster or prefix, or empty",     Base() with { EtcdMismatch = "etcd is not the one this cell placed its data from" }, OrphanAction.Keep,      "kept: etcd is not the one",                     false },
        { "... but its instance is not known",                       Base() with { InstanceId = null },                                                 OrphanAction.Keep,        "does not know which instance",                  true },
        { "... within the grace",                                    Base() with { UnwantedSince = Now.AddMinutes(-1) },                                OrphanAction.Keep,        "data kept until 12:09:00",                      false },
        { "... past the grace, safety not checked yet",              Base() with { Safety = null },                                                     OrphanAction.CheckSafety, "checking",                                      false },
        { "... past the grace, not safe elsewhere",                  Base() with { Safety = NotSafe },                                                  OrphanAction.Keep,        "its data is kept: no other node",               false },
        { "... tombstone names another cell",                        Base() with { NodeTombstone = Removed("cell-2") },                                 OrphanAction.Keep,        "names cell cell-2, not this cell",              true },
        { "instance live, node unlisted, no tombstone",              Base() with { NodeTombstone = null },                                              OrphanAction.Keep,        "etcd holds no removal of it",                   true },
        { "instance marked absent (deprovision under way)",          Base() with { Instance = InstanceRecordState.MarkedAbsent, NodeTombstone = null, Safety = null, UnwantedSince = Now }, OrphanAction.Remove, "instance i-1 is being deleted", false },
        { "instance gone with its tombstone (deleted while away)",   Base() with { Instance = InstanceRecordState.Missing, InstanceTombstone = Deleted, NodeTombstone = null, Safety = NotSafe, UnwantedSince = Now }, OrphanAction.Remove, "instance i-1 was deleted at", false },
        { "instance gone, no tombstone (empty or restored etcd)",    Base() with { Instance = InstanceRecordState.Missing, NodeTombstone = null },      OrphanAction.Keep,        "no record of instance i-1 and no tombstone",    true },
        { "instance gone, node tombstone: still needs safety",       Base() with { Instance = InstanceRecordState.Missing, Safety = NotSafe },          OrphanAction.Keep,        "its data is kept",                              false },
        { "instance marked absent, but another etcd",                Base() with { Instance = InstanceRecordState.MarkedAbsent, EtcdMismatch = "etcd is not the one" }, OrphanAction.Keep, "kept: etcd is not the one",     false },
        { "instance tombstone, but the record is back (recreated)",  Base() with { InstanceTombstone = Deleted, NodeTombstone = null },                 OrphanAction.Keep,        "etcd holds no removal of it",                   true },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void An_unwanted_nodes_data_goes_only_on_a_positive_instruction(string @case, OrphanFacts facts, OrphanAction action, string sentence, bool unexplained)
    {
        var verdict = OrphanData.Decide(facts);
        Assert.True(action == verdict.Action, $"{@case}: expected {action}, got {verdict.Action} ({verdict.Sentence})");
        Assert.Contains(sentence, verdict.Sentence, StringComparison.Ordinal);
        Assert.Equal(unexplained, verdict.Unexplained);
    }

    [Fact]
    public void No_etcd_at_all_means_no_instruction()
    {
        // Nothing of the instance or node found (every read came back empty): whatever the grace and safety, kept.
        var facts = Base() with { Instance = InstanceRecordState.Missing, InstanceTombstone = null, NodeTombstone = null, UnwantedSince = Now.AddDays(-30) };
        Assert.Equal(OrphanAction.Keep, OrphanData.Decide(facts).Action);
    }

    [Fact]
    public void The_recorded_etcd_is_compared_on_cluster_prefix_and_platform()
    {
        var recorded = new EtcdIdentity { ClusterId = "00000000000000aa", Prefix = "/dingo", PlatformId = "p-1" };
        Assert.Null(EtcdIdentity.Mismatch(recorded, "00000000000000aa", "/dingo", "p-1", "/data/cells/cell-1/etcd-identity.json"));
        Assert.Contains("etcd cluster 00000000000000bb, not 00000000000000aa", EtcdIdentity.Mismatch(recorded, "00000000000000bb", "/dingo", "p-1", "f"));
        Assert.Contains("key prefix /other, not /dingo", EtcdIdentity.Mismatch(recorded, "00000000000000aa", "/other", "p-1", "f"));
        // A wiped etcd started with the same flags answers with the same cluster id: only the missing platform id tells.
        var wiped = EtcdIdentity.Mismatch(recorded, "00000000000000aa", "/dingo", null, "/data/cells/cell-1/etcd-identity.json");
        Assert.Contains("no platform id under /dingo (an empty or wiped etcd)", wiped);
        Assert.Contains("remove /data/cells/cell-1/etcd-identity.json", wiped);
    }
}
