using Dingo.Postgres;

namespace Dingo.Ha;

/// <summary>How a node's agent talks to the other members' health APIs (failsafe asks, WAL positions before taking the key).</summary>
internal static class MemberHttp
{
    // With require-tls the members' health APIs take HTTPS only; their certificates are checked against the platform
    // CAs this process trusts (PlatformConnectionTls), as its PostgreSQL connections do.
    public static readonly HttpClient Client = new(new SocketsHttpHandler
    {
        UseProxy = false,
        ConnectTimeout = TimeSpan.FromSeconds(1),
        SslOptions = new System.Net.Security.SslClientAuthenticationOptions
        {
            EnabledSslProtocols = Dingo.Security.PemTls.Protocols,
            RemoteCertificateValidationCallback = (_, certificate, _, _) => certificate is not null && PlatformConnectionTls.VerifiesNode(certificate),
        },
    });
}
