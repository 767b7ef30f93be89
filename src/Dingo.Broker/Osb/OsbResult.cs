using System.Text.Json.Nodes;

namespace Dingo.Broker.Osb;

/// <summary>What an OSB handler answers: a status code and a JSON body.</summary>
public sealed record OsbResult(int Status, JsonNode Body)
{
    public static OsbResult Ok(JsonNode body) => new(200, body);
    public static OsbResult Created(JsonNode body) => new(201, body);
    public static OsbResult Accepted(string operation, string? dashboardUrl = null) =>
        new(202, dashboardUrl is null ? new JsonObject { ["operation"] = operation } : new JsonObject { ["dashboard_url"] = dashboardUrl, ["operation"] = operation });
    public static OsbResult Empty(int status = 200) => new(status, new JsonObject());

    public static OsbResult Error(int status, string error, string description) =>
        new(status, new JsonObject { ["error"] = error, ["description"] = description });

    public static OsbResult BadRequest(string description) => Error(400, "BadRequest", description);
    public static OsbResult NotFound(string description) => Error(404, "NotFound", description);
    public static OsbResult Conflict(string description) => Error(409, "Conflict", description);
    public static OsbResult Gone(string description) => Error(410, "Gone", description);
    public static OsbResult AsyncRequired() =>
        Error(422, "AsyncRequired", "This service plan requires client support for asynchronous service operations: add ?accepts_incomplete=true.");
    public static OsbResult TooLarge() =>
        Error(413, "PayloadTooLarge", $"the request body is larger than {RequestLimits.MaxBodyBytes / 1024} KiB: an OSB request needs far less");
    public static OsbResult Concurrency(string description) => Error(422, "ConcurrencyError", description);

    public IResult ToResult() => Results.Json(Body, statusCode: Status);
}
