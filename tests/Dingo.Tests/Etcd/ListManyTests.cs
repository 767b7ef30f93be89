using Dingo.Model;
using Dingo.Store;
using Dingo.Tests.Support;

namespace Dingo.Tests.Etcd;

/// <summary>
/// Several prefixes in one read (EtcdStore.ListManyRawAsync, what every HA pass reads its cluster with), on a real etcd:
/// each prefix's keys and no neighbour's, in the order asked, with the revisions and leases a single list gives.
/// </summary>
public sealed class ListManyTests
{
    [Fact]
    public async Task Each_prefix_gets_its_own_keys_as_a_single_list_would()
    {
        await using var store = TestEtcd.NewStore(out _);
        var k = store.Keys;
        var lease = await store.GrantLeaseAsync(TimeSpan.FromSeconds(30), CancellationToken.None);
        await store.PutAsync(k.Leader("i1"), new LeaderRecord { NodeId = "n-1", Host = "127.0.0.1", Port = 5432 }, CancellationToken.None, lease);
        await store.PutAsync(k.Optime("i1"), 42L, CancellationToken.None);
        // Neighbours that share the prefix's first characters must not come along ("i1" vs "i10").
        await store.PutAsync(k.Optime("i10"), 7L, CancellationToken.None);
        await store.PutStringAsync(k.Status("i1", "n-1"), "{\"a\":1}", CancellationToken.None);

        var read = await store.ListManyRawAsync([k.Cluster("i1"), k.Statuses("i1"), k.Nodes("i1")], CancellationToken.None);

        Assert.Equal(3, read.Count);
        Assert.Equal([k.Leader("i1"), k.Optime("i1")], read[0].Select(v => v.Key).Order(StringComparer.Ordinal));
        Assert.Equal([k.Status("i1", "n-1")], read[1].Select(v => v.Key));
        Assert.Empty(read[2]);
        var single = await store.ListAsync<System.Text.Json.JsonElement>(k.Cluster("i1"), CancellationToken.None);
        foreach (var one in single)
        {
            var many = read[0].Single(v => v.Key == one.Key);
            Assert.Equal(one.ModRevision, many.ModRevision);
            Assert.Equal(one.Lease, many.Lease);
            Assert.Equal(one.Value.GetRawText(), EtcdStore.Decode<System.Text.Json.JsonElement>(many).Value.GetRawText());
        }
        Assert.Equal(lease, read[0].Single(v => v.Key == k.Leader("i1")).Lease);
        Assert.Equal("n-1", EtcdStore.Decode<LeaderRecord>(read[0].Single(v => v.Key == k.Leader("i1"))).Value.NodeId);
    }

    [Fact]
    public async Task Single_keys_come_as_themselves_with_the_prefixes_and_the_cluster_that_answered()
    {
        await using var store = TestEtcd.NewStore(out _);
        var k = store.Keys;
        await store.PutStringAsync(k.Instance("i1") + "0", "{\"other\":true}", CancellationToken.None); // instance i10
        await store.PutStringAsync(k.PlatformId, "platform-a", CancellationToken.None);
        await store.PutAsync(k.Optime("i1"), 42L, CancellationToken.None);

        var read = await store.ReadManyRawAsync([k.Cluster("i1")], [k.Instance("i1"), k.PlatformId], CancellationToken.None);

        Assert.Equal([k.Optime("i1")], read.Prefixes.Single().Select(v => v.Key));
        // i1 has no record: i10's is not it, as a prefix read would have had it.
        Assert.Equal(2, read.Keys.Count);
        Assert.Null(read.Keys[0]);
        Assert.Equal("platform-a", read.Keys[1]!.Value);
        var (_, cluster) = await store.GetStringWithClusterAsync(k.PlatformId, CancellationToken.None);
        Assert.NotEqual(0UL, read.ClusterId);
        Assert.Equal(cluster, read.ClusterId);
    }
}
