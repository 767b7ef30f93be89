using Dingo.Config;
using Dingo.Model;
using Dingo.Postgres;
using Dingo.Store;
using Microsoft.Extensions.Logging;

namespace Dingo.Cells;

/// <summary>
/// One reconcile pass of a cell: keeps its registration alive, reads the nodes etcd assigns to it, and stops and
/// removes nodes it holds that etcd no longer wants — removes only on a positive instruction from the etcd it placed
/// its data from (<see cref="OrphanData"/>). Each wanted node has its own <see cref="Ha.NodeAgent"/> (run by a node
/// actor) that starts, watches and steers it. Knows nothing of how the runtime runs PostgreSQL.
/// </summary>
public sealed class CellReconciler(EtcdStore store, IContainerRuntime runtime, CellLease lease, DingoSettings settings, ILogger logger) : ICellPasses
{
    private readonly CellSettings _cell = settings.Cell;
    private readonly string _identityFile = Path.Combine(Path.GetFullPath(settings.DataDir), "cells", settings.Cell.Id, EtcdIdentity.FileName);
    private long _registeredUnder;
    private (string? Problem, string? Kept) _registered;
    private DateTimeOffset _startedAt = DateTimeOffset.UtcNow;
    /// <summary>Each unwanted node: when first seen unwanted (its grace runs from there) and what it held then.</summary>
    private readonly Dictionary<string, Unwanted> _unwanted = new();
    private readonly PlatformHosts _platformHosts = new(settings.Cell.Address, settings.Cell.AdminNetworks, settings.Ha.LostCellGrace, logger);
    private NodeTls? _tls;
    private DateTimeOffset _tlsReadAt;
    private string? _tlsProblem;
    /// <summary>The problem registered in etcd, read once per pass (the disk check is a statvfs).</summary>
    private string? _problem;
    /// <summary>Data kept that etcd neither wants nor lets go, as registered.</summary>
    private string? _kept;

    private sealed class Unwanted(DateTimeOffset since, long? lastLsn, int? lastTimeline)
    {
        public DateTimeOffset Since { get; } = since;
        /// <summary>Its WAL position as it last reported it: the bar its data's safety is judged by.</summary>
        public long? LastLsn { get; } = lastLsn;
        /// <summary>The timeline of <see cref="LastLsn"/> (null: unknown): a position on one timeline says nothing of another.</summary>
        public int? LastTimeline { get; } = lastTimeline;
        /// <summary>The last verdict logged for it (each new one is logged once).</summary>
        public string? Logged { get; set; }
    }

    public IContainerRuntime Runtime => runtime;
    public CellLease Lease => lease;

