using System.Net.Sockets;
using Dingo.Tests.Support;
using Npgsql;
using Xunit.Abstractions;

namespace Dingo.Tests.EndToEnd;

/// <summary>The whole OSB path on real etcd, real cells and real PostgreSQL, through the router.</summary>
[SuiteCost(50)]
public sealed class LifecycleTests(ITestOutputHelper output)
{
    [Fact]
    public async Task Provision_bind_use_unbind_deprovision_through_the_router()
    {
        // Each cell keeps one warm data directory (dingo.cell.warm-pool): the instance's node takes it instead of running initdb.
        await using var platform = await TestPlatform.StartAsync(cells: 2, TestPlatform.NewSettings(extra: "dingo.cell.warm-pool = 1"), ownsData: true);
        string WarmRoot(string cell) => Path.Combine(platform.Settings.DataDir, "cells", cell, "nodes", "@warm");
        await Eventually.UntilAsync(() => Task.FromResult(new[] { "cell-1", "cell-2" }.All(c =>
            Directory.Exists(WarmRoot(c)) && Directory.EnumerateFiles(WarmRoot(c), "ready", SearchOption.AllDirectories).Any())),
            TimeSpan.FromSeconds(60), "each cell's warm pool ready");
        var id = "e2e-" + Guid.NewGuid().ToString("N")[..8];
        var started = DateTime.UtcNow;
        await platform.ProvisionReadyAsync(id);
        output.WriteLine($"provision → succeeded in {(DateTime.UtcNow - started).TotalSeconds:0.0}s");
        var warmNode = Assert.Single(await platform.Store.ListAsync<Model.NodeSpec>(platform.Store.Keys.Nodes(id), CancellationToken.None)).Value;
        var marker = await File.ReadAllTextAsync(Path.Combine(platform.Settings.DataDir, "cells", warmNode.CellId, "nodes", warmNode.NodeId, "initialised"));
        Assert.Contains("warm-pool", marker, StringComparison.Ordinal);

        var creds = await platform.BindAsync(id, "bind-1");
        var uri = (string)creds["uri"]!;
        Assert.Equal(platform.Settings.Broker.BindingHost, (string)creds["host"]!);
        Assert.Equal("dingo", (string)creds["database"]!);
        Assert.True(((string)creds["password"]!).Length >= 32);
        Assert.StartsWith("jdbc:postgresql://", (string)creds["jdbcUrl"]!);
        var port = (int)creds["port"]!;
        Assert.InRange(port, platform.Settings.Router.PortFirst, platform.Settings.Router.PortLast);

        // Through the router: create, insert, read. The role is neither superuser nor replication.
        await using (var conn = new NpgsqlConnection(TestPlatform.ConnectionStringFromUri(uri)))
        {
            await conn.OpenAsync();
            await using var cmd = conn.CreateCommand();
            cmd.CommandText = "CREATE TABLE notes(id int primary key, body text); INSERT INTO notes VALUES (1, 'hello dingo');";
            await cmd.ExecuteNonQueryAsync();
            cmd.CommandText = "SELECT body FROM notes WHERE id = 1";
            Assert.Equal("hello dingo", await cmd.ExecuteScalarAsync());
            cmd.CommandText = "SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = session_user";
            Assert.Equal(false, await cmd.ExecuteScalarAsync());

            // An idle primary is not a stream of new sessions: the platform's own questions (HA probe, backup duty) go
            // over pooled connections. The backup duty once opened one every 2 s (a fork, SCRAM and TLS each time).
            cmd.CommandText = "SELECT sum(sessions)::bigint FROM pg_stat_database WHERE datname IS NOT NULL";
            var before = (long)(await cmd.ExecuteScalarAsync())!;
            await Task.Delay(TimeSpan.FromSeconds(8));
            var opened = (long)(await cmd.ExecuteScalarAsync())! - before;
            output.WriteLine($"sessions opened on the idle primary in 8 s: {opened}");
            Assert.True(opened <= 1, $"{opened} sessions opened on an idle primary in 8 s");
        }

        // Identical re-bind: 200 with the same credentials; a different one: 409.
        var bindBody = new System.Text.Json.Nodes.JsonObject { ["service_id"] = Model.Catalog.ServiceId, ["plan_id"] = Model.Catalog.SoloPlanId, ["app_guid"] = "app-1" }.ToJsonString();
        var (again, againBody) = await platform.SendAsync(HttpMethod.Put, $"/v2/service_instances/{id}/service_bindings/bind-1", bindBody);
        Assert.Equal(200, again);
        Assert.Equal(uri, (string)againBody["credentials"]!["uri"]!);
        var (conflict, _) = await platform.SendAsync(HttpMethod.Put, $"/v2/service_instances/{id}/service_bindings/bind-1",
            bindBody.Replace("app-1", "app-2"));
        Assert.Equal(409, conflict);
        // Other parameters, even ones a binding never takes, are a conflict too: the id is taken (OSB: 409, not 400).
        var (conflictParameters, _) = await platform.SendAsync(HttpMethod.Put, $"/v2/service_instances/{id}/service_bindings/bind-1",
            bindBody.Replace("\"app_guid\"", "\"parameters\":{\"role\":\"admin\"},\"app_guid\""));
        Assert.Equal(409, conflictParameters);
        var (fetched, fetchedBody) = await platform.SendAsync(HttpMethod.Get, $"/v2/service_instances/{id}/service_bindings/bind-1");
        Assert.Equal(200, fetched);
        Assert.Equal(uri, (string)fetchedBody["credentials"]!["uri"]!);

        // Update parameters: asynchronous, then fetch shows them; the instance keeps serving.
        var patch = new System.Text.Json.Nodes.JsonObject { ["service_id"] = Model.Catalog.ServiceId, ["parameters"] = new System.Text.Json.Nodes.JsonObject { ["cells"] = new System.Text.Json.Nodes.JsonArray("cell-1", "cell-2") } }.ToJsonString();
        var (updating, updatingBody) = await platform.SendAsync(HttpMethod.Patch, $"/v2/service_instances/{id}?accepts_incomplete=true", patch);
        Assert.Equal(202, updating);
        Assert.StartsWith("update-", (string?)updatingBody["operation"]);
        Assert.Equal("succeeded", (string?)(await platform.WaitForOperationAsync(id, TimeSpan.FromSeconds(30)))["state"]);
        var (instanceStatus, instanceBody) = await platform.SendAsync(HttpMethod.Get, $"/v2/service_instances/{id}");
        Assert.Equal(200, instanceStatus);
        Assert.Equal(Model.Catalog.SoloPlanId, (string?)instanceBody["plan_id"]);
        Assert.Equal(2, instanceBody["parameters"]!["cells"]!.AsArray().Count);
        Assert.Equal(Model.Product.Version, (string?)instanceBody["maintenance_info"]!["version"]);

        // A maintenance update (`cf update-service --upgrade`) to this version changes nothing in the cluster: done at
        // once (200); another version than the catalog's is refused (422 MaintenanceInfoConflict).
        var upgrade = new System.Text.Json.Nodes.JsonObject { ["service_id"] = Model.Catalog.ServiceId, ["maintenance_info"] = new System.Text.Json.Nodes.JsonObject { ["version"] = Model.Product.Version } };
        var (upgraded, _) = await platform.SendAsync(HttpMethod.Patch, $"/v2/service_instances/{id}?accepts_incomplete=true", upgrade.ToJsonString());
        Assert.Equal(200, upgraded);
        upgrade["maintenance_info"] = new System.Text.Json.Nodes.JsonObject { ["version"] = "99.0.0" };
        var (outdated, outdatedBody) = await platform.SendAsync(HttpMethod.Patch, $"/v2/service_instances/{id}?accepts_incomplete=true", upgrade.ToJsonString());
        Assert.Equal(422, outdated);
        Assert.Equal("MaintenanceInfoConflict", (string?)outdatedBody["error"]);

        // A second binding sees the first one's table (shared owner), with its own role.
        var creds2 = await platform.BindAsync(id, "bind-2");
        Assert.NotEqual((string)creds["username"]!, (string)creds2["username"]!);

        // Keep a session open, unbind: the session is ended and the old password no longer connects.
        var open = new NpgsqlConnection(TestPlatform.ConnectionStringFromUri(uri));
        await open.OpenAsync();
        var q = $"service_id={Model.Catalog.ServiceId}&plan_id={Model.Catalog.SoloPlanId}";
        var (unbound, _) = await platform.SendAsync(HttpMethod.Delete, $"/v2/service_instances/{id}/service_bindings/bind-1?{q}");
        Assert.Equal(200, unbound);
        await Assert.ThrowsAnyAsync<Exception>(async () =>
        {
            await using var cmd = open.CreateCommand();
            cmd.CommandText = "SELECT 1";
            await cmd.ExecuteScalarAsync();
        });
        await open.DisposeAsync();
        var refused = await Assert.ThrowsAsync<PostgresException>(async () =>
        {
            await using var conn = new NpgsqlConnection(TestPlatform.ConnectionStringFromUri(uri));
            await conn.OpenAsync();
        });
        Assert.Equal("28P01", refused.SqlState); // invalid password: the role is gone
        var (unboundAgain, _) = await platform.SendAsync(HttpMethod.Delete, $"/v2/service_instances/{id}/service_bindings/bind-1?{q}");
        Assert.Equal(410, unboundAgain);

        // The data survived the unbind: the second binding reads it.
        await using (var conn = new NpgsqlConnection(TestPlatform.ConnectionStringFromUri((string)creds2["uri"]!)))
        {
            await conn.OpenAsync();
            await using var cmd = conn.CreateCommand();
            cmd.CommandText = "SELECT body FROM notes WHERE id = 1";
            Assert.Equal("hello dingo", await cmd.ExecuteScalarAsync());
        }

        // Deprovision: async, then the port refuses connections and the node's data is gone.
        var nodes = await platform.Store.ListAsync<Model.NodeSpec>(platform.Store.Keys.Nodes(id), CancellationToken.None);
        var node = Assert.Single(nodes).Value;
        var nodeDir = Path.Combine(Path.GetFullPath(platform.Settings.DataDir), "cells", node.CellId, "nodes", node.NodeId);
        Assert.True(Directory.Exists(nodeDir), $"node data expected at {nodeDir}");
        var (deleting, deletingBody) = await platform.SendAsync(HttpMethod.Delete, $"/v2/service_instances/{id}?accepts_incomplete=true&{q}");
        Assert.Equal(202, deleting);
        Assert.NotNull(deletingBody["operation"]);
        var final = await platform.WaitForOperationAsync(id, TimeSpan.FromSeconds(60));
        Assert.Equal("succeeded", (string?)final["state"]);
        // A finished delete still answers 200 succeeded for a while.
        var (after, afterBody) = await platform.SendAsync(HttpMethod.Get, $"/v2/service_instances/{id}/last_operation");
        Assert.Equal(200, after);
        Assert.Equal("succeeded", (string?)afterBody["state"]);
        Assert.False(Directory.Exists(nodeDir), "node data should be deleted");
        await AssertRefusedAsync(port, TimeSpan.FromSeconds(10));
        var (gone, _) = await platform.SendAsync(HttpMethod.Delete, $"/v2/service_instances/{id}?accepts_incomplete=true&{q}");
        Assert.Equal(410, gone);
    }

