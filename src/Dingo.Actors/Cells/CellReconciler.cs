using Dingo.Config;
using Dingo.Model;
using Dingo.Store;
using Microsoft.Extensions.Logging;

namespace Dingo.Cells;

/// <summary>What one cell pass found: the nodes etcd assigns to this cell.</summary>
public sealed record CellPass(IReadOnlyList<NodeSpec> Desired, string Summary);

/// <summary>
/// One reconcile pass of a cell: keeps its registration alive, reads the nodes etcd assigns to it, and stops and
/// removes nodes it holds that etcd no longer wants (at once when their instance is deleted, else after a grace). Each wanted node has its own
/// <see cref="Ha.NodeAgent"/> (run by a node actor) that starts, watches and steers it.
/// Knows nothing of how the runtime runs PostgreSQL.
/// </summary>
public sealed class CellReconciler(EtcdStore store, IContainerRuntime runtime, CellLease lease, DingoSettings settings, ILogger logger)
{
    private readonly CellSettings _cell = settings.Cell;
    private long _registeredUnder;
    private string? _registeredProblem;
    private DateTimeOffset _startedAt = DateTimeOffset.UtcNow;
    /// <summary>Nodes seen assigned to this cell: which instance an unwanted node belonged to.</summary>
    private readonly Dictionary<string, NodeSpec> _seen = new();
    /// <summary>Each unwanted node: when first seen unwanted (its grace runs from there) and what it held then.</summary>
    private readonly Dictionary<string, Unwanted> _unwanted = new();
    /// <summary>The problem registered in etcd, read once per pass (the disk check is a statvfs).</summary>
    private string? _problem;

