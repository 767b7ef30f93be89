using System.Diagnostics;
using System.Text.Json.Nodes;
using Dingo.Backups;
using Dingo.Tests.Support;
using Npgsql;
using Xunit.Abstractions;

namespace Dingo.Tests.EndToEnd;

/// <summary>
/// Recovery through the whole platform, from the object store only: a deleted instance recreated, a clone as of a
/// point in time, and every instance rebuilt after etcd and every cell lost their data.
/// </summary>
[SuiteCost(324)]
public sealed class BackupRecoveryTests(ITestOutputHelper output)
{
    [Fact]
    public async Task A_deleted_instance_comes_back_with_the_same_port_credentials_and_rows()
    {
        await using var platform = await TestPlatform.StartAsync(cells: 1);
        var id = "del-" + Guid.NewGuid().ToString("N")[..8];
        await platform.ProvisionReadyAsync(id);
        var uri = (string)(await platform.BindAsync(id, "b1"))["uri"]!;
        await ExecAsync(uri, "CREATE TABLE t(v int); INSERT INTO t SELECT generate_series(1, 100)");
        await WaitArchivedAsync(platform, id, uri);

        // A restore drill on demand: the latest backup restored into a scratch node and checked.
        var (drillStatus, drillAnswer) = await platform.SendAsync(HttpMethod.Post, $"/admin/service_instances/{id}/drill");
        Assert.True(drillStatus == 202, drillAnswer.ToJsonString());
        await Eventually.UntilAsync(async () => await platform.Store.GetAsync<Model.DrillResult>(platform.Store.Keys.Drill(id), CancellationToken.None) is not null,
            TimeSpan.FromSeconds(90), "the drill's result");
        var drill = (await platform.Store.GetAsync<Model.DrillResult>(platform.Store.Keys.Drill(id), CancellationToken.None))!.Value;
        output.WriteLine($"drill: {drill.Detail}");
        Assert.True(drill.Ok, drill.Detail);
        Assert.Contains("1 user table", drill.Detail, StringComparison.Ordinal);

        var (status, _) = await platform.SendAsync(HttpMethod.Delete, $"/v2/service_instances/{id}?accepts_incomplete=true&service_id={Model.Catalog.ServiceId}&plan_id={Model.Catalog.SoloPlanId}");
        Assert.Equal(202, status);
        Assert.Equal("succeeded", (string?)(await platform.WaitForOperationAsync(id, TimeSpan.FromSeconds(60)))["state"]);
        await Assert.ThrowsAnyAsync<NpgsqlException>(() => ScalarAsync(uri, "SELECT count(*) FROM t"));

        var watch = Stopwatch.StartNew();
        var (recreated, body) = await platform.SendAsync(HttpMethod.Post, $"/admin/service_instances/{id}/recreate");
        Assert.True(recreated == 202, body.ToJsonString());
        Assert.Equal("succeeded", (string?)(await platform.WaitForOperationAsync(id, TimeSpan.FromSeconds(240)))["state"]);
        // The binding handed out before the deletion still works: same host, port, user and password.
        Assert.Equal(100L, await RetryAsync(() => ScalarAsync(uri, "SELECT count(*) FROM t"), TimeSpan.FromSeconds(30)));
        output.WriteLine($"recreated and serving in {watch.Elapsed.TotalSeconds:0.0}s");

        // Recreating what exists is refused and changes nothing.
        var (again, refusal) = await platform.SendAsync(HttpMethod.Post, $"/admin/service_instances/{id}/recreate");
        Assert.Equal(409, again);
        Assert.Contains("exists", (string?)refusal["description"], StringComparison.Ordinal);
        var (unknown, _) = await platform.SendAsync(HttpMethod.Post, "/admin/service_instances/never-existed/recreate");
        Assert.Equal(404, unknown);
    }

