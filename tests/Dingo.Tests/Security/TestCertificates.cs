using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Dingo.Config;

namespace Dingo.Tests.Security;

/// <summary>
/// A throwaway CA and certificates it issues, written as files the way an operator's would be (PEM certificate and key,
/// or PKCS#12 with a password file), in a folder of their own that <see cref="Dispose"/> removes.
/// </summary>
public sealed class TestCertificates : IDisposable
{
    private readonly X509Certificate2 _ca;
    private readonly ECDsa _caKey;

    public TestCertificates(string name)
    {
        Folder = Directory.CreateTempSubdirectory("dingo-tls-").FullName;
        _caKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest($"CN={name}", _caKey, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, false));
        _ca = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddMinutes(-5), DateTimeOffset.UtcNow.AddDays(1));
        CaFile = Path.Combine(Folder, "ca.crt");
        File.WriteAllText(CaFile, _ca.ExportCertificatePem() + "\n");
    }

    public string Folder { get; }
    /// <summary>This CA's certificate (PEM).</summary>
    public string CaFile { get; }

    /// <summary>A certificate for <paramref name="name"/> (127.0.0.1), as PEM certificate and key files.</summary>
    public AkkaTlsSettings IssuePem(string name, string? caFile = null)
    {
        using var leaf = Issue(name);
        var cert = Path.Combine(Folder, name + ".crt");
        var key = Path.Combine(Folder, name + ".key");
        File.WriteAllText(cert, leaf.ExportCertificatePem() + "\n");
        using var privateKey = leaf.GetECDsaPrivateKey()!;
        File.WriteAllText(key, privateKey.ExportPkcs8PrivateKeyPem() + "\n");
        return new AkkaTlsSettings { Certificate = cert, Key = key, Ca = caFile ?? CaFile };
    }

    /// <summary>A certificate for <paramref name="name"/> as a PKCS#12 file whose password is in a file of its own.</summary>
    public AkkaTlsSettings IssuePkcs12(string name, string password, string? caFile = null)
    {
        using var leaf = Issue(name);
        var p12 = Path.Combine(Folder, name + ".p12");
        var passwordFile = Path.Combine(Folder, name + ".password");
        File.WriteAllBytes(p12, leaf.Export(X509ContentType.Pkcs12, password));
        File.WriteAllText(passwordFile, password + "\n");
        return new AkkaTlsSettings { Certificate = p12, PasswordFile = passwordFile, Ca = caFile ?? CaFile };
    }

    /// <summary>A PEM file holding both CAs' certificates (a peer trusting both).</summary>
    public string BundleWith(TestCertificates other)
    {
        var bundle = Path.Combine(Folder, "bundle.crt");
        File.WriteAllText(bundle, File.ReadAllText(CaFile) + File.ReadAllText(other.CaFile));
        return bundle;
    }

    private X509Certificate2 Issue(string name)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest($"CN={name}", key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature, true));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension(
            [new Oid("1.3.6.1.5.5.7.3.1"), new Oid("1.3.6.1.5.5.7.3.2")], false)); // serverAuth, clientAuth
        var san = new SubjectAlternativeNameBuilder();
        san.AddIpAddress(IPAddress.Loopback);
        request.CertificateExtensions.Add(san.Build());
        var serial = RandomNumberGenerator.GetBytes(16);
        serial[0] &= 0x7f;
        using var issued = request.Create(_ca, DateTimeOffset.UtcNow.AddMinutes(-1), DateTimeOffset.UtcNow.AddHours(12), serial);
        using var withKey = issued.CopyWithPrivateKey(key);
        return X509CertificateLoader.LoadPkcs12(withKey.Export(X509ContentType.Pkcs12), null, X509KeyStorageFlags.Exportable);
    }

    public void Dispose()
    {
        _ca.Dispose();
        _caKey.Dispose();
        Directory.Delete(Folder, recursive: true);
    }
}
