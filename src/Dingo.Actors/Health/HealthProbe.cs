using System.Net;
using System.Net.Security;
using System.Security.Cryptography.X509Certificates;

namespace Dingo.Health;

/// <summary>
/// `Dingo.Broker.dll probe` / `Dingo.Cell.dll probe`: one GET of the process's own /readyz, exit 0 when it answers 2xx,
/// else 1 with the answer (or the error) on stderr. What a container's HEALTHCHECK runs: the runtime images carry no
/// curl. No credentials are sent. A loopback https:// URL is not checked against a CA (the certificate names the
/// host's public names, not 127.0.0.1, and nothing off the host can stand in for loopback); any other URL is, against
/// <paramref name="trust"/> alone when given (a cell's certificate of the platform CA), else against the system's roots.
/// </summary>
public static class HealthProbe
{
    public static async Task<int> RunAsync(Uri url, TextWriter error, TimeSpan timeout, X509Certificate2? trust = null)
    {
        ArgumentNullException.ThrowIfNull(url);
        using var handler = new HttpClientHandler();
        if (trust is not null)
            handler.ServerCertificateCustomValidationCallback = (_, certificate, _, errors) =>
                certificate is not null && (errors & ~SslPolicyErrors.RemoteCertificateChainErrors) == SslPolicyErrors.None
                && Dingo.Security.PlatformCa.Chains(trust, certificate);
        else if (url.Scheme == Uri.UriSchemeHttps && IPAddress.TryParse(url.Host.Trim('[', ']'), out var ip) && IPAddress.IsLoopback(ip))
            handler.ServerCertificateCustomValidationCallback = static (_, _, _, _) => true;
        using var http = new HttpClient(handler) { Timeout = timeout };
        try
        {
            using var response = await http.GetAsync(url).ConfigureAwait(false);
            if (response.IsSuccessStatusCode) return 0;
            var body = await response.Content.ReadAsStringAsync().ConfigureAwait(false);
            await error.WriteLineAsync($"{url}: {(int)response.StatusCode} {body}").ConfigureAwait(false);
            return 1;
        }
        catch (Exception ex) when (ex is HttpRequestException or TaskCanceledException)
        {
            await error.WriteLineAsync($"{url}: {ex.Message}").ConfigureAwait(false);
            return 1;
        }
    }
}