    /// <param name="busy">nodes whose agent is still running: not removed this pass</param>
    public async Task<CellPass> RunPassAsync(IReadOnlySet<string> busy, CancellationToken ct)
    {
        var leaseId = await lease.EnsureAsync(ct).ConfigureAwait(false);
        if (leaseId != _registeredUnder) await RegisterAsync(leaseId, ct).ConfigureAwait(false);

        // What the pass decides with, in one read at one revision (one etcd call per pass, not four): which etcd answers
        // (its cluster id and the platform id, checked before anything it says is acted on), the nodes assigned here,
        // and the platform's cells and Akka members (who may log in to the nodes).
        var read = await store.ReadManyRawAsync([store.Keys.Assignments(_cell.Id), store.Keys.Cells, store.Keys.AkkaMembers],
            [store.Keys.PlatformId], ct).ConfigureAwait(false);
        var platformId = read.Keys[0]?.Value;
        var seenCluster = EtcdIdentity.Hex(read.ClusterId);
        string? mismatch;
        EtcdIdentity? recorded;
        try
        {
            recorded = EtcdIdentity.Load(_identityFile);
            mismatch = recorded is null ? null : EtcdIdentity.Mismatch(recorded, seenCluster, store.Keys.Root, EtcdIdentity.PlatformIdOf(platformId), _identityFile);
        }
        catch (InvalidDataException ex)
        {
            recorded = null;
            mismatch = ex.Message;
        }
        var unreadableIdentity = recorded is null && mismatch is not null;

        var desired = read.Prefixes[0].Select(v => EtcdStore.Decode<NodeSpec>(v).Value).OrderBy(n => n.CreatedAt).ToList();
        var did = new List<string>();
        IReadOnlyList<RuntimeNode> held;
        try
        {
            held = await runtime.ListAsync(ct).ConfigureAwait(false);
        }
        finally
        {
            var disk = DiskProblem();
            _problem = string.Join("; ", new[] { runtime.Problem, disk, mismatch }.Where(p => p is not null)) is { Length: > 0 } all ? all : null;
            if (_problem != _registered.Problem)
            {
                // Operators see it in `dingo status` (CELLS); the running nodes are left alone.
                if (_problem is { } problem) logger.LogError("cell {Cell}: {Problem}", _cell.Id, problem);
                else logger.LogInformation("cell {Cell}: the runtime works again", _cell.Id);
                await RegisterAsync(leaseId, ct).ConfigureAwait(false);
            }
        }

        if (recorded is null && !unreadableIdentity && (desired.Count > 0 || held.Count > 0))
        {
            // The first data placed here (or data from before this record existed): remember this etcd before any node
            // is created, so a later pass can tell it from an empty or other one.
            await RecordIdentityAsync(seenCluster, ct).ConfigureAwait(false);
        }
        if (mismatch is not null)
        {
            // Another etcd's assignments are not ours to act on: no new node, nothing deleted, no status cleared.
            var mine = held.Select(n => n.NodeId).ToHashSet();
            desired = desired.Where(d => mine.Contains(d.NodeId)).ToList();
        }
        else
        {
            // Who may log in as the platform's roles follows the cells and brokers etcd lists (another etcd's list is
            // not ours to act on: the nodes keep what they have).
            var access = (await _platformHosts.FromAsync(read.Prefixes[1].Select(v => EtcdStore.Decode<CellInfo>(v).Value),
                read.Prefixes[2].Select(v => EtcdStore.Decode<AkkaMemberRecord>(v).Value), ct).ConfigureAwait(false)) with
            {
                RequireTls = settings.Postgres.RequireTls,
                Tls = await NodeTlsAsync(ct).ConfigureAwait(false),
            };
            try
            {
                await runtime.ApplyPlatformAccessAsync(access, ct).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is not OperationCanceledException)
            {
                // The rest of the pass (orphans, statuses) must not wait on one node's reload: tried again next pass.
                logger.LogWarning("cell {Cell}: updating the nodes' pg_hba.conf failed: {Error}", _cell.Id, ex.Message);
            }
            // Nodes made before the runtime recorded their instance learn it now, while etcd still assigns them.
            foreach (var node in held.Where(n => n.InstanceId is null))
                if (desired.FirstOrDefault(d => d.NodeId == node.NodeId) is { } spec)
                    await runtime.RecordInstanceAsync(node.NodeId, spec.InstanceId, ct).ConfigureAwait(false);
        }
        var wanted = desired.Select(n => n.NodeId).ToHashSet();

        var kept = new List<string>();
        foreach (var orphan in held.Where(n => !wanted.Contains(n.NodeId) && !busy.Contains(n.NodeId)))
        {
            var (done, unexplained) = await HandleOrphanAsync(orphan, mismatch, ct).ConfigureAwait(false);
            if (done is not null) did.Add(done);
            if (unexplained is not null) kept.Add(unexplained);
        }
        _kept = kept.Count == 0 ? null : $"keeps the data of {kept.Count} node(s) etcd neither wants nor lets go: {string.Join("; ", kept)}";
        if (_kept != _registered.Kept)
        {
            if (_kept is not null) logger.LogWarning("cell {Cell}: {Kept}", _cell.Id, _kept);
            await RegisterAsync(leaseId, ct).ConfigureAwait(false);
        }
        // Forget what is gone, or wanted again.
        foreach (var id in _unwanted.Keys.Where(id => wanted.Contains(id) || held.All(n => n.NodeId != id)).ToList()) _unwanted.Remove(id);
        if (mismatch is null) await ClearStaleStatusesAsync(wanted, busy, ct).ConfigureAwait(false);
        return new CellPass(desired, did.Count == 0 ? $"no action: {desired.Count} node(s) assigned" : string.Join("; ", did));
    }

