using Dingo.Cells;
using Dingo.Model;
using Dingo.Tests.Support;
using Docker.DotNet.Models;
using Npgsql;
using NodeStatus = Dingo.Model.NodeStatus;
using Xunit.Abstractions;

namespace Dingo.Tests.Cells;

/// <summary>
/// The whole platform on Docker cells (podman's Docker Engine API): the broker, two cell processes running their
/// PostgreSQL nodes as containers, the routers, real etcd.
/// </summary>
[SuiteCost(84)]
public sealed class DockerCellTests(ITestOutputHelper output)
{
    private static readonly CancellationToken None = CancellationToken.None;

    [Fact]
    public async Task A_cluster_on_docker_cells_survives_a_killed_container_and_a_restarted_cell_and_is_removed_on_deprovision()
    {
        var settings = TestPlatform.NewSettings(runtime: "docker", extra: "dingo.ha { lost-cell-grace = 300s }");
        await using var platform = await TestPlatform.StartAsync(cells: 0, settings, ownsData: true);
        await platform.StartCellProcessesAsync(1, 2);
        var id = "dk-" + Guid.NewGuid().ToString("N")[..8];
        var started = DateTime.UtcNow;
        await platform.ProvisionReadyAsync(id, Catalog.ClusterPlanId);
        output.WriteLine($"cluster on docker cells: provisioned in {(DateTime.UtcNow - started).TotalSeconds:0.0}s");
        await Eventually.UntilAsync(() => HealthyAsync(platform, id), TimeSpan.FromSeconds(60), "both nodes running, the replica streaming");

        var creds = await platform.BindAsync(id, "b", Catalog.ClusterPlanId);
        var connection = TestPlatform.ConnectionStringFromUri((string)creds["uri"]!);
        await ExecAsync(connection, "CREATE TABLE notes (id int primary key, body text); INSERT INTO notes VALUES (1, 'in a container')");

        // Each node is one container of this platform, on cell-1 or cell-2, with the plan's limits.
        var containers = await ContainersAsync(platform);
        Assert.Equal(2, containers.Count);
        Assert.Equal(["cell-1", "cell-2"], containers.Select(c => c.Labels[DockerRuntime.CellLabel]).Order());
        Assert.All(containers, c => Assert.Equal(id, c.Labels[DockerRuntime.InstanceLabel]));
        using (var client = TestPodman.Client())
        {
            var inspect = await client.Containers.InspectContainerAsync(containers[0].ID);
            Assert.Equal(Catalog.FindPlan(Catalog.ClusterPlanId)!.Limits.MemoryBytes, inspect.HostConfig.Memory);
        }

        // `dingo logs <instance>` finds each node's cell in etcd and prints its container's output.
        var (code, logs) = await DingoCliAsync(platform, "logs", id, "--tail", "50");
        Assert.True(code == 0, $"dingo logs exited {code}: {logs}");
        Assert.Equal(2, logs.Split('\n').Count(l => l.StartsWith("==> n-", StringComparison.Ordinal) && l.EndsWith("(docker) <==", StringComparison.Ordinal)));
        Assert.Contains("database system is ready to accept connections", logs);
        // `dingo logs -f`: each line as the containers write it, prefixed with its node, until stopped.
        await using (var follow = ProgramRun.Start("dotnet", [ProgramRun.ConsoleDll, "logs", id, "--tail", "1", "-f", "--config", Path.Combine(platform.Settings.DataDir, "test.conf")],
                         new Dictionary<string, string> { ["DINGO_HOME"] = TestPlatform.RepoRoot() }))
        {
            await Eventually.UntilAsync(() => Task.FromResult(follow.Lines.Count(l => l.StartsWith("n-", StringComparison.Ordinal)) >= 2), TimeSpan.FromSeconds(30),
                "the last line of each node's log");
            var marker = "dingo-follow-" + Guid.NewGuid().ToString("N")[..8];
            await ExecAsync(connection, $"DO $$BEGIN RAISE LOG '{marker}'; END$$");
            await Eventually.UntilAsync(() => Task.FromResult(follow.Lines.Any(l => l.StartsWith("n-", StringComparison.Ordinal) && l.Contains(marker, StringComparison.Ordinal))),
                TimeSpan.FromSeconds(15), "a line logged after the tail, with its node in front: " + string.Join(" | ", follow.Lines.TakeLast(5)));
            Assert.Equal(143, await follow.TerminateAsync(TimeSpan.FromSeconds(10))); // 128 + SIGTERM
        }

        // kill -9 of the primary's PostgreSQL (its container's main process): restarted, and the instance serves again.
        var leader = (await platform.Store.GetAsync<LeaderRecord>(platform.Store.Keys.Leader(id), None))!.Value;
        var victim = containers.Single(c => c.Labels[DockerRuntime.NodeLabel] == leader.NodeId);
        DateTime startedBefore;
        using (var client = TestPodman.Client()) startedBefore = DateTime.Parse((await client.Containers.InspectContainerAsync(victim.ID)).State.StartedAt, System.Globalization.CultureInfo.InvariantCulture);
        await TestPodman.KillMainProcessAsync(victim.ID);
        var killedAt = DateTime.UtcNow;
        // Seen exited, or already started again by its cell (which may happen between two polls on a busy machine).
        await Eventually.UntilAsync(async () =>
        {
            using var client = TestPodman.Client();
            var state = (await client.Containers.InspectContainerAsync(victim.ID)).State;
            return !state.Running || DateTime.Parse(state.StartedAt, System.Globalization.CultureInfo.InvariantCulture) != startedBefore;
        }, TimeSpan.FromSeconds(30), "the killed container seen exited or restarted");
        await Eventually.UntilAsync(async () => await ServesAsync(connection, "SELECT body FROM notes WHERE id = 1") is "in a container", TimeSpan.FromSeconds(60), "the instance serving again after kill -9");
        await Eventually.UntilAsync(() => HealthyAsync(platform, id), TimeSpan.FromSeconds(60), "both nodes running again, the replica streaming");
        Assert.Contains(await ContainersAsync(platform), c => c.Labels[DockerRuntime.NodeLabel] == leader.NodeId && c.State == "running");
        output.WriteLine($"kill -9 of the primary's container: whole again after {(DateTime.UtcNow - killedAt).TotalSeconds:0.0}s");
        var statuses = await StatusesAsync(platform, id);
        Assert.True(statuses.Single(s => s.NodeId == leader.NodeId).Restarts >= 1, "the cell did not count the restart");

        // The replica's cell process crashes and comes back: it adopts the container it finds, it does not recreate or
        // restart it. (The primary's cell would lose its leader key if it came back later than the TTL: a failover
        // then restarts the old primary as a replica, which is HA doing its job, not adoption failing.)
        var replicaCell = (await StatusesAsync(platform, id)).Single(s => s.Role == NodeRole.Replica).CellId;
        var number = int.Parse(replicaCell["cell-".Length..]);
        var before = await IncarnationsAsync(platform, replicaCell);
        Assert.Single(before);
        platform.KillCellProcessOnly(number);
        var restartedAt = DateTimeOffset.UtcNow;
        await Task.Delay(1000);
        Assert.Equal(before, await IncarnationsAsync(platform, replicaCell)); // still running without their cell
        platform.StartCellProcess(number);
        await Eventually.UntilAsync(async () => (await StatusesAsync(platform, id)).Any(s => s.CellId == replicaCell && s.State == NodeState.Running && s.UpdatedAt > restartedAt.AddSeconds(1)),
            TimeSpan.FromSeconds(60), "the restarted cell reporting its node running");
        await Eventually.UntilAsync(() => HealthyAsync(platform, id), TimeSpan.FromSeconds(60), "the cluster healthy after the cell restart");
        Assert.Equal(before, await IncarnationsAsync(platform, replicaCell));
        Assert.Equal("in a container", await ServesAsync(connection, "SELECT body FROM notes WHERE id = 1"));

        // Deprovision: etcd no longer wants the nodes; their containers and volumes go.
        var q = $"service_id={Catalog.ServiceId}&plan_id={Catalog.ClusterPlanId}";
        var (unbound, _) = await platform.SendAsync(HttpMethod.Delete, $"/v2/service_instances/{id}/service_bindings/b?{q}");
        Assert.Equal(200, unbound);
        var (deleting, _) = await platform.SendAsync(HttpMethod.Delete, $"/v2/service_instances/{id}?accepts_incomplete=true&{q}");
        Assert.Equal(202, deleting);
        Assert.Equal("succeeded", (string?)(await platform.WaitForOperationAsync(id, TimeSpan.FromSeconds(60)))["state"]);
        await Eventually.UntilAsync(async () => (await ContainersAsync(platform)).Count == 0 && (await VolumesAsync(platform)).Count == 0,
            TimeSpan.FromSeconds(30), "the instance's containers and volumes removed");
    }

