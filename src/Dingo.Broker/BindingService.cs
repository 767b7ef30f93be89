using Dingo.Security;
using System.Text.Json.Nodes;
using Dingo.Broker.Osb;
using Dingo.Config;
using Dingo.Model;
using Dingo.Postgres;
using Dingo.Store;

namespace Dingo.Broker;

/// <summary>
/// Bindings: each one is its own PostgreSQL login role (never the superuser, never the replication user),
/// made synchronously on the instance's primary; an unbind ends the role's sessions on every node (<see cref="BindingLockout"/>).
/// </summary>
public sealed class BindingService(EtcdStore store, DingoSettings settings, ILogger<BindingService> logger)
{
    /// <summary>How long a bind waits for a primary that is changing hands before it answers 503.</summary>
    private static readonly TimeSpan BindPatience = TimeSpan.FromSeconds(15);

    private Keys Keys => store.Keys;

    public async Task<OsbResult> BindAsync(string instanceId, string bindingId, HttpRequest request, CancellationToken ct)
    {
        var (body, error) = await RequestBody.ReadAsync(request, ct);
        if (body is null) return error!;
        var serviceId = body.String("service_id", out var e1);
        var planId = body.String("plan_id", out var e2);
        var appGuid = body.String("app_guid", out var e3);
        var bindResource = body.Object("bind_resource", out var e4);
        var parameters = body.Object("parameters", out var e5);
        if ((e1 ?? e2 ?? e3 ?? e4 ?? e5) is { } invalid) return invalid;
        if (serviceId is null || planId is null) return OsbResult.BadRequest("service_id and plan_id are required");

        var instance = await store.GetAsync<InstanceRecord>(Keys.Instance(instanceId), ct);
        if (instance is null || instance.Value.Desired != DesiredState.Present) return OsbResult.NotFound($"service instance {instanceId} does not exist");
        // The same binding id with other attributes is a 409 whatever those attributes are (OSB): answered before they are
        // judged, so a platform that changed (even invalid) parameters learns that the id is taken, not that they are wrong.
        var existing = await store.GetAsync<BindingRecord>(Keys.Binding(instanceId, bindingId), ct);
        if (existing is not null)
        {
            var b = existing.Value;
            var same = b.ServiceId == serviceId && b.PlanId == planId && b.AppGuid == appGuid && b.BindResourceJson == bindResource && b.ParametersJson == parameters;
            if (!same) return OsbResult.Conflict($"binding {bindingId} already exists with other attributes");
        }
        if (serviceId != Catalog.ServiceId) return OsbResult.BadRequest($"unknown service_id '{serviceId}'");
        if (Catalog.FindPlan(planId) is null) return OsbResult.BadRequest($"unknown plan_id '{planId}'");
        if (ValidateParameters(parameters) is { } badParameters) return badParameters;
        var op = await store.GetAsync<OperationRecord>(Keys.Operation(instanceId), ct);
        if (op?.Value is { Kind: OperationKind.Provision } provision && provision.State != OperationState.Succeeded)
            return OsbResult.Concurrency($"service instance {instanceId} is not ready: provision {provision.State.Wire()} ({provision.Description})");

        BindingRecord binding;
        if (existing is not null)
        {
            var b = existing.Value;
            if (b.State == BindingState.Ready) return OsbResult.Ok(await CredentialsJsonAsync(instance.Value, b, ct));
            binding = b; // a previous attempt stopped half-way: finish it
        }
        else
        {
            binding = new BindingRecord
            {
                Id = bindingId,
                InstanceId = instanceId,
                ServiceId = serviceId,
                PlanId = planId,
                AppGuid = appGuid,
                BindResourceJson = bindResource,
                ParametersJson = parameters,
                Role = new Credentials(Secrets.RoleName("b_"), Secrets.Password()),
                CreatedAt = DateTimeOffset.UtcNow,
            };
            if (!await store.CreateIfAbsentAsync(Keys.Binding(instanceId, bindingId), binding, ct))
                return OsbResult.Concurrency($"binding {bindingId} is being created by another request");
        }

        // A primary may be changing hands (a failover, or a busy host's leader fencing itself) at the moment of binding:
        // wait a little for the next one rather than fail a bind the platform can serve seconds later.
        var deadline = DateTime.UtcNow + BindPatience;
        while (true)
        {
            var leader = await store.GetAsync<LeaderRecord>(Keys.Leader(instanceId), ct);
            string failure;
            if (leader is null) failure = "it has no primary right now";
            else
            {
                try
                {
                    // The open may take the rest of the patience (at least 5 s): a primary that is slow to fork and
                    // authenticate a session (a saturated machine: 5 s and more) served none of three 5 s attempts, each of
                    // which it paid for all the same (bench/Provision's Docker burst: 12 binds answered 503).
                    var rest = (int)Math.Ceiling((deadline - DateTime.UtcNow).TotalSeconds);
                    await DatabaseAdmin.CreateBindingRoleAsync(leader.Value.Host, leader.Value.Port, instance.Value.Superuser, instance.Value.Database, binding.Role, ct,
                        openSeconds: Math.Max(5, rest));
                    break;
                }
                catch (Exception ex) when (ex is Npgsql.NpgsqlException or TimeoutException)
                {
                    failure = $"creating the role on the primary failed: {ex.Message}";
                }
            }
            if (DateTime.UtcNow >= deadline)
            {
                logger.LogWarning("binding {Binding} on {Instance}: {Failure}", bindingId, instanceId, failure);
                return OsbResult.Error(503, "Unavailable", $"could not bind to service instance {instanceId}: {failure}; the binding is kept half-made, try again shortly");
            }
            await Task.Delay(500, ct);
        }
        var ready = binding with { State = BindingState.Ready };
        await store.PutAsync(Keys.Binding(instanceId, bindingId), ready, ct);
        logger.LogInformation("binding {Binding} on {Instance}: role {Role} created", bindingId, instanceId, binding.Role.Username);
        return OsbResult.Created(await CredentialsJsonAsync(instance.Value, ready, ct));
    }

