using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Net.Sockets;
using System.Text;
using System.Text.Json.Nodes;
using Dingo.Tests.Support;
using Xunit.Abstractions;

namespace Dingo.Tests.Health;

/// <summary>
/// Health on real processes with an etcd of the test's own: the broker's and a cell process's /healthz and /readyz,
/// the `probe` command a container's HEALTHCHECK runs, and systemd's notify protocol read from a real unix datagram
/// socket (NOTIFY_SOCKET), as systemd would: READY=1 only once the cell can work, WATCHDOG=1 while it runs.
/// </summary>
[SuiteCost(50)]
public sealed class HealthEndpointTests(ITestOutputHelper output)
{
    [Fact]
    public async Task Readiness_follows_etcd_and_systemd_hears_ready_only_once_the_cell_can_work()
    {
        await using var etcd = await TestEtcdCluster.StartAsync(members: 1);
        await using var platform = await TestPlatform.StartAsync(cells: 0, TestPlatform.NewSettings(etcdEndpoint: etcd.ClientUrls[0]), ownsData: true);
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(10) };
        var brokerUrl = platform.Settings.Broker.Url.TrimEnd('/');
        Assert.Equal(200, (await GetAsync(http, $"{brokerUrl}/healthz")).Status);
        await Eventually.UntilAsync(async () => (await GetAsync(http, $"{brokerUrl}/readyz")).Status == 200, TimeSpan.FromSeconds(30), "the broker's /readyz 200");
        var brokerReady = JsonNode.Parse((await GetAsync(http, $"{brokerUrl}/readyz")).Body)!;
        Assert.Equal("ok", (string?)brokerReady["checks"]!["etcd"]);
        Assert.Equal("ok", (string?)brokerReady["checks"]!["akka"]);

        // systemd's side of the protocol: a datagram socket whose path the cell finds in NOTIFY_SOCKET.
        var socketPath = Path.Combine(platform.Settings.DataDir, "notify.sock");
        using var notify = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
        notify.Bind(new UnixDomainSocketEndPoint(socketPath));
        var heard = new ConcurrentQueue<(DateTime At, string Message)>();
        using var stopListening = new CancellationTokenSource();
        var listening = Task.Run(async () =>
        {
            var buffer = new byte[4096];
            try
            {
                while (true)
                {
                    var n = await notify.ReceiveAsync(buffer, SocketFlags.None, stopListening.Token);
                    foreach (var line in Encoding.UTF8.GetString(buffer, 0, n).Split('\n', StringSplitOptions.RemoveEmptyEntries)) heard.Enqueue((DateTime.UtcNow, line));
                }
            }
            catch (OperationCanceledException) { }
        });

        // etcd away while the cell starts: it must not say READY=1.
        etcd.Kill(0);
        var healthPort = FreePorts.One();
        platform.StartCellProcess(1, new Dictionary<string, string>
        {
            ["DINGO_CELL_HEALTH_PORT"] = healthPort.ToString(CultureInfo.InvariantCulture),
            ["NOTIFY_SOCKET"] = socketPath,
            ["WATCHDOG_USEC"] = "1000000",
        });
        var cellUrl = $"http://127.0.0.1:{healthPort}";
        await Task.Delay(8000);
        output.WriteLine("heard while etcd was away: " + string.Join(" | ", heard.Select(h => h.Message).Distinct()));
        Assert.DoesNotContain(heard, h => h.Message == "READY=1");
        var restarted = DateTime.UtcNow;
        etcd.Start(0);
        await Eventually.UntilAsync(() => Task.FromResult(heard.Any(h => h.Message == "READY=1")), TimeSpan.FromSeconds(90), "READY=1 on the notify socket");
        var ready = heard.First(h => h.Message == "READY=1");
        Assert.True(ready.At > restarted, "READY=1 came before etcd was back");
        var cell = await GetAsync(http, $"{cellUrl}/readyz");
        Assert.True(cell.Status == 200, $"the cell's /readyz after READY=1: {cell.Status} {cell.Body}");
        var checks = JsonNode.Parse(cell.Body)!["checks"]!;
        foreach (var name in new[] { "etcd", "akka", "runtime" }) Assert.Equal("ok", (string?)checks[name]);
        Assert.Equal(200, (await GetAsync(http, $"{cellUrl}/healthz")).Status);
        Assert.Contains("# TYPE", (await GetAsync(http, $"{cellUrl}/metrics")).Body, StringComparison.Ordinal);

