using Akka.Actor;
using Akka.TestKit.Xunit2;
using Dingo.Config;
using Dingo.Instances;
using Dingo.Model;
using Dingo.Store;
using Dingo.Tests.Support;
using Microsoft.Extensions.Logging.Abstractions;

namespace Dingo.Tests.Instances;

/// <summary>
/// The instance actor over time, against real etcd; the test plays the cell's part by writing what a cell
/// would report. Each test reads as a story.
/// </summary>
public sealed class ServiceInstanceActorTests : TestKit, IAsyncLifetime
{
    private readonly DingoSettings _settings = TestPlatform.NewSettings();
    private EtcdStore _store = null!;
    private Keys K => _store.Keys;
    private static readonly CancellationToken None = CancellationToken.None;

    public Task InitializeAsync()
    {
        _store = new EtcdStore(_settings.EtcdEndpoints, _settings.EtcdPrefix);
        return Task.CompletedTask;
    }

    public async Task DisposeAsync()
    {
        await _store.DeletePrefixAsync(_settings.EtcdPrefix + "/", None);
        await _store.DisposeAsync();
    }

    private async Task<string> RequestInstanceAsync()
    {
        var id = "i-" + Guid.NewGuid().ToString("N")[..8];
        var now = DateTimeOffset.UtcNow;
        var port = await new PortAllocator(_store).AllocatePublicPortAsync(id, _settings.Router.PortFirst, _settings.Router.PortLast, None);
        await _store.TransactAsync(new Txn()
            .Put(K.Instance(id), new InstanceRecord
            {
                Id = id, ServiceId = Catalog.ServiceId, PlanId = Catalog.SoloPlanId, OrganizationGuid = "o", SpaceGuid = "s",
                Port = port, NodeCount = 1, Superuser = new Credentials("dingo_admin", "pw"), CreatedAt = now,
            })
            .Put(K.Operation(id), new OperationRecord { Id = "op-1", Kind = OperationKind.Provision, State = OperationState.InProgress, Description = "accepted", StartedAt = now, UpdatedAt = now }), None);
        return id;
    }

    private async Task RegisterCellAsync(string cellId) =>
        await _store.PutAsync(K.Cell(cellId), new CellInfo { Id = cellId, Zone = "z1", Capacity = 5, Address = "127.0.0.1", Runtime = "process" }, None);

    private async Task<OperationRecord> OperationAsync(string id) => (await _store.GetAsync<OperationRecord>(K.Operation(id), None))!.Value;

    [Fact]
    public async Task An_instance_waits_for_a_cell_is_placed_when_one_registers_and_succeeds_when_its_node_leads()
    {
        var id = await RequestInstanceAsync();
        var actor = Sys.ActorOf(ServiceInstanceActor.Props(id, _store, _settings, NullLoggerFactory.Instance));
        actor.Tell(new ServiceInstanceMessages.Reconcile(id));

        // No cell yet: the operation says so, and keeps waiting.
        await AwaitAssertAsync(async () => Assert.Equal("waiting for a cell: no cell is registered", (await OperationAsync(id)).Description), TimeSpan.FromSeconds(5));

        // A cell registers: the actor places the node there, port claimed in the same transaction.
        await RegisterCellAsync("cell-7");
        NodeSpec node = null!;
        await AwaitAssertAsync(async () =>
        {
            var nodes = await _store.ListAsync<NodeSpec>(K.Nodes(id), None);
            node = Assert.Single(nodes).Value;
            Assert.Equal("cell-7", node.CellId);
            Assert.NotNull(await _store.GetAsync<NodeSpec>(K.Assignment("cell-7", node.NodeId), None));
            Assert.Equal(node.NodeId, await _store.GetAsync<string>(K.NodePort(node.Port), None) is { } p ? p.Value : null);
        }, TimeSpan.FromSeconds(5));
        await AwaitAssertAsync(async () => Assert.Equal("waiting for cell-7 to take node " + node.NodeId, (await OperationAsync(id)).Description), TimeSpan.FromSeconds(5));

        // The cell reports progress, then the node takes the leader key: the provision succeeds.
        await _store.PutAsync(K.Status(id, node.NodeId), new NodeStatus { NodeId = node.NodeId, InstanceId = id, CellId = "cell-7", State = NodeState.Initialising, Detail = "initdb", Host = "127.0.0.1", Port = node.Port }, None);
        await AwaitAssertAsync(async () => Assert.Equal("initialising database on cell-7", (await OperationAsync(id)).Description), TimeSpan.FromSeconds(5));
        await _store.PutAsync(K.Status(id, node.NodeId), new NodeStatus { NodeId = node.NodeId, InstanceId = id, CellId = "cell-7", State = NodeState.Running, Detail = "running", Host = "127.0.0.1", Port = node.Port }, None);
        await _store.PutAsync(K.Leader(id), new LeaderRecord { NodeId = node.NodeId, Host = "127.0.0.1", Port = node.Port }, None);
        await AwaitAssertAsync(async () =>
        {
            var op = await OperationAsync(id);
            Assert.Equal(OperationState.Succeeded, op.State);
            Assert.StartsWith($"ready: primary {node.NodeId}", op.Description);
        }, TimeSpan.FromSeconds(5));
    }

