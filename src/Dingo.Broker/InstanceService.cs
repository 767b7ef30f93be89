using System.Text.Json.Nodes;
using Akka.Actor;
using Akka.Hosting;
using Dingo.Broker.Osb;
using Dingo.Config;
using Dingo.Instances;
using Dingo.Model;
using Dingo.Postgres;
using Dingo.Store;

namespace Dingo.Broker;

/// <summary>
/// The broker's answers for service instances. Requests only validate and record what is wanted in etcd;
/// the instance's actor does the work and writes progress that last_operation reads back.
/// </summary>
public sealed class InstanceService(EtcdStore store, DingoSettings settings, IRequiredActor<ServiceInstanceRegion> region, Recovery recovery, ILogger<InstanceService> logger)
{
    // One provision at a time, so two concurrent requests cannot both slip under the quota.
    private readonly SemaphoreSlim _provisionGate = new(1, 1);
    private Keys Keys => store.Keys;

    public async Task<OsbResult> ProvisionAsync(string instanceId, bool acceptsIncomplete, HttpRequest request, CancellationToken ct)
    {
        if (!acceptsIncomplete) return OsbResult.AsyncRequired();
        var (body, error) = await RequestBody.ReadAsync(request, ct);
        if (body is null) return error!;
        var serviceId = body.String("service_id", out var e1);
        var planId = body.String("plan_id", out var e2);
        var org = body.String("organization_guid", out var e3);
        var space = body.String("space_guid", out var e4);
        var parameters = body.Object("parameters", out var e5);
        var context = body.Object("context", out var e6);
        var maintenance = MaintenanceVersion(body, out var e7);
        if ((e1 ?? e2 ?? e3 ?? e4 ?? e5 ?? e6 ?? e7) is { } invalid) return invalid;
        var missing = new[] { ("service_id", serviceId), ("plan_id", planId), ("organization_guid", org), ("space_guid", space) }
            .Where(f => f.Item2 is null).Select(f => f.Item1).ToList();
        if (missing.Count > 0) return OsbResult.BadRequest($"missing required field(s): {string.Join(", ", missing)}");

        await _provisionGate.WaitAsync(ct);
        try
        {
            // The same id with other attributes is a 409 whatever those attributes are (OSB): it is answered before they
            // are judged, so a platform retrying with changed (even invalid) parameters learns that the id is taken.
            var existing = await store.GetAsync<InstanceRecord>(Keys.Instance(instanceId), ct);
            if (existing is not null)
            {
                var r = existing.Value;
                var same = r.ServiceId == serviceId && r.PlanId == planId && r.OrganizationGuid == org && r.SpaceGuid == space && r.ParametersJson == parameters;
                if (!same || r.Desired != DesiredState.Present) return OsbResult.Conflict($"service instance {instanceId} already exists with other attributes");
                var op = await store.GetAsync<OperationRecord>(Keys.Operation(instanceId), ct);
                if (op?.Value is { Kind: OperationKind.Provision, InProgress: true } running) return OsbResult.Accepted(running.Id, Dashboard.Url(settings.Broker, r));
                return OsbResult.Ok(new JsonObject { ["dashboard_url"] = Dashboard.Url(settings.Broker, r) });
            }
            if (serviceId != Catalog.ServiceId) return OsbResult.BadRequest($"unknown service_id '{serviceId}': this broker offers {Catalog.ServiceId} ({Catalog.ServiceName})");
            var plan = Catalog.FindPlan(planId);
            if (plan is null) return OsbResult.BadRequest($"unknown plan_id '{planId}' for service {Catalog.ServiceName}");
            if (ValidateParameters(parameters, plan, provisioning: true, DateTimeOffset.UtcNow) is { } badParameters) return badParameters;
            if (StoreSyncWithoutBackups(parameters) is { } noStore) return noStore;
            if (maintenance is not null && maintenance != Product.Version) return MaintenanceConflict(maintenance);
            var nodeCount = NodeCountParameter(parameters) ?? plan.NodeCount;
            if (Provisioning.RequestedCells(new InstanceRecord
                {
                    Id = instanceId, ServiceId = serviceId, PlanId = plan.Id, OrganizationGuid = org!, SpaceGuid = space!, ParametersJson = parameters,
                    Port = 0, NodeCount = nodeCount, Superuser = new Credentials("-", "-"),
                }) is { } requested && requested.Count < nodeCount)
                return OsbResult.BadRequest($"parameter `cells` names {requested.Count} cell(s) but the instance needs {nodeCount} (one node per cell)");
            RestoreSource? restore = null;
            var p = CanonicalJson.ParseOrEmpty(parameters).AsObject();
            if (p["clone-from"] is JsonValue cloneValue && cloneValue.TryGetValue<string>(out var cloneFrom))
            {
                var pointInTime = p["point-in-time"] is JsonValue pit && pit.TryGetValue<string>(out var pitText) ? Recovery.ParsePointInTime(pitText) : null;
                var (source, cloneError) = await recovery.ResolveCloneAsync(cloneFrom, org!, space!, pointInTime, ct);
                if (cloneError is not null) return cloneError;
                restore = new RestoreSource(source!, pointInTime);
            }
            if (settings.Broker.InstanceQuota > 0)
            {
                var count = await store.CountAsync(Keys.Instances, ct);
                if (count >= settings.Broker.InstanceQuota)
                    return OsbResult.Error(422, "QuotaExceeded",
                        $"the instance quota of {settings.Broker.InstanceQuota} is reached ({count} instances exist): delete an instance or ask the operator to raise dingo.broker.instance-quota");
            }

            var now = DateTimeOffset.UtcNow;
            var operation = new OperationRecord
            {
                Id = $"provision-{now.ToUnixTimeMilliseconds()}",
                Kind = OperationKind.Provision,
                State = OperationState.InProgress,
                Description = restore is null ? "accepted: choosing a cell" : $"accepted: cloning {restore.InstanceId}{(restore.PointInTime is { } at ? $" as of {at:O}" : "")}",
                StartedAt = now,
                UpdatedAt = now,
            };
            var superuser = new Credentials(DatabaseAdmin.SuperuserName, Secrets.Password());
            var replication = new Credentials(DatabaseAdmin.ReplicationUserName, Secrets.Password());
            // The public ports are claimed in the transaction that creates the instance: a provision refused or failed
            // for any reason (a concurrent one, etcd's request limit, etcd unreachable) leaves no port behind.
            var allocator = new PortAllocator(store);
            int port = 0;
            InstanceRecord? created = null;
            for (var attempt = 0; ; attempt++)
            {
                var txn = new Txn().Absent(Keys.Instance(instanceId));
                IReadOnlyList<int> ports;
                try
                {
                    ports = await allocator.ReservePublicPortsAsync(instanceId, [PortRole.Primary, PortRole.ReadOnly], settings.Router.PortFirst, settings.Router.PortLast, txn, ct);
                }
                catch (InvalidOperationException ex)
                {
                    return OsbResult.Error(503, "PortsExhausted", ex.Message);
                }
                port = ports[0];
                var record = new InstanceRecord
                {
                    Id = instanceId,
                    ServiceId = serviceId!,
                    PlanId = planId!,
                    OrganizationGuid = org!,
                    SpaceGuid = space!,
                    ParametersJson = parameters,
                    ContextJson = context,
                    Port = ports[0],
                    ReadOnlyPort = ports[1],
                    NodeCount = nodeCount,
                    Superuser = superuser,
                    Replication = replication,
                    CreatedAt = now,
                    Restore = restore,
                    MaintenanceVersion = Product.Version,
                };
                txn.Put(Keys.Instance(instanceId), record).Put(Keys.Operation(instanceId), operation);
                created = record;
                if (await store.TransactAsync(txn, ct)) break;
                // Either another broker created this instance, or another allocation moved the port counter: look again.
                if (await store.GetAsync<InstanceRecord>(Keys.Instance(instanceId), ct) is not null)
                    return OsbResult.Conflict($"service instance {instanceId} was created concurrently");
                if (attempt >= 50)
                    return OsbResult.Error(503, "Unavailable", $"could not claim public ports for {instanceId}: other allocations kept changing etcd; try again");
            }
            logger.LogInformation("instance {Instance}: provision accepted, plan {Plan}, port {Port}", instanceId, plan.Name, port);
            InProgress.Mark(instanceId);
            Poke(instanceId);
            return OsbResult.Accepted(operation.Id, Dashboard.Url(settings.Broker, created!));
        }
        finally
        {
            _provisionGate.Release();
        }
    }

