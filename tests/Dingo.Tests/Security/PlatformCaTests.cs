using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Dingo.Security;
using Dingo.Tests.Support;

namespace Dingo.Tests.Security;

[Trait(Tier.Name, Tier.Fast)]
public sealed class PlatformCaTests
{
    private static readonly DateTimeOffset Now = new(2026, 12, 3, 5, 0, 0, TimeSpan.Zero);

    [Fact]
    public void A_node_certificate_names_every_host_as_a_subject_alternative_name_and_chains_to_the_ca()
    {
        using var ca = PlatformCa.Create("test", Now, TimeSpan.FromDays(3650));
        var node = ca.Issue("n-1", ["10.0.0.5", "db.example.org", "127.0.0.1", "localhost", "::1", "10.0.0.5"], Now, TimeSpan.FromDays(90));

        using var cert = X509Certificate2.CreateFromPem(node.CertificatePem, node.KeyPem);
        var san = cert.Extensions.OfType<X509SubjectAlternativeNameExtension>().Single();
        Assert.Equal(["db.example.org", "localhost"], san.EnumerateDnsNames().Order(StringComparer.Ordinal));
        Assert.Equal(new[] { IPAddress.Parse("10.0.0.5"), IPAddress.Parse("127.0.0.1"), IPAddress.IPv6Loopback }.Select(a => a.ToString()).Order(),
            san.EnumerateIPAddresses().Select(a => a.ToString()).Order());
        Assert.Contains("CN=n-1", cert.Subject, StringComparison.Ordinal);
        Assert.False(cert.Extensions.OfType<X509BasicConstraintsExtension>().Single().CertificateAuthority);
        Assert.True(ca.Verifies(node.CertificatePem, Now));
        Assert.True(cert.MatchesHostname("db.example.org"));
        Assert.True(cert.MatchesHostname("10.0.0.5"));
        Assert.False(cert.MatchesHostname("10.0.0.6"));
    }

    [Fact]
    public void A_node_certificate_expires_after_its_validity_and_is_due_for_renewal_after_two_thirds_of_it()
    {
        using var ca = PlatformCa.Create("test", Now, TimeSpan.FromDays(3650));
        var node = ca.Issue("n-1", ["127.0.0.1"], Now, TimeSpan.FromDays(90));
        Assert.Equal(Now + TimeSpan.FromDays(90), node.NotAfter);
        Assert.True(ca.Verifies(node.CertificatePem, Now + TimeSpan.FromDays(89)));
        Assert.False(ca.Verifies(node.CertificatePem, Now + TimeSpan.FromDays(91)));

        Assert.False(node.DueFor(["127.0.0.1"], ca.Fingerprint, Now + TimeSpan.FromDays(50)));
        Assert.True(node.DueFor(["127.0.0.1"], ca.Fingerprint, Now + TimeSpan.FromDays(61)));
        Assert.True(node.DueFor(["127.0.0.1", "10.0.0.9"], ca.Fingerprint, Now), "a new host needs a new certificate");
        using var other = PlatformCa.Create("other", Now, TimeSpan.FromDays(3650));
        Assert.True(node.DueFor(["127.0.0.1"], other.Fingerprint, Now), "another CA needs a new certificate");
    }

    [Fact]
    public void A_node_certificate_never_outlives_its_ca()
    {
        using var ca = PlatformCa.Create("test", Now, TimeSpan.FromDays(30));
        var node = ca.Issue("n-1", ["127.0.0.1"], Now, TimeSpan.FromDays(90));
        Assert.Equal(ca.NotAfter, node.NotAfter);
    }

    [Fact]
    public void A_certificate_of_another_ca_does_not_verify()
    {
        using var ca = PlatformCa.Create("test", Now, TimeSpan.FromDays(3650));
        using var other = PlatformCa.Create("test", Now, TimeSpan.FromDays(3650));
        var foreign = other.Issue("n-1", ["127.0.0.1"], Now, TimeSpan.FromDays(90));
        Assert.False(ca.Verifies(foreign.CertificatePem, Now));
    }

    [Fact]
    public void A_ca_read_back_from_pem_issues_certificates_that_verify_against_the_original()
    {
        using var ca = PlatformCa.Create("test", Now, TimeSpan.FromDays(3650));
        using var again = PlatformCa.FromPem(ca.CertificatePem, ca.ExportKeyPem());
        Assert.Equal(ca.Fingerprint, again.Fingerprint);
        Assert.True(ca.Verifies(again.Issue("n-2", ["localhost"], Now, TimeSpan.FromDays(1)).CertificatePem, Now));
    }

    [Fact]
    public void An_operators_rsa_ca_is_accepted_and_signs_node_certificates()
    {
        using var rsa = RSA.Create(2048);
        var request = new CertificateRequest("CN=operator CA", rsa, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign, true));
        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, false));
        using var self = request.CreateSelfSigned(Now.AddDays(-1), Now.AddYears(5));
        using var ca = PlatformCa.FromPem(self.ExportCertificatePem(), rsa.ExportPkcs8PrivateKeyPem());
        Assert.True(ca.Verifies(ca.Issue("n-1", ["127.0.0.1"], Now, TimeSpan.FromDays(90)).CertificatePem, Now));
    }

    [Fact]
    public void A_key_that_does_not_match_the_certificate_or_a_certificate_that_is_no_ca_is_refused_with_the_reason()
    {
        using var ca = PlatformCa.Create("test", Now, TimeSpan.FromDays(3650));
        using var other = PlatformCa.Create("test", Now, TimeSpan.FromDays(3650));
        var mismatch = Assert.Throws<CryptographicException>(() => PlatformCa.FromPem(ca.CertificatePem, other.ExportKeyPem()));
        Assert.Contains("do not form a pair", mismatch.Message, StringComparison.Ordinal);

        var leaf = ca.Issue("n-1", ["127.0.0.1"], Now, TimeSpan.FromDays(90));
        var notCa = Assert.Throws<CryptographicException>(() => PlatformCa.FromPem(leaf.CertificatePem, leaf.KeyPem));
        Assert.Contains("not a CA certificate", notCa.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Printing_a_node_certificate_or_the_ca_shows_no_key()
    {
        using var ca = PlatformCa.Create("test", Now, TimeSpan.FromDays(3650));
        var node = ca.Issue("n-1", ["127.0.0.1"], Now, TimeSpan.FromDays(90));
        Assert.DoesNotContain("PRIVATE KEY", node.ToString(), StringComparison.Ordinal);
        Assert.DoesNotContain("PRIVATE KEY", ca.ToString(), StringComparison.Ordinal);
    }
}
