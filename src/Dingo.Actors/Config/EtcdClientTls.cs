using System.Net.Security;
using System.Security.Cryptography.X509Certificates;
using Dingo.Security;

namespace Dingo.Config;

/// <summary>
/// What an etcd client presents and trusts over https:// endpoints, loaded once from `dingo.etcd.tls`: the CA that signed
/// etcd's server certificates (trusted alone: the system's store is not asked) and this process's client certificate.
/// </summary>
public sealed class EtcdClientTls
{
    private EtcdClientTls(X509Certificate2Collection trusted, X509Certificate2? certificate, X509Certificate2Collection? chain)
    {
        Trusted = trusted;
        Certificate = certificate;
        Chain = chain;
    }

    public X509Certificate2Collection Trusted { get; }
    public X509Certificate2? Certificate { get; }
    private X509Certificate2Collection? Chain { get; }

    /// <summary>The files of <paramref name="settings"/>, or null when none is set. Throws naming the setting of a file it cannot use.</summary>
    public static EtcdClientTls? Load(EtcdTlsSettings settings)
    {
        if (!settings.Configured) return null;
        if (settings.CaFile.Length == 0)
            throw new ArgumentException("dingo.etcd.tls.ca-file (DINGO_ETCD_CA_FILE) is required with a client certificate: the CA that signed etcd's server certificates");
        var trusted = PemTls.LoadCertificates(settings.CaFile, "dingo.etcd.tls.ca-file");
        X509Certificate2? certificate = null;
        X509Certificate2Collection? chain = null;
        if (settings.CertFile.Length > 0)
            certificate = PemTls.LoadCertificateWithKey(settings.CertFile, settings.KeyFile, "dingo.etcd.tls.cert-file", "dingo.etcd.tls.key-file", out chain);
        return new EtcdClientTls(trusted, certificate, chain);
    }

    /// <summary>For the handler of one channel: a fresh options object each time (SocketsHttpHandler takes ownership).</summary>
    internal SslClientAuthenticationOptions ClientOptions() => PemTls.ClientOptions(Trusted, Certificate, Chain);
}
