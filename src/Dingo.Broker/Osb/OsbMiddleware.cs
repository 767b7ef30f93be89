using System.Security.Cryptography;
using System.Text;
using Dingo.Config;

namespace Dingo.Broker.Osb;

/// <summary>
/// Checks every /v2 and /admin request before any body is read: Basic auth (401; the other API's credentials 403),
/// then X-Broker-API-Version (412, /v2 only), then the ids in the route (400) and the body's declared size (413).
/// /v2 takes the OSB credentials only and /admin the operator's only (dingo.broker.admin-username/-password).
/// Logs the originating identity of every request it lets through.
/// </summary>
public sealed class OsbMiddleware(RequestDelegate next, BrokerSettings settings, ILogger<OsbMiddleware> logger)
{
    public async Task InvokeAsync(HttpContext context)
    {
        var path = context.Request.Path;
        var isOsb = path.StartsWithSegments("/v2");
        if (!isOsb && !path.StartsWithSegments("/admin"))
        {
            await next(context);
            return;
        }
        var header = context.Request.Headers.Authorization.ToString();
        var osbCredentials = Authorised(header, settings.Username, settings.Password);
        var adminCredentials = settings.AdminPassword.Length > 0 && Authorised(header, settings.AdminUsername, settings.AdminPassword);
        if (!(isOsb ? osbCredentials : adminCredentials))
        {
            OsbResult refusal;
            if (isOsb && adminCredentials)
                refusal = OsbResult.Error(403, "Forbidden", "the operator's admin credentials do not open the OSB API: use the broker credentials");
            else if (!isOsb && osbCredentials)
                refusal = OsbResult.Error(403, "Forbidden", settings.AdminPassword.Length > 0
                    ? "the OSB broker credentials do not open the admin API: use the operator's (dingo.broker.admin-username / admin-password)"
                    : "the admin API is closed: set dingo.broker.admin-password (DINGO_BROKER_ADMIN_PASSWORD) to open it");
            else
            {
                context.Response.Headers.WWWAuthenticate = "Basic realm=\"dingo\"";
                refusal = OsbResult.Error(401, "Unauthorized", "missing or wrong broker credentials");
            }
            await refusal.ToResult().ExecuteAsync(context);
            return;
        }
        if (isOsb)
        {
            var version = context.Request.Headers["X-Broker-API-Version"].ToString().Trim();
            if (OsbVersion.Parse(version) is not { Supported: true } parsed)
            {
                var got = version.Length == 0 ? "no X-Broker-API-Version header" : $"X-Broker-API-Version '{RequestLimits.ForLog(version, 40)}'";
                await OsbResult.Error(412, "PreconditionFailed", $"{got}: this broker speaks OSB API {OsbVersion.Oldest} to {OsbVersion.Latest}").ToResult().ExecuteAsync(context);
                return;
            }
            // Handlers shape what they answer by it (the catalog offers only the fields that version defines).
            context.Items[OsbVersion.ItemKey] = parsed;
        }
        // Ids become etcd keys, object-store paths and log words: refuse anything but a plain id before any of that.
        foreach (var (name, what) in RequestLimits.RouteIds)
        {
            if (!context.Request.RouteValues.TryGetValue(name, out var value)) continue;
            if (RequestLimits.IdProblem(what, value as string) is { } problem)
            {
                await OsbResult.BadRequest(problem).ToResult().ExecuteAsync(context);
                return;
            }
        }
        if (context.Request.ContentLength > RequestLimits.MaxBodyBytes)
        {
            await OsbResult.TooLarge().ToResult().ExecuteAsync(context);
            return;
        }
        var identity = OriginatingIdentity(context.Request.Headers["X-Broker-API-Originating-Identity"].ToString());
        logger.LogInformation("{Method} {Path} from {Identity}", context.Request.Method, RequestLimits.ForLog(path.Value), RequestLimits.ForLog(identity, 400));
        await next(context);
    }

    private static bool Authorised(string header, string username, string password)
    {
        if (password.Length == 0) return false;
        if (!header.StartsWith("Basic ", StringComparison.OrdinalIgnoreCase)) return false;
        string decoded;
        try { decoded = Encoding.UTF8.GetString(Convert.FromBase64String(header[6..].Trim())); }
        catch (FormatException) { return false; }
        var colon = decoded.IndexOf(':');
        if (colon < 0) return false;
        // Constant-time comparison: response timing must not reveal how much of a guess was right.
        var userOk = CryptographicOperations.FixedTimeEquals(Encoding.UTF8.GetBytes(decoded[..colon]), Encoding.UTF8.GetBytes(username));
        var passOk = CryptographicOperations.FixedTimeEquals(Encoding.UTF8.GetBytes(decoded[(colon + 1)..]), Encoding.UTF8.GetBytes(password));
        return userOk & passOk;
    }

    /// <summary>"platform base64(json)" → "platform {json}"; never fails a request.</summary>
    internal static string OriginatingIdentity(string header)
    {
        if (string.IsNullOrWhiteSpace(header)) return "(no originating identity)";
        var parts = header.Split(' ', 2, StringSplitOptions.RemoveEmptyEntries);
        if (parts.Length < 2) return parts[0];
        try { return $"{parts[0]} {Encoding.UTF8.GetString(Convert.FromBase64String(parts[1]))}"; }
        catch (FormatException) { return $"{parts[0]} (undecodable identity)"; }
    }
}
