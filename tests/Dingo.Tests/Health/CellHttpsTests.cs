using System.Net.Security;
using System.Security.Cryptography.X509Certificates;
using Dingo.Cell;
using Dingo.Config;
using Dingo.Health;
using Dingo.Security;
using Dingo.Tests.Support;
using Microsoft.Extensions.Logging.Abstractions;

namespace Dingo.Tests.Health;

/// <summary>
/// The cell's own port (health, metrics) under require-tls, in process on loopback: HTTPS only, with a certificate of the
/// platform CA for the cell's address that the probe checks against the CA file the cell writes; a new CA is served on
/// the next handshake without a restart; plain HTTP gets no answer.
/// </summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class CellHttpsTests : IDisposable
{
    private readonly string _data = Path.Combine(Path.GetTempPath(), "dingo-cell-https-" + Guid.NewGuid().ToString("N")[..8]);

    public void Dispose()
    {
        if (Directory.Exists(_data)) Directory.Delete(_data, recursive: true);
    }

    private DingoSettings Settings(int port)
    {
        var settings = DingoSettings.Load([Path.Combine(TestPlatform.RepoRoot(), "hocon", "dingo.conf")], new Dictionary<string, string?>(), $$"""
            dingo.data-dir = "{{_data}}"
            dingo.postgres.require-tls = on
            dingo.cell { id = "cell-7", address = "127.0.0.1", health-port = {{port}} }
            """);
        Assert.True(settings.Postgres.RequireTls);
        return settings;
    }

    [Fact]
    public async Task The_health_port_speaks_https_only_with_a_certificate_of_the_platform_ca_and_takes_a_new_ca_without_a_restart()
    {
        var port = FreePorts.One();
        var settings = Settings(port);
        var identity = new CellTlsIdentity(settings, NullLogger<CellTlsIdentity>.Instance);
        var endpoint = new CellHealthEndpoint(settings, new Readiness([], TimeSpan.FromSeconds(1)), new CellMetrics(), identity, NullLogger<CellHealthEndpoint>.Instance);
        await endpoint.StartAsync(CancellationToken.None);
        try
        {
            var url = new Uri($"https://127.0.0.1:{port}/readyz");
            // Before the CA has been read there is no certificate: no handshake succeeds, and the probe has no CA file.
            Assert.Null(identity.Certificate);
            Assert.False(File.Exists(CellTlsIdentity.CaFile(settings)));
            using (var unrelated = PlatformCa.Create("unrelated", DateTimeOffset.UtcNow, TimeSpan.FromDays(1)))
            using (var unrelatedCertificate = unrelated.PublicCertificate())
                Assert.Equal(1, await HealthProbe.RunAsync(url, TextWriter.Null, TimeSpan.FromSeconds(5), unrelatedCertificate));

            using var ca = PlatformCa.Create("first", DateTimeOffset.UtcNow, TimeSpan.FromDays(3650));
            identity.Trusted(ca);
            var first = identity.Certificate;
            Assert.NotNull(first);
            Assert.True(first!.MatchesHostname("127.0.0.1"));
            Assert.True(ca.Verifies(first, DateTimeOffset.UtcNow));
            // The CA file the probe reads holds the CA's certificate alone (public), never a key.
            var caFile = await File.ReadAllTextAsync(CellTlsIdentity.CaFile(settings));
            Assert.Equal(ca.CertificatePem, caFile);
            Assert.DoesNotContain("PRIVATE KEY", caFile, StringComparison.Ordinal);
            // Read again with nothing due: the same certificate.
            identity.Trusted(ca);
            Assert.Same(first, identity.Certificate);

            using var caCertificate = ca.PublicCertificate();
            Assert.Equal(0, await HealthProbe.RunAsync(url, TextWriter.Null, TimeSpan.FromSeconds(5), caCertificate));
            var (status, body, served) = await GetAsync(caCertificate, $"https://127.0.0.1:{port}/metrics");
            Assert.Equal(200, status);
            Assert.Contains("# TYPE", body, StringComparison.Ordinal);
            Assert.Equal(first.Thumbprint, served);

            // Another CA's probe refuses the cell's certificate; plain HTTP gets no answer at all.
            using var other = PlatformCa.Create("other", DateTimeOffset.UtcNow, TimeSpan.FromDays(3650));
            using var otherCertificate = other.PublicCertificate();
            var refused = new StringWriter();
            Assert.Equal(1, await HealthProbe.RunAsync(url, refused, TimeSpan.FromSeconds(5), otherCertificate));
            Assert.Contains("SSL", refused.ToString(), StringComparison.OrdinalIgnoreCase);
            using (var plain = new HttpClient { Timeout = TimeSpan.FromSeconds(5) })
                await Assert.ThrowsAnyAsync<HttpRequestException>(() => plain.GetAsync($"http://127.0.0.1:{port}/healthz"));

            // The platform replaces its CA: the next handshake presents a certificate of the new one, the probe's file follows.
            identity.Trusted(other);
            Assert.NotSame(first, identity.Certificate);
            Assert.Equal(other.CertificatePem, await File.ReadAllTextAsync(CellTlsIdentity.CaFile(settings)));
            Assert.Equal(0, await HealthProbe.RunAsync(url, TextWriter.Null, TimeSpan.FromSeconds(5), otherCertificate));
            Assert.Equal(1, await HealthProbe.RunAsync(url, TextWriter.Null, TimeSpan.FromSeconds(5), caCertificate));
            (status, _, served) = await GetAsync(otherCertificate, $"https://127.0.0.1:{port}/healthz");
            Assert.Equal(200, status);
            Assert.Equal(identity.Certificate!.Thumbprint, served);
        }
        finally
        {
            await endpoint.StopAsync(CancellationToken.None);
        }
    }

    /// <summary>A GET trusting <paramref name="ca"/> alone; the status, the body and the thumbprint of the certificate served.</summary>
    private static async Task<(int Status, string Body, string? Served)> GetAsync(X509Certificate2 ca, string url)
    {
        string? served = null;
        using var http = new HttpClient(new SocketsHttpHandler
        {
            SslOptions = new SslClientAuthenticationOptions
            {
                RemoteCertificateValidationCallback = (_, certificate, _, errors) =>
                {
                    if (certificate is null) return false;
                    using var leaf = X509CertificateLoader.LoadCertificate(certificate.GetRawCertData());
                    served = leaf.Thumbprint;
                    return (errors & ~SslPolicyErrors.RemoteCertificateChainErrors) == SslPolicyErrors.None && PlatformCa.Chains(ca, leaf);
                },
            },
        }) { Timeout = TimeSpan.FromSeconds(5) };
        using var response = await http.GetAsync(url);
        return ((int)response.StatusCode, await response.Content.ReadAsStringAsync(), served);
    }
}