    /// <summary>
    /// The certificates this cell's nodes serve. The platform CA is read from etcd (made there at the first need) once
    /// a minute; when it cannot be read the nodes keep what they have and the reason is logged once.
    /// </summary>
    private async Task<NodeTls?> NodeTlsAsync(CancellationToken ct)
    {
        if (_tls is not null && DateTimeOffset.UtcNow - _tlsReadAt < TimeSpan.FromMinutes(1)) return _tls;
        try
        {
            var ca = await Dingo.Postgres.PlatformCaStore.GetOrCreateAsync(store, settings.Postgres, ct).ConfigureAwait(false);
            // The cell's own connections (HA probes, archiving) present a client certificate of the same CA.
            Dingo.Postgres.PlatformConnectionTls.Trust(ca);
            var tls = new NodeTls(ca, NodeTls.HostsFor(settings), settings.Postgres.CertificateValidity);
            if (!tls.SameAs(_tls))
            {
                logger.LogInformation("cell {Cell}: nodes serve TLS certificates of {Tls}", _cell.Id, tls);
                _tls = tls;
            }
            else ca.Dispose();
            _tlsReadAt = DateTimeOffset.UtcNow;
            _tlsProblem = null;
        }
        catch (Exception ex) when (ex is Dingo.Postgres.PlatformCaException or Dingo.Security.SealException)
        {
            if (_tlsProblem != ex.Message) logger.LogError("cell {Cell}: the platform CA cannot be used: {Error}", _cell.Id, ex.Message);
            _tlsProblem = ex.Message;
        }
        return _tls;
    }

    private async Task RecordIdentityAsync(string clusterId, CancellationToken ct)
    {
        if (!OperatingSystem.IsLinux()) throw new PlatformNotSupportedException("a cell runs on Linux");
        // The platform id is created once, by whichever cell first places data; every later cell records the same one.
        var fresh = "p-" + Convert.ToHexString(System.Security.Cryptography.RandomNumberGenerator.GetBytes(8)).ToLowerInvariant();
        await store.CreateIfAbsentAsync(store.Keys.PlatformId, fresh, ct).ConfigureAwait(false);
        var (platformId, answeredBy) = await store.GetStringWithClusterAsync(store.Keys.PlatformId, ct).ConfigureAwait(false);
        if (platformId is null || EtcdIdentity.Hex(answeredBy) != clusterId)
            throw new InvalidOperationException("etcd changed while the cell recorded which etcd it places its data from; trying again next pass");
        var identity = new EtcdIdentity { ClusterId = clusterId, Prefix = store.Keys.Root, PlatformId = EtcdIdentity.PlatformIdOf(platformId)!, RecordedAt = DateTimeOffset.UtcNow };
        await identity.SaveAsync(_identityFile, ct).ConfigureAwait(false);
        logger.LogInformation("cell {Cell}: places its data from etcd cluster {ClusterId}, prefix {Prefix}, platform {Platform} (recorded in {File})",
            _cell.Id, identity.ClusterId, identity.Prefix, identity.PlatformId, _identityFile);
    }

