using Akka.Actor;
using Akka.Cluster;
using Akka.Cluster.Sharding;
using Akka.Configuration;
using Akka.TestKit.Xunit2;
using Dingo.Config;
using Dingo.Instances;
using Dingo.Membership;
using Dingo.Model;
using Dingo.Store;
using Dingo.Tests.Support;
using Microsoft.Extensions.Logging.Abstractions;

namespace Dingo.Tests.Actors;

/// <summary>
/// The instance actor as the broker runs it: the real <see cref="ServiceInstanceActor"/> and <see cref="InstanceReconciler"/>,
/// an entity of a real shard region on a one-member cluster, over an <see cref="InMemoryStore"/>. The test plays the
/// cell (it writes what a cell would report) and the broker's sweep (it sends <see cref="ServiceInstanceMessages.Reconcile"/>).
/// A second actor system on the same store is a broker restarted: what the entity knows lives in the store alone.
/// </summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class ServiceInstanceActorTestKitTests() : TestKit(BrokerConfig)
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(5);
    private static readonly CancellationToken None = CancellationToken.None;

    /// <summary>
    /// A broker's sharding on one member, with loopback remoting on a free port. No split-brain resolver: with one member
    /// it has nothing to decide, and the production one takes its lease from etcd. Akka's start-up pauses (the first
    /// cluster tick after 1 s, a region's registration retried every 2 s) are shortened, or each test would wait them out.
    /// </summary>
    private static readonly Akka.Configuration.Config BrokerConfig = ConfigurationFactory.ParseString("""
        akka.actor.provider = cluster
        akka.remote.dot-netty.tcp { hostname = "127.0.0.1", port = 0 }
        akka.cluster.roles = [broker]
        akka.cluster.downing-provider-class = ""
        akka.cluster.periodic-tasks-initial-delay = 0s
        akka.cluster.sharding.retry-interval = 200ms
        akka.cluster.sharding.state-store-mode = ddata
        akka.cluster.sharding.remember-entities = off
        """).WithFallback(ConfigurationFactory.ParseString(AkkaDefaults.Hocon));

    private readonly InMemoryStore _store = new();
    private readonly DingoSettings _settings = DingoSettings.Load([Path.Combine(TestPlatform.RepoRoot(), "hocon", "dingo.conf")], new Dictionary<string, string?>());
    private Keys K => _store.Keys;

    /// <summary>What BrokerApp does for the region: this system founds its own cluster, then hosts the entities.</summary>
    private async Task<IActorRef> StartRegionAsync(ActorSystem system)
    {
        var cluster = Cluster.Get(system);
        await cluster.JoinAsync(cluster.SelfAddress, new CancellationTokenSource(Wait).Token);
        return await ClusterSharding.Get(system).StartAsync("service-instance",
            id => ServiceInstanceActor.Props(id, _store, _settings, NullLoggerFactory.Instance),
            ClusterShardingSettings.Create(system).WithRole("broker"), new ServiceInstanceExtractor());
    }

    /// <summary>The entities the region hosts now: an instance's actor that passivated is no longer among them.</summary>
    private static async Task<IReadOnlySet<string>> EntitiesAsync(IActorRef region) =>
        (await region.Ask<CurrentShardRegionState>(GetShardRegionState.Instance, Wait)).Shards.SelectMany(s => s.EntityIds).ToHashSet();

    /// <summary>An instance as the broker's provision request leaves it: the record and its operation, in progress.</summary>
    private string RequestInstance(string planId, int nodeCount)
    {
        var id = "i-" + Guid.NewGuid().ToString("N")[..8];
        var now = DateTimeOffset.UtcNow;
        Assert.True(_store.Apply(new Txn()
            .Put(K.Instance(id), new InstanceRecord
            {
                Id = id, ServiceId = Catalog.ServiceId, PlanId = planId, OrganizationGuid = "o", SpaceGuid = "s",
                Port = 30001, NodeCount = nodeCount, Superuser = new Credentials("dingo_admin", "pw"), CreatedAt = now,
            })
            .Put(K.Operation(id), new OperationRecord { Id = "op-1", Kind = OperationKind.Provision, State = OperationState.InProgress, Description = "accepted", StartedAt = now, UpdatedAt = now })
            .Build()));
        return id;
    }

    private void RegisterCell(string cellId, string zone) =>
        _store.Put(K.Cell(cellId), new CellInfo { Id = cellId, Zone = zone, Capacity = 5, Address = "127.0.0.1", Runtime = "process" });

    private IReadOnlyList<NodeSpec> Nodes(string id) => _store.List<NodeSpec>(K.Nodes(id)).Select(n => n.Value).ToList();

    private OperationRecord Operation(string id) => _store.Read<OperationRecord>(K.Operation(id))!.Value;

    /// <summary>The cell's part: the node runs, as the primary (taking the leader key) or as a replica streaming from it.</summary>
    private void ReportRunning(NodeSpec node, bool primary)
    {
        _store.Put(K.Status(node.InstanceId, node.NodeId), new NodeStatus
        {
            NodeId = node.NodeId, InstanceId = node.InstanceId, CellId = node.CellId, State = NodeState.Running, Detail = "running",
            Host = "127.0.0.1", Port = node.Port, Role = primary ? NodeRole.Primary : NodeRole.Replica, Writable = primary, Streaming = !primary,
        });
        if (primary) _store.Put(K.Leader(node.InstanceId), new LeaderRecord { NodeId = node.NodeId, Host = "127.0.0.1", Port = node.Port });
    }

    private Task UntilAsync(Func<bool> condition) => AwaitConditionAsync(() => Task.FromResult(condition()), Wait);

    [Fact]
    public async Task A_provision_places_its_node_succeeds_once_the_cell_reports_it_leading_and_its_entity_passivates()
    {
        RegisterCell("cell-1", "z1");
        var id = RequestInstance(Catalog.SoloPlanId, 1);
        var region = await StartRegionAsync(Sys);
        region.Tell(new ServiceInstanceMessages.Reconcile(id));

        // The entity places the node: its spec, the cell's assignment and both ports, in one transaction.
        await UntilAsync(() => Nodes(id).Count == 1);
        var node = Assert.Single(Nodes(id));
        Assert.Equal("cell-1", node.CellId);
        Assert.Equal(node, _store.Read<NodeSpec>(K.Assignment("cell-1", node.NodeId))?.Value);
        Assert.Equal([node.NodeId, node.NodeId], _store.List<string>(K.NodePorts).Select(p => p.Value));
        await UntilAsync(() => Operation(id).Description == $"waiting for cell-1 to take node {node.NodeId}");
        Assert.Contains(id, await EntitiesAsync(region)); // an operation runs: the entity keeps looking

        ReportRunning(node, primary: true);

        await UntilAsync(() => Operation(id).State == OperationState.Succeeded);
        Assert.Equal($"ready: primary {node.NodeId} on cell-1, reachable on port 30001", Operation(id).Description);
        await AwaitConditionAsync(async () => !(await EntitiesAsync(region)).Contains(id), Wait);
        Assert.Single(Nodes(id));
    }

    [Fact]
    public async Task An_entity_stopped_mid_provision_is_resumed_by_the_next_broker_from_what_the_store_holds()
    {
        RegisterCell("cell-1", "z1");
        RegisterCell("cell-2", "z2");
        var id = RequestInstance(Catalog.ClusterPlanId, 2);

        // The first broker: once the first node is placed, etcd stops answering it (every call waits until cancelled).
        var held = 0;
        _store.BeforeCall = async (_, ct) =>
        {
            if (Nodes(id).Count == 0) return;
            Interlocked.Increment(ref held);
            await Task.Delay(Timeout.Infinite, ct);
        };
        var first = ActorSystem.Create("broker-1", BrokerConfig);
        try
        {
            var region = await StartRegionAsync(first);
            region.Tell(new ServiceInstanceMessages.Reconcile(id));
            await UntilAsync(() => Volatile.Read(ref held) > 0);
            Assert.Contains(id, await EntitiesAsync(region));
        }
        finally
        {
            // The whole broker goes: its entity stops, and the call it waits on is cancelled.
            await first.Terminate().WaitAsync(Wait);
        }
        // Stopped between placing the node and recording the step: the store holds one node and an operation that says
        // nothing of it.
        var placed = Assert.Single(Nodes(id));
        Assert.Equal("accepted", Operation(id).Description);
        var placedAt = _store.Read<NodeSpec>(K.Node(id, placed.NodeId))!.ModRevision;

        // The next broker, etcd answering again; the sweep finds the operation in progress and wakes the instance.
        _store.BeforeCall = null;
        var next = await StartRegionAsync(Sys);
        next.Tell(new ServiceInstanceMessages.Reconcile(id));

        await UntilAsync(() => Nodes(id).Count == 2);
        var second = Assert.Single(Nodes(id), n => n.NodeId != placed.NodeId);
        Assert.Equal("cell-2", second.CellId); // the first node's cell already holds one of this instance
        Assert.Equal(placedAt, _store.Read<NodeSpec>(K.Node(id, placed.NodeId))!.ModRevision); // the first node untouched
        Assert.Equal([placed.NodeId], _store.List<NodeSpec>(K.Assignments("cell-1")).Select(a => a.Value.NodeId));
        Assert.Equal(4, _store.List<string>(K.NodePorts).Count); // two ports for each of two nodes: nothing placed twice

        ReportRunning(placed, primary: true);
        ReportRunning(second, primary: false);

        await UntilAsync(() => Operation(id).State == OperationState.Succeeded);
        Assert.Equal($"ready: primary {placed.NodeId} on cell-1, 1 replica(s) streaming, reachable on port 30001", Operation(id).Description);
        await AwaitConditionAsync(async () => !(await EntitiesAsync(next)).Contains(id), Wait);
        Assert.Equal(2, Nodes(id).Count);
    }

    [Fact]
    public async Task A_pass_the_store_fails_is_retried_without_being_asked_again()
    {
        RegisterCell("cell-1", "z1");
        var id = RequestInstance(Catalog.SoloPlanId, 1);
        // The placing transaction fails once, as etcd unreachable would: the pass that decided to place throws.
        var failures = 0;
        _store.BeforeCall = (call, _) =>
        {
            if (call == nameof(IInstanceStore.TransactAsync) && Interlocked.Increment(ref failures) == 1)
                throw new InvalidOperationException("etcd is unreachable (test)");
            return Task.CompletedTask;
        };
        var region = await StartRegionAsync(Sys);
        region.Tell(new ServiceInstanceMessages.Reconcile(id));

        await UntilAsync(() => Volatile.Read(ref failures) >= 1);
        Assert.Empty(Nodes(id));
        Assert.Equal("accepted", Operation(id).Description);

        // No further request: the entity retries on its own, and the retry places the node.
        await UntilAsync(() => Nodes(id).Count == 1);
        Assert.Equal(2, Volatile.Read(ref failures)); // the failed placement, then the one that went through
        await UntilAsync(() => Operation(id).Description == $"waiting for cell-1 to take node {Nodes(id)[0].NodeId}");
        Assert.Contains(id, await EntitiesAsync(region));
    }

    /// <summary>
    /// A pass reads everything it decides on in one call of the store (the instance, its operation, nodes, reports, leader
    /// and backup keys, the cells): eight reads one after another before, for every in-progress instance three times a
    /// second, three quarters of what etcd served in a burst of provisions. A pass that only waits writes nothing.
    /// </summary>
    [Fact]
    public async Task A_pass_reads_the_store_once_and_one_that_only_waits_writes_nothing()
    {
        RegisterCell("cell-1", "z1");
        RegisterCell("cell-2", "z2");
        var id = RequestInstance(Catalog.ClusterPlanId, 2);
        var reconciler = new Dingo.Instances.InstanceReconciler(_store, _settings, NullLogger.Instance);

        Assert.IsType<InstanceDecision.PlaceNode>(await reconciler.RunPassAsync(id, None));
        Assert.IsType<InstanceDecision.PlaceNode>(await reconciler.RunPassAsync(id, None));
        Assert.Equal(2, Nodes(id).Count);
        var first = Nodes(id).OrderBy(n => n.CreatedAt).First();
        // The first wait is recorded (the operation's description changes); the same wait again is not.
        Assert.IsType<InstanceDecision.Wait>(await reconciler.RunPassAsync(id, None));
        var revision = _store.Revision;
        var calls = _store.Calls;
        var waiting = Assert.IsType<InstanceDecision.Wait>(await reconciler.RunPassAsync(id, None));
        Assert.Equal(1, _store.Calls - calls);
        Assert.Equal(revision, _store.Revision);
        Assert.Equal(waiting.Description, Operation(id).Description);

        // What the one read sees decides as the separate reads did: both nodes running, the primary holding the leader key.
        foreach (var node in Nodes(id)) ReportRunning(node, primary: node.NodeId == first.NodeId);
        Assert.IsType<InstanceDecision.Succeed>(await reconciler.RunPassAsync(id, None));
        Assert.Equal(OperationState.Succeeded, Operation(id).State);

        // An instance gone: no decision, after the one read.
        calls = _store.Calls;
        Assert.Null(await reconciler.RunPassAsync("i-missing", None));
        Assert.Equal(1, _store.Calls - calls);
    }
}
