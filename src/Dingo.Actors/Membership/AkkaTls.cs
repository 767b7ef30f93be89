using System.Net.Security;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Akka.Actor.Setup;
using Akka.Event;
using Dingo.Config;

namespace Dingo.Membership;

/// <summary>
/// Akka remoting over mutual TLS with the platform's own CA (dingo.akka.tls).
///
/// <see cref="TlsTransport"/> does the TLS (<see cref="Hocon"/> names it, <see cref="Setup"/> hands it this identity):
/// the listening side asks every connecting side for a certificate and both sides present theirs, and each accepts the
/// other only when its certificate chains to the CA named in dingo.akka.tls.ca (and to nothing else: the system's CAs
/// are not trusted here). Host names are not checked: members connect by IP address and a
/// certificate is a platform credential, not a host name's proof. A process without a certificate from that CA can
/// neither join the cluster nor reach a broker's console gateway (which also asks for the operator's credentials).
/// </summary>
public sealed class AkkaTls : IDisposable
{
    private readonly X509Certificate2Collection _authorities;

    private AkkaTls(X509Certificate2 certificate, X509Certificate2Collection authorities)
    {
        Certificate = certificate;
        _authorities = authorities;
    }

    /// <summary>This process's certificate (with its private key).</summary>
    public X509Certificate2 Certificate { get; }

    /// <summary>How every refusal this validator logs begins.</summary>
    public const string RefusalPrefix = "Akka TLS: refused ";

    /// <summary>The transport settings TLS needs beside the setup: Dingo's own TLS transport, speaking akka.ssl.tcp.</summary>
    public const string Hocon = "akka.remote.dot-netty.tcp.transport-class = \"Dingo.Membership.TlsTransport, Dingo.Actors\"";

    /// <summary>
    /// Reads the certificate, its key and the CA from the files dingo.akka.tls names; null when TLS is off. Throws
    /// <see cref="ArgumentException"/> naming the setting when a file is missing or is not what it should be.
    /// </summary>
    public static AkkaTls? Load(AkkaTlsSettings settings)
    {
        if (!settings.Enabled) return null;
        X509Certificate2 certificate;
        try
        {
            var password = settings.PasswordFile.Length == 0 ? null : ReadPassword(settings.PasswordFile);
            certificate = LoadCertificate(settings, password);
        }
        catch (Exception ex) when (ex is UnauthorizedAccessException or IOException)
        {
            throw new ArgumentException($"dingo.akka.tls: cannot read {settings.Certificate}, its key or its password file as this user: {ex.Message}", ex);
        }
        if (!certificate.HasPrivateKey)
            throw new ArgumentException($"dingo.akka.tls.certificate: {settings.Certificate} holds no private key (a PEM certificate takes its key from dingo.akka.tls.key, DINGO_AKKA_TLS_KEY)");
        var authorities = new X509Certificate2Collection();
        Exists(settings.Ca, "ca", "DINGO_AKKA_TLS_CA");
        try { authorities.ImportFromPemFile(settings.Ca); }
        catch (CryptographicException ex) { throw new ArgumentException($"dingo.akka.tls.ca: {settings.Ca} is not a PEM certificate file: {ex.Message}", ex); }
        if (authorities.Count == 0) throw new ArgumentException($"dingo.akka.tls.ca: {settings.Ca} holds no PEM certificate");
        var tls = new AkkaTls(certificate, authorities);
        // Our own certificate must pass the check we apply to peers: a host given a certificate of another CA would
        // otherwise start and then be refused by everyone, with the reason only in the other side's log.
        if (tls.ChainError(certificate) is { } error)
            throw new ArgumentException($"dingo.akka.tls.certificate: {settings.Certificate} does not chain to the CA in dingo.akka.tls.ca ({settings.Ca}): {error}");
        return tls;
    }

