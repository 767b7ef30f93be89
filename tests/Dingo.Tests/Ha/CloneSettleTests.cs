using Dingo.Model;
using Dingo.Tests.Support;
using Xunit.Abstractions;

namespace Dingo.Tests.Ha;

/// <summary>
/// `dingo.cell.clone-settle` on a real platform (etcd, two cells, PostgreSQL): a new `cluster`'s replica waits to clone
/// while its cell has just started a primary, says so in its status, and then clones and streams; the provision does
/// not wait for it. CloneSettleRulesTests has the rule's table (cluster-ha and store-sync never wait, at most 30 s).
/// </summary>
[SuiteCost(40)]
public sealed class CloneSettleTests(ITestOutputHelper output)
{
    [Fact]
    public async Task A_new_cluster_replica_clones_once_its_cell_has_started_no_primary_for_the_settle_time()
    {
        var settings = TestPlatform.NewSettings(extra: "dingo.cell.clone-settle = 20s");
        await using var platform = await TestPlatform.StartAsync(cells: 2, settings, ownsData: true);
        var store = platform.Store;
        var tag = Guid.NewGuid().ToString("N")[..6];
        // A primary started on each cell just now: whichever cell takes the cluster's replica has started one within 20 s.
        await platform.ProvisionReadyAsync($"settle-a-{tag}", Catalog.SoloPlanId, new { cells = new[] { "cell-1" } });
        await platform.ProvisionReadyAsync($"settle-b-{tag}", Catalog.SoloPlanId, new { cells = new[] { "cell-2" } });

        var id = $"settle-c-{tag}";
        var (status, body) = await platform.SendAsync(HttpMethod.Put, $"/v2/service_instances/{id}?accepts_incomplete=true", TestPlatform.ProvisionBody(Catalog.ClusterPlanId));
        Assert.True(status == 202, body.ToJsonString());
        var final = await platform.WaitForOperationAsync(id, TimeSpan.FromSeconds(90));
        Assert.True((string?)final["state"] == "succeeded", final.ToJsonString());

        // The replica says why it waits, then clones and streams; the primary serves meanwhile.
        var seen = new List<string>();
        await Eventually.UntilAsync(async () =>
        {
            var leader = (await store.GetAsync<LeaderRecord>(store.Keys.Leader(id), CancellationToken.None))?.Value.NodeId;
            var replica = (await store.ListAsync<NodeStatus>(store.Keys.Statuses(id), CancellationToken.None)).Select(s => s.Value).FirstOrDefault(s => leader is not null && s.NodeId != leader);
            if (replica is null) return false;
            if (seen.Count == 0 || seen[^1] != replica.Detail) seen.Add(replica.Detail);
            return replica is { Role: NodeRole.Replica, Streaming: true };
        }, TimeSpan.FromSeconds(75), () => $"the replica of {id} streaming; its reports: {string.Join(" | ", seen)}");
        output.WriteLine(string.Join("\n", seen));
        Assert.Contains(seen, d => d.StartsWith("waiting to clone from the leader", StringComparison.Ordinal)
                                   && d.Contains("until this cell has started no primary for 20 s", StringComparison.Ordinal));
        Assert.True(await platform.FullAndHealthyAsync(id, 2));
    }
}
