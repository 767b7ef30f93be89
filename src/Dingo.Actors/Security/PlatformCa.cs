using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Dingo.Security;

/// <summary>
/// The platform's certificate authority for PostgreSQL: one per platform (made at first need, or given by the
/// operator), it signs every node's server certificate, and clients verify nodes (through the routers, or directly for
/// replication) against its certificate. Only cells and brokers hold its key, sealed in etcd (<see cref="PlatformCaStore"/>).
/// </summary>
public sealed class PlatformCa : IDisposable
{
    private static readonly Oid ServerAuth = new("1.3.6.1.5.5.7.3.1");
    private static readonly Oid ClientAuth = new("1.3.6.1.5.5.7.3.2");

    private readonly X509Certificate2 _certificate;

    private PlatformCa(X509Certificate2 certificate, string certificatePem)
    {
        _certificate = certificate;
        CertificatePem = certificatePem;
    }

    /// <summary>The CA's certificate (public): what bindings carry as `ca_certificate` and nodes as ssl_ca_file.</summary>
    public string CertificatePem { get; }

    public DateTimeOffset NotAfter => _certificate.NotAfter.ToUniversalTime();

    /// <summary>SHA-256 of the certificate, hex: names this CA in logs without anything secret.</summary>
    /// <remarks>Computed once: every node's certificate is checked against it on every cell pass (a hash per node a second).</remarks>
    public string Fingerprint => _fingerprint ??= _certificate.GetCertHashString(HashAlgorithmName.SHA256);

    private string? _fingerprint;

    /// <summary>The <see cref="Fingerprint"/> of a CA known only by its certificate (as etcd holds it for every process).</summary>
    public static string FingerprintOf(string certificatePem)
    {
        using var certificate = X509Certificate2.CreateFromPem(certificatePem);
        return certificate.GetCertHashString(HashAlgorithmName.SHA256);
    }

    /// <summary>The CA's subject: what a server asking for client certificates names as an acceptable issuer.</summary>
    public X500DistinguishedName Subject => _certificate.SubjectName;

    /// <summary>The CA's certificate without its key, to trust or compare with.</summary>
    public X509Certificate2 PublicCertificate() => X509CertificateLoader.LoadCertificate(_certificate.RawData);

