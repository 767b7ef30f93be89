using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Dingo.Backups;
using Dingo.Broker.Osb;
using Dingo.Config;
using Dingo.Model;
using Dingo.Security;
using Dingo.Store;

namespace Dingo.Broker;

/// <summary>One instance as the cluster-data backup holds it: what platform recovery needs to rebuild it.</summary>
public sealed record ClusterDataRecord
{
    public required InstanceRecord Instance { get; init; }
    public IReadOnlyList<BindingRecord> Bindings { get; init; } = [];
    /// <summary>When its deletion was seen; its backups go once the retention period has passed.</summary>
    public DateTimeOffset? DeletedAt { get; init; }
}

/// <summary>
/// Recovery from the object store: recreate a deleted instance (same id, port, credentials), resolve `clone-from`,
/// and rebuild every instance onto an empty etcd. All of it starts from the cluster-data backup and the archives.
/// </summary>
public sealed class Recovery(EtcdStore store, IObjectStore objects, DingoSettings settings, ILogger<Recovery> logger)
{
    private Keys Keys => store.Keys;

    public async Task<ClusterDataRecord?> ReadRecordAsync(string instanceId, CancellationToken ct) =>
        await ReadRawAsync(instanceId, ct).ConfigureAwait(false) is { } raw ? Json.Deserialize<ClusterDataRecord>(raw) : null;

    /// <summary>The stored record as it is (its passwords sealed); null when there is none.</summary>
    public async Task<string?> ReadRawAsync(string instanceId, CancellationToken ct)
    {
        using var ms = new MemoryStream();
        try { await objects.GetAsync(ArchiveLayout.InstanceRecord(instanceId), ms, ct).ConfigureAwait(false); }
        catch (ObjectNotFoundException) { return null; }
        return System.Text.Encoding.UTF8.GetString(ms.ToArray());
    }

    /// <summary>The ids the cluster-data backup holds a record for (one listing, no record read).</summary>
    public async Task<IReadOnlyList<string>> RecordIdsAsync(CancellationToken ct) =>
        (await objects.ListAsync(ArchiveLayout.ClusterData, ct).ConfigureAwait(false))
            .Where(o => o.Key.EndsWith(".json", StringComparison.Ordinal))
            .Select(o => o.Key[ArchiveLayout.ClusterData.Length..^".json".Length]).ToList();

    public async Task<IReadOnlyList<ClusterDataRecord>> ReadAllAsync(CancellationToken ct)
    {
        var list = new List<ClusterDataRecord>();
        foreach (var id in await RecordIdsAsync(ct).ConfigureAwait(false))
            if (await ReadRecordAsync(id, ct).ConfigureAwait(false) is { } r) list.Add(r);
        return list;
    }