    /// <summary>A binding's parameters (canonical JSON): none are taken (the catalog's bind schema says the same, OsbCatalog).</summary>
    internal static OsbResult? ValidateParameters(string parametersJson) =>
        parametersJson == "{}" ? null : OsbResult.BadRequest("bindings take no parameters");

    public async Task<OsbResult> UnbindAsync(string instanceId, string bindingId, string? serviceId, string? planId, CancellationToken ct)
    {
        if (string.IsNullOrEmpty(serviceId) || string.IsNullOrEmpty(planId))
            return OsbResult.BadRequest("service_id and plan_id query parameters are required");
        var existing = await store.GetAsync<BindingRecord>(Keys.Binding(instanceId, bindingId), ct);
        if (existing is null) return OsbResult.Gone($"binding {bindingId} does not exist");
        var instance = await store.GetAsync<InstanceRecord>(Keys.Instance(instanceId), ct);
        var leader = await store.GetAsync<LeaderRecord>(Keys.Leader(instanceId), ct);
        if (instance is not null)
        {
            if (leader is null) return OsbResult.Error(503, "Unavailable", $"service instance {instanceId} has no primary right now; the binding is kept, try again shortly");
            // Its sessions end on every node (replicas serve the read-only port) before the role goes.
            var failure = await BindingLockout.RunAsync(store, instance.Value, leader.Value, existing.Value.Role.Username,
                line => logger.LogInformation("binding {Binding} on {Instance}: {What}", bindingId, instanceId, line), ct);
            if (failure is not null)
                return OsbResult.Error(503, "Unavailable", $"{failure}; the binding is kept, try again shortly");
        }
        await store.DeleteAsync(Keys.Binding(instanceId, bindingId), ct);
        logger.LogInformation("binding {Binding} on {Instance}: role {Role} dropped", bindingId, instanceId, existing.Value.Role.Username);
        return OsbResult.Empty();
    }

    public async Task<OsbResult> FetchAsync(string instanceId, string bindingId, CancellationToken ct)
    {
        var instance = await store.GetAsync<InstanceRecord>(Keys.Instance(instanceId), ct);
        var binding = await store.GetAsync<BindingRecord>(Keys.Binding(instanceId, bindingId), ct);
        if (instance is null || binding is null || binding.Value.State != BindingState.Ready) return OsbResult.NotFound($"binding {bindingId} does not exist");
        var body = await CredentialsJsonAsync(instance.Value, binding.Value, ct);
        body["parameters"] = CanonicalJson.ParseOrEmpty(binding.Value.ParametersJson);
        return OsbResult.Ok(body);
    }

    /// <summary>
    /// A binding's credentials: the router's host and port, the role, and what a client needs to verify the node it
    /// reaches (`sslmode=verify-full` in the URIs, the platform CA as `ca_certificate`; libpq reads it from the file
    /// named by `sslrootcert`, JDBC from `sslrootcert` too). The CA is made here if no cell has made it yet.
    /// </summary>
    private async Task<JsonObject> CredentialsJsonAsync(InstanceRecord instance, BindingRecord binding, CancellationToken ct)
    {
        string ca;
        using (var platformCa = await PlatformCaStore.GetOrCreateAsync(store, settings.Postgres, ct))
        {
            ca = platformCa.CertificatePem;
            PlatformConnectionTls.Trust(platformCa);
        }
        return BindingCredentials.Json(settings.Broker.BindingHost, instance, binding, ca);
    }
}