    public async Task<OsbResult> UpdateAsync(string instanceId, bool acceptsIncomplete, HttpRequest request, CancellationToken ct)
    {
        if (!acceptsIncomplete) return OsbResult.AsyncRequired();
        var (body, error) = await RequestBody.ReadAsync(request, ct);
        if (body is null) return error!;
        var serviceId = body.String("service_id", out var e1);
        var planId = body.String("plan_id", out var e2);
        var parameters = body.Object("parameters", out var e3);
        var maintenance = MaintenanceVersion(body, out var e4);
        if ((e1 ?? e2 ?? e3 ?? e4) is { } invalid) return invalid;
        if (serviceId is null) return OsbResult.BadRequest("missing required field: service_id");
        if (serviceId != Catalog.ServiceId) return OsbResult.BadRequest($"unknown service_id '{serviceId}'");
        if (planId is not null && Catalog.FindPlan(planId) is null) return OsbResult.BadRequest($"unknown plan_id '{planId}'");
        if (maintenance is not null && maintenance != Product.Version) return MaintenanceConflict(maintenance);

        var existing = await store.GetAsync<InstanceRecord>(Keys.Instance(instanceId), ct);
        if (existing is null || existing.Value.Desired != DesiredState.Present) return OsbResult.NotFound($"service instance {instanceId} does not exist");
        var op = await store.GetAsync<OperationRecord>(Keys.Operation(instanceId), ct);
        if (op?.Value.InProgress == true) return OsbResult.Concurrency($"service instance {instanceId} is busy: {op.Value.Kind.Wire()} in progress");
        var newPlan = Catalog.FindPlan(planId ?? existing.Value.PlanId)!;
        if (ValidateParameters(parameters, newPlan, provisioning: false, DateTimeOffset.UtcNow) is { } badParameters) return badParameters;
        if (StoreSyncWithoutBackups(parameters) is { } noStore) return noStore;
        // node-count given: that many; a plan change without it: the new plan's size; neither: as it is.
        var planChanged = planId is not null && planId != existing.Value.PlanId;
        if (!planChanged && parameters == "{}")
        {
            // Nothing to change in the cluster: a maintenance update (`cf update-service --upgrade`) or an empty one. The
            // nodes already run on this version's cells, so it is done here and now (200, OSB 2.15), with the version noted.
            if (maintenance is not null && existing.Value.MaintenanceVersion != maintenance
                && !await store.TransactAsync(new Txn().At(Keys.Instance(instanceId), existing.ModRevision)
                    .Put(Keys.Instance(instanceId), existing.Value with { MaintenanceVersion = maintenance }), ct))
                return OsbResult.Concurrency($"service instance {instanceId} changed while updating; try again");
            return OsbResult.Ok(new JsonObject());
        }
        var nodeCount = NodeCountParameter(parameters) ?? (planChanged ? newPlan.NodeCount : existing.Value.NodeCount);
        if (nodeCount < newPlan.MinNodes)
            return OsbResult.Error(422, "InvalidNodeCount", $"plan {newPlan.Name} needs at least {newPlan.MinNodes} node(s); this instance would have {nodeCount}: pass node-count");

        var now = DateTimeOffset.UtcNow;
        // Parameters given replace the stored ones key by key; keys not sent keep their value.
        var merged = CanonicalJson.ParseOrEmpty(existing.Value.ParametersJson).AsObject();
        foreach (var (key, value) in CanonicalJson.ParseOrEmpty(parameters).AsObject().ToList()) merged[key] = value?.DeepClone();
        var operation = new OperationRecord
        {
            Id = $"update-{now.ToUnixTimeMilliseconds()}",
            Kind = OperationKind.Update,
            State = OperationState.InProgress,
            Description = nodeCount != existing.Value.NodeCount
                ? $"accepted: resizing from {existing.Value.NodeCount} to {nodeCount} node(s)"
                : planChanged ? $"accepted: changing plan to {newPlan.Name}" : "accepted: applying parameters",
            StartedAt = now,
            UpdatedAt = now,
        };
        var updated = existing.Value with
        {
            ParametersJson = CanonicalJson.Of(merged),
            PlanId = newPlan.Id,
            NodeCount = nodeCount,
            Replication = existing.Value.Replication ?? new Credentials(DatabaseAdmin.ReplicationUserName, Secrets.Password()),
            MaintenanceVersion = maintenance ?? existing.Value.MaintenanceVersion,
        };
        var ok = await store.TransactAsync(new Txn()
            .At(Keys.Instance(instanceId), existing.ModRevision)
            .Put(Keys.Instance(instanceId), updated)
            .Put(Keys.Operation(instanceId), operation), ct);
        if (!ok) return OsbResult.Concurrency($"service instance {instanceId} changed while updating; try again");
        InProgress.Mark(instanceId);
        Poke(instanceId);
        return OsbResult.Accepted(operation.Id);
    }