    private static async Task<bool> HealthyAsync(TestPlatform p, string id)
    {
        var statuses = await StatusesAsync(p, id);
        return statuses.Count == 2 && statuses.All(s => s.State == NodeState.Running)
               && statuses.Count(s => s.Role == NodeRole.Primary) == 1 && statuses.Count(s => s.Role == NodeRole.Replica && s.Streaming) == 1;
    }

    private static async Task<IReadOnlyList<NodeStatus>> StatusesAsync(TestPlatform p, string id) =>
        (await p.Store.ListAsync<NodeStatus>(p.Store.Keys.Statuses(id), None)).Select(s => s.Value).ToList();

    private static Dictionary<string, IDictionary<string, bool>> Platform(TestPlatform p, string? cell = null)
    {
        var labels = new Dictionary<string, bool> { [$"{DockerRuntime.PlatformLabel}={p.Settings.Cell.Docker.Platform}"] = true };
        if (cell is not null) labels[$"{DockerRuntime.CellLabel}={cell}"] = true;
        return new Dictionary<string, IDictionary<string, bool>> { ["label"] = labels };
    }

    private static async Task<List<ContainerListResponse>> ContainersAsync(TestPlatform p, string? cell = null)
    {
        using var client = TestPodman.Client();
        return (await client.Containers.ListContainersAsync(new ContainersListParameters { All = true, Filters = Platform(p, cell) }))
            .Where(c => c.Labels.TryGetValue(DockerRuntime.KindLabel, out var kind) && kind == "node").ToList();
    }

