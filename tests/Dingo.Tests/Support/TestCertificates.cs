using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Dingo.Tests.Support;

/// <summary>
/// A certificate authority made in the test (ECDSA P-256, valid for a day) that issues server and client certificates
/// as PEM files in a folder of its own, each created 0600.
/// </summary>
public sealed class TestCertificates : IDisposable
{
    private readonly X509Certificate2 _ca;

    private TestCertificates(string folder, string name, X509Certificate2 ca)
    {
        Folder = folder;
        _ca = ca;
        CaFile = Path.Combine(folder, name + "-ca.pem");
        Write(CaFile, ca.ExportCertificatePem());
    }

    public string Folder { get; }
    /// <summary>The CA's certificate (PEM), what a peer trusts.</summary>
    public string CaFile { get; }

    public static TestCertificates NewAuthority(string name)
    {
        var folder = Directory.CreateTempSubdirectory($"dingo-{name}-").FullName;
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest($"CN=Dingo test CA {name}", key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, false));
        var ca = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddMinutes(-5), DateTimeOffset.UtcNow.AddDays(1));
        return new TestCertificates(folder, name, ca);
    }

    /// <summary>A certificate for a server at <paramref name="addresses"/> / <paramref name="names"/> (and a client: etcd peers are both).</summary>
    public (string CertFile, string KeyFile) IssueServer(string name, IEnumerable<IPAddress> addresses, IEnumerable<string>? names = null)
    {
        var san = new SubjectAlternativeNameBuilder();
        foreach (var address in addresses) san.AddIpAddress(address);
        foreach (var dns in names ?? []) san.AddDnsName(dns);
        return Issue(name, san.Build(), [new Oid("1.3.6.1.5.5.7.3.1"), new Oid("1.3.6.1.5.5.7.3.2")]);
    }

    /// <summary>A client certificate with common name <paramref name="name"/> (etcd takes it as the user when auth is on).</summary>
    public (string CertFile, string KeyFile) IssueClient(string name) => Issue(name, null, [new Oid("1.3.6.1.5.5.7.3.2")]);

    private (string CertFile, string KeyFile) Issue(string name, X509Extension? san, OidCollection usages)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest($"CN={name}", key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature | X509KeyUsageFlags.KeyAgreement, true));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension(usages, false));
        request.CertificateExtensions.Add(X509AuthorityKeyIdentifierExtension.CreateFromSubjectKeyIdentifier(_ca.Extensions.OfType<X509SubjectKeyIdentifierExtension>().Single()));
        if (san is not null) request.CertificateExtensions.Add(san);
        var serial = RandomNumberGenerator.GetBytes(16);
        serial[0] &= 0x7f;
        using var certificate = request.Create(_ca, DateTimeOffset.UtcNow.AddMinutes(-5), DateTimeOffset.UtcNow.AddHours(12), serial);
        var certFile = Path.Combine(Folder, name + ".pem");
        var keyFile = Path.Combine(Folder, name + "-key.pem");
        Write(certFile, certificate.ExportCertificatePem());
        Write(keyFile, key.ExportPkcs8PrivateKeyPem());
        return (certFile, keyFile);
    }

    private static void Write(string path, string pem)
    {
        using var file = new FileStream(path, new FileStreamOptions
        {
            Mode = FileMode.CreateNew,
            Access = FileAccess.Write,
            UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite,
        });
        using var writer = new StreamWriter(file);
        writer.Write(pem);
    }

    public void Dispose()
    {
        _ca.Dispose();
        try { Directory.Delete(Folder, recursive: true); }
        catch (DirectoryNotFoundException) { }
    }
}