    [Fact]
    public async Task A_clone_as_of_a_point_in_time_has_exactly_the_rows_committed_before_it()
    {
        await using var platform = await TestPlatform.StartAsync(cells: 2);
        var source = "src-" + Guid.NewGuid().ToString("N")[..8];
        var body = new JsonObject
        {
            ["service_id"] = Model.Catalog.ServiceId, ["plan_id"] = Model.Catalog.ClusterPlanId,
            ["organization_guid"] = "org-1", ["space_guid"] = "space-1",
            ["context"] = new JsonObject { ["platform"] = "cloudfoundry", ["instance_name"] = "orders-db" },
        };
        var (status, answer) = await platform.SendAsync(HttpMethod.Put, $"/v2/service_instances/{source}?accepts_incomplete=true", body.ToJsonString());
        Assert.True(status == 202, answer.ToJsonString());
        Assert.Equal("succeeded", (string?)(await platform.WaitForOperationAsync(source, TimeSpan.FromSeconds(90)))["state"]);
        var sourceUri = (string)(await platform.BindAsync(source, "b1", Model.Catalog.ClusterPlanId))["uri"]!;
        await ExecAsync(sourceUri, "CREATE TABLE t(v int)");
        // A point in time is restorable once a base backup finished before it.
        await WaitArchivedAsync(platform, source, sourceUri);
        for (var i = 1; i <= 10; i++) await ExecAsync(sourceUri, $"INSERT INTO t VALUES ({i})");
        await Task.Delay(500);
        var pointInTime = DateTimeOffset.UtcNow;
        await Task.Delay(500);
        for (var i = 11; i <= 20; i++) await ExecAsync(sourceUri, $"INSERT INTO t VALUES ({i})");
        await WaitArchivedAsync(platform, source, sourceUri);

        // Bad requests change nothing.
        Assert.Equal(400, (await Provision(platform, "bad-1", new JsonObject { ["clone-from"] = "no-such-db" })).Status);
        Assert.Equal(400, (await Provision(platform, "bad-2", new JsonObject { ["point-in-time"] = pointInTime.ToString("O") })).Status);
        Assert.Equal(400, (await Provision(platform, "bad-3", new JsonObject { ["clone-from"] = "orders-db", ["point-in-time"] = "yesterday" })).Status);
        Assert.Equal(422, (await Provision(platform, "bad-4", new JsonObject { ["clone-from"] = "orders-db", ["point-in-time"] = "2001-01-01T00:00:00Z" })).Status);
        Assert.DoesNotContain(await platform.Store.ListAsync<Model.InstanceRecord>(platform.Store.Keys.Instances, CancellationToken.None), r => r.Value.Id.StartsWith("bad-", StringComparison.Ordinal));

        // By name, in the same space.
        var clone = "clone-" + Guid.NewGuid().ToString("N")[..8];
        var (accepted, cloneAnswer) = await Provision(platform, clone, new JsonObject { ["clone-from"] = "orders-db", ["point-in-time"] = pointInTime.ToString("O") });
        Assert.True(accepted == 202, cloneAnswer.ToJsonString());
        var cloned = await platform.WaitForOperationAsync(clone, TimeSpan.FromSeconds(240));
        Assert.True((string?)cloned["state"] == "succeeded", cloned.ToJsonString());
        var cloneUri = (string)(await platform.BindAsync(clone, "b1", Model.Catalog.ClusterPlanId))["uri"]!;
        Assert.Equal(10L, await RetryAsync(() => ScalarAsync(cloneUri, "SELECT count(*) FROM t"), TimeSpan.FromSeconds(30)));
        Assert.Equal(10, await ScalarAsync(cloneUri, "SELECT max(v) FROM t"));
        // The source's application credentials do not open the copy.
        var sourceUser = new Uri(sourceUri).UserInfo;
        var onClone = new UriBuilder(sourceUri) { Port = new Uri(cloneUri).Port }.Uri.ToString();
        Assert.StartsWith(sourceUser, new Uri(onClone).UserInfo, StringComparison.Ordinal);
        await Assert.ThrowsAnyAsync<NpgsqlException>(() => ScalarAsync(onClone, "SELECT 1"));
        // The source is untouched.
        Assert.Equal(20L, await ScalarAsync(sourceUri, "SELECT count(*) FROM t"));
    }

