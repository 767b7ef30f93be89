using Dingo.Config;
using Dingo.Model;
using Dingo.Store;
using Microsoft.Extensions.Logging;

namespace Dingo.Instances;

/// <summary>One reconcile pass of one instance: read etcd, decide, act once, record progress.</summary>
public sealed class InstanceReconciler(IInstanceStore store, DingoSettings settings, ILogger logger, Dingo.Health.BrokerMetrics? metrics = null, EventJournal? events = null)
{
    private readonly PortAllocator _ports = new(store);

    /// <summary>Returns the decision taken, or null when the instance no longer exists.</summary>
    public async Task<InstanceDecision?> RunPassAsync(string instanceId, CancellationToken ct)
    {
        var read = await ReadSnapshotAsync(instanceId, ct).ConfigureAwait(false);
        if (read is not var (snapshot, instanceRevision)) return null;
        var instance = snapshot.Instance;
        var decision = Provisioning.Decide(snapshot, settings.Broker.ProvisionTimeout, settings.Broker.ProvisionFailureGrace);

        switch (decision)
        {
            case InstanceDecision.PlaceNode:
                decision = await PlaceInTurnAsync(instance, instanceRevision, snapshot, ct).ConfigureAwait(false);
                break;
            case InstanceDecision.RemoveNodes remove:
                await RemoveNodesAsync(remove.Nodes, remove.Description, snapshot.Statuses, ct).ConfigureAwait(false);
                break;
            case InstanceDecision.ReplaceLost replace:
                // Replacements are placed by the next passes (the cluster is below its size).
                await RemoveNodesAsync(replace.Lost, replace.Description, snapshot.Statuses, ct).ConfigureAwait(false);
                logger.LogWarning("instance {Instance}: {Decision}", instanceId, replace.Description);
                events?.Record(instanceId, null, EventKind.NodesReplaced, replace.Description);
                break;
            case InstanceDecision.FinishDeletion:
                await FinishDeletionAsync(instance, snapshot.Operation, decision.Description, ct).ConfigureAwait(false);
                logger.LogInformation("instance {Instance}: {Decision}", instanceId, decision.Description);
                return decision;
        }

        await RecordProgressAsync(instanceId, instance.PlanId, snapshot.Operation, decision, ct).ConfigureAwait(false);
        return decision;
    }

    /// <summary>
    /// Drops the nodes from the instance and from their cells, leaving a tombstone for each in the same transaction: the
    /// cell's instruction that it may delete the node's data (once the grace has passed and the data is safe elsewhere).
    /// </summary>
    private async Task RemoveNodesAsync(IReadOnlyList<NodeSpec> nodes, string reason, IReadOnlyList<NodeStatus> statuses, CancellationToken ct)
    {
        var retention = await store.GrantLeaseAsync(settings.Broker.TombstoneRetention, ct).ConfigureAwait(false);
        await store.TransactAsync(RemoveNodesTxn(store.Keys, nodes, reason, statuses, retention, DateTimeOffset.UtcNow), ct).ConfigureAwait(false);
    }

    /// <param name="statuses">the nodes' last reports: each tombstone keeps its node's WAL position</param>
    /// <param name="retention">the lease the tombstones live under (dingo.broker.tombstone-retention)</param>
    public static Txn RemoveNodesTxn(Keys keys, IEnumerable<NodeSpec> nodes, string reason, IReadOnlyList<NodeStatus> statuses, long retention, DateTimeOffset now)
    {
        var txn = new Txn();
        foreach (var node in nodes)
        {
            var last = statuses.FirstOrDefault(s => s.NodeId == node.NodeId);
            txn.Delete(keys.Node(node.InstanceId, node.NodeId)).Delete(keys.Assignment(node.CellId, node.NodeId))
                .Put(keys.RemovedNode(node.NodeId), new NodeTombstone
                {
                    NodeId = node.NodeId, InstanceId = node.InstanceId, CellId = node.CellId, Reason = reason, RemovedAt = now, LastLsn = last?.Lsn,
                    LastTimeline = last is { Timeline: > 0 } ? last.Timeline : null,
                }, retention);
        }
        return txn;
    }

