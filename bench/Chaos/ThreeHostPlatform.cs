using System.Text;
using System.Text.Json.Nodes;
using Dingo.Model;
using Dingo.Store;
using Dingo.Tests.Ha;
using Dingo.Tests.Support;
using Npgsql;
using Xunit.Abstractions;

namespace Dingo.Bench.Chaos;

/// <summary>
/// The three-host platform (<see cref="ThreeHosts"/>: network namespaces on a bridge, an etcd member, a cell and its
/// router on each host, brokers on hosts 0 and 1), one instance per plan provisioned through host 0's broker, and a
/// writer per instance committing through the router of <see cref="WriterHost"/>. The link-cut fault never cuts that
/// host: it moves a primary off it first (<see cref="MovePrimaryOffWriterHostAsync"/>).
/// </summary>
internal sealed class ThreeHostPlatform : ChaosPlatform
{
    /// <summary>The host whose router the writers use: host 2, the one without a broker.</summary>
    public const int WriterHost = 2;
    // As ThreeHostTests: archiving is not under test and costs CPU that three hosts' processes on 2 cores need.
    private const string NoBackups = "dingo.backups.enabled = false";
    private static readonly TimeSpan OperationLimit = TimeSpan.FromSeconds(180);
    private static readonly TimeSpan SwitchoverLimit = TimeSpan.FromSeconds(60);

    private readonly ThreeHosts _three;

    private ThreeHostPlatform(ThreeHosts three) : base(three.Settings) => _three = three;

    public NetnsHosts Hosts => _three.Hosts;
    public override EtcdStore Store => _three.Store;

    /// <summary>The host a cell runs on (ThreeHosts puts cell-(i+1) on host i).</summary>
    public static int HostOf(string cellId) => CellNumber(cellId) - 1;

    public static async Task<ThreeHostPlatform> StartAsync(IReadOnlyList<string> plans, CancellationToken ct)
    {
        var three = await ThreeHosts.StartAsync(new StderrOutput(), HaSettings + "\n" + NoBackups + "\n" + Ports);
        var chaos = new ThreeHostPlatform(three);
        try
        {
            foreach (var plan in plans)
            {
                var planId = Catalog.Plans.Single(p => p.Name == plan).Id;
                var id = $"chaos-{plan}";
                await chaos.ProvisionAsync(id, planId, ct);
                var (status, body) = await chaos.SendAsync(HttpMethod.Put, $"/v2/service_instances/{id}/service_bindings/w",
                    new JsonObject { ["service_id"] = Catalog.ServiceId, ["plan_id"] = planId, ["app_guid"] = "app-1" }.ToJsonString(), ct);
                if (status != 201 || body["credentials"]?["uri"] is not { } uri) throw new InvalidOperationException($"bind {id} answered {status}: {body.ToJsonString()}");
                var record = await three.Store.GetAsync<InstanceRecord>(three.Store.Keys.Instance(id), ct)
                             ?? throw new InvalidOperationException($"{id} has no instance record");
                // The binding names host 0; the writer goes through the router of the host that is never cut.
                var cs = new NpgsqlConnectionStringBuilder(TestPlatform.ConnectionStringFromUri(uri.GetValue<string>())) { Host = three.Hosts.HostAddress(WriterHost) }.ConnectionString;
                var writer = new Writer(cs, WriteEvery, AttemptLimit);
                chaos.Instances.Add(new ChaosInstance(id, plan, record.Value.Superuser, writer));
                await writer.CreateTableAsync();
                writer.Start();
            }
            return chaos;
        }
        catch
        {
            await chaos.DisposeAsync();
            throw;
        }
    }

