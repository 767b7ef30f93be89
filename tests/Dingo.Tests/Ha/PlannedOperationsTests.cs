using System.Net;
using System.Text.Json.Nodes;
using Dingo.Model;
using Dingo.Store;
using Dingo.Tests.EndToEnd;
using Dingo.Tests.Support;
using Xunit.Abstractions;

namespace Dingo.Tests.Ha;

/// <summary>Switchover, drain and the Patroni-compatible health endpoints on a real cluster.</summary>
[SuiteCost(128)]
public sealed class PlannedOperationsTests(ITestOutputHelper output)
{
    private static async Task<LeaderRecord?> LeaderAsync(TestPlatform p, string id) =>
        (await p.Store.GetAsync<LeaderRecord>(p.Store.Keys.Leader(id), CancellationToken.None))?.Value;

    private static async Task<List<NodeSpec>> NodesAsync(TestPlatform p, string id) =>
        (await p.Store.ListAsync<NodeSpec>(p.Store.Keys.Nodes(id), CancellationToken.None)).Select(n => n.Value).ToList();

    private static async Task<List<NodeStatus>> StatusesAsync(TestPlatform p, string id) =>
        (await p.Store.ListAsync<NodeStatus>(p.Store.Keys.Statuses(id), CancellationToken.None)).Select(n => n.Value).ToList();


    [Fact]
    public async Task Switchover_to_a_named_replica_loses_no_acknowledged_write_and_health_endpoints_follow()
    {
        await using var platform = await TestPlatform.StartAsync(cells: 3, cellHealthPorts: true);
        var id = "sw-" + Guid.NewGuid().ToString("N")[..8];
        await platform.ProvisionReadyAsync(id, Catalog.ClusterHaPlanId);
        var creds = await platform.BindAsync(id, "w", Catalog.ClusterHaPlanId);

        // Health endpoints answer as Patroni's do.
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(5) };
        var leader = (await LeaderAsync(platform, id))!;
        var nodes = await NodesAsync(platform, id);
        await Eventually.UntilAsync(async () => (await StatusesAsync(platform, id)).Count(s => s.Role == NodeRole.Replica && s.Streaming) == 2, TimeSpan.FromSeconds(20), "replicas streaming");
        foreach (var node in nodes)
        {
            var isLeader = node.NodeId == leader.NodeId;
            async Task<HttpStatusCode> Get(string path) => (await http.GetAsync($"http://127.0.0.1:{node.ApiPort}{path}")).StatusCode;
            await Eventually.UntilAsync(async () => await Get("/health") == HttpStatusCode.OK, TimeSpan.FromSeconds(10), $"{node.NodeId} /health");
            Assert.Equal(isLeader ? HttpStatusCode.OK : HttpStatusCode.ServiceUnavailable, await Get("/primary"));
            Assert.Equal(isLeader ? HttpStatusCode.OK : HttpStatusCode.ServiceUnavailable, await Get("/leader"));
            Assert.Equal(isLeader ? HttpStatusCode.ServiceUnavailable : HttpStatusCode.OK, await Get("/replica"));
            // The lag bound is judged against the lag the same answer reports: right after a provision the first base
            // backup switches WAL segments, and a replica's position (its last pass) can trail the leader's (etcd) by
            // more than 16 MB for a moment (fresh11). The rule must hold on every answer, and a caught-up replica passes.
            await Eventually.UntilAsync(async () =>
            {
                using var answer = await http.GetAsync($"http://127.0.0.1:{node.ApiPort}/replica?lag=16MB");
                long? lag = System.Text.Json.Nodes.JsonNode.Parse(await answer.Content.ReadAsStringAsync())?["lag"] is JsonValue v && v.TryGetValue<long>(out var bytes) ? bytes : null;
                var within = !isLeader && lag is <= 16L * 1024 * 1024;
                Assert.True(answer.StatusCode == (within ? HttpStatusCode.OK : HttpStatusCode.ServiceUnavailable),
                    $"{node.NodeId}: /replica?lag=16MB answered {(int)answer.StatusCode} with lag {lag?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "unknown"}");
                return within || isLeader;
            }, TimeSpan.FromSeconds(20), $"{node.NodeId} within 16 MB of the leader");
        }