    private static async Task<IList<VolumeResponse>> VolumesAsync(TestPlatform p)
    {
        using var client = TestPodman.Client();
        return (await client.Volumes.ListAsync(new VolumesListParameters { Filters = Platform(p) })).Volumes ?? [];
    }

    /// <summary>Each container of the cell with its start time and main pid: unchanged only if nothing was recreated or restarted.</summary>
    private static async Task<List<string>> IncarnationsAsync(TestPlatform p, string cell)
    {
        using var client = TestPodman.Client();
        var result = new List<string>();
        foreach (var c in await ContainersAsync(p, cell))
        {
            var inspect = await client.Containers.InspectContainerAsync(c.ID);
            result.Add($"{inspect.ID} {inspect.State.Status} started {inspect.State.StartedAt} pid {inspect.State.Pid}");
        }
        return result.Order().ToList();
    }

    /// <summary>Runs the built CLI (src/Dingo.Cli) against the test platform's settings.</summary>
    private static Task<(int Code, string Output)> DingoCliAsync(TestPlatform p, params string[] args) =>
        ProgramRun.RunAsync("dotnet", [ProgramRun.ConsoleDll, .. args, "--config", Path.Combine(p.Settings.DataDir, "test.conf")],
            new Dictionary<string, string> { ["DINGO_HOME"] = TestPlatform.RepoRoot() });

    private static async Task ExecAsync(string connection, string sql)
    {
        await using var conn = new NpgsqlConnection(connection);
        await conn.OpenAsync();
        await using var cmd = new NpgsqlCommand(sql, conn);
        await cmd.ExecuteNonQueryAsync();
    }

    private static async Task<object?> ServesAsync(string connection, string sql)
    {
        try
        {
            await using var conn = new NpgsqlConnection(connection);
            await conn.OpenAsync();
            await using var cmd = new NpgsqlCommand(sql, conn);
            return await cmd.ExecuteScalarAsync();
        }
        catch (Exception ex) when (ex is NpgsqlException or TimeoutException or InvalidOperationException)
        {
            return null;
        }
    }
}