    /// <summary>
    /// A node etcd no longer assigns here. It stops at once (it has no HA loop any more, so it must never serve beside a
    /// replacement); its data goes only when <see cref="OrphanData.Decide"/> says so. Returns what was done, and the
    /// node's line for CellInfo.Kept when etcd neither wants it nor lets it go.
    /// </summary>
    private async Task<(string? Done, string? Unexplained)> HandleOrphanAsync(RuntimeNode orphan, string? mismatch, CancellationToken ct)
    {
        var keys = store.Keys;
        var instanceId = orphan.InstanceId;
        var state = InstanceRecordState.Missing;
        InstanceTombstone? instanceTombstone = null;
        NodeTombstone? nodeTombstone = null;
        if (mismatch is null && instanceId is not null)
        {
            var instance = await store.GetAsync<InstanceRecord>(keys.Instance(instanceId), ct).ConfigureAwait(false);
            state = instance is null ? InstanceRecordState.Missing
                : instance.Value.Desired == DesiredState.Absent ? InstanceRecordState.MarkedAbsent : InstanceRecordState.Present;
            instanceTombstone = (await store.GetAsync<InstanceTombstone>(keys.DeletedInstance(instanceId), ct).ConfigureAwait(false))?.Value;
            nodeTombstone = (await store.GetAsync<NodeTombstone>(keys.RemovedNode(orphan.NodeId), ct).ConfigureAwait(false))?.Value;
        }
        if (!_unwanted.TryGetValue(orphan.NodeId, out var unwanted))
        {
            // What it held, as it last said (its status goes once it is stopped, or with a lease that expired while the
            // cell was away; then as its tombstone recorded it). Seen through another etcd, nothing is remembered:
            // neither the grace nor the bar its safety is judged by starts from what that etcd says.
            var report = instanceId is null || mismatch is not null ? null
                : (await store.GetAsync<NodeStatus>(keys.Status(instanceId, orphan.NodeId), ct).ConfigureAwait(false))?.Value;
            var (lastLsn, lastTimeline) = report is not null ? (report.Lsn, report.Timeline > 0 ? report.Timeline : (int?)null)
                : mismatch is null ? (nodeTombstone?.LastLsn, nodeTombstone?.LastTimeline) : (null, null);
            unwanted = new Unwanted(DateTimeOffset.UtcNow, lastLsn, lastTimeline);
            if (mismatch is null) _unwanted[orphan.NodeId] = unwanted;
        }
        var facts = new OrphanFacts(orphan.NodeId, _cell.Id, mismatch, instanceId, state, instanceTombstone, nodeTombstone,
            unwanted.Since, _cell.OrphanGrace, DateTimeOffset.UtcNow, Safety: null);
        var verdict = OrphanData.Decide(facts);
        if (verdict.Action == OrphanAction.CheckSafety)
            verdict = OrphanData.Decide(facts with { Safety = await SafetyAsync(instanceId!, orphan.NodeId, unwanted.LastLsn, unwanted.LastTimeline, ct).ConfigureAwait(false) });

        if (verdict.Action == OrphanAction.Remove)
        {
            logger.LogInformation("node {Node}: no longer assigned to {Cell}: {Why}; stopping it and removing its data", orphan.NodeId, _cell.Id, verdict.Sentence);
            await runtime.RemoveAsync(orphan.NodeId, ct).ConfigureAwait(false);
            _unwanted.Remove(orphan.NodeId);
            return ($"removed {orphan.NodeId}", null);
        }
        // Seen through another etcd, the cell's problem (logged once) says it all.
        if (mismatch is null && verdict.Sentence != unwanted.Logged)
        {
            if (verdict.Unexplained) logger.LogWarning("node {Node}: no longer assigned to {Cell}: {Why}", orphan.NodeId, _cell.Id, verdict.Sentence);
            else logger.LogInformation("node {Node}: no longer assigned to {Cell}: {Why}", orphan.NodeId, _cell.Id, verdict.Sentence);
            unwanted.Logged = verdict.Sentence;
        }
        var line = verdict.Unexplained ? $"{orphan.NodeId} ({(verdict.Sentence.StartsWith("kept: ", StringComparison.Ordinal) ? verdict.Sentence["kept: ".Length..] : verdict.Sentence)})" : null;
        if (!orphan.Running) return (null, line);
        await runtime.StopAsync(orphan.NodeId, ct).ConfigureAwait(false);
        return ($"stopped {orphan.NodeId} (no longer assigned; {verdict.Sentence})", line);
    }