        // The watchdog keeps coming at half of WATCHDOG_USEC.
        var watchdogs = heard.Count(h => h.Message == "WATCHDOG=1");
        await Task.Delay(2500);
        Assert.True(heard.Count(h => h.Message == "WATCHDOG=1") >= watchdogs + 3, "WATCHDOG=1 stopped coming");

        // The container's HEALTHCHECK: exit 0 while ready.
        Assert.Equal(0, await ProbeAsync("Dingo.Cell.dll", platform, healthPort));
        Assert.Equal(0, await ProbeAsync("Dingo.Broker.dll", platform, healthPort));

        // etcd away again: both say which check fails (503), the probes exit 1; back, ready again.
        etcd.Kill(0);
        await Eventually.UntilAsync(async () => (await GetAsync(http, $"{cellUrl}/readyz")).Status == 503, TimeSpan.FromSeconds(20), "the cell's /readyz 503");
        await Eventually.UntilAsync(async () => (await GetAsync(http, $"{brokerUrl}/readyz")).Status == 503, TimeSpan.FromSeconds(20), "the broker's /readyz 503");
        var down = JsonNode.Parse((await GetAsync(http, $"{cellUrl}/readyz")).Body)!;
        output.WriteLine("cell /readyz with etcd away: " + down.ToJsonString());
        Assert.False((bool)down["ready"]!);
        Assert.NotEqual("ok", (string?)down["checks"]!["etcd"]);
        Assert.Equal("ok", (string?)down["checks"]!["runtime"]);
        Assert.Equal(200, (await GetAsync(http, $"{cellUrl}/healthz")).Status);
        Assert.Equal(1, await ProbeAsync("Dingo.Cell.dll", platform, healthPort));
        Assert.Equal(1, await ProbeAsync("Dingo.Broker.dll", platform, healthPort));
        etcd.Start(0);
        await Eventually.UntilAsync(async () => (await GetAsync(http, $"{cellUrl}/readyz")).Status == 200, TimeSpan.FromSeconds(60), "the cell's /readyz 200 again");
        await Eventually.UntilAsync(async () => (await GetAsync(http, $"{brokerUrl}/readyz")).Status == 200, TimeSpan.FromSeconds(60), "the broker's /readyz 200 again");

