using System.Text.Json.Nodes;
using Dingo.Model;
using Dingo.Tests.EndToEnd;
using Dingo.Tests.Support;
using Xunit.Abstractions;

namespace Dingo.Tests.Ha;

/// <summary>
/// A real solo leader goes quiet (PassCadence): its passes come every idle-loop-wait under a lease of three of them, its
/// PostgreSQL serves as before; a replica added by an update wakes it, its key moves to a lease of the TTL, and the
/// replica streams. PassCadenceTests holds the rule's table.
/// </summary>
[SuiteCost(45)]
public sealed class QuietNodeTests(ITestOutputHelper output)
{
    private static readonly HttpClient Http = new() { Timeout = TimeSpan.FromSeconds(10) };

    [Fact]
    public async Task A_solo_leader_passes_rarely_under_a_long_lease_and_a_replica_wakes_it_onto_a_short_one()
    {
        // idle-loop-wait 2 s: an alone lease of 6 s (three of them), the TTL 4 s.
        var settings = TestPlatform.NewSettings(extra: "dingo.ha.idle-loop-wait = 2s");
        await using var platform = await TestPlatform.StartAsync(cells: 2, settings, cellHealthPorts: true);
        var store = platform.Store;
        var id = "quiet-" + Guid.NewGuid().ToString("N")[..8];
        await platform.ProvisionReadyAsync(id, Catalog.SoloPlanId);
        var creds = await platform.BindAsync(id, "b");
        await RecoveryTests.ExecAsync((string)creds["uri"]!, "CREATE TABLE kept(v int); INSERT INTO kept VALUES (1)");

        var key = (await store.GetRawAsync(store.Keys.Leader(id), CancellationToken.None))!;
        var node = (await store.GetAsync<LeaderRecord>(key.Key, CancellationToken.None))!.Value.NodeId;
        Assert.Equal(6, await store.KeepAliveOnceTtlAsync(key.Lease, CancellationToken.None));

        // The cell that runs it, by its metrics; then its cadence: quiet within a few passes.
        async Task<(int Cell, string Text)> ScrapeAsync()
        {
            foreach (var n in new[] { 1, 2 })
            {
                var text = await MetricsText.ScrapeAsync(Http, $"http://127.0.0.1:{platform.CellHealthPort(n)}/metrics");
                if (MetricsText.Value(text, "dingo_node_pass_interval_seconds", ("node", node)) is not null) return (n, text);
            }
            return (0, "");
        }
        double? Interval(string text) => MetricsText.Value(text, "dingo_node_pass_interval_seconds", ("node", node));
        double Leads(string text) => MetricsText.Value(text, "dingo_ha_decisions_total", ("node", node), ("decision", "lead")) ?? 0;
        await Eventually.UntilAsync(async () => Interval((await ScrapeAsync()).Text) == 2, TimeSpan.FromSeconds(20), () => $"{node} quiet (a pass every 2 s)");

        // Quiet: over 8 s at most five passes (every 2 s, one woken by a watch at most), not sixteen (every 500 ms).
        var before = Leads((await ScrapeAsync()).Text);
        await Task.Delay(TimeSpan.FromSeconds(8));
        var (cell, after) = await ScrapeAsync();
        var passes = Leads(after) - before;
        output.WriteLine($"{node} on cell-{cell}: {passes} lead passes in 8 s");
        Assert.InRange(passes, 2, 5);
        // Still the one leader, under the same lease (renewed, not lost), and it serves.
        Assert.Equal(key.Lease, (await store.GetRawAsync(store.Keys.Leader(id), CancellationToken.None))!.Lease);
        Assert.Equal(1, Convert.ToInt32(await RecoveryTests.ScalarAsync((string)creds["uri"]!, "SELECT count(*) FROM kept")));

        // An update to `cluster` adds a replica: the leader wakes, moves its key to a lease of the TTL, passes every loop.
        var (status, body) = await platform.SendAsync(HttpMethod.Patch, $"/v2/service_instances/{id}?accepts_incomplete=true",
            new JsonObject { ["service_id"] = Catalog.ServiceId, ["plan_id"] = Catalog.ClusterPlanId }.ToJsonString());
        Assert.True(status == 202, body.ToJsonString());
        await Eventually.UntilAsync(async () =>
        {
            var now = await store.GetRawAsync(store.Keys.Leader(id), CancellationToken.None);
            return now is not null && now.Lease != key.Lease && await store.KeepAliveOnceTtlAsync(now.Lease, CancellationToken.None) == 4;
        }, TimeSpan.FromSeconds(15), () => $"{id}'s leader key under a new lease of 4 s");
        Assert.Equal(node, (await store.GetAsync<LeaderRecord>(store.Keys.Leader(id), CancellationToken.None))!.Value.NodeId);
        // The old lease is revoked, not left to lapse.
        Assert.Equal(0, await store.KeepAliveOnceTtlAsync(key.Lease, CancellationToken.None));
        var final = await platform.WaitForOperationAsync(id, TimeSpan.FromSeconds(90));
        Assert.True((string?)final["state"] == "succeeded", final.ToJsonString());
        await platform.WaitFullAndHealthyAsync(id, TimeSpan.FromSeconds(60));
        await Eventually.UntilAsync(async () => Interval((await ScrapeAsync()).Text) == 0.5, TimeSpan.FromSeconds(10), () => $"{node} passing every loop-wait again");
        Assert.Equal(1, Convert.ToInt32(await RecoveryTests.ScalarAsync((string)creds["uri"]!, "SELECT count(*) FROM kept")));
    }
}