    /// <summary>
    /// Whether the unwanted node's data is safe elsewhere: another node leads the instance and is running at least as
    /// far on as this node last was, or the backup archive holds a base backup and WAL at least that far. A position
    /// counts only against the node's own timeline or a later one of the primary: a node that led a newer timeline than
    /// the primary's, or WAL archived on another timeline than the node's, may hold writes that exist nowhere else.
    /// </summary>
    private async Task<Safety> SafetyAsync(string instanceId, string nodeId, long? lastLsn, int? lastTimeline, CancellationToken ct)
    {
        var keys = store.Keys;
        var leader = (await store.GetAsync<LeaderRecord>(keys.Leader(instanceId), ct).ConfigureAwait(false))?.Value;
        if (leader is not null && leader.NodeId != nodeId)
        {
            var status = (await store.GetAsync<NodeStatus>(keys.Status(instanceId, leader.NodeId), ct).ConfigureAwait(false))?.Value;
            if (status is { State: NodeState.Running, Role: NodeRole.Primary } && (lastLsn is null || status.Lsn >= lastLsn)
                && (lastTimeline is null || status.Timeline >= lastTimeline))
                return new Safety(true, $"the primary {leader.NodeId} runs at least as far on as this node last was");
        }
        var backup = (await store.GetAsync<BackupState>(keys.Backup(instanceId), ct).ConfigureAwait(false))?.Value;
        if (backup is { LastBaseBackup: not null } && lastLsn is { } lsn && (long)Dingo.Backups.Lsn.Parse(backup.ArchivedLsn) >= lsn
            && (lastTimeline is null || backup.Timeline == (uint)lastTimeline))
            return new Safety(true, "the backup archive holds a base backup and WAL past this node's last position");
        return new Safety(false, leader is null || leader.NodeId == nodeId
            ? "no other node of its instance leads, and the backup archive does not hold its last WAL position yet"
            : $"the primary {leader.NodeId} is not running past this node's last WAL position, and neither is the backup archive");
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
            Kept = _kept,
        };
        _registered = (info.Problem, info.Kept);
        await store.PutAsync(store.Keys.Cell(_cell.Id), info, ct, leaseId).ConfigureAwait(false);
        // A cell that is back is no longer lost.
        await store.DeleteAsync(store.Keys.LostCell(_cell.Id), ct).ConfigureAwait(false);
        _registeredUnder = leaseId;
        logger.LogInformation("cell {Cell} registered in zone {Zone} ({Runtime} runtime, capacity {Capacity})", _cell.Id, _cell.Zone, runtime.Kind, _cell.Capacity);
    }

    /// <summary>
    /// Statuses this cell wrote for nodes it no longer has (removed, or from before a restart). Every status of the
    /// platform is listed to find them, so only when there can be new ones: at the first pass, when the nodes wanted
    /// or busy here change, and every <see cref="StaleStatusCheck"/> besides (a status left by a delete that failed).
    /// </summary>
    private async Task ClearStaleStatusesAsync(IReadOnlySet<string> wanted, IReadOnlySet<string> busy, CancellationToken ct)
    {
        var kept = string.Join(",", wanted.Order(StringComparer.Ordinal)) + "|" + string.Join(",", busy.Order(StringComparer.Ordinal));
        if (kept == _statusesCheckedFor && DateTimeOffset.UtcNow - _statusesCheckedAt < StaleStatusCheck) return;
        var statuses = await store.ListAsync<NodeStatus>(store.Keys.AllStatus, ct).ConfigureAwait(false);
        foreach (var s in statuses.Where(s => s.Value.CellId == _cell.Id && !wanted.Contains(s.Value.NodeId) && !busy.Contains(s.Value.NodeId)))
        {
            await store.DeleteAsync(s.Key, ct).ConfigureAwait(false);
        }
        (_statusesCheckedFor, _statusesCheckedAt) = (kept, DateTimeOffset.UtcNow);
    }

    private static readonly TimeSpan StaleStatusCheck = TimeSpan.FromSeconds(30);
    private string? _statusesCheckedFor;
    private DateTimeOffset _statusesCheckedAt;

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