        await using var writer = new Writer(TestPlatform.ConnectionStringFromUri((string)creds["uri"]!), TimeSpan.FromMilliseconds(20));
        await writer.CreateTableAsync();
        writer.Start();
        await Task.Delay(1500);
        var target = nodes.First(n => n.NodeId != leader.NodeId).NodeId;
        var requestedAt = DateTime.UtcNow;
        // As an operator does it: `dingo switchover ID --to NODE --wait` returns once NODE leads and every other node streams.
        var (code, said) = await ProgramRun.RunAsync("dotnet",
            [ProgramRun.ConsoleDll, "switchover", id, "--to", target, "--wait", "--timeout", "60", "--config", Path.Combine(platform.Settings.DataDir, "test.conf")],
            new Dictionary<string, string> { ["DINGO_HOME"] = TestPlatform.RepoRoot() }, deadline: TimeSpan.FromSeconds(90));
        output.WriteLine(said);
        Assert.True(code == 0, said);
        Assert.Contains($"leader {target}:", said, StringComparison.Ordinal);
        Assert.Equal(target, (await LeaderAsync(platform, id))?.NodeId);
        await Eventually.UntilAsync(() => Task.FromResult(writer.FirstAckAfter(DateTime.UtcNow.AddSeconds(-0.2)) is not null), TimeSpan.FromSeconds(30), "writes after the switchover");
        output.WriteLine($"switchover to {target} done in {(DateTime.UtcNow - requestedAt).TotalSeconds:0.0}s");
        await Eventually.UntilAsync(async () => (await StatusesAsync(platform, id)).Any(s => s.NodeId == leader.NodeId && s.Role == NodeRole.Replica && s.Streaming),
            TimeSpan.FromSeconds(30), "the old primary streams as a replica");
        await writer.DisposeAsync();
        Assert.Empty(await writer.MissingAsync());
        Assert.Null(await platform.Store.GetAsync<SwitchoverRequest>(platform.Store.Keys.Switchover(id), CancellationToken.None));
        // A request left from another leader (its clean-up cut short, or overtaken by a failover) is cleared by the
        // leader, and moves nothing: fresh110 once kept one for good after the take's pass ran out of budget.
        await platform.Store.PutAsync(platform.Store.Keys.Switchover(id), new SwitchoverRequest(leader.NodeId, leader.NodeId, DateTimeOffset.UtcNow.AddSeconds(-30)) { HandedTo = leader.NodeId }, CancellationToken.None);
        await Eventually.UntilAsync(async () => await platform.Store.GetAsync<SwitchoverRequest>(platform.Store.Keys.Switchover(id), CancellationToken.None) is null,
            TimeSpan.FromSeconds(10), "the leader clearing a switchover request from another leader");
        Assert.Equal(target, (await LeaderAsync(platform, id))?.NodeId);
        var newLeaderNode = nodes.Single(n => n.NodeId == target);
        Assert.Equal(HttpStatusCode.OK, (await http.GetAsync($"http://127.0.0.1:{newLeaderNode.ApiPort}/primary")).StatusCode);

        await MetricsFollowAsync(platform, http, id, leader.NodeId, newLeaderNode);
        // The instance's history tells the same story (`dingo events`): placed, provisioned, handed over, taken over.
        IReadOnlyList<EventRecord> history = [];
        await Eventually.UntilAsync(async () =>
        {
            history = await EventJournal.ReadAsync(platform.Store, id, CancellationToken.None);
            return history.Any(e => e.Kind == "hand_over" && e.NodeId == leader.NodeId)
                && history.Any(e => e.Kind == "take_leadership" && e.NodeId == target)
                && history.Count(e => e.Kind == EventKind.NodePlaced) == 3
                && history.Any(e => e.Kind == "provision_succeeded" && e.Source == "broker");
        }, TimeSpan.FromSeconds(15), "the provision and the switchover in the instance's events");
        foreach (var e in history) output.WriteLine($"event {e.At:HH:mm:ss.fff} {e.NodeId ?? "-"} {e.Source} {e.Kind}: {e.Sentence}");

