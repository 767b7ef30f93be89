using Dingo.Broker.Osb;
using Dingo.Config;
using Microsoft.AspNetCore.Mvc;

namespace Dingo.Broker;

/// <summary>The Open Service Broker API routes (v2.17).</summary>
public static class OsbEndpoints
{
    public static void Map(WebApplication app)
    {
        app.MapGet("/v2/catalog", (HttpContext context, [FromServices] DingoSettings settings) =>
            OsbResult.Ok(OsbCatalog.Json(OsbVersion.Of(context), MaximumPollingDuration(settings))).ToResult());

        app.MapPut("/v2/service_instances/{id}", async (string id, HttpRequest req, [FromServices] InstanceService svc, CancellationToken ct) =>
            (await svc.ProvisionAsync(id, AcceptsIncomplete(req), req, ct)).ToResult());
        app.MapPatch("/v2/service_instances/{id}", async (string id, HttpRequest req, [FromServices] InstanceService svc, CancellationToken ct) =>
            (await svc.UpdateAsync(id, AcceptsIncomplete(req), req, ct)).ToResult());
        app.MapDelete("/v2/service_instances/{id}", async (string id, HttpRequest req, [FromServices] InstanceService svc, CancellationToken ct) =>
            (await svc.DeprovisionAsync(id, AcceptsIncomplete(req), Query(req, "service_id"), Query(req, "plan_id"), ct)).ToResult());
        app.MapGet("/v2/service_instances/{id}", async (string id, HttpContext context, [FromServices] InstanceService svc, CancellationToken ct) =>
            (await svc.FetchAsync(id, OsbVersion.Of(context), ct)).ToResult());
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

    /// <summary>How long a platform should poll an operation: the broker fails an operation after provision-timeout and
    /// records it within its next passes, so a platform that waits a minute longer always reads the outcome.</summary>
    public static TimeSpan MaximumPollingDuration(DingoSettings settings) => settings.Broker.ProvisionTimeout + TimeSpan.FromMinutes(1);
}