    [Fact]
    public async Task After_etcd_and_every_cell_lose_their_data_one_command_rebuilds_every_instance()
    {
        var settings = TestPlatform.NewSettings();
        try
        {
            var uris = new Dictionary<string, string>();
            await using (var first = await TestPlatform.StartAsync(cells: 2, settings))
            {
                foreach (var (id, plan) in new[] { ("dr-solo-" + Guid.NewGuid().ToString("N")[..6], Model.Catalog.SoloPlanId), ("dr-ha-" + Guid.NewGuid().ToString("N")[..6], Model.Catalog.ClusterPlanId) })
                {
                    await first.ProvisionReadyAsync(id, plan);
                    var uri = (string)(await first.BindAsync(id, "b1", plan))["uri"]!;
                    await ExecAsync(uri, $"CREATE TABLE t(v text); INSERT INTO t VALUES ('{id}')");
                    await WaitArchivedAsync(first, id, uri);
                    uris[id] = uri;
                }
                // The cluster-data backup has caught up with the bindings.
                await Eventually.UntilAsync(async () =>
                {
                    var docs = await new LocalFolderObjectStore(settings.Backups!.Store.Folder).ListAsync(ArchiveLayout.ClusterData);
                    return docs.Count == 2;
                }, TimeSpan.FromSeconds(30), "cluster-data backup holds both instances");
            }
            // The disaster: etcd's data and every cell's data are gone; the object store (a local folder here) is not.
            await using (var etcd = new Store.EtcdStore(settings.EtcdEndpoints, settings.EtcdPrefix))
                await etcd.DeletePrefixAsync(settings.EtcdPrefix + "/", CancellationToken.None);
            foreach (var pid in Directory.GetFiles(settings.DataDir, "postmaster.pid", SearchOption.AllDirectories))
                Assert.Fail($"a PostgreSQL still runs: {pid}");
            Directory.Delete(Path.Combine(settings.DataDir, "cells"), recursive: true);

            await using var second = await TestPlatform.StartAsync(cells: 2, settings, ownsData: false);
            var watch = Stopwatch.StartNew();
            var (status, body) = await second.SendAsync(HttpMethod.Post, "/admin/rebuild");
            Assert.True(status == 202, body.ToJsonString());
            foreach (var id in uris.Keys) Assert.Equal("succeeded", (string?)(await second.WaitForOperationAsync(id, TimeSpan.FromSeconds(240)))["state"]);
            foreach (var (id, uri) in uris)
                Assert.Equal(id, await RetryAsync(() => ScalarAsync(uri, "SELECT v FROM t"), TimeSpan.FromSeconds(30)));
            output.WriteLine($"rebuilt {uris.Count} instances in {watch.Elapsed.TotalSeconds:0.0}s");
        }
        finally
        {
            await TestPlatform.DestroyDataAsync(settings);
        }
    }

