using Microsoft.AspNetCore.Mvc;
using System.Text.Json.Nodes;
using Dingo.Model;

namespace Dingo.Broker.Osb;

/// <summary>The Open Service Broker API routes (v2.17).</summary>
public static class OsbEndpoints
{
    public static void Map(WebApplication app)
    {
        app.MapGet("/v2/catalog", () => OsbResult.Ok(CatalogJson()).ToResult());

        app.MapPut("/v2/service_instances/{id}", async (string id, HttpRequest req, [FromServices] InstanceService svc, CancellationToken ct) =>
            (await svc.ProvisionAsync(id, AcceptsIncomplete(req), req, ct)).ToResult());
        app.MapPatch("/v2/service_instances/{id}", async (string id, HttpRequest req, [FromServices] InstanceService svc, CancellationToken ct) =>
            (await svc.UpdateAsync(id, AcceptsIncomplete(req), req, ct)).ToResult());
        app.MapDelete("/v2/service_instances/{id}", async (string id, HttpRequest req, [FromServices] InstanceService svc, CancellationToken ct) =>
            (await svc.DeprovisionAsync(id, AcceptsIncomplete(req), Query(req, "service_id"), Query(req, "plan_id"), ct)).ToResult());
        app.MapGet("/v2/service_instances/{id}", async (string id, [FromServices] InstanceService svc, CancellationToken ct) =>
            (await svc.FetchAsync(id, ct)).ToResult());
        app.MapGet("/v2/service_instances/{id}/last_operation", async (string id, [FromServices] InstanceService svc, CancellationToken ct) =>
            (await svc.LastOperationAsync(id, ct)).ToResult());

        app.MapPut("/v2/service_instances/{id}/service_bindings/{bid}", async (string id, string bid, HttpRequest req, [FromServices] BindingService svc, CancellationToken ct) =>
            (await svc.BindAsync(id, bid, req, ct)).ToResult());
        app.MapDelete("/v2/service_instances/{id}/service_bindings/{bid}", async (string id, string bid, HttpRequest req, [FromServices] BindingService svc, CancellationToken ct) =>
            (await svc.UnbindAsync(id, bid, Query(req, "service_id"), Query(req, "plan_id"), ct)).ToResult());
        app.MapGet("/v2/service_instances/{id}/service_bindings/{bid}", async (string id, string bid, [FromServices] BindingService svc, CancellationToken ct) =>
            (await svc.FetchAsync(id, bid, ct)).ToResult());
        app.MapGet("/v2/service_instances/{id}/service_bindings/{bid}/last_operation", () =>
            OsbResult.BadRequest("bindings are synchronous: there is no binding operation to poll").ToResult());

        // Anything else under /v2 is a clear 404 in OSB's error shape, not an empty page.
        app.Map("/v2/{**rest}", (HttpRequest req) => OsbResult.NotFound($"no such OSB endpoint: {RequestLimits.ForLog(req.Method, 20)} {RequestLimits.ForLog(req.Path.Value)}").ToResult());
    }

    private static bool AcceptsIncomplete(HttpRequest req) =>
        string.Equals(req.Query["accepts_incomplete"].ToString(), "true", StringComparison.OrdinalIgnoreCase);

    private static string? Query(HttpRequest req, string name) => req.Query.TryGetValue(name, out var v) ? v.ToString() : null;

    public static JsonObject CatalogJson() => new()
    {
        ["services"] = new JsonArray(new JsonObject
        {
            ["id"] = Catalog.ServiceId,
            ["name"] = Catalog.ServiceName,
            ["description"] = "Dedicated PostgreSQL 15, reachable at one address for life, backed by etcd-decided leadership",
            ["bindable"] = true,
            ["instances_retrievable"] = true,
            ["bindings_retrievable"] = true,
            ["allow_context_updates"] = false,
            ["plan_updateable"] = true,
            ["tags"] = new JsonArray("postgresql", "postgresql15", "relational"),
            ["metadata"] = new JsonObject
            {
                ["displayName"] = "Dingo PostgreSQL",
                ["providerDisplayName"] = "Dingo",
                ["longDescription"] = "Each instance is a dedicated PostgreSQL cluster on Dingo cells, with a stable host:port through the routing mesh.",
            },
            ["plans"] = new JsonArray(Catalog.Plans.Select(p => (JsonNode)new JsonObject
            {
                ["id"] = p.Id,
                ["name"] = p.Name,
                ["description"] = p.Description,
                ["free"] = true,
                ["bindable"] = true,
                ["plan_updateable"] = true,
                ["metadata"] = new JsonObject
                {
                    ["displayName"] = p.Name,
                    ["bullets"] = new JsonArray("PostgreSQL 15", $"{p.NodeCount} node(s)" + (p.NodeCount > 1 ? " in different zones" : ""),
                        p.Synchronous ? "Synchronous replication: no acknowledged commit lost" : p.NodeCount > 1 ? "Asynchronous replication, failover in seconds" : "Restarted in place when it fails",
                        "Dedicated login role per binding"),
                },
            }).ToArray()),
        }),
    };
}
