using System.Diagnostics;
using System.Text.Json.Nodes;
using Dingo.Model;
using Dingo.Tests.Support;
using Npgsql;
using Xunit.Abstractions;

namespace Dingo.Tests.Routing;

/// <summary>The routing mesh on a real cluster: read-only port, the leader change, and the per-instance limit.</summary>
[SuiteCost(42)]
public sealed class RoutingMeshTests(ITestOutputHelper output)
{
    private static async Task<(bool InRecovery, int Port)> WhereAsync(string uri)
    {
        await using var conn = new NpgsqlConnection(TestPlatform.ConnectionStringFromUri(uri, timeoutSeconds: 3));
        await conn.OpenAsync();
        await using var cmd = new NpgsqlCommand("SELECT pg_is_in_recovery(), inet_server_port()", conn);
        await using var r = await cmd.ExecuteReaderAsync();
        await r.ReadAsync();
        return (r.GetBoolean(0), r.GetInt32(1));
    }

    [Fact]
    public async Task Read_only_port_reaches_replicas_and_a_leader_change_leaves_no_session_on_the_old_primary()
    {
        await using var platform = await TestPlatform.StartAsync(cells: 3, TestPlatform.NewSettings(extra: "dingo.router.max-connections-per-instance = 8"), ownsData: true);
        var id = "mesh-" + Guid.NewGuid().ToString("N")[..8];
        await platform.ProvisionReadyAsync(id, Catalog.ClusterHaPlanId);
        var creds = await platform.BindAsync(id, "b", Catalog.ClusterHaPlanId);
        var uri = (string)creds["uri"]!;
        var readOnlyUri = (string)creds["read_only_uri"]!;
        var port = (int)creds["port"]!;
        var readOnlyPort = (int)creds["read_only_port"]!;
        Assert.NotEqual(port, readOnlyPort);

        // A router learns of a streaming replica at its next resync (every 2 s), each router on its own: until every
        // router knows both, a read-only connection may rightly land on the primary (the fallback when none qualifies).
        await platform.UntilEveryRouterAsync(readOnlyPort, r => r.Target is not null && r.Pool.Count == 2, TimeSpan.FromSeconds(30),
            "every router balancing the read-only port over both replicas");
        // From then on every read-only connection lands on a replica, and both serve: each router alternates over its
        // pool, and of 8 connections spread over 3 routers one router gets at least 3.
        var replicaPorts = new HashSet<int>();
        for (var i = 0; i < 8; i++)
        {
            var w = await WhereAsync(readOnlyUri);
            Assert.True(w.InRecovery, $"read-only connection {i + 1} landed on the primary (port {w.Port})");
            replicaPorts.Add(w.Port);
        }
        Assert.Equal(2, replicaPorts.Count);
        Assert.False((await WhereAsync(uri)).InRecovery);

        // Sessions open to the primary; then a switchover. The kernel hands each new connection to one of the three
        // routers by a hash of its address and port, so any number of them may land on one router: 7 stay within that
        // router's limit of 8 even beside the primary connection just closed above, which it may not have counted out yet.
        var leader = (await platform.Store.GetAsync<LeaderRecord>(platform.Store.Keys.Leader(id), CancellationToken.None))!.Value;
        var sessions = new List<NpgsqlConnection>();
        for (var i = 0; i < 7; i++)
        {
            var c = new NpgsqlConnection(TestPlatform.ConnectionStringFromUri(uri));
            await c.OpenAsync();
            sessions.Add(c);
        }
        var target = (await platform.Store.ListAsync<NodeSpec>(platform.Store.Keys.Nodes(id), CancellationToken.None)).Select(n => n.Value).First(n => n.NodeId != leader.NodeId);
        // The test watches etcd itself: the moment the new leader key is put is the moment to measure from.
        var keyPut = new TaskCompletionSource<long>(TaskCreationOptions.RunContinuationsAsynchronously);
        using var watching = new CancellationTokenSource();
        var watch = platform.Store.WatchPrefixAsync(platform.Store.Keys.Leader(id), changes =>
        {
            if (changes.Any(c => c.Value is not null && c.Value.Contains(target.NodeId, StringComparison.Ordinal))) keyPut.TrySetResult(Stopwatch.GetTimestamp());
            return Task.CompletedTask;
        }, watching.Token);
        await Task.Delay(300); // the watch is established
        var (status, _) = await platform.SendAsync(HttpMethod.Post, $"/admin/service_instances/{id}/switchover", new JsonObject { ["to"] = target.NodeId }.ToJsonString());
        Assert.Equal(202, status);
        var put = await keyPut.Task.WaitAsync(TimeSpan.FromSeconds(30));
        long? reached = null;
        while (reached is null && Stopwatch.GetElapsedTime(put) < TimeSpan.FromSeconds(10))
        {
            // Where the router sends a new connection (the node may still be finishing its promotion).
            try { if ((await WhereAsync(uri)).Port == target.Port) reached = Stopwatch.GetTimestamp(); }
            catch (NpgsqlException) { await Task.Delay(10); }
        }
        await watching.CancelAsync();
        await watch;
        Assert.NotNull(reached);
        var ms = Stopwatch.GetElapsedTime(put, reached!.Value).TotalMilliseconds;
        output.WriteLine($"new connections reached the new primary {ms:0} ms after the leader key was put");
        Console.WriteLine($"[measure] leader change: first new connection on the new primary {ms:0} ms after the etcd event");
        Assert.True(ms < 1000, $"new connections took {ms:0} ms to reach the new primary");

        // Every session still open to the old primary is closed: its next query fails.
        await Task.Delay(1000);
        var survivors = 0;
        foreach (var s in sessions)
        {
            try
            {
                await using var cmd = new NpgsqlCommand("SELECT inet_server_port()", s);
                if ((int)(await cmd.ExecuteScalarAsync())! == leader.Port) survivors++;
            }
            catch (Exception ex) when (ex is NpgsqlException or InvalidOperationException) { }
            await s.DisposeAsync();
        }
        Assert.Equal(0, survivors);

        // The limit is per router: probed once every router sends the port to the new primary. A router still on the old
        // one would hand out the old primary's answers while it restarts as a replica (57P03, "starting up"), and its
        // connections there would be cut when it catches up, freeing places mid-count.
        var converged = await platform.UntilEveryRouterAsync(port, r => r.Target?.Port == target.Port, TimeSpan.FromSeconds(10),
            "every router sending the primary port to the new primary");
        output.WriteLine($"every router on the new primary: waited {converged.TotalMilliseconds:0} ms more after the sessions check");

        // The per-instance limit: past it, a real client gets PostgreSQL's own error.
        await using var limit = await ConnectionLimit.ProbeAsync(uri, attempts: 60);
        Assert.NotNull(limit.Refused);
        Assert.Equal("53300", limit.Refused!.SqlState);
        Assert.Contains($"too many connections for instance {id}", limit.Refused.MessageText);
        output.WriteLine($"refused after {limit.Held.Count} connections: {limit.Refused.MessageText}");
        Assert.True(limit.Held.Count <= 3 * 8, $"{limit.Held.Count} connections held: each of the 3 routers admits at most 8");
    }
}