    [Fact]
    public async Task The_archive_follows_the_leader_across_a_failover_and_a_clone_has_every_row()
    {
        await using var platform = await TestPlatform.StartAsync(cells: 0, TestPlatform.NewSettings(extra: "dingo.ha { ttl = 4s, loop-wait = 500ms, rewind-after = 4s, lost-cell-grace = 300s }"), ownsData: true);
        await platform.StartCellProcessesAsync(1, 2, 3);
        var id = "fo-" + Guid.NewGuid().ToString("N")[..8];
        await platform.ProvisionReadyAsync(id, Model.Catalog.ClusterHaPlanId);
        var uri = (string)(await platform.BindAsync(id, "b1", Model.Catalog.ClusterHaPlanId))["uri"]!;
        await ExecAsync(uri, "CREATE TABLE t(v int primary key)");
        for (var i = 1; i <= 50; i++) await ExecAsync(uri, $"INSERT INTO t VALUES ({i})");
        await WaitArchivedAsync(platform, id, uri);

        var leader = (await platform.Store.GetAsync<Model.LeaderRecord>(platform.Store.Keys.Leader(id), CancellationToken.None))!.Value;
        var cell = (await platform.Store.GetAsync<Model.NodeSpec>(platform.Store.Keys.Node(id, leader.NodeId), CancellationToken.None))!.Value.CellId;
        platform.KillCell(int.Parse(cell["cell-".Length..], System.Globalization.CultureInfo.InvariantCulture));
        output.WriteLine($"killed {cell}, the primary's cell");
        for (var i = 51; i <= 100; i++)
        {
            var v = i;
            await RetryAsync(async () => { await ExecAsync(uri, $"INSERT INTO t VALUES ({v}) ON CONFLICT DO NOTHING"); return (object?)null; }, TimeSpan.FromSeconds(60));
        }
        // The new leader archives: timeline 2 (at least), everything committed so far.
        await WaitArchivedAsync(platform, id, uri);
        var (_, state) = await platform.SendAsync(HttpMethod.Get, $"/admin/service_instances/{id}/backups");
        Assert.True((int)state["archive"]!["timeline"]! >= 2, state.ToJsonString());
        Assert.NotEqual(leader.NodeId, (string?)state["archive"]!["nodeId"]);

        // A node placed on the dead cell while its registration still lasts (the cell's lease, 10 s) would wait for that
        // cell up to lost-cell-grace (300 s here) before it is placed again: since the failover takes half a second
        // (docs/ha.md rule 4, a dead cell), the clone came within those 10 s and waited (fresh208/209). What is shown here
        // is the archive and the clone, so the clone is asked for once the dead cell is no longer registered.
        await Eventually.UntilAsync(async () => await platform.Store.GetAsync<Model.CellInfo>(platform.Store.Keys.Cell(cell), CancellationToken.None) is null,
            TimeSpan.FromSeconds(30), $"{cell} no longer registered");
        var clone = "foc-" + Guid.NewGuid().ToString("N")[..8];
        var (accepted, answer) = await Provision(platform, clone, new JsonObject { ["clone-from"] = id });
        Assert.True(accepted == 202, answer.ToJsonString());
        var cloned = await platform.WaitForOperationAsync(clone, TimeSpan.FromSeconds(240));
        Assert.True((string?)cloned["state"] == "succeeded", cloned.ToJsonString());
        var cloneUri = (string)(await platform.BindAsync(clone, "b1", Model.Catalog.ClusterPlanId))["uri"]!;
        Assert.Equal(100L, await RetryAsync(() => ScalarAsync(cloneUri, "SELECT count(*) FROM t"), TimeSpan.FromSeconds(30)));
    }

    [Fact]
    public async Task A_clone_whose_archive_lacks_a_segment_fails_with_the_reason_instead_of_succeeding_short()
    {
        // The restore fails the same way on every try: a short failure grace lets the provision say so sooner than the
        // default 30 s (ProvisioningTests covers the grace itself).
        await using var platform = await TestPlatform.StartAsync(cells: 1, TestPlatform.NewSettings(extra: "dingo.broker.provision-failure-grace = 5s"), ownsData: true);
        var id = "gap-" + Guid.NewGuid().ToString("N")[..8];
        await platform.ProvisionReadyAsync(id);
        var uri = (string)(await platform.BindAsync(id, "b1"))["uri"]!;
        await ExecAsync(uri, "CREATE TABLE t(v int, pad text)");
        await WaitArchivedAsync(platform, id, uri);
        // After the base backup: enough WAL for complete segments (16 MiB each), then rows in the segment being written.
        await ExecAsync(uri, "INSERT INTO t SELECT g, repeat('x', 1000) FROM generate_series(1, 40000) g");
        for (var i = 1; i <= 10; i++) await ExecAsync(uri, $"INSERT INTO t VALUES (-{i}, '')");
        await WaitArchivedAsync(platform, id, uri);
        var (_, backups) = await platform.SendAsync(HttpMethod.Get, $"/admin/service_instances/{id}/backups");
        var backupEnd = Lsn.Parse((string)backups["base_backups"]!.AsArray()[^1]!["end_lsn"]!);

        // The newest complete segment goes missing from the store (a lost object, an operator's mistake).
        var store = new LocalFolderObjectStore(platform.Settings.Backups!.Store.Folder);
        var segments = (await store.ListAsync(ArchiveLayout.Systems(id))).Where(o => o.Key.Contains("/wal/", StringComparison.Ordinal)
            && WalSegment.TryParse(o.Key[(o.Key.LastIndexOf('/') + 1)..], WalSegment.DefaultSize, out _)).Select(o => o.Key).Order(StringComparer.Ordinal).ToList();
        Assert.True(segments.Count >= 2, string.Join(", ", segments));
        var lost = segments[^1];
        var name = lost[(lost.LastIndexOf('/') + 1)..];
        Assert.True(WalSegment.TryParse(name, WalSegment.DefaultSize, out var gone) && gone.Start > backupEnd, $"{name} must come after the base backup (ends {Lsn.Format(backupEnd)})");
        await store.DeleteAsync(lost);
        output.WriteLine($"deleted {lost}");

        var clone = "gapc-" + Guid.NewGuid().ToString("N")[..8];
        var (accepted, answer) = await Provision(platform, clone, new JsonObject { ["clone-from"] = id }, Model.Catalog.SoloPlanId);
        Assert.True(accepted == 202, answer.ToJsonString());
        var result = await platform.WaitForOperationAsync(clone, TimeSpan.FromSeconds(240));
        output.WriteLine(result.ToJsonString());
        Assert.Equal("failed", (string?)result["state"]);
        Assert.Contains($"WAL segment {name} is missing from the archive", (string?)result["description"], StringComparison.Ordinal);
    }