    [Fact]
    public async Task A_deprovision_during_provisioning_removes_the_node_retires_the_port_and_keeps_the_result_visible()
    {
        var id = await RequestInstanceAsync();
        await RegisterCellAsync("cell-8");
        var actor = Sys.ActorOf(ServiceInstanceActor.Props(id, _store, _settings, NullLoggerFactory.Instance));
        actor.Tell(new ServiceInstanceMessages.Reconcile(id));
        await AwaitAssertAsync(async () => Assert.Single(await _store.ListAsync<NodeSpec>(K.Nodes(id), None)), TimeSpan.FromSeconds(5));

        // The broker flips the desired state, as DELETE does, and wakes the actor (it may have rested).
        var instance = (await _store.GetAsync<InstanceRecord>(K.Instance(id), None))!;
        var now = DateTimeOffset.UtcNow;
        await _store.TransactAsync(new Txn()
            .Put(K.Instance(id), instance.Value with { Desired = DesiredState.Absent })
            .Put(K.Operation(id), new OperationRecord { Id = "op-2", Kind = OperationKind.Deprovision, State = OperationState.InProgress, Description = "accepted", StartedAt = now, UpdatedAt = now }), None);
        var actor2 = Sys.ActorOf(ServiceInstanceActor.Props(id, _store, _settings, NullLoggerFactory.Instance));
        actor2.Tell(new ServiceInstanceMessages.Reconcile(id));

        await AwaitAssertAsync(async () =>
        {
            Assert.Null(await _store.GetAsync<InstanceRecord>(K.Instance(id), None));
            Assert.Empty(await _store.ListAsync<NodeSpec>(K.Nodes(id), None));
            Assert.Empty(await _store.ListAsync<NodeSpec>(K.Assignments("cell-8"), None));
            Assert.Empty(await _store.ListAsync<string>(K.NodePorts, None));
            var port = (await _store.GetAsync<PortRecord>(K.Port(instance.Value.Port), None))!.Value;
            Assert.Equal(PortState.Retired, port.State);
            var op = await OperationAsync(id);
            Assert.Equal((OperationKind.Deprovision, OperationState.Succeeded), (op.Kind, op.State));
        }, TimeSpan.FromSeconds(10));

        // The next instance never gets the retired port.
        var next = await RequestInstanceAsync();
        var nextPort = (await _store.GetAsync<InstanceRecord>(K.Instance(next), None))!.Value.Port;
        Assert.True(nextPort > instance.Value.Port);
    }

    [Fact]
    public async Task Deletions_finish_when_more_node_ports_are_free_than_one_transaction_may_hold()
    {
        // After a mass deletion (the 300-instance bench's teardown), every node port was free at once: each deletion put
        // them all in its transaction, etcd refused it (over 128 operations), and no deletion could ever finish.
        var live = new NodeSpec { NodeId = "n-live", InstanceId = "i-other", CellId = "cell-9", Port = 39999 };
        var txn = new Txn().Put(K.NodePort(live.Port), live.NodeId).Put(K.Nodes(live.InstanceId) + live.NodeId, live);
        await _store.TransactAsync(txn, None);
        for (var batch = 0; batch < 3; batch++)
        {
            var stale = new Txn();
            for (var i = 0; i < 50; i++) stale.Put(K.NodePort(40000 + batch * 50 + i), $"n-gone-{batch}-{i}");
            await _store.TransactAsync(stale, None);
        }

        async Task DeleteAsync(string id)
        {
            var instance = (await _store.GetAsync<InstanceRecord>(K.Instance(id), None))!;
            var now = DateTimeOffset.UtcNow;
            await _store.TransactAsync(new Txn()
                .Put(K.Instance(id), instance.Value with { Desired = DesiredState.Absent })
                .Put(K.Operation(id), new OperationRecord { Id = "op-2", Kind = OperationKind.Deprovision, State = OperationState.InProgress, Description = "accepted", StartedAt = now, UpdatedAt = now }), None);
            Sys.ActorOf(ServiceInstanceActor.Props(id, _store, _settings, NullLoggerFactory.Instance)).Tell(new ServiceInstanceMessages.Reconcile(id));
            await AwaitAssertAsync(async () =>
            {
                Assert.Null(await _store.GetAsync<InstanceRecord>(K.Instance(id), None));
                Assert.Equal((OperationKind.Deprovision, OperationState.Succeeded), ((await OperationAsync(id)).Kind, (await OperationAsync(id)).State));
            }, TimeSpan.FromSeconds(10));
        }

        await DeleteAsync(await RequestInstanceAsync());
        var left = await _store.ListAsync<string>(K.NodePorts, None);
        Assert.Equal(150 - InstanceReconciler.MaxPortsFreedPerDeletion + 1, left.Count);
        await DeleteAsync(await RequestInstanceAsync());
        // The next deletion frees the rest; the port of a node that still exists stays taken throughout.
        Assert.Equal(live.NodeId, Assert.Single(await _store.ListAsync<string>(K.NodePorts, None)).Value);
    }
}