    /// <summary>
    /// Resolves `clone-from` (an instance id, or an instance name; present or deleted) among the instances the requester
    /// may copy: those of its own space, or of its organization when dingo.broker.clone-scope says so. An instance
    /// outside that scope gets the very answer of one that never existed, so a guessed or leaked id tells nothing.
    /// Checks a backup exists for the point in time. Returns the source id, or an error for the caller.
    /// </summary>
    public async Task<(string? SourceId, OsbResult? Error)> ResolveCloneAsync(string cloneFrom, string organizationGuid, string spaceGuid, DateTimeOffset? pointInTime, CancellationToken ct)
    {
        if (!settings.Backups!.Enabled) return (null, OsbResult.BadRequest("parameter `clone-from` needs backups, and they are disabled on this platform (dingo.backups.enabled)"));
        var live = (await store.ListAsync<InstanceRecord>(Keys.Instances, ct).ConfigureAwait(false)).Select(v => v.Value).ToList();
        var archived = await ReadAllAsync(ct).ConfigureAwait(false);
        var byOrganization = settings.Broker.CloneScope == CloneScopes.Organization;
        var candidates = live.Concat(archived.Select(a => a.Instance))
            .DistinctBy(r => r.Id)
            .Where(r => r.SpaceGuid == spaceGuid && r.OrganizationGuid == organizationGuid || byOrganization && r.OrganizationGuid == organizationGuid)
            .Select(r => (r.Id, Name: InstanceNames.Of(r))).ToList();
        var byId = candidates.Where(c => c.Id == cloneFrom).ToList();
        var matches = byId.Count > 0 ? byId : candidates.Where(c => c.Name == cloneFrom).ToList();
        var scope = byOrganization ? "this organization" : "this space";
        if (matches.Count == 0)
            return (null, OsbResult.BadRequest($"parameter `clone-from`: no instance with id or name '{cloneFrom}' in {scope} (deleted instances count while their backups are kept)"));
        if (matches.Count > 1)
            return (null, OsbResult.BadRequest($"parameter `clone-from`: {matches.Count} instances are named '{cloneFrom}' in {scope}; give the instance id instead"));
        var source = matches[0].Id;
        try
        {
            await new ArchiveRestore(objects, logger).ChooseAsync(source, pointInTime, ct).ConfigureAwait(false);
        }
        catch (RestoreException ex)
        {
            return (null, OsbResult.Error(422, "NoBackup", $"cannot clone {cloneFrom}: {ex.Message}"));
        }
        return (source, null);
    }


    /// <summary>Brings a deleted instance back from its backups: same id, port, read-only port and credentials.</summary>
    public async Task<OsbResult> RecreateAsync(string instanceId, CancellationToken ct)
    {
        if (await store.GetAsync<InstanceRecord>(Keys.Instance(instanceId), ct).ConfigureAwait(false) is not null)
            return OsbResult.Conflict($"service instance {instanceId} exists: only a deleted instance can be recreated");
        var saved = await ReadRecordAsync(instanceId, ct).ConfigureAwait(false);
        if (saved is null) return OsbResult.NotFound($"the backups in {objects.Describe()} hold no record of instance {instanceId} (never backed up, or its retention ended)");
        var (ok, detail) = await RestoreInstanceAsync(saved, "recreating from its backups", ct).ConfigureAwait(false);
        return ok ? new OsbResult(202, new JsonObject { ["description"] = detail, ["port"] = saved.Instance.Port }) : OsbResult.Error(409, "CannotRecreate", detail);
    }

    /// <summary>Every instance the cluster-data backup holds that etcd lacks (not deleted ones), rebuilt from its backups.</summary>
    public async Task<OsbResult> RebuildAsync(CancellationToken ct)
    {
        var all = await ReadAllAsync(ct).ConfigureAwait(false);
        var results = new JsonArray();
        int started = 0, failed = 0;
        foreach (var saved in all.Where(a => a.DeletedAt is null).OrderBy(a => a.Instance.Port))
        {
            if (await store.GetAsync<InstanceRecord>(Keys.Instance(saved.Instance.Id), ct).ConfigureAwait(false) is not null)
            {
                results.Add(new JsonObject { ["instance"] = saved.Instance.Id, ["result"] = "present: left alone" });
                continue;
            }
            var (ok, detail) = await RestoreInstanceAsync(saved, "rebuilding from the backups", ct).ConfigureAwait(false);
            if (ok) started++; else failed++;
            results.Add(new JsonObject { ["instance"] = saved.Instance.Id, ["port"] = saved.Instance.Port, ["result"] = detail });
        }
        logger.LogWarning("platform rebuild: {Started} instance(s) restoring, {Failed} refused, {Total} in the cluster-data backup", started, failed, all.Count);
        return new OsbResult(failed == 0 ? 202 : 207, new JsonObject
        {
            ["description"] = $"{started} instance(s) are being rebuilt from the backups, {failed} could not be",
            ["instances"] = results,
        });
    }