    /// <summary>
    /// Everything the pass decides on, in one read at one revision (the instance with its revision, null when it is
    /// gone). Eight reads one after another before: an instance with an operation in progress passes several times a
    /// second, and in a burst of 20 provisions (bench/Provision) the broker's passes were three quarters of every call
    /// etcd served, 300 a second. One read also sees the nodes, their reports and the leader key as they stood together.
    /// </summary>
    private async Task<(InstanceSnapshot Snapshot, long InstanceRevision)?> ReadSnapshotAsync(string instanceId, CancellationToken ct)
    {
        var keys = store.Keys;
        var read = await store.ReadManyRawAsync(
            [keys.Nodes(instanceId), keys.Statuses(instanceId), keys.LostCells, keys.DrainedCells, keys.Cells],
            [keys.Instance(instanceId), keys.Operation(instanceId), keys.Leader(instanceId), keys.Backup(instanceId)], ct).ConfigureAwait(false);
        if (read.Keys[0] is not { } instanceRaw) return null;
        var instance = EtcdStore.Decode<InstanceRecord>(instanceRaw).Value;
        T? One<T>(int i) where T : class => read.Keys[i] is { } raw ? EtcdStore.Decode<T>(raw).Value : null;
        List<T> All<T>(int i) => read.Prefixes[i].Select(raw => EtcdStore.Decode<T>(raw).Value).ToList();
        HashSet<string> Names(int i, string prefix) => read.Prefixes[i].Select(raw => raw.Key[prefix.Length..]).ToHashSet();
        // The cells' counts are not read here: only a placement uses them, and it reads them in its turn (PlaceInTurnAsync).
        // Without them this pass's decision is the most permissive one (every cell has room), so a pass that would not
        // place with them does not place with them either, and one that might is decided again on the counts.
        var snapshot = new InstanceSnapshot(
            instance,
            One<OperationRecord>(1),
            All<NodeSpec>(0),
            All<NodeStatus>(1),
            All<CellInfo>(4),
            new Dictionary<string, int>(),
            One<LeaderRecord>(2),
            DateTimeOffset.UtcNow)
        {
            LostCells = Names(2, keys.LostCells),
            DrainedCells = Names(3, keys.DrainedCells),
            Backup = Dingo.Ha.SynchronousCommit.StoreSync(instance) ? One<BackupState>(3) : null,
        };
        return (snapshot, instanceRaw.ModRevision);
    }

    /// <summary>
    /// This broker's placements, one at a time: each counts the cells' nodes again, after the previous one was committed.
    /// Instances decided at once on one reading of the counts all chose the same least-loaded cell (a burst of 20
    /// provisions put 8 first nodes on one cell of three). One turn per platform (its keys' root): a process that serves
    /// several (the test suite) does not make one platform's placements wait on another's etcd.
    /// </summary>
    private static readonly System.Collections.Concurrent.ConcurrentDictionary<string, SemaphoreSlim> PlacementTurns = new(StringComparer.Ordinal);

