using System.Text.Json;
using System.Text.Json.Nodes;

namespace Dingo.Broker.Osb;

/// <summary>JSON with object keys sorted, so two requests meaning the same thing compare equal as strings.</summary>
public static class CanonicalJson
{
    public static string Of(JsonNode? node) => Sort(node)?.ToJsonString() ?? "{}";

    private static JsonNode? Sort(JsonNode? node) => node switch
    {
        JsonObject o => new JsonObject(o.OrderBy(p => p.Key, StringComparer.Ordinal).Select(p => KeyValuePair.Create(p.Key, Sort(p.Value)))),
        JsonArray a => new JsonArray(a.Select(Sort).ToArray()),
        JsonValue v => JsonNode.Parse(v.ToJsonString()),
        _ => null,
    };

    public static JsonNode ParseOrEmpty(string json) => JsonNode.Parse(json) ?? new JsonObject();
}

/// <summary>A request body read as JSON, with the questions handlers ask of it.</summary>
public sealed class RequestBody
{
    private readonly JsonObject _root;
    private RequestBody(JsonObject root) => _root = root;

    public static async Task<(RequestBody? Body, OsbResult? Error)> ReadAsync(HttpRequest request, CancellationToken ct)
    {
        if (request.ContentLength > RequestLimits.MaxBodyBytes) return (null, OsbResult.TooLarge());
        try
        {
            var node = await JsonNode.ParseAsync(request.Body, cancellationToken: ct);
            if (node is not JsonObject obj) return (null, OsbResult.BadRequest("the request body must be a JSON object"));
            // Reading every property now finds duplicate names here, as a 400, not later in a handler.
            foreach (var _ in obj) { }
            return (new RequestBody(obj), null);
        }
        catch (JsonException ex)
        {
            return (null, OsbResult.BadRequest($"the request body is not valid JSON: {RequestLimits.ForLog(ex.Message)}"));
        }
        catch (ArgumentException ex)
        {
            return (null, OsbResult.BadRequest($"the request body is not a valid JSON object: {RequestLimits.ForLog(ex.Message)}"));
        }
        catch (BadHttpRequestException ex)
        {
            // Kestrel's own limits (MaxRequestBodySize: 413) and a body cut short (400).
            return (null, ex.StatusCode == StatusCodes.Status413PayloadTooLarge ? OsbResult.TooLarge()
                : OsbResult.Error(ex.StatusCode is >= 400 and < 500 ? ex.StatusCode : 400, "BadRequest", $"the request body could not be read: {RequestLimits.ForLog(ex.Message)}"));
        }
    }

    /// <summary>A string field, or null when absent; an error when present but not a non-empty string.</summary>
    public string? String(string name, out OsbResult? error)
    {
        error = null;
        if (!_root.TryGetPropertyValue(name, out var value) || value is null) return null;
        if (value is JsonValue v && v.TryGetValue<string>(out var s) && s.Length > 0)
        {
            if (s.Length <= RequestLimits.MaxStringLength) return s;
            error = OsbResult.BadRequest($"`{name}` is {s.Length} characters long: at most {RequestLimits.MaxStringLength} are allowed");
            return null;
        }
        error = OsbResult.BadRequest($"`{name}` must be a non-empty string");
        return null;
    }

    /// <summary>An object field as canonical JSON ("{}" when absent); an error when present but not an object.</summary>
    public string Object(string name, out OsbResult? error)
    {
        error = null;
        if (!_root.TryGetPropertyValue(name, out var value) || value is null) return "{}";
        if (value is JsonObject)
        {
            var json = CanonicalJson.Of(value);
            if (System.Text.Encoding.UTF8.GetByteCount(json) <= RequestLimits.MaxObjectBytes) return json;
            error = OsbResult.BadRequest($"`{name}` is larger than {RequestLimits.MaxObjectBytes / 1024} KiB");
            return "{}";
        }
        error = OsbResult.BadRequest($"`{name}` must be a JSON object");
        return "{}";
    }
}