    private async Task<(bool Ok, string Detail)> RestoreInstanceAsync(ClusterDataRecord saved, string what, CancellationToken ct)
    {
        var r = saved.Instance;
        try
        {
            await new ArchiveRestore(objects, logger).ChooseAsync(r.Id, null, ct).ConfigureAwait(false);
        }
        catch (RestoreException ex)
        {
            return (false, ex.Message);
        }
        // The ports come back only if nobody else holds them (a retired port is never given to anyone else).
        var txn = new Txn().Absent(Keys.Instance(r.Id));
        foreach (var (port, role) in new[] { (r.Port, PortRole.Primary), (r.ReadOnlyPort, PortRole.ReadOnly) })
        {
            if (port <= 0) continue;
            var held = await store.GetAsync<PortRecord>(Keys.Port(port), ct).ConfigureAwait(false);
            if (held is not null && held.Value.InstanceId != r.Id) return (false, $"port {port} belongs to instance {held.Value.InstanceId}");
            if (held is null) txn.Absent(Keys.Port(port)); else txn.At(Keys.Port(port), held.ModRevision);
            txn.Put(Keys.Port(port), new PortRecord { InstanceId = r.Id, State = PortState.Active, Role = role });
        }
        var counter = await store.GetAsync<int>(Keys.PortCounter, ct).ConfigureAwait(false);
        var next = Math.Max(r.Port, r.ReadOnlyPort) + 1;
        if (counter is null) txn.Absent(Keys.PortCounter).Put(Keys.PortCounter, next);
        else if (counter.Value < next) txn.At(Keys.PortCounter, counter.ModRevision).Put(Keys.PortCounter, next);
        var now = DateTimeOffset.UtcNow;
        var record = r with { Desired = DesiredState.Present, Restore = new RestoreSource(r.Id, null) };
        txn.Put(Keys.Instance(r.Id), record).Put(Keys.Operation(r.Id), new OperationRecord
        {
            Id = $"provision-{now.ToUnixTimeMilliseconds()}",
            Kind = OperationKind.Provision,
            State = OperationState.InProgress,
            Description = $"accepted: {what}",
            StartedAt = now,
            UpdatedAt = now,
        });
        foreach (var b in saved.Bindings) txn.Put(Keys.Binding(r.Id, b.Id), b);
        // Back, so no longer deleted: a cell must not take the tombstone for leave to delete the new nodes' data.
        txn.Delete(Keys.DeletedInstance(r.Id));
        if (!await store.TransactAsync(txn, ct).ConfigureAwait(false)) return (false, "etcd changed meanwhile (the instance or its ports were taken); try again");
        logger.LogWarning("instance {Instance}: {What} on port {Port}", r.Id, what, r.Port);
        return (true, $"{what}: instance {r.Id} on port {r.Port}");
    }

    public static DateTimeOffset? ParsePointInTime(string text) =>
        DateTimeOffset.TryParse(text, CultureInfo.InvariantCulture, DateTimeStyles.AllowWhiteSpaces, out var t) && text.Contains('T', StringComparison.Ordinal)
        && (text.EndsWith('Z') || text.EndsWith("z", StringComparison.Ordinal) || text.LastIndexOfAny(['+', '-']) > text.IndexOf('T', StringComparison.Ordinal))
            ? t : null;
}