    public async Task<OsbResult> DeprovisionAsync(string instanceId, bool acceptsIncomplete, string? serviceId, string? planId, CancellationToken ct)
    {
        if (string.IsNullOrEmpty(serviceId) || string.IsNullOrEmpty(planId))
            return OsbResult.BadRequest("service_id and plan_id query parameters are required");
        if (!acceptsIncomplete) return OsbResult.AsyncRequired();
        var existing = await store.GetAsync<InstanceRecord>(Keys.Instance(instanceId), ct);
        if (existing is null) return OsbResult.Gone($"service instance {instanceId} does not exist");
        var op = await store.GetAsync<OperationRecord>(Keys.Operation(instanceId), ct);
        if (existing.Value.Desired == DesiredState.Absent && op?.Value is { Kind: OperationKind.Deprovision } deleting)
            return OsbResult.Accepted(deleting.Id);

        var now = DateTimeOffset.UtcNow;
        var operation = new OperationRecord
        {
            Id = $"deprovision-{now.ToUnixTimeMilliseconds()}",
            Kind = OperationKind.Deprovision,
            State = OperationState.InProgress,
            Description = op?.Value is { InProgress: true } running
                ? $"accepted: stopping the {running.Kind.Wire()} in progress and removing nodes"
                : "accepted: removing nodes",
            StartedAt = now,
            UpdatedAt = now,
        };
        // Flipping desired state is what stops a provision in flight: the next pass tears down instead.
        var ok = await store.TransactAsync(new Txn()
            .At(Keys.Instance(instanceId), existing.ModRevision)
            .Put(Keys.Instance(instanceId), existing.Value with { Desired = DesiredState.Absent })
            .Put(Keys.Operation(instanceId), operation), ct);
        if (!ok) return OsbResult.Concurrency($"service instance {instanceId} changed while deleting; try again");
        logger.LogInformation("instance {Instance}: deprovision accepted", instanceId);
        InProgress.Mark(instanceId);
        Poke(instanceId);
        return OsbResult.Accepted(operation.Id);
    }

