using System.Net;
using System.Net.Http;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Cryptography.X509Certificates;
using System.Text.Json;
using Dingo.Config;
using Docker.DotNet;
using Docker.DotNet.X509;

namespace Dingo.Cells;

/// <summary>
/// The container engine could not do what was asked for a reason outside the node: unreachable, a missing image,
/// no space. The message says which engine and what to do; the cell shows it as the node's detail.
/// </summary>
public sealed class ContainerEngineException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>Connects to a Docker Engine API endpoint (Docker, or podman's compatible service) and names its failures.</summary>
internal static class DockerEngine
{
    /// <summary>A client for unix:///path or tcp://host:port; TLS with a client certificate when one is configured.</summary>
    public static DockerClient Connect(DockerSettings settings)
    {
        var uri = new Uri(settings.Endpoint);
        Credentials? credentials = null;
        if (settings.TlsCert.Length > 0)
            credentials = new CertificateCredentials(ClientCertificate(settings)) { ServerCertificateValidationCallback = EngineCertificateCheck(settings) };
        // Calls carry their own deadlines (see DockerRuntime); this is only the outer bound.
        var configuration = new DockerClientConfiguration(uri, credentials, TimeSpan.FromMinutes(60));
        return configuration.CreateClient();
    }

    /// <summary>
    /// A plain HTTP client of the same endpoint, for the engine's calls Docker.DotNet does not make (podman's own libpod
    /// API): a unix socket, or TCP with the same client certificate and CA as <see cref="Connect"/>.
    /// </summary>
    public static HttpClient Http(DockerSettings settings)
    {
        var uri = new Uri(settings.Endpoint);
        var handler = new SocketsHttpHandler { PooledConnectionIdleTimeout = TimeSpan.FromSeconds(30) };
        if (uri.Scheme == "unix")
        {
            var path = uri.AbsolutePath;
            handler.ConnectCallback = async (_, ct) =>
            {
                var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                try
                {
                    await socket.ConnectAsync(new UnixDomainSocketEndPoint(path), ct).ConfigureAwait(false);
                    return new NetworkStream(socket, ownsSocket: true);
                }
                catch
                {
                    socket.Dispose();
                    throw;
                }
            };
            return new HttpClient(handler) { BaseAddress = new Uri("http://engine/"), Timeout = Timeout.InfiniteTimeSpan };
        }
        var scheme = "http";
        if (settings.TlsCert.Length > 0)
        {
            scheme = "https";
            handler.SslOptions.ClientCertificates = [ClientCertificate(settings)];
            handler.SslOptions.RemoteCertificateValidationCallback = EngineCertificateCheck(settings);
        }
        return new HttpClient(handler) { BaseAddress = new Uri($"{scheme}://{uri.Host}:{uri.Port}/"), Timeout = Timeout.InfiniteTimeSpan };
    }

    /// <summary>This cell's client certificate (`tls.cert`, `tls.key`).</summary>
    private static X509Certificate2 ClientCertificate(DockerSettings settings)
    {
        var client = X509Certificate2.CreateFromPemFile(settings.TlsCert, settings.TlsKey);
        // An ephemeral PEM key cannot always be presented by SslStream: round-trip through PKCS#12.
        return X509CertificateLoader.LoadPkcs12(client.Export(X509ContentType.Pkcs12), null);
    }

    /// <summary>With `tls.ca`: the engine's certificate must chain to it; without: the system's trust (null).</summary>
    private static RemoteCertificateValidationCallback? EngineCertificateCheck(DockerSettings settings)
    {
        if (settings.TlsCa.Length == 0) return null;
        var ca = X509CertificateLoader.LoadCertificateFromFile(settings.TlsCa);
        return (_, certificate, _, errors) => ValidAgainst(ca, certificate, errors);
    }

    /// <summary>The engine's certificate must chain to the configured CA (Docker's --tlsverify), whatever the system trusts.</summary>
    private static bool ValidAgainst(X509Certificate2 ca, X509Certificate? presented, SslPolicyErrors errors)
    {
        if (presented is null || (errors & SslPolicyErrors.RemoteCertificateNotAvailable) != 0) return false;
        using var chain = new X509Chain();
        chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        chain.ChainPolicy.CustomTrustStore.Add(ca);
        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
        using var certificate = new X509Certificate2(presented);
        return chain.Build(certificate);
    }

    /// <summary>The engine did not answer: connection refused, socket missing, TLS failure, or our deadline passed.</summary>
    public static bool Unreachable(Exception ex, CancellationToken caller) =>
        ex is HttpRequestException or SocketException or IOException or TimeoutException or System.Security.Authentication.AuthenticationException
        || (ex is OperationCanceledException && !caller.IsCancellationRequested)
        || (ex.InnerException is { } inner && Unreachable(inner, caller));

    /// <summary>The engine's own words from an error response ({"message": "..."}), else the status code.</summary>
    public static string Said(DockerApiException ex)
    {
        try
        {
            using var doc = JsonDocument.Parse(ex.ResponseBody);
            if (doc.RootElement.TryGetProperty("message", out var message) && message.GetString() is { Length: > 0 } text) return text;
        }
        catch (JsonException)
        {
        }
        return string.IsNullOrWhiteSpace(ex.ResponseBody) ? $"HTTP {(int)ex.StatusCode}" : ex.ResponseBody.Trim();
    }

    public static bool IsNotFound(DockerApiException ex) => ex.StatusCode == HttpStatusCode.NotFound;

    public static string Innermost(Exception ex)
    {
        while (ex.InnerException is not null) ex = ex.InnerException;
        return ex.Message;
    }
}
