using System.Net;
using System.Net.Http.Headers;
using System.Security.Authentication;
using System.Text;
using System.Text.Json.Nodes;
using Dingo.Broker;
using Dingo.Config;
using Dingo.Security;
using Dingo.Store;
using Dingo.Tests.Support;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Logging;
using Xunit.Abstractions;

namespace Dingo.Tests.Broker;

/// <summary>
/// A real broker with dingo.broker.tls: HTTPS only on its port (TLS 1.2+), validated by a client that trusts the test CA
/// alone; plain HTTP to that port gets no answer. It reaches etcd over TLS with a client certificate (<see cref="TestEtcdTls"/>),
/// as on three hosts.
/// </summary>
public sealed class BrokerHttpsTests(ITestOutputHelper output)
{
    [Fact]
    public async Task A_broker_with_a_certificate_serves_osb_over_https_only_and_reaches_etcd_over_tls()
    {
        var etcd = TestEtcdTls.Instance;
        using var ca = TestCertificates.NewAuthority("broker");
        var (cert, key) = ca.IssueServer("broker", [IPAddress.Loopback]);
        var port = FreePorts.One();
        var settings = TestPlatform.NewSettings(etcdEndpoint: etcd.ClientUrl, extra: $$"""
            dingo.etcd.tls { ca-file = "{{etcd.Client.CaFile}}", cert-file = "{{etcd.Client.CertFile}}", key-file = "{{etcd.Client.KeyFile}}" }
            dingo.broker { url = "https://127.0.0.1:{{port}}", tls { cert-file = "{{cert}}", key-file = "{{key}}", ca-file = "{{ca.CaFile}}" } }
            """);
        settings.CheckTlsFiles(broker: true);
        var broker = BrokerApp.Build(settings, akkaPort: 0, logging: l => l.SetMinimumLevel(LogLevel.Warning));
        await broker.StartAsync();
        try
        {
            var trusted = PemTls.LoadCertificates(ca.CaFile, "test");
            using var https = Client(new SocketsHttpHandler { SslOptions = PemTls.ClientOptions(trusted, null) }, $"https://127.0.0.1:{port}");
            var catalog = await https.GetAsync("/v2/catalog");
            Assert.Equal(HttpStatusCode.OK, catalog.StatusCode);
            var services = JsonNode.Parse(await catalog.Content.ReadAsStringAsync())!["services"]!.AsArray();
            Assert.NotEmpty(services);
            // An unknown instance is looked up in etcd: a 404, not the 500 of an etcd the broker cannot reach.
            var fetch = await https.GetAsync($"/v2/service_instances/{Guid.NewGuid()}");
            Assert.Equal(HttpStatusCode.NotFound, fetch.StatusCode);

            // Only TLS 1.2 and 1.3: a client offering TLS 1.2 alone still connects.
            using var tls12 = Client(new SocketsHttpHandler { SslOptions = WithProtocols(PemTls.ClientOptions(trusted, null), SslProtocols.Tls12) }, $"https://127.0.0.1:{port}");
            Assert.Equal(HttpStatusCode.OK, (await tls12.GetAsync("/v2/catalog")).StatusCode);

            // Plain HTTP to the same port: no answer (there is no plain listener).
            using var plain = Client(new SocketsHttpHandler(), $"http://127.0.0.1:{port}");
            var refused = await Assert.ThrowsAsync<HttpRequestException>(() => plain.GetAsync("/v2/catalog"));
            output.WriteLine($"plain HTTP: {refused.Message}");

            // A client trusting only the system's store does not accept the platform's certificate.
            using var system = Client(new SocketsHttpHandler(), $"https://127.0.0.1:{port}");
            var untrusted = await Assert.ThrowsAsync<HttpRequestException>(() => system.GetAsync("/v2/catalog"));
            Assert.IsAssignableFrom<AuthenticationException>(untrusted.InnerException);

            // The console (its admin commands) trusts dingo.broker.tls.ca-file: with it the admin API answers; without, it cannot connect.
            Assert.Equal(0, await Dingo.Cli.AdminCommands.RunAsync("store-check", [], settings, CancellationToken.None));
            var noCa = settings with { Broker = settings.Broker with { TlsCaFile = "" } };
            Assert.Equal(1, await Dingo.Cli.AdminCommands.RunAsync("store-check", [], noCa, CancellationToken.None));
        }
        finally
        {
            await broker.StopAsync();
            await broker.DisposeAsync();
            await using var store = EtcdStore.Connect(settings);
            await store.DeletePrefixAsync(settings.EtcdPrefix + "/", CancellationToken.None);
            Directory.Delete(settings.DataDir, recursive: true);
        }
    }

    [Fact]
    public void A_broker_on_https_without_a_usable_certificate_refuses_to_start_naming_the_setting()
    {
        var https = $"dingo.broker.url = \"https://127.0.0.1:{FreePorts.One()}\"";
        var noCertificate = TestPlatform.NewSettings(extra: https);
        var missing = Assert.Throws<ArgumentException>(() => BrokerApp.Build(noCertificate, akkaPort: 0));
        Assert.Contains("dingo.broker.tls.cert-file", missing.Message);

        var unreadable = TestPlatform.NewSettings(extra: https + "\ndingo.broker.tls { cert-file = \"/nonexistent/broker.pem\", key-file = \"/nonexistent/broker-key.pem\" }");
        var error = Assert.Throws<ArgumentException>(() => unreadable.CheckTlsFiles(broker: true));
        Assert.Contains("dingo.broker.tls.cert-file", error.Message);
        Assert.Throws<ArgumentException>(() => BrokerApp.Build(unreadable, akkaPort: 0));

        // A certificate set for a plain http:// URL is a mistake, not a silent plain listener.
        var plainUrl = Assert.Throws<ArgumentException>(() => DingoSettings.Load([Path.Combine(TestPlatform.RepoRoot(), "hocon", "dingo.conf")],
            new Dictionary<string, string?>(), "dingo.broker.tls { cert-file = \"/x.pem\", key-file = \"/y.pem\" }"));
        Assert.Contains("must be https://", plainUrl.Message);
        foreach (var settings in new[] { noCertificate, unreadable }) Directory.Delete(settings.DataDir, recursive: true);
    }

    private static HttpClient Client(HttpMessageHandler handler, string baseAddress)
    {
        var http = new HttpClient(handler) { BaseAddress = new Uri(baseAddress), Timeout = TimeSpan.FromSeconds(10) };
        http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Basic", Convert.ToBase64String(Encoding.UTF8.GetBytes($"{TestPlatform.Username}:{TestPlatform.Password}")));
        http.DefaultRequestHeaders.Add("X-Broker-API-Version", "2.17");
        return http;
    }

    private static System.Net.Security.SslClientAuthenticationOptions WithProtocols(System.Net.Security.SslClientAuthenticationOptions options, SslProtocols protocols)
    {
        options.EnabledSslProtocols = protocols;
        return options;
    }
}