    public async Task<OsbResult> LastOperationAsync(string instanceId, CancellationToken ct)
    {
        var op = await store.GetAsync<OperationRecord>(Keys.Operation(instanceId), ct);
        if (op is null)
        {
            return await store.GetAsync<InstanceRecord>(Keys.Instance(instanceId), ct) is null
                ? OsbResult.NotFound($"service instance {instanceId} does not exist")
                : OsbResult.Ok(new JsonObject { ["state"] = OperationState.Succeeded.Wire(), ["description"] = "no operation recorded" });
        }
        if (op.Value.InProgress) Wake(instanceId); // a broker restart must not leave work waiting for the sweep
        return OsbResult.Ok(new JsonObject { ["state"] = op.Value.State.Wire(), ["description"] = op.Value.Description });
    }

    public async Task<OsbResult> FetchAsync(string instanceId, OsbVersion version, CancellationToken ct)
    {
        var existing = await store.GetAsync<InstanceRecord>(Keys.Instance(instanceId), ct);
        if (existing is null || existing.Value.Desired != DesiredState.Present) return OsbResult.NotFound($"service instance {instanceId} does not exist");
        var op = await store.GetAsync<OperationRecord>(Keys.Operation(instanceId), ct);
        if (op?.Value is { Kind: OperationKind.Provision, InProgress: true }) return OsbResult.NotFound($"service instance {instanceId} is still being provisioned");
        if (op?.Value is { Kind: OperationKind.Update, InProgress: true }) return OsbResult.Concurrency($"service instance {instanceId} is being updated");
        var r = existing.Value;
        var body = new JsonObject
        {
            ["service_id"] = r.ServiceId,
            ["plan_id"] = r.PlanId,
            ["parameters"] = CanonicalJson.ParseOrEmpty(r.ParametersJson),
            ["dashboard_url"] = Dashboard.Url(settings.Broker, r),
        };
        // 2.15: the maintenance the instance was provisioned or last updated with (none for instances older than the field).
        if (version.AtLeast(2, 15) && r.MaintenanceVersion is { } maintained) body["maintenance_info"] = new JsonObject { ["version"] = maintained };
        return OsbResult.Ok(body);
    }

