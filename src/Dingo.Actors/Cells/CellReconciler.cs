using Dingo.Config;
using Dingo.Model;
using Dingo.Postgres;
using Dingo.Store;
using Microsoft.Extensions.Logging;

namespace Dingo.Cells;

/// <summary>
/// One reconcile pass of a cell: the nodes etcd assigns to it against what its runtime holds. Creates,
/// starts, restarts and removes nodes, reports each node's status, and (single-node plans) holds the
/// instance's leader key for a healthy node. Knows nothing of how the runtime runs PostgreSQL.
/// </summary>
public sealed class CellReconciler(EtcdStore store, IContainerRuntime runtime, CellLease lease, DingoSettings settings, ILogger logger)
{
    private readonly CellSettings _cell = settings.Cell;
    private readonly Dictionary<string, NodeMemory> _memory = new();
    private string? _written; // last registration written, with its lease
    private readonly Dictionary<string, string> _writtenKeys = new(); // key -> value written under the current lease
    private long _writtenLease;

    private sealed class NodeMemory
    {
        public bool SeenRunning;
        public bool Prepared;
        public int Restarts;
        public DateTime StartedAt;
    }

    public IContainerRuntime Runtime => runtime;

    /// <summary>Returns a one-line summary of what this pass did.</summary>
    public async Task<string> RunPassAsync(CancellationToken ct)
    {
        var leaseId = await lease.EnsureAsync(ct).ConfigureAwait(false);
        if (leaseId != _writtenLease)
        {
            _writtenKeys.Clear(); // the old lease took its keys with it
            _written = null;
            _writtenLease = leaseId;
        }
        await RegisterAsync(leaseId, ct).ConfigureAwait(false);

        var desired = (await store.ListAsync<NodeSpec>(store.Keys.Assignments(_cell.Id), ct).ConfigureAwait(false))
            .Select(v => v.Value).ToDictionary(n => n.NodeId);
        var actual = (await runtime.ListAsync(ct).ConfigureAwait(false)).ToDictionary(n => n.NodeId);
        var did = new List<string>();

        foreach (var spec in desired.Values.OrderBy(n => n.CreatedAt))
        {
            try
            {
                var outcome = await ReconcileNodeAsync(spec, actual.GetValueOrDefault(spec.NodeId), leaseId, ct).ConfigureAwait(false);
                if (outcome is not null) did.Add(outcome);
            }
            catch (Exception ex) when (ex is not OperationCanceledException)
            {
                logger.LogWarning("node {Node}: {Error}", spec.NodeId, ex.Message);
                await ReportAsync(spec, NodeState.Failed, ex.Message, leaseId, ct).ConfigureAwait(false);
                did.Add($"{spec.NodeId} failed: {ex.Message}");
            }
        }

        foreach (var orphan in actual.Values.Where(n => !desired.ContainsKey(n.NodeId)))
        {
            // etcd no longer wants it: the instance was deleted. Stop it and delete its data.
            logger.LogInformation("node {Node}: no longer assigned to {Cell}; stopping and removing its data", orphan.NodeId, _cell.Id);
            await runtime.RemoveAsync(orphan.NodeId, ct).ConfigureAwait(false);
            _memory.Remove(orphan.NodeId);
            did.Add($"removed {orphan.NodeId}");
        }
        // Statuses of nodes that are gone from both sides.
        foreach (var key in _writtenKeys.Keys.Where(k => k.StartsWith(store.Keys.AllStatus, StringComparison.Ordinal)).ToList())
        {
            var nodeId = key[store.Keys.AllStatus.Length..];
            if (!desired.ContainsKey(nodeId))
            {
                await store.DeleteAsync(key, ct).ConfigureAwait(false);
                _writtenKeys.Remove(key);
            }
        }
        await ClearStaleStatusesAsync(desired, ct).ConfigureAwait(false);
        return did.Count == 0 ? $"no action: {desired.Count} node(s) as wanted" : string.Join("; ", did);
    }