    private async Task ProvisionAsync(string id, string planId, CancellationToken ct)
    {
        var (status, body) = await SendAsync(HttpMethod.Put, $"/v2/service_instances/{id}?accepts_incomplete=true", TestPlatform.ProvisionBody(planId), ct);
        if (status != 202) throw new InvalidOperationException($"provision {id} answered {status}: {body.ToJsonString()}");
        var deadline = DateTime.UtcNow + OperationLimit;
        while (true)
        {
            var (_, op) = await SendAsync(HttpMethod.Get, $"/v2/service_instances/{id}/last_operation", null, ct);
            var state = (string?)op["state"];
            if (state == OperationState.Succeeded.Wire()) return;
            if (state is not null && state != OperationState.InProgress.Wire()) throw new InvalidOperationException($"provision {id} ended {op.ToJsonString()}");
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"provision {id} still in progress after {OperationLimit.TotalSeconds:0} s: {op.ToJsonString()}");
            await Task.Delay(250, ct);
        }
    }

    /// <summary>
    /// When the instance's primary is on <see cref="WriterHost"/>, a planned switchover to a replica on another host,
    /// followed until a node off that host holds the leader key (at most 60 s); what was moved, or null when the
    /// primary was elsewhere already.
    /// </summary>
    public async Task<string?> MovePrimaryOffWriterHostAsync(ChaosInstance instance, Random random, CancellationToken ct)
    {
        var primary = await PrimaryAsync(instance.Id, ct);
        if (HostOf(primary.CellId) != WriterHost) return null;
        var replicas = (await NodesAsync(instance.Id, ct)).Where(n => n.NodeId != primary.NodeId).ToList();
        var candidates = replicas.Where(n => HostOf(n.CellId) != WriterHost).ToList();
        if (candidates.Count == 0) throw new InvalidOperationException($"{instance.Id} has no node off host {WriterHost} to move its primary to");
        // A switchover naming a replica the election does not rank first never completes (seen here: the named one
        // defers to an equally advanced replica with a lower id, which defers to the named one; no leader for 60 s).
        // Unnamed, the cell hands over to the best replica: any will do when none is on the writers' host.
        var to = candidates.Count == replicas.Count ? null : candidates[random.Next(candidates.Count)];
        var (status, body) = await SendAsync(HttpMethod.Post, $"/admin/service_instances/{instance.Id}/switchover",
            to is null ? null : new JsonObject { ["to"] = to.NodeId }.ToJsonString(), ct);
        if (status != 202) throw new InvalidOperationException($"switchover of {instance.Id} to {to?.NodeId ?? "the best replica"} answered {status}: {body.ToJsonString()}");
        var deadline = DateTime.UtcNow + SwitchoverLimit;
        while (true)
        {
            if (await Store.GetAsync<LeaderRecord>(Store.Keys.Leader(instance.Id), ct) is { } leader && leader.Value.NodeId != primary.NodeId)
            {
                var now = await NodeAsync(instance.Id, leader.Value.NodeId, ct);
                if (HostOf(now.CellId) != WriterHost) return $"moved_primary={primary.NodeId}@{primary.CellId}->{now.NodeId}@{now.CellId}";
            }
            if (DateTime.UtcNow > deadline)
                throw new TimeoutException($"no node off host {WriterHost} took {instance.Id}'s leader key within {SwitchoverLimit.TotalSeconds:0} s of the switchover from {primary.NodeId}");
            await Task.Delay(200, ct);
        }
    }

    /// <summary>An OSB or admin call through host 0's broker, host 1's when host 0's does not answer.</summary>
    private async Task<(int Status, JsonObject Body)> SendAsync(HttpMethod method, string path, string? body, CancellationToken ct)
    {
        for (var broker = 0; ; broker++)
        {
            using var http = _three.Broker(broker);
            using var request = new HttpRequestMessage(method, path);
            if (body is not null) request.Content = new StringContent(body, Encoding.UTF8, "application/json");
            if (path.StartsWith("/admin", StringComparison.Ordinal)) request.Headers.Authorization = TestPlatform.AdminAuthorization;
            try
            {
                using var response = await http.SendAsync(request, ct);
                var text = await response.Content.ReadAsStringAsync(ct);
                return ((int)response.StatusCode, text.Length == 0 ? new JsonObject() : JsonNode.Parse(text) as JsonObject ?? new JsonObject());
            }
            catch (Exception ex) when (broker == 0 && ex is HttpRequestException or TaskCanceledException && !ct.IsCancellationRequested)
            {
                Console.Error.WriteLine($"bench: the broker on host 0 did not answer {method} {path} ({ex.Message}); asking host 1's");
            }
        }
    }

    public override async ValueTask DisposeAsync()
    {
        ContinueAll();
        try
        {
            foreach (var instance in Instances) await StopWriterAsync(instance);
            try
            {
                var logs = Path.Combine(Path.GetTempPath(), "dingo-bench-logs");
                Directory.CreateDirectory(logs);
                foreach (var log in Directory.Exists(Hosts.LogDirectory) ? Directory.GetFiles(Hosts.LogDirectory) : [])
                    File.Copy(log, Path.Combine(logs, $"chaos-3h-{Path.GetFileName(log)}"), overwrite: true);
                Console.Error.WriteLine($"bench: the hosts' etcd, broker, cell and probe logs in {logs}/chaos-3h-*.log");
            }
            catch (IOException ex) { Console.Error.WriteLine($"bench: keeping the hosts' logs: {ex.Message}"); }
        }
        finally
        {
            // Every process in the namespaces, the namespaces, the bridge, the data and the keys.
            await _three.DisposeAsync();
        }
    }

    /// <summary>ThreeHosts narrates to a test's output; the bench's narration goes to stderr.</summary>
    private sealed class StderrOutput : ITestOutputHelper
    {
        public void WriteLine(string message) => Console.Error.WriteLine("three hosts: " + message);
        public void WriteLine(string format, params object[] args) => WriteLine(string.Format(System.Globalization.CultureInfo.InvariantCulture, format, args));
    }
}