    /// <summary>`maintenance_info.version` of a provision or update, or null when the request has none.</summary>
    private static string? MaintenanceVersion(RequestBody body, out OsbResult? error)
    {
        var json = body.Object("maintenance_info", out error);
        if (error is not null) return null;
        var info = CanonicalJson.ParseOrEmpty(json).AsObject();
        if (info.Count == 0) return null;
        if (info["version"] is JsonValue v && v.TryGetValue<string>(out var version) && version.Length is > 0 and <= RequestLimits.MaxStringLength) return version;
        error = OsbResult.BadRequest("`maintenance_info.version` must be a non-empty string (the catalog's plan gives it)");
        return null;
    }

    private static OsbResult MaintenanceConflict(string asked) =>
        OsbResult.Error(422, "MaintenanceInfoConflict",
            $"maintenance_info.version '{RequestLimits.ForLog(asked, 40)}' is not this broker's ({Product.Version}): fetch the catalog again");

    public void Poke(string instanceId) => region.ActorRef.Tell(new ServiceInstanceMessages.Reconcile(instanceId));

    /// <summary>Instances with an operation in progress, as this broker knows them (<see cref="StatusWatch"/> reads it).</summary>
    public OperationsInProgress InProgress { get; } = new();

    /// <summary>Wakes the instance's actor if it rests; adds no pass to one at work (<see cref="ServiceInstanceMessages.Wake"/>).</summary>
    public void Wake(string instanceId) => region.ActorRef.Tell(new ServiceInstanceMessages.Wake(instanceId));

