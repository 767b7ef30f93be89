using System.Security.Cryptography;
using System.Text;
using Dingo.Config;

namespace Dingo.Broker.Osb;

/// <summary>
/// Checks every /v2 and /admin request before any body is read: Basic auth (401), then
/// X-Broker-API-Version (412). Logs the originating identity of every request it lets through.
/// </summary>
public sealed class OsbMiddleware(RequestDelegate next, BrokerSettings settings, ILogger<OsbMiddleware> logger)
{
    private static readonly HashSet<string> SupportedVersions = ["2.13", "2.14", "2.15", "2.16", "2.17"];

    public async Task InvokeAsync(HttpContext context)
    {
        var path = context.Request.Path;
        var isOsb = path.StartsWithSegments("/v2");
        if (!isOsb && !path.StartsWithSegments("/admin"))
        {
            await next(context);
            return;
        }
        if (!Authorised(context.Request.Headers.Authorization.ToString()))
        {
            context.Response.Headers.WWWAuthenticate = "Basic realm=\"dingo\"";
            await OsbResult.Error(401, "Unauthorized", "missing or wrong broker credentials").ToResult().ExecuteAsync(context);
            return;
        }
        if (isOsb)
        {
            var version = context.Request.Headers["X-Broker-API-Version"].ToString().Trim();
            if (!SupportedVersions.Contains(version))
            {
                var got = version.Length == 0 ? "no X-Broker-API-Version header" : $"X-Broker-API-Version '{version}'";
                await OsbResult.Error(412, "PreconditionFailed", $"{got}: this broker speaks OSB API 2.13 to 2.17").ToResult().ExecuteAsync(context);
                return;
            }
        }
        var identity = OriginatingIdentity(context.Request.Headers["X-Broker-API-Originating-Identity"].ToString());
        logger.LogInformation("{Method} {Path} from {Identity}", context.Request.Method, path.Value, identity);
        await next(context);
    }

    private bool Authorised(string header)
    {
        if (!header.StartsWith("Basic ", StringComparison.OrdinalIgnoreCase)) return false;
        string decoded;
        try { decoded = Encoding.UTF8.GetString(Convert.FromBase64String(header[6..].Trim())); }
        catch (FormatException) { return false; }
        var colon = decoded.IndexOf(':');
        if (colon < 0) return false;
        // Constant-time comparison: response timing must not reveal how much of a guess was right.
        var userOk = CryptographicOperations.FixedTimeEquals(Encoding.UTF8.GetBytes(decoded[..colon]), Encoding.UTF8.GetBytes(settings.Username));
        var passOk = CryptographicOperations.FixedTimeEquals(Encoding.UTF8.GetBytes(decoded[(colon + 1)..]), Encoding.UTF8.GetBytes(settings.Password));
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
