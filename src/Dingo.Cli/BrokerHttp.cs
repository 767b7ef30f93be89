using Dingo.Config;
using Dingo.Security;

namespace Dingo.Cli;

/// <summary>
/// The console's HTTP client for the broker: over https:// it trusts only the CA of `dingo.broker.tls.ca-file` when one
/// is set (a platform's own CA), else the system's store (a broker behind a load balancer with a public certificate).
/// </summary>
internal static class BrokerHttp
{
    public static HttpClient Create(DingoSettings settings, TimeSpan timeout)
    {
        var handler = new SocketsHttpHandler();
        if (settings.Broker.TlsCaFile.Length > 0)
            handler.SslOptions = PemTls.ClientOptions(PemTls.LoadCertificates(settings.Broker.TlsCaFile, "dingo.broker.tls.ca-file"), clientCertificate: null);
        return new HttpClient(handler) { BaseAddress = new Uri(settings.Broker.Url), Timeout = timeout };
    }
}
