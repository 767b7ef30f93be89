using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json.Nodes;
using Akka.Actor;
using Dingo.Broker;
using Dingo.Cell;
using Dingo.Config;
using Dingo.Store;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Dingo.Tests.Support;

/// <summary>
/// A real platform for one test: the broker over real HTTP, cells reconciling real PostgreSQL processes,
/// all against the run's real etcd under a key prefix of its own. Disposing removes every node, its data
/// and its keys, even when the test failed.
/// </summary>
public sealed class TestPlatform : IAsyncDisposable
{
    public const string Username = "test-broker";
    public const string Password = "test-broker-password-0123456789";

    private WebApplication? _broker;
    private readonly List<IHost> _cells = new();

    private TestPlatform(DingoSettings settings, EtcdStore store, bool ownsData)
    {
        Settings = settings;
        Store = store;
        OwnsData = ownsData;
        Http = new HttpClient { BaseAddress = new Uri(settings.Broker.Url), Timeout = TimeSpan.FromSeconds(30) };
        Http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Basic", Convert.ToBase64String(Encoding.UTF8.GetBytes($"{Username}:{Password}")));
        Http.DefaultRequestHeaders.Add("X-Broker-API-Version", "2.17");
    }

    public DingoSettings Settings { get; }
    public EtcdStore Store { get; }
    public HttpClient Http { get; }
    public bool OwnsData { get; }
    public IReadOnlyList<IHost> Cells => _cells;