    private static Task<(int Status, JsonObject Body)> Provision(TestPlatform platform, string id, JsonObject parameters, string plan = Model.Catalog.ClusterPlanId) =>
        platform.SendAsync(HttpMethod.Put, $"/v2/service_instances/{id}?accepts_incomplete=true", new JsonObject
        {
            ["service_id"] = Model.Catalog.ServiceId, ["plan_id"] = plan,
            ["organization_guid"] = "org-1", ["space_guid"] = "space-1", ["parameters"] = parameters,
        }.ToJsonString());

    /// <summary>Waits until a base backup exists and the archive holds everything committed so far.</summary>
    /// <remarks>
    /// The archive's position counts only on the primary's own timeline: after a failover, the dead leader's last report
    /// (its old timeline, possibly further on than the new leader's first writes) stays until the new leader reports.
    /// </remarks>
    internal static async Task WaitArchivedAsync(TestPlatform platform, string id, string uri)
    {
        var lsn = Lsn.Parse((string)(await ScalarAsync(uri, "SELECT pg_current_wal_lsn()::text"))!);
        var timeline = Convert.ToUInt32(((string)(await ScalarAsync(uri, "SELECT pg_walfile_name(pg_current_wal_lsn())"))!)[..8], 16);
        await Eventually.UntilAsync(async () =>
        {
            var (status, body) = await platform.SendAsync(HttpMethod.Get, $"/admin/service_instances/{id}/backups");
            if (status != 200 || body["archive"] is not JsonObject archive || body["base_backups"] is not JsonArray { Count: > 0 }) return false;
            return (uint)archive["timeline"]! == timeline && Lsn.Parse((string)archive["archivedLsn"]!) >= lsn;
        }, TimeSpan.FromSeconds(60), $"{id}: a base backup and WAL archived up to {Lsn.Format(lsn)} on timeline {timeline}");
    }

    private static async Task ExecAsync(string uri, string sql)
    {
        await using var conn = new NpgsqlConnection(TestPlatform.ConnectionStringFromUri(uri));
        await conn.OpenAsync();
        await using var cmd = new NpgsqlCommand(sql, conn);
        await cmd.ExecuteNonQueryAsync();
    }

    private static async Task<object?> ScalarAsync(string uri, string sql)
    {
        await using var conn = new NpgsqlConnection(TestPlatform.ConnectionStringFromUri(uri));
        await conn.OpenAsync();
        await using var cmd = new NpgsqlCommand(sql, conn);
        return await cmd.ExecuteScalarAsync();
    }

    private static async Task<T> RetryAsync<T>(Func<Task<T>> action, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            try { return await action(); }
            catch (Exception) when (DateTime.UtcNow < deadline) { await Task.Delay(250); }
        }
    }

    private static async Task<object?> RetryAsync(Func<Task<object?>> action, TimeSpan timeout) => await RetryAsync<object?>(action, timeout);
}