/// <summary>
/// Keeps the cluster-data backup: every instance's record and bindings, written to the object store on each change
/// (etcd watch) and checked every half minute; marks deleted instances and, after the retention period, deletes their
/// backups. Deletion is recognised only by the instance's retired port in etcd, so an empty etcd (a lost platform)
/// never makes it forget anything.
/// </summary>
public sealed class ClusterDataBackup(EtcdStore store, IObjectStore objects, Recovery recovery, DingoSettings settings, ILogger<ClusterDataBackup> logger) : BackgroundService
{
    private readonly Dictionary<string, string> _written = new(StringComparer.Ordinal);
    private readonly SemaphoreSlim _wake = new(0);

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        if (settings.Backups is not { Enabled: true }) return;
        var keys = store.Keys;
        var watches = Task.WhenAll(
            store.WatchPrefixAsync(keys.Instances, _ => { _wake.Release(); return Task.CompletedTask; }, stoppingToken),
            store.WatchPrefixAsync(keys.AllBindings, _ => { _wake.Release(); return Task.CompletedTask; }, stoppingToken));
        while (!stoppingToken.IsCancellationRequested)
        {
            try
            {
                await SyncAsync(stoppingToken);
            }
            catch (Exception ex) when (ex is not OperationCanceledException)
            {
                logger.LogWarning("cluster-data backup failed: {Error}", ex.Message);
            }
            try { await _wake.WaitAsync(TimeSpan.FromSeconds(30), stoppingToken); }
            catch (OperationCanceledException) { break; }
            while (_wake.CurrentCount > 0) await _wake.WaitAsync(stoppingToken);
        }
        try { await watches; } catch (OperationCanceledException) { }
    }

    public async Task SyncAsync(CancellationToken ct)
    {
        var keys = store.Keys;
        var instances = (await store.ListAsync<InstanceRecord>(keys.Instances, ct)).Select(v => v.Value).ToList();
        // Every binding in one read, not one listing per instance.
        var allBindings = (await store.ListAsync<BindingRecord>(keys.AllBindings, ct)).Select(b => b.Value).ToLookup(b => b.InstanceId);
        foreach (var instance in instances)
        {
            var bindings = allBindings[instance.Id].OrderBy(b => b.Id, StringComparer.Ordinal).ToList();
            var doc = new ClusterDataRecord { Instance = instance, Bindings = bindings };
            // Compared by a digest of the plain record: sealing draws a new nonce each time, so sealed JSON never repeats.
            var print = SealedJson.Fingerprint(doc);
            if (!_written.TryGetValue(instance.Id, out var last))
            {
                var stored = await recovery.ReadRawAsync(instance.Id, ct);
                // A stored record with a plain password (written before sealing) or one sealed with an older key is rewritten.
                last = stored is null || Resealing.NeedsReseal(stored, Sealing.Ring) ? "" : SealedJson.Fingerprint(Json.Deserialize<ClusterDataRecord>(stored));
            }
            if (last == print) { _written[instance.Id] = print; continue; }
            using (var ms = new MemoryStream(JsonSerializer.SerializeToUtf8Bytes(doc, Json.Options))) await objects.PutAsync(ArchiveLayout.InstanceRecord(instance.Id), ms, ct);
            _written[instance.Id] = print;
        }

        var live = instances.Select(i => i.Id).ToHashSet(StringComparer.Ordinal);
        var now = DateTimeOffset.UtcNow;
        // Only records of instances etcd no longer has are read: live ones were compared above.
        foreach (var id in await recovery.RecordIdsAsync(ct))
        {
            if (live.Contains(id)) continue;
            _written.Remove(id);
            if (await recovery.ReadRecordAsync(id, ct) is not { } saved) continue;
            if (saved.DeletedAt is null)
            {
                var port = await store.GetAsync<PortRecord>(keys.Port(saved.Instance.Port), ct);
                if (port?.Value is not { State: PortState.Retired } retired || retired.InstanceId != id) continue; // not known deleted: keep as is
                var marked = saved with { DeletedAt = now };
                using var ms = new MemoryStream(JsonSerializer.SerializeToUtf8Bytes(marked, Json.Options));
                await objects.PutAsync(ArchiveLayout.InstanceRecord(id), ms, ct);
                logger.LogInformation("instance {Instance} was deleted: its backups are kept until {Until:O}", id, now + settings.Backups!.DeletedRetention);
            }
            else if (saved.DeletedAt + settings.Backups!.DeletedRetention <= now)
            {
                var removed = await objects.DeletePrefixAsync(ArchiveLayout.Instance(id), ct);
                await objects.DeleteAsync(ArchiveLayout.InstanceRecord(id), ct);
                logger.LogInformation("instance {Instance}: retention of {Days:0.#} days ended; deleted its {Count} backup objects", id, settings.Backups.DeletedRetention.TotalDays, removed);
            }
        }
    }
}