    /// <summary>The actor system's setup <see cref="TlsTransport"/> reads: this process's certificate and the platform CA.</summary>
    public Setup Setup() => new AkkaTlsSetup(this);

    /// <summary>Why <paramref name="certificate"/> does not chain to the platform CA, or null when it does.</summary>
    public string? ChainError(X509Certificate2 certificate)
    {
        using var chain = new X509Chain();
        chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        chain.ChainPolicy.CustomTrustStore.AddRange(_authorities);
        // A private CA publishes no revocation list: a host's certificate is withdrawn by replacing the CA (docs/security.md).
        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
        chain.ChainPolicy.VerificationFlags = X509VerificationFlags.NoFlag;
        if (chain.Build(certificate)) return null;
        var reasons = chain.ChainStatus.Select(s => s.StatusInformation.Trim()).Where(s => s.Length > 0).Distinct();
        return string.Join("; ", reasons) is { Length: > 0 } text ? text : "not issued by that CA";
    }

    /// <summary>Whether a peer's certificate is one of the platform CA's; a refusal is logged with its reason.</summary>
    internal bool Accepts(X509Certificate2? certificate, SslPolicyErrors errors, string peer, ILoggingAdapter log)
    {
        // errors reflect the system's CA store and host names, neither of which decides here: only our chain does.
        if (certificate is null || errors.HasFlag(SslPolicyErrors.RemoteCertificateNotAvailable))
        {
            log.Warning(RefusalPrefix + "{0}: it presented no certificate", peer);
            return false;
        }
        if (ChainError(certificate) is { } error)
        {
            log.Warning(RefusalPrefix + "{0}: its certificate {1} does not chain to the platform CA ({2})", peer, certificate.Subject, error);
            return false;
        }
        return true;
    }

    private static X509Certificate2 LoadCertificate(AkkaTlsSettings settings, string? password)
    {
        Exists(settings.Certificate, "certificate", "DINGO_AKKA_TLS_CERTIFICATE");
        var pem = File.ReadAllText(settings.Certificate).Contains("-----BEGIN", StringComparison.Ordinal);
        try
        {
            if (!pem) return X509CertificateLoader.LoadPkcs12FromFile(settings.Certificate, password);
            var key = settings.Key.Length > 0 ? settings.Key : settings.Certificate;
            if (settings.Key.Length > 0) Exists(settings.Key, "key", "DINGO_AKKA_TLS_KEY");
            using var loaded = password is null
                ? X509Certificate2.CreateFromPemFile(settings.Certificate, key)
                : X509Certificate2.CreateFromEncryptedPemFile(settings.Certificate, password, key);
            // A key read from PEM is ephemeral; TLS wants it as a PKCS#12 import would leave it.
            return X509CertificateLoader.LoadPkcs12(loaded.Export(X509ContentType.Pkcs12), null);
        }
        catch (CryptographicException ex)
        {
            var what = pem ? $"a PEM certificate with its key ({(settings.Key.Length > 0 ? settings.Key : "in the same file")})" : "a PKCS#12 file";
            throw new ArgumentException($"dingo.akka.tls.certificate: {settings.Certificate} could not be read as {what}: {ex.Message}" +
                (password is null ? "" : " (is the password in dingo.akka.tls.password-file right?)"), ex);
        }
    }

    private static string ReadPassword(string file)
    {
        Exists(file, "password-file", "DINGO_AKKA_TLS_PASSWORD_FILE");
        return File.ReadAllText(file).TrimEnd('\r', '\n');
    }

    private static void Exists(string path, string setting, string variable)
    {
        if (!File.Exists(path))
            throw new ArgumentException($"dingo.akka.tls.{setting} ({variable}): {path} does not exist" +
                (Directory.Exists(path) ? " as a file (it is a folder)" : "") + " (docs/security.md, \"Akka remoting over TLS\")");
    }

    public void Dispose()
    {
        Certificate.Dispose();
        foreach (var authority in _authorities) authority.Dispose();
    }
}
