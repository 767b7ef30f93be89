using Dingo.Model;
using Dingo.Store;
using Dingo.Tests.Support;
using Xunit.Abstractions;

namespace Dingo.Tests.Ha;

/// <summary>Every process takes the list of etcd members and rides through the loss of one.</summary>
[SuiteCost(56)]
public sealed class EtcdClusterTests(ITestOutputHelper output)
{
    [Fact]
    public async Task The_store_keeps_reading_writing_watching_and_renewing_when_the_member_it_used_dies()
    {
        await using var etcd = await TestEtcdCluster.StartAsync();
        await using var store = new EtcdStore(etcd.ClientUrls, "/t-" + Guid.NewGuid().ToString("N"));
        var seen = new List<string>();
        using var stop = new CancellationTokenSource();
        var watch = store.WatchPrefixAsync(store.Keys.Root + "/w/", changes => { lock (seen) seen.AddRange(changes.Select(c => c.Key)); return Task.CompletedTask; }, stop.Token);
        var lease = await store.GrantLeaseAsync(TimeSpan.FromSeconds(10), CancellationToken.None);
        await store.PutStringAsync(store.Keys.Root + "/leased", "x", CancellationToken.None, lease);
        // The watch starts from the moment etcd creates it (the platform's watches only wake passes that then read), and
        // the call above returns before that: a change written before it is not seen (fresh168: the one put made before
        // the watch existed, and nothing after it). A change every 200 ms until one is seen: the watch exists.
        await Eventually.UntilAsync(async () =>
        {
            await store.PutStringAsync(store.Keys.Root + "/w/before", "1", CancellationToken.None);
            await Task.Delay(200);
            lock (seen) return seen.Count >= 1;
        }, TimeSpan.FromSeconds(10), "the watch sees a change");

        Assert.True(await store.KeepAliveOnceAsync(lease, CancellationToken.None));
        etcd.Kill(0); // the member the store talks to first
        var started = DateTime.UtcNow;
        for (var i = 0; i < 10; i++)
        {
            await store.PutStringAsync(store.Keys.Root + $"/w/after-{i}", "1", CancellationToken.None);
            Assert.True(await store.KeepAliveOnceAsync(lease, CancellationToken.None), "lease renewal");
            await Task.Delay(300);
        }
        output.WriteLine($"10 writes and renewals over {(DateTime.UtcNow - started).TotalSeconds:0.0}s with one member dead");
        Assert.Equal("x", await store.GetStringAsync(store.Keys.Root + "/leased", CancellationToken.None));
        await Eventually.UntilAsync(() => { lock (seen) return Task.FromResult(seen.Count(k => k.Contains("/after-", StringComparison.Ordinal)) >= 5); }, TimeSpan.FromSeconds(15), "the watch reconnects to another member");
        await stop.CancelAsync();
        await watch;
    }

    [Fact]
    public async Task The_platform_rides_through_the_loss_of_one_etcd_member_without_a_failover()
    {
        await using var etcd = await TestEtcdCluster.StartAsync();
        var settings = TestPlatform.NewSettings(etcdEndpoint: string.Join("\", \"", etcd.ClientUrls));
        await using var platform = await TestPlatform.StartAsync(cells: 2, settings, ownsData: true);
        var id = "etcd3-" + Guid.NewGuid().ToString("N")[..6];
        await platform.ProvisionReadyAsync(id, Catalog.ClusterPlanId);
        var before = (await platform.Store.GetAsync<LeaderRecord>(platform.Store.Keys.Leader(id), CancellationToken.None))!.Value;

        // The raft leader itself: the worst member to lose (an election follows).
        var raftLeader = await etcd.LeaderIndexAsync();
        etcd.Kill(raftLeader);
        output.WriteLine($"killed etcd member {raftLeader}, the raft leader");
        await Task.Delay(TimeSpan.FromSeconds(8)); // two leader TTLs
        var after = (await platform.Store.GetAsync<LeaderRecord>(platform.Store.Keys.Leader(id), CancellationToken.None))!.Value;
        Assert.Equal(before.NodeId, after.NodeId);
        Assert.Equal(before.Since, after.Since); // the same term: no failover happened
        // The broker still provisions.
        await platform.ProvisionReadyAsync("etcd3b-" + Guid.NewGuid().ToString("N")[..6]);
    }
}