    private async Task<string?> ReconcileNodeAsync(NodeSpec spec, RuntimeNode? node, long leaseId, CancellationToken ct)
    {
        var instance = await store.GetAsync<InstanceRecord>(store.Keys.Instance(spec.InstanceId), ct).ConfigureAwait(false);
        if (instance is null) return null; // being deleted: the assignment goes next
        var launch = new NodeLaunchSpec(spec.NodeId, spec.InstanceId, _cell.Address, spec.Port, instance.Value.Superuser);
        if (!_memory.TryGetValue(spec.NodeId, out var memory)) _memory[spec.NodeId] = memory = new NodeMemory();

        if (node is null || !node.Initialised)
        {
            await ReportAsync(spec, NodeState.Initialising, "initialising database (initdb)", leaseId, ct).ConfigureAwait(false);
            await runtime.CreateAsync(launch, ct).ConfigureAwait(false);
            await runtime.StartAsync(launch, ct).ConfigureAwait(false);
            memory.StartedAt = DateTime.UtcNow;
            await ReportAsync(spec, NodeState.Starting, "starting PostgreSQL", leaseId, ct).ConfigureAwait(false);
            return $"created {spec.NodeId}";
        }
        if (!node.Running)
        {
            if (memory.SeenRunning)
            {
                memory.Restarts++;
                logger.LogWarning("node {Node}: PostgreSQL is not running ({Detail}); restarting it (restart #{Count})", spec.NodeId, node.Detail, memory.Restarts);
            }
            memory.SeenRunning = false;
            memory.Prepared = false;
            await DropLeaderAsync(spec, ct).ConfigureAwait(false);
            await runtime.StartAsync(launch, ct).ConfigureAwait(false);
            memory.StartedAt = DateTime.UtcNow;
            await ReportAsync(spec, NodeState.Starting, memory.Restarts > 0 ? $"restarting PostgreSQL (restart #{memory.Restarts})" : "starting PostgreSQL", leaseId, ct, memory.Restarts).ConfigureAwait(false);
            return $"started {spec.NodeId}";
        }

        // Running: does it answer?
        try
        {
            if (!memory.Prepared)
            {
                await DatabaseAdmin.PrepareAsync(_cell.Address, spec.Port, instance.Value.Superuser, instance.Value.Database, ct).ConfigureAwait(false);
                memory.Prepared = true;
            }
            else
            {
                await ProbeAsync(spec.Port, instance.Value, ct).ConfigureAwait(false);
            }
        }
        catch (Exception ex) when (ex is Npgsql.NpgsqlException or TimeoutException or System.Net.Sockets.SocketException)
        {
            var starting = DateTime.UtcNow - memory.StartedAt < TimeSpan.FromSeconds(60);
            await ReportAsync(spec, starting ? NodeState.Starting : NodeState.Failed,
                starting ? "waiting for PostgreSQL to accept connections" : $"PostgreSQL does not answer: {ex.Message}", leaseId, ct, memory.Restarts).ConfigureAwait(false);
            await DropLeaderAsync(spec, ct).ConfigureAwait(false);
            return null;
        }
        var first = !memory.SeenRunning;
        memory.SeenRunning = true;
        await ReportAsync(spec, NodeState.Running, $"running as pid {node.Pid}", leaseId, ct, memory.Restarts, role: "primary").ConfigureAwait(false);
        await HoldLeaderAsync(spec, leaseId, ct).ConfigureAwait(false);
        if (first) logger.LogInformation("node {Node} of {Instance}: PostgreSQL answers on {Address}:{Port}", spec.NodeId, spec.InstanceId, _cell.Address, spec.Port);
        return first ? $"{spec.NodeId} serving" : null;
    }

    private async Task ProbeAsync(int port, InstanceRecord instance, CancellationToken ct)
    {
        var cs = DatabaseAdmin.ConnectionString(_cell.Address, port, instance.Superuser, "postgres");
        cs.Timeout = 3;
        await using var conn = new Npgsql.NpgsqlConnection(cs.ConnectionString);
        await conn.OpenAsync(ct).ConfigureAwait(false);
        await using var cmd = new Npgsql.NpgsqlCommand("SELECT 1", conn);
        await cmd.ExecuteScalarAsync(ct).ConfigureAwait(false);
    }

    private async Task RegisterAsync(long leaseId, CancellationToken ct)
    {
        var info = new CellInfo
        {
            Id = _cell.Id,
            Zone = _cell.Zone,
            Capacity = _cell.Capacity,
            Address = _cell.Address,
            Runtime = runtime.Kind,
            StartedAt = DateTimeOffset.UtcNow,
        };
        var marker = $"{leaseId}";
        if (_written == marker) return;
        await store.PutAsync(store.Keys.Cell(_cell.Id), info, ct, leaseId).ConfigureAwait(false);
        _written = marker;
        logger.LogInformation("cell {Cell} registered in zone {Zone} ({Runtime} runtime, capacity {Capacity})", _cell.Id, _cell.Zone, runtime.Kind, _cell.Capacity);
    }

