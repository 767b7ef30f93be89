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
    private readonly SemaphoreSlim _brokerGate = new(1, 1);
    private readonly CancellationTokenSource _supervising = new();
    private Task _supervisor = Task.CompletedTask;

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
        OneHostPlatform? chaos = null;
        try
        {
            settings = TestPlatform.NewSettings(quota: 1000, extra: HaSettings + "\n" + Ports, etcdEndpoint: etcd.ClientUrls[0]);
            platform = await TestPlatform.StartAsync(cells: 0, settings, ct);
            chaos = new OneHostPlatform(etcd, settings, platform);
            for (var i = 1; i <= Cells; i++) platform.StartCellProcess(i);
            await chaos.WaitForCellsAsync(ct);
            if (brokerProcess)
            {
                await chaos.StartBrokerAsync(ct);
                chaos._supervisor = chaos.SuperviseBrokerAsync(chaos._supervising.Token);
            }
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
            // The broker's supervisor first: left running, it started broker-1 again after the platform was taken down,
            // and that process outlived the bench (found after a setup that failed on an Npgsql timeout).
            if (chaos is not null)
            {
                await chaos._supervising.CancelAsync();
                try { await chaos._supervisor; }
                catch (OperationCanceledException) { }
            }
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

    /// <summary>
    /// Starts broker-1 as an OS process (again) and waits until it answers the catalog, at most 60 s. Nothing to do when
    /// it runs already (the supervisor and a kill-broker fault may both restart it).
    /// </summary>
    public async Task StartBrokerAsync(CancellationToken ct)
    {
        await _brokerGate.WaitAsync(ct);
        try
        {
            if (_brokerUrl is null) await StartBrokerLockedAsync(ct);
        }
        finally
        {
            _brokerGate.Release();
        }
    }

    private async Task StartBrokerLockedAsync(CancellationToken ct)
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

    /// <summary>
    /// Does for broker-1 what `./dingo up` and systemd do for a broker: a broker that the split-brain resolver removes
    /// from the Akka cluster exits by design ("stopping so it restarts as a new member", src/Dingo.Broker/BrokerApp.cs)
    /// and is started again. Without this the bench ran on with no live broker after such a removal: the in-process
    /// broker cannot restart (it goes on answering HTTP, but its Akka member is gone) and broker-1 stayed down until the
    /// next kill-broker fault, so provisions disturbed meanwhile waited 9 minutes (two kill-cell faults `provision=stuck`).
    /// Exited means its port refuses connections twice in a row, 250 ms apart (a slow answer is not an exit); a broker
    /// a fault has killed is the fault's to restart.
    /// </summary>
    private async Task SuperviseBrokerAsync(CancellationToken ct)
    {
        var refused = 0;
        HttpClient? http = null; // one client per broker-1 URL, not one per look
        Uri? httpFor = null;
        try
        {
            while (!ct.IsCancellationRequested)
            {
                try { await Task.Delay(250, ct); }
                catch (OperationCanceledException) { return; }
                var url = _brokerUrl;
                if (url is null) { refused = 0; continue; }
                if (httpFor != url)
                {
                    http?.Dispose();
                    http = TestPlatform.ClientFor(url);
                    http.Timeout = TimeSpan.FromSeconds(5);
                    httpFor = url;
                }
                try
                {
                    using var response = await http!.GetAsync("/v2/catalog", ct);
                    refused = 0;
                    continue;
                }
                catch (HttpRequestException) { refused++; }
                catch (TaskCanceledException) when (!ct.IsCancellationRequested) { refused = 0; continue; }
                catch (OperationCanceledException) { return; }
                if (refused < 2) continue;
                refused = 0;
                await _brokerGate.WaitAsync(ct);
                try
                {
                    if (_brokerUrl != url) continue; // a fault killed and restarted it meanwhile
                    _brokerUrl = null;
                    Platform.KillBroker(1); // forgets the exited process
                    Console.Error.WriteLine($"bench: broker-1 stopped by itself (removed from the Akka cluster): starting it again in {Faults.RestartAfter.TotalSeconds:0.0} s, as ./dingo up would");
                    await Task.Delay(Faults.RestartAfter, ct);
                    await StartBrokerLockedAsync(ct);
                }
                catch (Exception ex) when (ex is TimeoutException or InvalidOperationException)
                {
                    Console.Error.WriteLine($"bench: broker-1 did not come back: {ex.Message}");
                }
                finally
                {
                    _brokerGate.Release();
                }
            }
        }
        finally
        {
            http?.Dispose();
        }
    }

    /// <summary>The instances' records and statuses are written through the in-process broker and the cells.</summary>
    public async Task<(int Status, JsonObject Body)> SendAsync(HttpMethod method, string path, string? body, CancellationToken ct) =>
        await Platform.SendAsync(method, path, body, ct);

    public override async ValueTask DisposeAsync()
    {
        // Nothing stays frozen, and etcd runs again: the cells stop cleanly and the keys can be deleted.
        await _supervising.CancelAsync();
        try { await _supervisor; }
        catch (OperationCanceledException) { }
        ContinueAll();
        try { Etcd.Pid(0); }
        catch (InvalidOperationException) { Etcd.Start(0); }
        try
        {
            foreach (var instance in Instances) await StopWriterAsync(instance);
            var logs = Path.Combine(Path.GetTempPath(), "dingo-bench-logs");
            Directory.CreateDirectory(logs);
            // Each node's PostgreSQL log (crash recovery and promotion times are in it), before the nodes go.
            foreach (var node in Directory.Exists(Settings.DataDir) ? Directory.GetDirectories(Settings.DataDir, "n-*", SearchOption.AllDirectories) : [])
                foreach (var log in Directory.GetFiles(node, "*.log"))
                    File.Copy(log, Path.Combine(logs, $"chaos-node-{Path.GetFileName(node)}-{Path.GetFileName(log)}"), overwrite: true);
            await Platform.DisposeAsync();
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
