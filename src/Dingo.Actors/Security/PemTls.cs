using System.Net.Security;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Dingo.Security;

/// <summary>
/// PEM certificates and keys named by settings, and TLS client options that trust one CA only: the shared part of
/// etcd's client (dingo.etcd.tls), the broker's listener (dingo.broker.tls) and the console's broker client. Every
/// failure names the setting whose file it was, and never includes key material.
/// </summary>
public static class PemTls
{
    /// <summary>TLS 1.2 and 1.3; nothing older.</summary>
    public const SslProtocols Protocols = SslProtocols.Tls12 | SslProtocols.Tls13;

    /// <summary>The certificates of a PEM file (a CA, or a bundle of them). <paramref name="setting"/> names it in errors.</summary>
    public static X509Certificate2Collection LoadCertificates(string file, string setting)
    {
        var certificates = new X509Certificate2Collection();
        try
        {
            certificates.ImportFromPemFile(file);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or CryptographicException)
        {
            throw new ArgumentException($"{setting}: cannot read certificates from {file}: {ex.Message}", ex);
        }
        if (certificates.Count == 0) throw new ArgumentException($"{setting}: {file} holds no PEM certificate (-----BEGIN CERTIFICATE-----)");
        return certificates;
    }

    /// <summary>
    /// A certificate with its private key, from a PEM certificate file (the leaf first, then any intermediates) and a
    /// PEM key file (unencrypted PKCS#8, PKCS#1 or SEC1). The intermediates come back as <paramref name="chain"/>.
    /// </summary>
    public static X509Certificate2 LoadCertificateWithKey(string certFile, string keyFile, string certSetting, string keySetting,
        out X509Certificate2Collection chain)
    {
        var all = LoadCertificates(certFile, certSetting);
        string key;
        try
        {
            key = File.ReadAllText(keyFile);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new ArgumentException($"{keySetting}: cannot read {keyFile}: {ex.Message}", ex);
        }
        try
        {
            using var leaf = X509Certificate2.CreateFromPem(File.ReadAllText(certFile), key);
            // A key from PEM is ephemeral; a PKCS#12 round-trip gives one SslStream can always present.
            var withKey = X509CertificateLoader.LoadPkcs12(leaf.Export(X509ContentType.Pkcs12), null);
            chain = new X509Certificate2Collection();
            foreach (var certificate in all.Skip(1)) chain.Add(certificate);
            return withKey;
        }
        catch (Exception ex) when (ex is CryptographicException or ArgumentException)
        {
            // The exception's own text says "the key does not match" or "no private key" without quoting the key.
            throw new ArgumentException($"{keySetting}: {keyFile} is not the unencrypted PEM private key of {certSetting} {certFile}: {ex.Message}", ex);
        }
    }

    /// <summary>
    /// Client options that accept a server only when its certificate chains to one of <paramref name="trusted"/> (not the
    /// system's store) and names the host connected to; present <paramref name="clientCertificate"/> when given.
    /// </summary>
    public static SslClientAuthenticationOptions ClientOptions(X509Certificate2Collection trusted, X509Certificate2? clientCertificate,
        X509Certificate2Collection? clientChain = null)
    {
        var policy = new X509ChainPolicy
        {
            TrustMode = X509ChainTrustMode.CustomRootTrust,
            // Private CAs publish no revocation lists; a CA compromised is replaced (docs/security.md).
            RevocationMode = X509RevocationMode.NoCheck,
        };
        policy.CustomTrustStore.AddRange(trusted);
        var options = new SslClientAuthenticationOptions
        {
            EnabledSslProtocols = Protocols,
            // The chain policy replaces the system store; the default validation still checks the host name.
            CertificateChainPolicy = policy,
        };
        if (clientCertificate is not null)
        {
            // Always presented (not chosen by the server's list of acceptable issuers): a server that refuses it says so.
            options.ClientCertificateContext = SslStreamCertificateContext.Create(clientCertificate, clientChain, offline: true);
        }
        return options;
    }
}