    /// <summary>
    /// The parameters of a provision or update, judged alone (pure: <paramref name="now"/> is the one input besides the
    /// request): null when accepted, else the 400 that says why. Its table is CatalogSchemaTests, row by row against
    /// the catalog's schemas.
    /// </summary>
    internal static OsbResult? ValidateParameters(string parametersJson, Plan plan, bool provisioning, DateTimeOffset now)
    {
        var p = CanonicalJson.ParseOrEmpty(parametersJson).AsObject();
        // The names the catalog's schemas list (OsbCatalog): one list for both.
        var known = provisioning ? OsbCatalog.ProvisionParameters : OsbCatalog.UpdateParameters;
        var unknown = p.Select(kv => kv.Key).Where(k => !known.Contains(k)).ToList();
        if (unknown.Count > 0)
            return OsbResult.BadRequest($"unknown parameter(s): {string.Join(", ", unknown)}; {(provisioning ? "provisioning" : "an update")} accepts: {string.Join(", ", known)}");
        if (p.TryGetPropertyValue("clone-from", out var from) && (from is not JsonValue fv || !fv.TryGetValue<string>(out var fromText) || string.IsNullOrWhiteSpace(fromText)))
            return OsbResult.BadRequest("parameter `clone-from` must be an instance name (in this space) or an instance id");
        if (from is JsonValue fromValue && fromValue.TryGetValue<string>(out var fromString) && fromString.Length > RequestLimits.MaxStringLength)
            return OsbResult.BadRequest($"parameter `clone-from` is {fromString.Length} characters long: at most {RequestLimits.MaxStringLength} are allowed");
        if (p.TryGetPropertyValue("point-in-time", out var pitNode))
        {
            if (!p.ContainsKey("clone-from")) return OsbResult.BadRequest("parameter `point-in-time` needs `clone-from`: which instance to restore as of that time");
            if (pitNode is not JsonValue pv || !pv.TryGetValue<string>(out var pitText) || Recovery.ParsePointInTime(pitText) is not { } pit)
                return OsbResult.BadRequest("parameter `point-in-time` must be an RFC 3339 timestamp with a time zone, e.g. 2026-11-25T17:30:00Z");
            if (pit > now) return OsbResult.BadRequest($"parameter `point-in-time` {pit:O} is in the future");
        }
        if (p.TryGetPropertyValue("cells", out var cells) && (cells is not JsonArray arr || arr.Any(c => c is not JsonValue v || !v.TryGetValue<string>(out _))))
            return OsbResult.BadRequest("parameter `cells` must be an array of cell ids, e.g. [\"cell-1\", \"cell-2\"]");
        if (cells is JsonArray cellList)
        {
            if (cellList.Count > RequestLimits.MaxCells) return OsbResult.BadRequest($"parameter `cells` names {cellList.Count} cells: at most {RequestLimits.MaxCells} are allowed");
            foreach (var cell in cellList)
                if (RequestLimits.IdProblem("cell id", cell!.GetValue<string>()) is { } problem) return OsbResult.BadRequest($"parameter `cells`: {problem}");
        }
        if (p.TryGetPropertyValue(Dingo.Ha.SynchronousCommit.Parameter, out var storeSync) && (storeSync is not JsonValue sv || !sv.TryGetValue<bool>(out _)))
            return OsbResult.BadRequest($"parameter `{Dingo.Ha.SynchronousCommit.Parameter}` must be true or false");
        if (p.TryGetPropertyValue("node-count", out var countNode))
        {
            if (countNode is not JsonValue cv || !cv.TryGetValue<int>(out var count))
                return OsbResult.BadRequest("parameter `node-count` must be a whole number");
            if (count < plan.MinNodes || count > Catalog.MaxNodes)
                return OsbResult.BadRequest($"parameter `node-count` must be between {plan.MinNodes} and {Catalog.MaxNodes} for plan {plan.Name}: got {count}");
        }
        return null;
    }

    /// <summary>Store-sync asked for while backups are off: commits would wait for an archiver that never runs.</summary>
    private OsbResult? StoreSyncWithoutBackups(string parametersJson) =>
        settings.Backups is { Enabled: true }
        || !(CanonicalJson.ParseOrEmpty(parametersJson).AsObject()[Dingo.Ha.SynchronousCommit.Parameter] is JsonValue v && v.TryGetValue<bool>(out var on) && on)
            ? null
            : OsbResult.Error(422, "StoreSyncUnavailable",
                $"parameter `{Dingo.Ha.SynchronousCommit.Parameter}` needs backups, and this platform has none (dingo.backups.enabled = off): commits would wait for an object store forever");

    private static int? NodeCountParameter(string parametersJson) =>
        CanonicalJson.ParseOrEmpty(parametersJson).AsObject().TryGetPropertyValue("node-count", out var n) && n is JsonValue v && v.TryGetValue<int>(out var count)
            ? count : null;
}