    private sealed class Unwanted(DateTimeOffset since, long? lastLsn)
    {
        public DateTimeOffset Since { get; } = since;
        /// <summary>Its WAL position as it last reported it: the bar its data's safety is judged by.</summary>
        public long? LastLsn { get; } = lastLsn;
        /// <summary>Why its data is kept past the grace has been logged.</summary>
        public bool KeptLogged { get; set; }
    }

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
        foreach (var spec in desired) _seen[spec.NodeId] = spec;
        var did = new List<string>();
        IReadOnlyList<RuntimeNode> held;
        try
        {
            held = await runtime.ListAsync(ct).ConfigureAwait(false);
        }
        finally
        {
            var disk = DiskProblem();
            _problem = runtime.Problem is { } r ? (disk is null ? r : $"{r}; {disk}") : disk;
            if (_problem != _registeredProblem)
            {
                // Operators see it in `dingo status` (CELLS); the running nodes are left alone.
                if (_problem is { } problem) logger.LogError("cell {Cell}: {Problem}", _cell.Id, problem);
                else logger.LogInformation("cell {Cell}: the runtime works again", _cell.Id);
                await RegisterAsync(leaseId, ct).ConfigureAwait(false);
            }
        }
        foreach (var orphan in held.Where(n => !wanted.Contains(n.NodeId) && !busy.Contains(n.NodeId)))
        {
            if (await RemoveOrphanAsync(orphan, ct).ConfigureAwait(false) is { } done) did.Add(done);
        }
        // Forget what is gone, or wanted again.
        foreach (var id in _unwanted.Keys.Where(id => wanted.Contains(id) || held.All(n => n.NodeId != id)).ToList()) _unwanted.Remove(id);
        foreach (var id in _seen.Keys.Where(id => !wanted.Contains(id) && held.All(n => n.NodeId != id)).ToList()) _seen.Remove(id);
        await ClearStaleStatusesAsync(wanted, busy, ct).ConfigureAwait(false);
        return new CellPass(desired, did.Count == 0 ? $"no action: {desired.Count} node(s) assigned" : string.Join("; ", did));
    }

    /// <summary>
    /// A node etcd no longer wants. Its instance deleted: the data goes at once (that is what was asked). Otherwise
    /// (the node replaced, moved, or the cluster shrunk) it stops at once, so it can never serve beside its replacement,
    /// and its data is kept for dingo.cell.orphan-grace, in case it was the only copy of something.
    /// </summary>
    private async Task<string?> RemoveOrphanAsync(RuntimeNode orphan, CancellationToken ct)
    {
        var instanceId = orphan.InstanceId ?? _seen.GetValueOrDefault(orphan.NodeId)?.InstanceId;
        var deleted = instanceId is not null && await InstanceDeletedAsync(instanceId, ct).ConfigureAwait(false);
        if (!_unwanted.TryGetValue(orphan.NodeId, out var unwanted))
        {
            // What it held, as it last said (its status goes once it is stopped).
            var lastLsn = instanceId is null ? null
                : (await store.GetAsync<NodeStatus>(store.Keys.Status(instanceId, orphan.NodeId), ct).ConfigureAwait(false))?.Value.Lsn;
            unwanted = _unwanted[orphan.NodeId] = new Unwanted(DateTimeOffset.UtcNow, lastLsn);
        }
        var since = unwanted.Since;
        var graceOver = DateTimeOffset.UtcNow - since >= _cell.OrphanGrace;
        string? unsafeWhy = null;
        if (!deleted && graceOver && instanceId is not null)
        {
            unsafeWhy = await WhyNotSafeAsync(instanceId, orphan.NodeId, unwanted.LastLsn, ct).ConfigureAwait(false);
            if (unsafeWhy is not null && !unwanted.KeptLogged)
            {
                logger.LogWarning("node {Node}: no longer assigned to {Cell}, but its data is kept: {Why}", orphan.NodeId, _cell.Id, unsafeWhy);
                unwanted.KeptLogged = true;
            }
        }
        if (deleted || (graceOver && unsafeWhy is null))
        {
            logger.LogInformation("node {Node}: no longer assigned to {Cell} ({Why}); stopping it and removing its data", orphan.NodeId, _cell.Id,
                deleted ? $"instance {instanceId} is deleted" : $"unwanted since {since:HH:mm:ss}");
            await runtime.RemoveAsync(orphan.NodeId, ct).ConfigureAwait(false);
            _unwanted.Remove(orphan.NodeId);
            return $"removed {orphan.NodeId}";
        }
        if (!orphan.Running) return null;
        logger.LogInformation("node {Node}: no longer assigned to {Cell}; stopping it, data kept until {Until:HH:mm:ss}", orphan.NodeId, _cell.Id, since + _cell.OrphanGrace);
        await runtime.StopAsync(orphan.NodeId, ct).ConfigureAwait(false);
        return $"stopped {orphan.NodeId} (no longer assigned; data kept for {_cell.OrphanGrace.TotalSeconds:0}s)";
    }

    /// <summary>
    /// Null when the unwanted node's data is safe elsewhere: another node leads the instance and is running at least
    /// as far on as this node last was, or the backup archive holds a base backup and WAL at least that far. Else why not.
    /// </summary>
    private async Task<string?> WhyNotSafeAsync(string instanceId, string nodeId, long? lastLsn, CancellationToken ct)
    {
        var keys = store.Keys;
        var leader = (await store.GetAsync<LeaderRecord>(keys.Leader(instanceId), ct).ConfigureAwait(false))?.Value;
        if (leader is not null && leader.NodeId != nodeId)
        {
            var status = (await store.GetAsync<NodeStatus>(keys.Status(instanceId, leader.NodeId), ct).ConfigureAwait(false))?.Value;
            if (status is { State: NodeState.Running, Role: "primary" } && (lastLsn is null || status.Lsn >= lastLsn)) return null;
        }
        var backup = (await store.GetAsync<BackupState>(keys.Backup(instanceId), ct).ConfigureAwait(false))?.Value;
        if (backup is { LastBaseBackup: not null } && lastLsn is { } lsn && (long)Dingo.Backups.Lsn.Parse(backup.ArchivedLsn) >= lsn) return null;
        return leader is null || leader.NodeId == nodeId
            ? "no other node of its instance leads, and the backup archive does not hold its last WAL position yet"
            : $"the primary {leader.NodeId} is not running past this node's last WAL position, and neither is the backup archive";
    }

    private async Task<bool> InstanceDeletedAsync(string instanceId, CancellationToken ct)
    {
        var instance = await store.GetAsync<InstanceRecord>(store.Keys.Instance(instanceId), ct).ConfigureAwait(false);
        return instance is null || instance.Value.Desired == DesiredState.Absent;
    }

    /// <summary>A file system nearly full where the cell keeps its data (the other half of what keeps it from taking nodes).</summary>
    private string? DiskProblem()
    {
        if (_cell.MinFreeDisk <= 0) return null;
        try
        {
            // The data folder, or the nearest folder above it that exists yet: the same file system.
            var dir = Path.GetFullPath(settings.DataDir);
            while (!Directory.Exists(dir) && Path.GetDirectoryName(dir) is { } parent) dir = parent;
            var free = new DriveInfo(dir).AvailableFreeSpace;
            return free >= _cell.MinFreeDisk ? null
                : $"disk nearly full: less than {_cell.MinFreeDisk / (1024 * 1024)} MiB (dingo.cell.min-free-disk) free where the cell keeps its data ({dir}); no new node is placed here";
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or ArgumentException)
        {
            return $"cannot read the free space where the cell keeps its data: {ex.Message}";
        }
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
            StartedAt = _startedAt,
            Problem = _problem,
        };
        _registeredProblem = info.Problem;
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