        // Bad requests are refused clearly and change nothing.
        var (bad, _) = await platform.SendAsync(HttpMethod.Post, $"/admin/service_instances/{id}/switchover", new JsonObject { ["to"] = "n-nope" }.ToJsonString());
        Assert.Equal(400, bad);
        var (unknown, _) = await platform.SendAsync(HttpMethod.Post, "/admin/service_instances/nope/switchover", "{}");
        Assert.Equal(404, unknown);
    }

    /// <summary>
    /// Every /metrics of the platform passes `promtool check metrics` and tells what happened: the broker counted the
    /// provision, the cells show the new roles, the switchover and the promotion, the leader's backups and the router;
    /// the new primary's Patroni-compatible API says it is primary under Patroni's metric names.
    /// </summary>
    private async Task MetricsFollowAsync(TestPlatform platform, HttpClient http, string id, string oldLeader, NodeSpec newLeader)
    {
        var broker = await MetricsText.ScrapeAsync(http, $"{platform.Settings.Broker.Url.TrimEnd('/')}/metrics");
        await MetricsText.CheckAsync(broker, "the broker's /metrics");
        Assert.True(MetricsText.Value(broker, "dingo_broker_requests_total", ("route", "/v2/service_instances/{id}"), ("method", "PUT"), ("code", "202")) >= 1, broker);
        Assert.True(MetricsText.Value(broker, "dingo_broker_operation_duration_seconds_count", ("kind", "provision"), ("plan", "cluster-ha"), ("outcome", "succeeded")) >= 1, broker);
        Assert.True(MetricsText.Value(broker, "dingo_broker_instances", ("plan", "cluster-ha"), ("state", "ready")) >= 1, broker);

        var cells = new Dictionary<int, string>();
        var missing = new List<string>();
        try
        {
            await Eventually.UntilAsync(async () =>
            {
                foreach (var n in new[] { 1, 2, 3 }) cells[n] = await MetricsText.ScrapeAsync(http, $"http://127.0.0.1:{platform.CellHealthPort(n)}/metrics");
                double Sum(string name, params (string, string)[] labels) => cells.Values.Sum(t => MetricsText.Value(t, name, labels) ?? 0);
                missing.Clear();
                void Expect(bool holds, string what) { if (!holds) missing.Add(what); }
                Expect(Sum("dingo_node_info", ("service_instance", id), ("node", newLeader.NodeId), ("role", "primary"), ("state", "running")) == 1, $"{newLeader.NodeId} running as primary");
                Expect(Sum("dingo_node_info", ("service_instance", id), ("node", oldLeader), ("role", "replica"), ("state", "running")) == 1, $"{oldLeader} running as replica");
                Expect(Sum("dingo_node_leader", ("service_instance", id), ("node", newLeader.NodeId)) == 1, $"{newLeader.NodeId} leader");
                Expect(Sum("dingo_ha_switchovers_total", ("service_instance", id), ("node", oldLeader)) == 1, $"one switchover by {oldLeader}");
                Expect(Sum("dingo_ha_promotions_total", ("service_instance", id), ("node", newLeader.NodeId)) >= 1, $"a promotion of {newLeader.NodeId}");
                Expect(cells.Values.Any(t => MetricsText.Value(t, "dingo_backup_archive_backlog_bytes", ("service_instance", id)) is not null), "the leader's archive backlog");
                Expect(cells.Values.Any(t => MetricsText.Value(t, "dingo_router_open_connections", ("service_instance", id), ("role", "primary")) is not null), "the router's open connections");
                return missing.Count == 0;
            }, TimeSpan.FromSeconds(20), "the cells' metrics showing the switchover");
        }
        catch (TimeoutException)
        {
            foreach (var (n, text) in cells) output.WriteLine($"cell-{n}:\n{string.Join('\n', text.Split('\n').Where(l => l.StartsWith("dingo_", StringComparison.Ordinal)))}");
            throw new TimeoutException($"the cells' metrics lack: {string.Join("; ", missing)}");
        }
        foreach (var (n, text) in cells) await MetricsText.CheckAsync(text, $"cell-{n}'s /metrics");

        var patroni = await MetricsText.ScrapeAsync(http, $"http://127.0.0.1:{newLeader.ApiPort}/metrics");
        await MetricsText.CheckAsync(patroni, "the node API's /metrics");
        Assert.Equal(1, MetricsText.Value(patroni, "patroni_primary", ("scope", id), ("name", newLeader.NodeId)));
        Assert.Equal(0, MetricsText.Value(patroni, "patroni_replica", ("scope", id), ("name", newLeader.NodeId)));
    }

    [Fact]
    public async Task Draining_a_cell_moves_its_primary_and_nodes_away_with_the_data()
    {
        await using var platform = await TestPlatform.StartAsync(cells: 3);
        var id = "drain-" + Guid.NewGuid().ToString("N")[..8];
        await platform.ProvisionReadyAsync(id, Catalog.ClusterPlanId);
        var creds = await platform.BindAsync(id, "w", Catalog.ClusterPlanId);
        await RecoveryTests.ExecAsync((string)creds["uri"]!, "CREATE TABLE kept(v text); INSERT INTO kept VALUES ('moved')");
        var leader = (await LeaderAsync(platform, id))!;
        var drainedCell = (await NodesAsync(platform, id)).Single(n => n.NodeId == leader.NodeId).CellId;

        // As an operator does it: `dingo drain CELL --wait` follows the drain until no node is left on the cell.
        var (code, said) = await ProgramRun.RunAsync("dotnet",
            [ProgramRun.ConsoleDll, "drain", drainedCell, "--wait", "--timeout", "90", "--config", Path.Combine(platform.Settings.DataDir, "test.conf")],
            new Dictionary<string, string> { ["DINGO_HOME"] = TestPlatform.RepoRoot() }, deadline: TimeSpan.FromSeconds(120));
        output.WriteLine(said);
        Assert.True(code == 0, said);
        Assert.Contains($"no node left on {drainedCell}", said, StringComparison.Ordinal);
        Assert.Contains("node(s) left on", said, StringComparison.Ordinal); // progress was printed while it moved them
        Assert.DoesNotContain(await NodesAsync(platform, id), n => n.CellId == drainedCell);
        var seen = "";
        await Eventually.UntilAsync(async () =>
        {
            var nodes = await NodesAsync(platform, id);
            var statuses = await StatusesAsync(platform, id);
            var l = await LeaderAsync(platform, id);
            seen = $"leader {l?.NodeId ?? "none"}; nodes {string.Join(", ", nodes.Select(n => $"{n.NodeId}@{n.CellId}"))}; statuses "
                   + string.Join(" | ", statuses.Select(s => $"{s.NodeId}@{s.CellId} {s.State} {s.Role} streaming={s.Streaming}: {s.Decision} ({s.Detail})"));
            return nodes.Count == 2 && nodes.All(n => n.CellId != drainedCell) && l is not null
                   && statuses.Count(s => nodes.Any(n => n.NodeId == s.NodeId) && s.Role == NodeRole.Replica && s.Streaming) == 1;
        }, TimeSpan.FromSeconds(90), () => $"every node off {drainedCell}, one replica streaming; last seen: {seen}");
        Assert.Equal("moved", await RecoveryTests.ScalarAsync((string)creds["uri"]!, "SELECT v FROM kept"));

        // A drained cell takes no new node until it is undrained.
        var (undrain, _) = await platform.SendAsync(HttpMethod.Delete, $"/admin/cells/{drainedCell}/drain");
        Assert.Equal(200, undrain);
        var (again, _) = await platform.SendAsync(HttpMethod.Delete, $"/admin/cells/{drainedCell}/drain");
        Assert.Equal(404, again);
    }

    [Fact]
    public async Task Updates_change_the_plan_and_the_node_count_keeping_the_data_and_the_leader()
    {
        await using var platform = await TestPlatform.StartAsync(cells: 3);
        var id = "upd-" + Guid.NewGuid().ToString("N")[..8];
        await platform.ProvisionReadyAsync(id, Catalog.SoloPlanId);
        var creds = await platform.BindAsync(id, "w");
        await RecoveryTests.ExecAsync((string)creds["uri"]!, "CREATE TABLE kept(v text); INSERT INTO kept VALUES ('grown')");

        async Task UpdateAsync(JsonObject body, int nodes)
        {
            body["service_id"] = Catalog.ServiceId;
            var (status, json) = await platform.SendAsync(HttpMethod.Patch, $"/v2/service_instances/{id}?accepts_incomplete=true", body.ToJsonString());
            Assert.True(status == 202, json.ToJsonString());
            var final = await platform.WaitForOperationAsync(id, TimeSpan.FromSeconds(90));
            Assert.True((string?)final["state"] == "succeeded", final.ToJsonString());
            Assert.Equal(nodes, (await NodesAsync(platform, id)).Count);
            Assert.Equal("grown", await RecoveryTests.ScalarAsync((string)creds["uri"]!, "SELECT v FROM kept"));
        }

        var leader = (await LeaderAsync(platform, id))!.NodeId;
        await UpdateAsync(new JsonObject { ["plan_id"] = Catalog.ClusterPlanId }, 2);           // the plan's size
        await UpdateAsync(new JsonObject { ["parameters"] = new JsonObject { ["node-count"] = 3 } }, 3);
        await UpdateAsync(new JsonObject { ["parameters"] = new JsonObject { ["cells"] = new JsonArray("cell-1", "cell-2", "cell-3") } }, 3); // no node-count: size kept
        await UpdateAsync(new JsonObject { ["parameters"] = new JsonObject { ["node-count"] = 2 } }, 2);
        Assert.Equal(leader, (await LeaderAsync(platform, id))!.NodeId); // shrinking never removes the primary
        var (_, fetched) = await platform.SendAsync(HttpMethod.Get, $"/v2/service_instances/{id}");
        Assert.Equal(Catalog.ClusterPlanId, (string?)fetched["plan_id"]);

        // Below the plan's minimum: refused, nothing changes.
        var (refused, body) = await platform.SendAsync(HttpMethod.Patch, $"/v2/service_instances/{id}?accepts_incomplete=true",
            new JsonObject { ["service_id"] = Catalog.ServiceId, ["plan_id"] = Catalog.ClusterHaPlanId, ["parameters"] = new JsonObject { ["node-count"] = 2 } }.ToJsonString());
        Assert.Equal(400, refused);
        Assert.Contains("between 3 and 7", (string?)body["description"]);
    }
}
