using System.Text.Json.Nodes;
using Dingo.Config;
using Dingo.Model;
using Dingo.Store;
using Dingo.Tests.Ha;
using Dingo.Tests.Support;

namespace Dingo.Bench.Chaos;

/// <summary>
/// The one-host platform: an etcd of the bench's own (one member it can kill and stop), the broker in this process
/// plus a second broker as an OS process (killed during provisions), three cells as OS processes, and one instance per
/// plan with a writer committing a fresh value every 20 ms through the router.
/// </summary>
internal sealed class OneHostPlatform : ChaosPlatform
{
    private Uri? _brokerUrl;

    private OneHostPlatform(TestEtcdCluster etcd, DingoSettings settings, TestPlatform platform) : base(settings)
    {
        Etcd = etcd;
        Platform = platform;
    }

    public TestEtcdCluster Etcd { get; }
    public TestPlatform Platform { get; }
    public override EtcdStore Store => Platform.Store;

    public static async Task<OneHostPlatform> StartAsync(IReadOnlyList<string> plans, bool brokerProcess, CancellationToken ct)
    {
        var etcd = await TestEtcdCluster.StartAsync(members: 1);
        DingoSettings? settings = null;
        TestPlatform? platform = null;
        try
        {
            settings = TestPlatform.NewSettings(quota: 1000, extra: HaSettings + "\n" + Ports, etcdEndpoint: etcd.ClientUrls[0]);
            platform = await TestPlatform.StartAsync(cells: 0, settings, ct);
            var chaos = new OneHostPlatform(etcd, settings, platform);
            for (var i = 1; i <= Cells; i++) platform.StartCellProcess(i);
            await chaos.WaitForCellsAsync(ct);
            if (brokerProcess) await chaos.StartBrokerAsync(ct);
            foreach (var plan in plans)
            {
                var planId = Catalog.Plans.Single(p => p.Name == plan).Id;
                var id = $"chaos-{plan}";
                await platform.ProvisionReadyAsync(id, planId);
                var creds = await platform.BindAsync(id, "w", planId);
                var record = await platform.Store.GetAsync<InstanceRecord>(platform.Store.Keys.Instance(id), ct)
                             ?? throw new InvalidOperationException($"{id} has no instance record");
                var writer = new Writer(TestPlatform.ConnectionStringFromUri((string)creds["uri"]!), WriteEvery, AttemptLimit);
                chaos.Instances.Add(new ChaosInstance(id, plan, record.Value.Superuser, writer));
                await writer.CreateTableAsync();
                writer.Start();
            }
            return chaos;
        }
        catch
        {
            if (platform is not null) await platform.DisposeAsync();
            if (settings is not null) await TestPlatform.DestroyDataAsync(settings);
            await etcd.DisposeAsync();
            throw;
        }
    }

    private async Task WaitForCellsAsync(CancellationToken ct)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while ((await Platform.Store.ListAsync<CellInfo>(Platform.Store.Keys.Cells, ct)).Count < Cells)
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"fewer than {Cells} cells registered within 60 s");
            await Task.Delay(200, ct);
        }
    }

    /// <summary>The second broker's URL, once it answers the catalog.</summary>
    public Uri BrokerUrl => _brokerUrl ?? throw new InvalidOperationException("no broker process was started");

    /// <summary>Starts broker-1 as an OS process (again) and waits until it answers the catalog, at most 60 s.</summary>
    public async Task StartBrokerAsync(CancellationToken ct)
    {
        var url = Platform.StartBrokerProcess(1);
        using var http = TestPlatform.ClientFor(url);
        http.Timeout = TimeSpan.FromSeconds(5);
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while (true)
        {
            try
            {
                using var response = await http.GetAsync("/v2/catalog", ct);
                if (response.IsSuccessStatusCode) break;
            }
            catch (HttpRequestException) { }
            catch (TaskCanceledException) when (!ct.IsCancellationRequested) { }
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"broker-1 did not answer on {url} within 60 s");
            await Task.Delay(200, ct);
        }
        _brokerUrl = url;
    }

    public void KillBroker()
    {
        _brokerUrl = null;
        Platform.KillBroker(1);
    }

    /// <summary>The instances' records and statuses are written through the in-process broker and the cells.</summary>
    public async Task<(int Status, JsonObject Body)> SendAsync(HttpMethod method, string path, string? body, CancellationToken ct) =>
        await Platform.SendAsync(method, path, body, ct);

    public override async ValueTask DisposeAsync()
    {
        // Nothing stays frozen, and etcd runs again: the cells stop cleanly and the keys can be deleted.
        ContinueAll();
        try { Etcd.Pid(0); }
        catch (InvalidOperationException) { Etcd.Start(0); }
        try
        {
            foreach (var instance in Instances) await StopWriterAsync(instance);
            await Platform.DisposeAsync();
            var logs = Path.Combine(Path.GetTempPath(), "dingo-bench-logs");
            Directory.CreateDirectory(logs);
            foreach (var log in Directory.Exists(Settings.DataDir) ? Directory.GetFiles(Settings.DataDir, "*.log") : [])
                File.Copy(log, Path.Combine(logs, $"chaos-{Path.GetFileName(log)}"), overwrite: true);
            Console.Error.WriteLine($"bench: cell and broker logs in {logs}/chaos-*.log");
        }
        finally
        {
            await TestPlatform.DestroyDataAsync(Settings);
            await Etcd.DisposeAsync();
        }
    }
}