        await stopListening.CancelAsync();
        await listening;
    }

    /// <summary>
    /// Beyond one host (require-tls) a real cell process serves its health port over HTTPS only, with a certificate of the
    /// platform CA it read from etcd, for its address; its `probe` checks that certificate against the CA file the cell
    /// wrote, and fails against another CA.
    /// </summary>
    [Fact]
    public async Task With_require_tls_a_cell_serves_health_over_https_only_and_its_probe_checks_the_certificate()
    {
        await using var platform = await TestPlatform.StartAsync(cells: 0, TestPlatform.NewSettings(extra: "dingo.postgres.require-tls = on"), ownsData: true);
        using var ca = await Dingo.Postgres.PlatformCaStore.GetOrCreateAsync(platform.Store, platform.Settings.Postgres, CancellationToken.None);
        using var caCertificate = ca.PublicCertificate();
        var healthPort = FreePorts.One();
        platform.StartCellProcess(1, new Dictionary<string, string> { ["DINGO_CELL_HEALTH_PORT"] = healthPort.ToString(CultureInfo.InvariantCulture) });
        using var https = new HttpClient(new SocketsHttpHandler
        {
            SslOptions = new System.Net.Security.SslClientAuthenticationOptions
            {
                // The certificate must name 127.0.0.1 (no name mismatch) and chain to the platform CA alone.
                RemoteCertificateValidationCallback = (_, certificate, _, errors) => certificate is not null
                    && (errors & ~System.Net.Security.SslPolicyErrors.RemoteCertificateChainErrors) == System.Net.Security.SslPolicyErrors.None
                    && ca.Verifies(System.Security.Cryptography.X509Certificates.X509CertificateLoader.LoadCertificate(certificate.GetRawCertData()), DateTimeOffset.UtcNow),
            },
        }) { Timeout = TimeSpan.FromSeconds(10) };
        await Eventually.UntilAsync(async () => (await GetAsync(https, $"https://127.0.0.1:{healthPort}/readyz")).Status == 200, TimeSpan.FromSeconds(90), "the cell's /readyz 200 over HTTPS");
        Assert.Contains("# TYPE", (await GetAsync(https, $"https://127.0.0.1:{healthPort}/metrics")).Body, StringComparison.Ordinal);
        using var plain = new HttpClient { Timeout = TimeSpan.FromSeconds(10) };
        var answer = await GetAsync(plain, $"http://127.0.0.1:{healthPort}/healthz");
        output.WriteLine($"plain HTTP to the cell's health port: {answer.Status} {answer.Body}");
        Assert.Equal(0, answer.Status);

        var cellEnvironment = new Dictionary<string, string> { ["DINGO_CELL_ID"] = "cell-1" };
        Assert.Equal(0, await ProbeAsync("Dingo.Cell.dll", platform, healthPort, cellEnvironment));
        // The CA file the probe trusts replaced by another CA's: the cell's certificate is refused.
        var caFile = Path.Combine(platform.Settings.DataDir, "cells", "cell-1", "platform-ca.crt");
        Assert.Equal(ca.CertificatePem, await File.ReadAllTextAsync(caFile));
        using (var other = Dingo.Security.PlatformCa.Create("other", DateTimeOffset.UtcNow, TimeSpan.FromDays(1)))
            await File.WriteAllTextAsync(caFile, other.CertificatePem);
        Assert.Equal(1, await ProbeAsync("Dingo.Cell.dll", platform, healthPort, cellEnvironment));
    }

    private static async Task<(int Status, string Body)> GetAsync(HttpClient http, string url)
    {
        try
        {
            using var response = await http.GetAsync(url);
            return ((int)response.StatusCode, await response.Content.ReadAsStringAsync());
        }
        catch (Exception ex) when (ex is HttpRequestException or TaskCanceledException)
        {
            return (0, ex.Message);
        }
    }

    /// <summary>`dotnet Dingo.X.dll probe --config …` with the platform's settings (and the cell's health port); its exit code.</summary>
    private async Task<int> ProbeAsync(string program, TestPlatform platform, int healthPort, IReadOnlyDictionary<string, string>? environment = null)
    {
        var psi = new ProcessStartInfo("dotnet") { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { Path.Combine(AppContext.BaseDirectory, program), "probe", "--config", Path.Combine(TestPlatform.RepoRoot(), "hocon", "dingo.conf"),
                     "--config", Path.Combine(platform.Settings.DataDir, "test.conf") })
            psi.ArgumentList.Add(a);
        psi.Environment["DINGO_CELL_HEALTH_PORT"] = healthPort.ToString(CultureInfo.InvariantCulture);
        foreach (var (key, value) in environment ?? new Dictionary<string, string>()) psi.Environment[key] = value;
        using var process = Process.Start(psi)!;
        var stderr = process.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        try { await process.WaitForExitAsync(timeout.Token); }
        catch (OperationCanceledException)
        {
            ProcessTree.Kill(process);
            throw;
        }
        output.WriteLine($"{program} probe: exit {process.ExitCode} {await stderr}");
        return process.ExitCode;
    }
}