    private Task ReportAsync(NodeSpec spec, string state, string detail, long leaseId, CancellationToken ct, int restarts = 0, string role = "unknown")
    {
        var status = new NodeStatus
        {
            NodeId = spec.NodeId,
            InstanceId = spec.InstanceId,
            CellId = _cell.Id,
            State = state,
            Detail = detail,
            Host = _cell.Address,
            Port = spec.Port,
            Role = role,
            Restarts = restarts,
        };
        return PutIfChangedAsync(store.Keys.Status(spec.NodeId), Json.Serialize(status), leaseId, ct);
    }

    /// <summary>Single-node plans: a healthy node is the primary and holds the leader key under the cell's lease.</summary>
    private async Task HoldLeaderAsync(NodeSpec spec, long leaseId, CancellationToken ct)
    {
        var key = store.Keys.Leader(spec.InstanceId);
        var value = Json.Serialize(new LeaderRecord { NodeId = spec.NodeId, Host = _cell.Address, Port = spec.Port });
        if (_writtenKeys.TryGetValue(key, out var old) && old == value) return;
        var current = await store.GetStringAsync(key, ct).ConfigureAwait(false);
        if (current is not null && Json.Deserialize<LeaderRecord>(current).NodeId != spec.NodeId) return; // someone else holds it
        await store.PutStringAsync(key, value, ct, leaseId).ConfigureAwait(false);
        _writtenKeys[key] = value;
        logger.LogInformation("node {Node}: holds the leader key of {Instance}", spec.NodeId, spec.InstanceId);
    }

    private async Task DropLeaderAsync(NodeSpec spec, CancellationToken ct)
    {
        var key = store.Keys.Leader(spec.InstanceId);
        var current = await store.GetStringAsync(key, ct).ConfigureAwait(false);
        if (current is not null && Json.Deserialize<LeaderRecord>(current).NodeId == spec.NodeId)
        {
            await store.DeleteAsync(key, ct).ConfigureAwait(false);
            logger.LogWarning("node {Node}: gave up the leader key of {Instance}: PostgreSQL is not serving", spec.NodeId, spec.InstanceId);
        }
        _writtenKeys.Remove(key);
    }

    private async Task PutIfChangedAsync(string key, string value, long leaseId, CancellationToken ct)
    {
        if (_writtenKeys.TryGetValue(key, out var old) && old == value) return;
        await store.PutStringAsync(key, value, ct, leaseId).ConfigureAwait(false);
        _writtenKeys[key] = value;
    }

    /// <summary>Statuses this cell wrote in an earlier life (before a restart) for nodes it no longer has.</summary>
    private async Task ClearStaleStatusesAsync(IReadOnlyDictionary<string, NodeSpec> desired, CancellationToken ct)
    {
        var statuses = await store.ListAsync<NodeStatus>(store.Keys.AllStatus, ct).ConfigureAwait(false);
        foreach (var s in statuses.Where(s => s.Value.CellId == _cell.Id && !desired.ContainsKey(s.Value.NodeId)))
        {
            await store.DeleteAsync(s.Key, ct).ConfigureAwait(false);
            _writtenKeys.Remove(s.Key);
        }
    }

    /// <summary>On a clean stop: stop every node (data kept) and give up the lease with everything under it.</summary>
    public async Task ShutdownAsync(CancellationToken ct)
    {
        foreach (var node in await runtime.ListAsync(ct).ConfigureAwait(false))
        {
            if (!node.Running) continue;
            logger.LogInformation("node {Node}: stopping PostgreSQL (cell shutting down; data kept)", node.NodeId);
            try { await runtime.StopAsync(node.NodeId, ct).ConfigureAwait(false); }
            catch (Exception ex) when (ex is not OperationCanceledException) { logger.LogWarning("node {Node}: stop failed: {Error}", node.NodeId, ex.Message); }
        }
        try { await lease.RevokeAsync(ct).ConfigureAwait(false); }
        catch (Exception ex) when (ex is not OperationCanceledException) { logger.LogWarning("revoking the cell lease failed: {Error}", ex.Message); }
    }
}