    /// <summary>A new self-signed CA with an ECDSA P-256 key.</summary>
    public static PlatformCa Create(string name, DateTimeOffset now, TimeSpan validity)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest(new X500DistinguishedName($"CN={Escape(name)}, O=Dingo PostgreSQL"), key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, true, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, false));
        using var self = request.CreateSelfSigned(now.AddMinutes(-5), now + validity);
        var pem = self.ExportCertificatePem();
        return new PlatformCa(X509Certificate2.CreateFromPem(pem, key.ExportPkcs8PrivateKeyPem()), pem);
    }

    /// <summary>A CA from its certificate and private key in PEM (ECDSA or RSA), as stored or as an operator gives it.</summary>
    /// <exception cref="CryptographicException">not PEM, the key does not match the certificate, or the certificate is no CA</exception>
    public static PlatformCa FromPem(string certificatePem, string keyPem)
    {
        X509Certificate2 cert;
        try
        {
            cert = X509Certificate2.CreateFromPem(certificatePem, keyPem);
        }
        catch (Exception ex) when (ex is ArgumentException or CryptographicException)
        {
            throw new CryptographicException($"the platform CA's certificate and key do not form a pair (both PEM, the key unencrypted): {ex.Message}", ex);
        }
        if (cert.Extensions.OfType<X509BasicConstraintsExtension>().FirstOrDefault() is not { CertificateAuthority: true })
        {
            var subject = cert.Subject;
            cert.Dispose();
            throw new CryptographicException($"the platform CA's certificate ({subject}) is not a CA certificate (basic constraints CA:TRUE)");
        }
        return new PlatformCa(cert, cert.ExportCertificatePem());
    }

    /// <summary>The CA's private key, PKCS#8 PEM: only ever stored sealed.</summary>
    public string ExportKeyPem() =>
        (_certificate.GetECDsaPrivateKey() as AsymmetricAlgorithm ?? _certificate.GetRSAPrivateKey())?.ExportPkcs8PrivateKeyPem()
        ?? throw new CryptographicException("the platform CA has no private key");

    /// <summary>
    /// A server certificate for a node, valid for every host a client may reach it by (DNS names and IP addresses as
    /// subject alternative names; libpq's verify-full checks them). A fresh ECDSA P-256 key each time.
    /// </summary>
    public NodeCertificate Issue(string commonName, IEnumerable<string> hosts, DateTimeOffset now, TimeSpan validity)
    {
        var names = hosts.Select(h => h.Trim()).Where(h => h.Length > 0).Distinct(StringComparer.OrdinalIgnoreCase).Order(StringComparer.Ordinal).ToList();
        if (names.Count == 0) throw new ArgumentException("a node certificate needs at least one host", nameof(hosts));
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest(new X500DistinguishedName($"CN={Escape(commonName)}, O=Dingo PostgreSQL"), key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature | X509KeyUsageFlags.KeyAgreement, true));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([ServerAuth, ClientAuth], false));
        var san = new SubjectAlternativeNameBuilder();
        foreach (var host in names)
        {
            if (IPAddress.TryParse(host.Trim('[', ']'), out var ip)) san.AddIpAddress(ip);
            else san.AddDnsName(host);
        }
        request.CertificateExtensions.Add(san.Build());
        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, false));
        request.CertificateExtensions.Add(X509AuthorityKeyIdentifierExtension.CreateFromCertificate(_certificate, true, false));
        return Sign(request, key, names, now, validity);
    }

    /// <summary>
    /// A client certificate for the platform's own logins (superuser, replication) to nodes that ask for one
    /// (`clientcert=verify-ca` with `dingo.postgres.require-tls`): client authentication only, no host names. Whoever
    /// holds one proves it got it from a holder of the CA's key, a cell or a broker; applications never get one.
    /// </summary>
    public NodeCertificate IssueClient(string commonName, DateTimeOffset now, TimeSpan validity)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest(new X500DistinguishedName($"CN={Escape(commonName)}, O=Dingo PostgreSQL"), key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature, true));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([ClientAuth], false));
        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, false));
        request.CertificateExtensions.Add(X509AuthorityKeyIdentifierExtension.CreateFromCertificate(_certificate, true, false));
        return Sign(request, key, [], now, validity);
    }

    private NodeCertificate Sign(CertificateRequest request, ECDsa key, IReadOnlyList<string> hosts, DateTimeOffset now, TimeSpan validity)
    {
        var notBefore = now.AddMinutes(-5); // a little clock skew between hosts
        var notAfter = now + validity < NotAfter ? now + validity : NotAfter;
        var serial = RandomNumberGenerator.GetBytes(16);
        serial[0] &= 0x7F;
        using var cert = _certificate.GetECDsaPrivateKey() is { } ecdsa
            ? request.Create(_certificate.SubjectName, X509SignatureGenerator.CreateForECDsa(ecdsa), notBefore, notAfter, serial)
            : request.Create(_certificate.SubjectName, X509SignatureGenerator.CreateForRSA(_certificate.GetRSAPrivateKey()!, RSASignaturePadding.Pkcs1), notBefore, notAfter, serial);
        return new NodeCertificate(cert.ExportCertificatePem(), key.ExportPkcs8PrivateKeyPem(), notBefore, notAfter, hosts, Fingerprint);
    }

    /// <summary>Whether a certificate (PEM) chains to this CA and only to it (the system's roots play no part).</summary>
    public bool Verifies(string certificatePem, DateTimeOffset at)
    {
        using var leaf = X509Certificate2.CreateFromPem(certificatePem);
        return Verifies(leaf, at);
    }

    /// <summary>Whether a certificate chains to this CA and only to it (the system's roots play no part).</summary>
    public bool Verifies(X509Certificate2 leaf, DateTimeOffset at) => Chains(_certificate, leaf, at);

    /// <summary>Whether <paramref name="leaf"/> chains to <paramref name="ca"/> alone (the system's roots play no part;
    /// private CAs publish no revocation lists: a CA compromised is replaced).</summary>
    public static bool Chains(X509Certificate2 ca, X509Certificate2 leaf, DateTimeOffset? at = null)
    {
        using var chain = new X509Chain();
        chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        chain.ChainPolicy.CustomTrustStore.Add(ca);
        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
        if (at is { } when) chain.ChainPolicy.VerificationTime = when.UtcDateTime;
        return chain.Build(leaf);
    }

    private static string Escape(string value) => value.Replace("\"", "", StringComparison.Ordinal).Replace(",", " ", StringComparison.Ordinal).Replace("=", " ", StringComparison.Ordinal);

    public void Dispose() => _certificate.Dispose();

    public override string ToString() => $"platform CA {_certificate.Subject} (sha256 {Fingerprint}, until {NotAfter:yyyy-MM-dd})";
}

/// <summary>A node's server certificate and key (PEM), what it was issued for, and by which CA (fingerprint).</summary>
public sealed record NodeCertificate(string CertificatePem, string KeyPem, DateTimeOffset NotBefore, DateTimeOffset NotAfter, IReadOnlyList<string> Hosts, string CaFingerprint)
{
    /// <summary>
    /// Due for a new one: issued for other hosts or by another CA, or past two thirds of its life (so a cell that is away
    /// for a while still renews long before it expires).
    /// </summary>
    public bool DueFor(IReadOnlyCollection<string> hosts, string caFingerprint, DateTimeOffset now) =>
        caFingerprint != CaFingerprint
        || !hosts.Select(h => h.Trim()).Where(h => h.Length > 0).Distinct(StringComparer.OrdinalIgnoreCase).Order(StringComparer.Ordinal).SequenceEqual(Hosts, StringComparer.Ordinal)
        || now >= NotBefore + (NotAfter - NotBefore) * 2 / 3;

    /// <summary>The certificate with its key, ready for SslStream (a key from PEM is ephemeral; a PKCS#12 round-trip gives
    /// one it can always present).</summary>
    public X509Certificate2 WithKey()
    {
        using var pem = X509Certificate2.CreateFromPem(CertificatePem, KeyPem);
        return X509CertificateLoader.LoadPkcs12(pem.Export(X509ContentType.Pkcs12), null);
    }

    // Never print the key.
    public override string ToString() => $"node certificate for {string.Join(", ", Hosts)} until {NotAfter:yyyy-MM-dd}";
}
