using Dingo.Config;
using Dingo.Model;
using Dingo.Store;
using Microsoft.Extensions.Logging;

namespace Dingo.Cells;

/// <summary>What one cell pass found: the nodes etcd assigns to this cell.</summary>
public sealed record CellPass(IReadOnlyList<NodeSpec> Desired, string Summary);

/// <summary>
/// One reconcile pass of a cell: keeps its registration alive, reads the nodes etcd assigns to it, and removes
/// nodes it holds that etcd no longer wants (their data goes with them). Each wanted node has its own
/// <see cref="Ha.NodeAgent"/> (run by a node actor) that starts, watches and steers it.
/// Knows nothing of how the runtime runs PostgreSQL.
/// </summary>
public sealed class CellReconciler(EtcdStore store, IContainerRuntime runtime, CellLease lease, DingoSettings settings, ILogger logger)
{
    private readonly CellSettings _cell = settings.Cell;
    private long _registeredUnder;

    public IContainerRuntime Runtime => runtime;
    public CellLease Lease => lease;

    /// <param name="busy">nodes whose agent is still running: not removed this pass</param>
    public async Task<CellPass> RunPassAsync(IReadOnlySet<string> busy, CancellationToken ct)
    {
        var leaseId = await lease.EnsureAsync(ct).ConfigureAwait(false);
        if (leaseId != _registeredUnder) await RegisterAsync(leaseId, ct).ConfigureAwait(false);

        var desired = (await store.ListAsync<NodeSpec>(store.Keys.Assignments(_cell.Id), ct).ConfigureAwait(false))
            .Select(v => v.Value).OrderBy(n => n.CreatedAt).ToList();
        var wanted = desired.Select(n => n.NodeId).ToHashSet();
        var did = new List<string>();
        foreach (var orphan in (await runtime.ListAsync(ct).ConfigureAwait(false)).Where(n => !wanted.Contains(n.NodeId) && !busy.Contains(n.NodeId)))
        {
            // etcd no longer wants it (instance deleted, or the node replaced): stop it and delete its data.
            logger.LogInformation("node {Node}: no longer assigned to {Cell}; stopping and removing its data", orphan.NodeId, _cell.Id);
            await runtime.RemoveAsync(orphan.NodeId, ct).ConfigureAwait(false);
            did.Add($"removed {orphan.NodeId}");
        }
        await ClearStaleStatusesAsync(wanted, busy, ct).ConfigureAwait(false);
        return new CellPass(desired, did.Count == 0 ? $"no action: {desired.Count} node(s) assigned" : string.Join("; ", did));
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
        await store.PutAsync(store.Keys.Cell(_cell.Id), info, ct, leaseId).ConfigureAwait(false);
        // A cell that is back is no longer lost.
        await store.DeleteAsync(store.Keys.LostCell(_cell.Id), ct).ConfigureAwait(false);
        _registeredUnder = leaseId;
        logger.LogInformation("cell {Cell} registered in zone {Zone} ({Runtime} runtime, capacity {Capacity})", _cell.Id, _cell.Zone, runtime.Kind, _cell.Capacity);
    }

    /// <summary>Statuses this cell wrote for nodes it no longer has (removed, or from before a restart).</summary>
    private async Task ClearStaleStatusesAsync(IReadOnlySet<string> wanted, IReadOnlySet<string> busy, CancellationToken ct)
    {
        var statuses = await store.ListAsync<NodeStatus>(store.Keys.AllStatus, ct).ConfigureAwait(false);
        foreach (var s in statuses.Where(s => s.Value.CellId == _cell.Id && !wanted.Contains(s.Value.NodeId) && !busy.Contains(s.Value.NodeId)))
        {
            await store.DeleteAsync(s.Key, ct).ConfigureAwait(false);
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