    /// <summary>
    /// Store-synchronous commit through the OSB API: a `cluster` provisioned with `store-sync` names the archiver and its
    /// replica in the leader's synchronous_standby_names (etcd lists the replica: the only failover candidate), commits
    /// through the router; an update turns it off again.
    /// </summary>
    [Fact]
    public async Task A_store_sync_cluster_commits_through_the_archiver_and_the_replica_and_an_update_turns_it_off()
    {
        await using var platform = await TestPlatform.StartAsync(cells: 2);
        var id = "ssync-" + Guid.NewGuid().ToString("N")[..8];
        await platform.ProvisionReadyAsync(id, Model.Catalog.ClusterPlanId, new Dictionary<string, object> { ["store-sync"] = true });
        var record = (await platform.Store.GetAsync<Model.InstanceRecord>(platform.Store.Keys.Instance(id), CancellationToken.None))!.Value;

        async Task<(string Setting, string Archiver, string? Replica)> LeaderSeesAsync()
        {
            var leader = (await platform.Store.GetAsync<Model.LeaderRecord>(platform.Store.Keys.Leader(id), CancellationToken.None))?.Value;
            if (leader is null) return ("", "", null);
            await using var conn = Dingo.Postgres.PlatformConnectionTls.Connection(Dingo.Postgres.PlatformConnectionTls.Apply(
                Dingo.Postgres.DatabaseAdmin.ConnectionString(leader.Host, leader.Port, record.Superuser, "postgres"), required: true));
            await conn.OpenAsync();
            await using var cmd = new NpgsqlCommand(
                "SELECT current_setting('synchronous_standby_names'), "
                + $"COALESCE((SELECT sync_state FROM pg_stat_replication WHERE application_name = '{Dingo.Ha.SynchronousCommit.Archiver}'), ''), "
                + $"(SELECT application_name FROM pg_stat_replication WHERE application_name <> '{Dingo.Ha.SynchronousCommit.Archiver}' AND sync_state = 'sync')", conn);
            await using var r = await cmd.ExecuteReaderAsync();
            await r.ReadAsync();
            return (r.GetString(0), r.GetString(1), r.IsDBNull(2) ? null : r.GetString(2));
        }

        var seen = ("", "", (string?)null);
        await Eventually.UntilAsync(async () =>
        {
            seen = await LeaderSeesAsync();
            return seen.Item2 == "sync" && seen.Item3 is not null;
        }, TimeSpan.FromSeconds(60), () => $"the archiver and the replica as the leader's synchronous standbys; the leader saw {seen}");
        var (setting, _, replica) = seen;
        output.WriteLine($"synchronous_standby_names = {setting}");
        Assert.Equal($"FIRST 2 (\"{Dingo.Ha.SynchronousCommit.Archiver}\", \"{replica}\")", setting);
        var sync = (await platform.Store.GetAsync<Model.SyncState>(platform.Store.Keys.Sync(id), CancellationToken.None))?.Value;
        Assert.NotNull(sync);
        Assert.Equal([replica!], sync.Standbys);

        var creds = await platform.BindAsync(id, "bind-1", Model.Catalog.ClusterPlanId);
        await using (var conn = new NpgsqlConnection(TestPlatform.ConnectionStringFromUri((string)creds["uri"]!)))
        {
            await conn.OpenAsync();
            await using var cmd = new NpgsqlCommand("CREATE TABLE t(id int); INSERT INTO t SELECT generate_series(1, 100)", conn);
            await cmd.ExecuteNonQueryAsync();
        }

        var patch = new System.Text.Json.Nodes.JsonObject
        {
            ["service_id"] = Model.Catalog.ServiceId,
            ["parameters"] = new System.Text.Json.Nodes.JsonObject { ["store-sync"] = false },
        }.ToJsonString();
        var (updating, _) = await platform.SendAsync(HttpMethod.Patch, $"/v2/service_instances/{id}?accepts_incomplete=true", patch);
        Assert.Equal(202, updating);
        Assert.Equal("succeeded", (string?)(await platform.WaitForOperationAsync(id, TimeSpan.FromSeconds(30)))["state"]);
        await Eventually.UntilAsync(async () => (seen = await LeaderSeesAsync()).Item1 == "", TimeSpan.FromSeconds(30),
            () => $"the cluster asynchronous again; the leader saw {seen}");
    }

    internal static async Task AssertRefusedAsync(int port, TimeSpan within)
    {
        var deadline = DateTime.UtcNow + within;
        while (true)
        {
            try
            {
                using var client = new TcpClient();
                await client.ConnectAsync("127.0.0.1", port);
            }
            catch (SocketException ex) when (ex.SocketErrorCode == SocketError.ConnectionRefused)
            {
                return;
            }
            if (DateTime.UtcNow > deadline) throw new Xunit.Sdk.XunitException($"port {port} still accepts connections after {within}");
            await Task.Delay(200);
        }
    }
}
