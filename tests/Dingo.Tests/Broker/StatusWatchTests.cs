using System.Collections.Concurrent;
using Dingo.Broker;
using Dingo.Model;
using Dingo.Tests.Support;
using Microsoft.Extensions.Logging.Abstractions;

namespace Dingo.Tests.Broker;

/// <summary>
/// A node's change reaches its instance's actor at once while the instance has an operation in progress (StatusWatch, on
/// a real etcd): a new report of a node, a change of its state, role, streaming or writability; not a report that only
/// moved its position or detail, nor a node of an instance at rest. A report removed is passed on too.
/// </summary>
public sealed class StatusWatchTests
{
    [Fact]
    public async Task Changes_that_decide_reach_the_actors_of_instances_at_work_only()
    {
        var ct = new CancellationTokenSource(TimeSpan.FromSeconds(60)).Token;
        await using var store = TestEtcd.NewStore(out _);
        var k = store.Keys;
        var inProgress = new OperationsInProgress();
        inProgress.Mark("busy");
        var poked = new BlockingCollection<string>();
        using var watch = new StatusWatch(store, inProgress.Contains, poked.Add, NullLogger<StatusWatch>.Instance);
        await watch.StartAsync(ct);

        NodeStatus Status(string instance, string node, NodeState state, NodeRole role, long lsn = 0, string detail = "") => new()
        {
            NodeId = node, InstanceId = instance, CellId = "cell-1", State = state, Detail = detail, Host = "127.0.0.1", Port = 15000, Role = role, Lsn = lsn,
        };
        async Task<string> NextPokeAsync()
        {
            Assert.True(poked.TryTake(out var id, TimeSpan.FromSeconds(20)), "no instance was passed on within 20 s");
            return id!;
        }

        // The watch is up once a change it must pass on arrives (written until one does: the watch may start after the put).
        var n = 0;
        string first;
        do
        {
            await store.PutAsync(k.Status("busy", "n-0"), Status("busy", "n-0", NodeState.Initialising, NodeRole.Unknown, detail: $"try {n++}"), ct);
            await store.DeleteAsync(k.Status("busy", "n-0"), ct);
        }
        while (!poked.TryTake(out first!, TimeSpan.FromMilliseconds(500)));
        Assert.Equal("busy", first);
        while (poked.TryTake(out _, TimeSpan.FromMilliseconds(300))) { } // the other tries' reports

        // A new node's report, then its start: each passed on. An instance at rest: nothing.
        await store.PutAsync(k.Status("idle", "n-9"), Status("idle", "n-9", NodeState.Running, NodeRole.Primary), ct);
        await store.PutAsync(k.Status("busy", "n-1"), Status("busy", "n-1", NodeState.Initialising, NodeRole.Unknown), ct);
        Assert.Equal("busy", await NextPokeAsync());
        await store.PutAsync(k.Status("busy", "n-1"), Status("busy", "n-1", NodeState.Running, NodeRole.Primary), ct);
        Assert.Equal("busy", await NextPokeAsync());

        // Only its position and detail moved: nothing; then it stops writing (a demotion): passed on. Reports are seen in
        // order, so the poke that follows is the demotion's, and nothing came between.
        await store.PutAsync(k.Status("busy", "n-1"), Status("busy", "n-1", NodeState.Running, NodeRole.Primary, lsn: 42, detail: "lag 0 B"), ct);
        await store.PutAsync(k.Status("idle", "n-9"), Status("idle", "n-9", NodeState.Running, NodeRole.Replica), ct);
        await store.PutAsync(k.Status("busy", "n-1"), Status("busy", "n-1", NodeState.Running, NodeRole.Replica, lsn: 42), ct);
        Assert.Equal("busy", await NextPokeAsync());
        Assert.False(poked.TryTake(out var extra, TimeSpan.FromMilliseconds(500)), $"passed on {extra}: nothing else changed what a decision reads");

        // Its report removed (its cell stopped it and deleted its data, what a deletion's pass waits for): passed on.
        await store.DeleteAsync(k.Status("idle", "n-9"), ct);
        await store.DeleteAsync(k.Status("busy", "n-1"), ct);
        Assert.Equal("busy", await NextPokeAsync());
        Assert.False(poked.TryTake(out extra, TimeSpan.FromMilliseconds(500)), $"passed on {extra}: only one report of an instance at work went");

        // An operation seen ending at a sweep: its nodes' changes are no longer passed on.
        inProgress.Are([], System.Diagnostics.Stopwatch.GetTimestamp());
        await store.PutAsync(k.Status("busy", "n-1"), Status("busy", "n-1", NodeState.Stopped, NodeRole.Unknown), ct);
        Assert.False(poked.TryTake(out extra, TimeSpan.FromSeconds(1)), $"passed on {extra} after its operation ended");
        await watch.StopAsync(CancellationToken.None);
    }
}
