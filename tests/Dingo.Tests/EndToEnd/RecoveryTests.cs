using System.Diagnostics;
using Dingo.Model;
using Dingo.Tests.Support;
using Npgsql;
using Xunit.Abstractions;

namespace Dingo.Tests.EndToEnd;

/// <summary>An instance outlives its processes: a platform restart, and a PostgreSQL killed under it.</summary>
[SuiteCost(23)]
public sealed class RecoveryTests(ITestOutputHelper output)
{
    [Fact]
    public async Task After_a_platform_restart_the_instance_answers_on_the_same_port_with_its_data()
    {
        var settings = TestPlatform.NewSettings();
        try
        {
            string uri;
            var id = "restart-" + Guid.NewGuid().ToString("N")[..8];
            await using (var first = await TestPlatform.StartAsync(cells: 1, settings))
            {
                await first.ProvisionReadyAsync(id);
                uri = (string)(await first.BindAsync(id, "b1"))["uri"]!;
                await ExecAsync(uri, "CREATE TABLE kept(v text); INSERT INTO kept VALUES ('survives restarts')");
            } // stops cells (PostgreSQL stops, data kept) and the broker

            await using var second = await TestPlatform.StartAsync(cells: 1, settings);
            var stopwatch = Stopwatch.StartNew();
            var value = await RetryAsync(() => ScalarAsync(uri, "SELECT v FROM kept"), TimeSpan.FromSeconds(60));
            output.WriteLine($"after restart the instance served again in {stopwatch.Elapsed.TotalSeconds:0.0}s");
            Assert.Equal("survives restarts", value);
            var (status, body) = await second.SendAsync(HttpMethod.Get, $"/v2/service_instances/{id}/last_operation");
            Assert.Equal(200, status);
            Assert.Equal("succeeded", (string?)body["state"]);
        }
        finally
        {
            await TestPlatform.DestroyDataAsync(settings);
        }
    }

    [Fact]
    public async Task A_killed_PostgreSQL_is_restarted_by_its_cell_and_serves_again()
    {
        await using var platform = await TestPlatform.StartAsync(cells: 1);
        var id = "kill-" + Guid.NewGuid().ToString("N")[..8];
        await platform.ProvisionReadyAsync(id);
        var uri = (string)(await platform.BindAsync(id, "b1"))["uri"]!;
        await ExecAsync(uri, "CREATE TABLE t(v int); INSERT INTO t VALUES (42)");

        var node = Assert.Single(await platform.Store.ListAsync<NodeSpec>(platform.Store.Keys.Nodes(id), CancellationToken.None)).Value;
        var pidFile = Path.Combine(Path.GetFullPath(platform.Settings.DataDir), "cells", node.CellId, "nodes", node.NodeId, "pgdata", "postmaster.pid");
        var pid = int.Parse(File.ReadLines(pidFile).First());
        Process.GetProcessById(pid).Kill(); // SIGKILL
        var stopwatch = Stopwatch.StartNew();

        var value = await RetryAsync(() => ScalarAsync(uri, "SELECT v FROM t"), TimeSpan.FromSeconds(60));
        output.WriteLine($"PostgreSQL (pid {pid}) killed with SIGKILL; serving again through the router after {stopwatch.ElapsedMilliseconds} ms");
        Console.WriteLine($"[measure] kill -9 of PostgreSQL → serving again in {stopwatch.ElapsedMilliseconds} ms");
        Assert.Equal(42, value);
        var newPid = int.Parse(File.ReadLines(pidFile).First());
        Assert.NotEqual(pid, newPid);
        var status = await platform.Store.GetAsync<NodeStatus>(platform.Store.Keys.Status(id, node.NodeId), CancellationToken.None);
        Assert.NotNull(status);
        Assert.True(status.Value.Restarts >= 1, $"the cell should count the restart: {status.Value}");
    }

    internal static async Task ExecAsync(string uri, string sql)
    {
        await using var conn = new NpgsqlConnection(TestPlatform.ConnectionStringFromUri(uri));
        await conn.OpenAsync();
        await using var cmd = new NpgsqlCommand(sql, conn);
        await cmd.ExecuteNonQueryAsync();
    }

    internal static async Task<object?> ScalarAsync(string uri, string sql)
    {
        await using var conn = new NpgsqlConnection(TestPlatform.ConnectionStringFromUri(uri, timeoutSeconds: 2));
        await conn.OpenAsync();
        await using var cmd = new NpgsqlCommand(sql, conn);
        return await cmd.ExecuteScalarAsync();
    }

    internal static async Task<T> RetryAsync<T>(Func<Task<T>> action, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            try { return await action(); }
            catch (Exception) when (DateTime.UtcNow < deadline) { await Task.Delay(100); }
        }
    }
}