    private async Task<InstanceDecision> PlaceInTurnAsync(InstanceRecord instance, long instanceRevision, InstanceSnapshot snapshot, CancellationToken ct)
    {
        var turn = PlacementTurns.GetOrAdd(store.Keys.Root, static _ => new SemaphoreSlim(1, 1));
        await turn.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            var (load, firstNodes) = await ReadLoadAsync(ct).ConfigureAwait(false);
            var decision = Provisioning.Decide(snapshot with { CellLoad = load, FirstNodeLoad = firstNodes }, settings.Broker.ProvisionTimeout, settings.Broker.ProvisionFailureGrace);
            if (decision is InstanceDecision.PlaceNode place && !await PlaceNodeAsync(instance, instanceRevision, place.Cell, ct).ConfigureAwait(false))
                return new InstanceDecision.Wait($"{place.Description}: the instance or a port changed meanwhile; deciding again");
            return decision;
        }
        finally
        {
            turn.Release();
        }
    }

    /// <summary>Nodes per cell, and first nodes (each instance's earliest) per cell.</summary>
    private async Task<(Dictionary<string, int> Load, Dictionary<string, int> FirstNodes)> ReadLoadAsync(CancellationToken ct)
    {
        var allNodes = (await store.ListAsync<NodeSpec>(store.Keys.AllNodes, ct).ConfigureAwait(false)).Select(n => n.Value).ToList();
        return (allNodes.GroupBy(n => n.CellId).ToDictionary(g => g.Key, g => g.Count()),
            allNodes.GroupBy(n => n.InstanceId).Select(g => g.OrderBy(n => n.CreatedAt).ThenBy(n => n.NodeId, StringComparer.Ordinal).First())
                .GroupBy(n => n.CellId).ToDictionary(g => g.Key, g => g.Count()));
    }

    /// <returns>true when the node was placed (the transaction's compares held)</returns>
    private async Task<bool> PlaceNodeAsync(InstanceRecord instance, long instanceRevision, CellInfo cell, CancellationToken ct)
    {
        var keys = store.Keys;
        var nodeId = NewNodeId();
        var port = await _ports.PickNodePortAsync(settings.NodePortFirst, settings.NodePortLast, ct).ConfigureAwait(false);
        int apiPort;
        do apiPort = await _ports.PickNodePortAsync(settings.NodePortFirst, settings.NodePortLast, ct).ConfigureAwait(false);
        while (apiPort == port);
        var spec = new NodeSpec { NodeId = nodeId, InstanceId = instance.Id, CellId = cell.Id, Port = port, ApiPort = apiPort, CreatedAt = DateTimeOffset.UtcNow };
        // Both keys or neither, and only while the instance is still wanted.
        var placed = await store.TransactAsync(new Txn()
            .Absent(keys.Node(instance.Id, nodeId))
            .Absent(keys.NodePort(port))
            .Absent(keys.NodePort(apiPort))
            .At(keys.Instance(instance.Id), instanceRevision)
            .Put(keys.NodePort(port), nodeId)
            .Put(keys.NodePort(apiPort), nodeId)
            .Put(keys.Node(instance.Id, nodeId), spec)
            .Put(keys.Assignment(cell.Id, nodeId), spec), ct).ConfigureAwait(false);
        if (placed)
        {
            logger.LogInformation("instance {Instance}: placed node {Node} on {Cell} port {Port}", instance.Id, nodeId, cell.Id, port);
            events?.Record(instance.Id, nodeId, EventKind.NodePlaced, $"placed node {nodeId} on {cell.Id} (zone {cell.Zone}), port {port}");
        }
        return placed;
    }

    /// <summary>Node ports a finished deletion frees in its transaction: with its own dozen operations, well under etcd's 128.</summary>
    internal const int MaxPortsFreedPerDeletion = 100;

    private async Task FinishDeletionAsync(InstanceRecord instance, OperationRecord? operation, string description, CancellationToken ct)
    {
        var keys = store.Keys;
        // Keep the finished delete visible to last_operation for a while, then let etcd forget it.
        var lease = await store.GrantLeaseAsync(settings.Broker.DeletedOperationRetention, ct).ConfigureAwait(false);
        // A cell that was away while the instance went still holds a node of it: this tells it the data may go.
        var tombstoneLease = await store.GrantLeaseAsync(settings.Broker.TombstoneRetention, ct).ConfigureAwait(false);
        var now = DateTimeOffset.UtcNow;
        var done = new OperationRecord
        {
            Id = operation?.Id ?? "deprovision",
            Kind = OperationKind.Deprovision,
            State = OperationState.Succeeded,
            Description = description,
            StartedAt = operation?.StartedAt ?? now,
            UpdatedAt = now,
        };
        // Free node ports no node holds any more; a node still stopping keeps its status and so its port. The ports are
        // read first: a node placed after that read holds a port this deletion never saw, and one placed before it is in
        // the node listing that follows. At most MaxPortsFreedPerDeletion go in this transaction (etcd refuses one of more
        // than 128 operations, and after a mass deletion thousands may be free: every deletion then failed for good);
        // the next deletion frees the rest.
        var nodePorts = await store.ListAsync<string>(keys.NodePorts, ct).ConfigureAwait(false);
        var liveNodes = (await store.ListAsync<NodeSpec>(keys.AllNodes, ct).ConfigureAwait(false)).Select(n => n.Value.NodeId)
            .Concat((await store.ListAsync<NodeStatus>(keys.AllStatus, ct).ConfigureAwait(false)).Select(x => x.Value.NodeId))
            .ToHashSet();
        var freed = nodePorts.Where(p => !liveNodes.Contains(p.Value)).Take(MaxPortsFreedPerDeletion).ToList();
        var txn = new Txn()
            .Delete(keys.Instance(instance.Id))
            .DeletePrefix(keys.Bindings(instance.Id))
            .DeletePrefix(keys.Nodes(instance.Id))
            .DeletePrefix(keys.Cluster(instance.Id))
            .Delete(keys.Backup(instance.Id))
            .Delete(keys.Drill(instance.Id))
            .Delete(keys.DrillRequest(instance.Id))
            .Put(keys.Port(instance.Port), new PortRecord { InstanceId = instance.Id, State = PortState.Retired })
            .Put(keys.Operation(instance.Id), done, lease)
            .Put(keys.DeletedInstance(instance.Id), new InstanceTombstone { InstanceId = instance.Id, DeletedAt = now }, tombstoneLease);
        if (instance.ReadOnlyPort > 0) txn.Put(keys.Port(instance.ReadOnlyPort), new PortRecord { InstanceId = instance.Id, State = PortState.Retired, Role = PortRole.ReadOnly });
        foreach (var port in freed) txn.Delete(port.Key);
        await store.TransactAsync(txn, ct).ConfigureAwait(false);
        metrics?.OperationFinished(done, instance.PlanId);
        events?.Record(instance.Id, null, EventKind.Operation(done.Kind, done.State), description);
    }

    private async Task RecordProgressAsync(string instanceId, string planId, OperationRecord? operation, InstanceDecision decision, CancellationToken ct)
    {
        if (operation is null || !operation.InProgress) return;
        var state = decision switch
        {
            InstanceDecision.Succeed => OperationState.Succeeded,
            InstanceDecision.Fail => OperationState.Failed,
            _ => OperationState.InProgress,
        };
        if (state == operation.State && decision.Description == operation.Description) return;
        var updated = operation with { State = state, Description = decision.Description, UpdatedAt = DateTimeOffset.UtcNow };
        await store.PutAsync(store.Keys.Operation(instanceId), updated, ct).ConfigureAwait(false);
        if (state != OperationState.InProgress)
        {
            metrics?.OperationFinished(updated, planId);
            events?.Record(instanceId, null, EventKind.Operation(operation.Kind, state), decision.Description);
            logger.LogInformation("instance {Instance}: {Kind} {State}: {Description}", instanceId, operation.Kind.Wire(), state.Wire(), decision.Description);
        }
        else logger.LogInformation("instance {Instance}: {Description}", instanceId, decision.Description);
    }

    public static string NewNodeId() => "n-" + Convert.ToHexString(System.Security.Cryptography.RandomNumberGenerator.GetBytes(4)).ToLowerInvariant();
}