    public static string RepoRoot()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "hocon", "dingo.conf"))) dir = dir.Parent;
        return dir?.FullName ?? throw new InvalidOperationException("cannot find the repository root (hocon/dingo.conf) above " + AppContext.BaseDirectory);
    }

    /// <summary>Settings for a fresh platform: its own data folder, key prefix, broker port and port block.</summary>
    public static DingoSettings NewSettings(int quota = 10)
    {
        var (pubFirst, pubLast, nodeFirst, nodeLast) = FreePorts.Block();
        var data = Path.Combine(Path.GetTempPath(), "dingo-tests", Guid.NewGuid().ToString("N")[..12]);
        var overrides = $$"""
            dingo {
              data-dir = "{{data}}"
              etcd.endpoints = ["{{TestEtcd.ClientUrl}}"]
              etcd.prefix = "/t-{{Guid.NewGuid():N}}"
              broker { url = "http://127.0.0.1:{{FreePorts.One()}}", username = "{{Username}}", password = "{{Password}}", instance-quota = {{quota}}, provision-timeout = 90s }
              router { port-range-first = {{pubFirst}}, port-range-last = {{pubLast}}, leader-wait = 3s }
              cell { reconcile-interval = 500ms, lease-ttl = 6s }
              node-port-range-first = {{nodeFirst}}
              node-port-range-last = {{nodeLast}}
            }
            """;
        return DingoSettings.Load([Path.Combine(RepoRoot(), "hocon", "dingo.conf")], new Dictionary<string, string?>(), overrides);
    }

    public static async Task<TestPlatform> StartAsync(int cells, DingoSettings? settings = null, CancellationToken ct = default)
    {
        var ownsData = settings is null;
        settings ??= NewSettings();
        var platform = new TestPlatform(settings, new EtcdStore(settings.EtcdEndpoints, settings.EtcdPrefix), ownsData);
        try
        {
            await platform.StartProcessesAsync(cells, ct);
            return platform;
        }
        catch
        {
            await platform.DisposeAsync();
            throw;
        }
    }

    private static void Quiet(ILoggingBuilder logging) =>
        logging.AddSimpleConsole(o => { o.SingleLine = true; o.TimestampFormat = "HH:mm:ss.fff "; }).SetMinimumLevel(LogLevel.Warning);

    private async Task StartProcessesAsync(int cells, CancellationToken ct)
    {
        _broker = BrokerApp.Build(Settings, akkaPort: 0, logging: Quiet);
        await _broker.StartAsync(ct);
        var system = _broker.Services.GetRequiredService<ActorSystem>();
        var seed = Akka.Cluster.Cluster.Get(system).SelfAddress.ToString();
        var zones = new[] { "z1", "z2", "z3" };
        for (var i = 0; i < cells; i++)
        {
            var cellSettings = Settings with { Cell = Settings.Cell with { Id = $"cell-{i + 1}", Zone = zones[i % zones.Length] } };
            var host = CellApp.Build(cellSettings, [seed], Quiet);
            await host.StartAsync(ct);
            _cells.Add(host);
        }
    }

    /// <summary>Stops cells (their PostgreSQL nodes stop, data kept) and the broker, as Ctrl-C on `dingo up` does.</summary>
    public async Task StopAsync()
    {
        foreach (var cell in _cells)
        {
            try { await cell.StopAsync(); } finally { cell.Dispose(); }
        }
        _cells.Clear();
        if (_broker is not null)
        {
            try { await _broker.StopAsync(); } finally { await _broker.DisposeAsync(); }
            _broker = null;
        }
    }

    public async ValueTask DisposeAsync()
    {
        try { await StopAsync(); }
        catch (Exception ex) { Console.Error.WriteLine($"test platform stop: {ex.Message}"); }
        Http.Dispose();
        if (OwnsData) await DestroyDataAsync(Settings);
        await Store.DisposeAsync();
    }

    /// <summary>Kills any PostgreSQL left under the data folder, deletes it and the platform's etcd keys.</summary>
    public static async Task DestroyDataAsync(DingoSettings settings)
    {
        var data = Path.GetFullPath(settings.DataDir);
        if (Directory.Exists(data))
        {
            foreach (var pidFile in Directory.GetFiles(data, "postmaster.pid", SearchOption.AllDirectories))
            {
                var first = File.ReadLines(pidFile).FirstOrDefault();
                if (int.TryParse(first, out var pid))
                {
                    try { System.Diagnostics.Process.GetProcessById(pid).Kill(); } catch (ArgumentException) { } catch (InvalidOperationException) { }
                }
            }
            for (var attempt = 0; attempt < 5; attempt++)
            {
                try { Directory.Delete(data, recursive: true); break; }
                catch (IOException) { await Task.Delay(300); }
            }
        }
        await using var store = new EtcdStore(settings.EtcdEndpoints, settings.EtcdPrefix);
        await store.DeletePrefixAsync(settings.EtcdPrefix + "/", CancellationToken.None);
    }

    // ---- OSB helpers ----

    public static string ProvisionBody(string? planId = null, object? parameters = null) => new JsonObject
    {
        ["service_id"] = Model.Catalog.ServiceId,
        ["plan_id"] = planId ?? Model.Catalog.SoloPlanId,
        ["organization_guid"] = "org-1",
        ["space_guid"] = "space-1",
        ["parameters"] = parameters is null ? new JsonObject() : JsonNode.Parse(System.Text.Json.JsonSerializer.Serialize(parameters)),
    }.ToJsonString();

    public Task<HttpResponseMessage> PutJsonAsync(string path, string body) =>
        Http.PutAsync(path, new StringContent(body, Encoding.UTF8, "application/json"));

    public async Task<(int Status, JsonObject Body)> SendAsync(HttpMethod method, string path, string? body = null)
    {
        using var request = new HttpRequestMessage(method, path);
        if (body is not null) request.Content = new StringContent(body, Encoding.UTF8, "application/json");
        using var response = await Http.SendAsync(request);
        var text = await response.Content.ReadAsStringAsync();
        var json = text.Length == 0 ? new JsonObject() : JsonNode.Parse(text) as JsonObject ?? new JsonObject();
        return ((int)response.StatusCode, json);
    }

    /// <summary>Polls last_operation until it leaves `in progress`; returns the final body.</summary>
    public async Task<JsonObject> WaitForOperationAsync(string instanceId, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        JsonObject last = new();
        while (DateTime.UtcNow < deadline)
        {
            var (status, body) = await SendAsync(HttpMethod.Get, $"/v2/service_instances/{instanceId}/last_operation");
            Assert.Equal(200, status);
            last = body;
            if ((string?)body["state"] != "in progress") return body;
            await Task.Delay(200);
        }
        throw new TimeoutException($"operation on {instanceId} still in progress after {timeout}: {last.ToJsonString()}");
    }

    public async Task<string> ProvisionReadyAsync(string instanceId)
    {
        var (status, body) = await SendAsync(HttpMethod.Put, $"/v2/service_instances/{instanceId}?accepts_incomplete=true", ProvisionBody());
        Assert.True(status == 202, $"provision answered {status}: {body.ToJsonString()}");
        var final = await WaitForOperationAsync(instanceId, TimeSpan.FromSeconds(90));
        Assert.True((string?)final["state"] == "succeeded", $"provision ended {final.ToJsonString()}");
        return instanceId;
    }

    public async Task<JsonObject> BindAsync(string instanceId, string bindingId)
    {
        var body = new JsonObject { ["service_id"] = Model.Catalog.ServiceId, ["plan_id"] = Model.Catalog.SoloPlanId, ["app_guid"] = "app-1" }.ToJsonString();
        var (status, json) = await SendAsync(HttpMethod.Put, $"/v2/service_instances/{instanceId}/service_bindings/{bindingId}", body);
        Assert.True(status == 201, $"bind answered {status}: {json.ToJsonString()}");
        return json["credentials"]!.AsObject();
    }

    /// <summary>An Npgsql connection string from a binding's `uri` (postgres://user:pw@host:port/db).</summary>
    public static string ConnectionStringFromUri(string uri, int timeoutSeconds = 5)
    {
        var u = new Uri(uri);
        var userInfo = u.UserInfo.Split(':', 2);
        return new Npgsql.NpgsqlConnectionStringBuilder
        {
            Host = u.Host, Port = u.Port, Username = Uri.UnescapeDataString(userInfo[0]), Password = Uri.UnescapeDataString(userInfo[1]),
            Database = u.AbsolutePath.TrimStart('/'), Timeout = timeoutSeconds, Pooling = false,
        }.ConnectionString;
    }
}
