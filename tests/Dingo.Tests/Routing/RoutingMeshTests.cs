using System.Diagnostics;
using System.Text.Json.Nodes;
using Dingo.Model;
using Dingo.Tests.Support;
using Npgsql;
using Xunit.Abstractions;

namespace Dingo.Tests.Routing;

/// <summary>The routing mesh on a real cluster: read-only port, the leader change, and the per-instance limit.</summary>
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
        Assert.NotEqual((int)creds["port"]!, (int)creds["read_only_port"]!);

        // The read-only port lands on replicas (within a router resync), the primary port on the primary.
        await Eventually.UntilAsync(async () => (await WhereAsync(readOnlyUri)).InRecovery, TimeSpan.FromSeconds(15), "read-only connections on a replica");
        var replicaPorts = new HashSet<int>();
        await Eventually.UntilAsync(async () =>
        {
            var w = await WhereAsync(readOnlyUri);
            Assert.True(w.InRecovery);
            replicaPorts.Add(w.Port);
            return replicaPorts.Count == 2; // balanced over both replicas
        }, TimeSpan.FromSeconds(20), "read-only connections on both replicas");
        Assert.False((await WhereAsync(uri)).InRecovery);

        // Sessions open to the primary; then a switchover.
        var leader = (await platform.Store.GetAsync<LeaderRecord>(platform.Store.Keys.Leader(id), CancellationToken.None))!.Value;
        var sessions = new List<NpgsqlConnection>();
        for (var i = 0; i < 10; i++)
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

        // The per-instance limit: past it, a real client gets PostgreSQL's own error.
        await using var limit = await ConnectionLimit.ProbeAsync(uri, attempts: 60);
        Assert.NotNull(limit.Refused);
        Assert.Equal("53300", limit.Refused!.SqlState);
        Assert.Contains($"too many connections for instance {id}", limit.Refused.MessageText);
        output.WriteLine($"refused after {limit.Held.Count} connections: {limit.Refused.MessageText}");
    }
}
