using System.Text.Json;
using Dingo.Cells;
using Dingo.Config;
using Dingo.Model;
using Dingo.Tests.Support;
using Docker.DotNet;
using Docker.DotNet.Models;
using Xunit.Abstractions;

namespace Dingo.Tests.Cells;

/// <summary>The runtime contract on containers (podman's Docker Engine API), plus what is particular to containers.</summary>
[SuiteCost(373)]
public sealed class DockerRuntimeTests(ITestOutputHelper output) : ContainerRuntimeTests(output)
{
    private readonly string _platform = "/t-rt-" + Guid.NewGuid().ToString("N")[..12];
    private static readonly NodeLimits Limits = new(192L * 1024 * 1024, 0.5);

    private DockerSettings Settings => TestPodman.Settings(_platform);

    protected override IContainerRuntime NewRuntime() => NewRuntime(Settings);

    private DockerRuntime NewRuntime(DockerSettings settings, int warmPool = 0) =>
        new(new DockerRuntimeOptions("cell-1", settings) { LimitsOf = (_, _) => Task.FromResult(Limits), WarmPool = warmPool }, new OutputLogger(Output));

    protected override async Task<string> IncarnationAsync(RuntimeNode node)
    {
        Assert.NotNull(node.ContainerId);
        Assert.StartsWith("running (container ", node.Detail);
        using var client = TestPodman.Client();
        var inspect = await client.Containers.InspectContainerAsync(node.ContainerId);
        return $"{inspect.ID} started {inspect.State.StartedAt} pid {inspect.State.Pid}";
    }

    protected override Task KillAsync(RuntimeNode node) => TestPodman.KillMainProcessAsync(node.ContainerId!);

    /// <remarks>
    /// podman reports a container whose process is gone as "stopped" until its monitor has recorded the exit: the
    /// runtime says "exiting" then, never a plain "stopped" (which reads as a clean stop), and the exit code once known.
    /// </remarks>
    protected override async Task AssertKilledDetailAsync(RuntimeNode node)
    {
        var settling = System.Diagnostics.Stopwatch.StartNew();
        while (node.Detail.StartsWith("exiting", StringComparison.Ordinal) && settling.Elapsed < TimeSpan.FromSeconds(10))
        {
            await Task.Delay(100);
            node = Assert.Single(await Runtime.ListAsync(Ct()));
        }
        Assert.StartsWith("exited (137)", node.Detail);
        // Asked of the engine once, then remembered while the container stays stopped so.
        Assert.Equal(1, ((DockerRuntime)Runtime).StoppedDetailsRemembered);
    }

    /// <remarks>The stop's detail is forgotten once the container runs again (it stayed, one entry a stop, for good).</remarks>
    protected override void AssertRunningAgain() => Assert.Equal(0, ((DockerRuntime)Runtime).StoppedDetailsRemembered);

    protected override async Task<bool> DataExistsAsync(string nodeId)
    {
        using var client = TestPodman.Client();
        try
        {
            await client.Volumes.InspectAsync(DockerRuntime.VolumeName(nodeId));
            return true;
        }
        catch (DockerApiException e) when (e.StatusCode == System.Net.HttpStatusCode.NotFound)
        {
            return false;
        }
    }

    protected override async Task<string> LogTailAsync(string nodeId)
    {
        try { return await ((DockerRuntime)Runtime).NodeLogsAsync(nodeId, 20, Ct()); }
        catch (Exception e) { return $"(no logs: {e.Message})"; }
    }

    protected override Task CleanupAsync() => TestPodman.RemovePlatformAsync(_platform);

    /// <summary>podman's own inspect of a container (its libpod API on the same socket), which shows more than Docker's.</summary>
    private async Task<string> LibpodInspectAsync(string containerId)
    {
        using var http = DockerEngine.Http(Settings);
        return await http.GetStringAsync($"v4.0.0/libpod/containers/{containerId}/json");
    }

    /// <summary>
    /// A Docker cell ships its nodes' PostgreSQL logs as a process cell does (Dingo.Cell's ContainerLogs): each line to
    /// the syslog receiver with the node as PROCID and the instance in front, from the engine's stream, and again after
    /// the container was stopped and started (the follower of the stopped one ends; the next look follows it again).
    /// </summary>
    [Fact]
    public async Task A_node_containers_postgres_log_is_shipped_over_syslog_across_a_restart()
    {
        await using var rsyslog = await TestRsyslog.StartAsync();
        var spec = NewSpec("node-s") with { InstanceId = "inst-s" };
        await Runtime.CreateAsync(spec, Ct());
        await Runtime.StartAsync(spec, null, Ct());
        await WaitUntilServingAsync(spec);
        await using var sink = new Dingo.Logging.SyslogSink(new SyslogSettings { Host = "127.0.0.1", Port = rsyslog.Port, Transport = SyslogSettings.Tcp });
        using var logs = new Dingo.Cell.ContainerLogs((DockerRuntime)Runtime, sink, Microsoft.Extensions.Logging.Abstractions.NullLogger<Dingo.Cell.ContainerLogs>.Instance);
        try
        {
            // lookAgain: the cell's loop looks every few seconds, and a look ships what a follower of the container's run
            // before has not (from its last line on). After a stop and start of the same container, the engine ended the
            // old run's stream a moment after the one look the test made (fresh211): the looks go on, as the loop's do.
            async Task ShippedAsync(string marker, bool lookAgain)
            {
                await ExecAsync(spec, $"DO $$BEGIN RAISE LOG '{marker}'; END$$");
                await Eventually.UntilAsync(async () =>
                    {
                        if (rsyslog.Messages().Any(m => m.Msg.Contains(marker, StringComparison.Ordinal))) return true;
                        if (lookAgain) await logs.PassAsync(Ct());
                        return false;
                    },
                    TimeSpan.FromSeconds(20), () => $"{marker} at the receiver (rsyslog: {rsyslog.Output()})");
                var message = rsyslog.Messages().First(m => m.Msg.Contains(marker, StringComparison.Ordinal));
                Assert.Equal("postgres", message.App);
                Assert.Equal(spec.NodeId, message.ProcId);
                Assert.StartsWith("instance inst-s: ", message.Msg, StringComparison.Ordinal);
            }
            await logs.PassAsync(Ct());
            await ShippedAsync("dingo-ship-" + Guid.NewGuid().ToString("N")[..8], lookAgain: false);

            await Runtime.StopAsync(spec.NodeId, Ct());
            await Runtime.StartAsync(spec, null, Ct());
            await WaitUntilServingAsync(spec);
            await logs.PassAsync(Ct());
            await ShippedAsync("dingo-ship-" + Guid.NewGuid().ToString("N")[..8], lookAgain: true);
            Assert.Contains(rsyslog.Messages(), m => m.ProcId == spec.NodeId && m.Msg.Contains("database system is shut down", StringComparison.Ordinal));
        }
        finally
        {
            await logs.StopAllAsync();
        }
    }

    [Fact]
    public async Task A_node_is_one_labelled_container_on_its_own_volume_with_its_plans_limits_and_no_password_in_sight()
    {
        var spec = NewSpec("node-l") with { InstanceId = "inst-l" };
        await Runtime.CreateAsync(spec, Ct());
        await Runtime.StartAsync(spec, new StandbyConfig(new ReplicationSource("127.0.0.1", 1, new Dingo.Model.Credentials("replicator", "repl-secret-pw")), "slot_x", spec.NodeId), Ct());
        await WaitUntilServingAsync(spec);

        var node = Assert.Single(await Runtime.ListAsync(Ct()));
        Assert.Equal("inst-l", node.InstanceId);
        using var client = TestPodman.Client();
        var c = await client.Containers.InspectContainerAsync(node.ContainerId);
        Assert.Equal(DockerRuntime.ContainerName(spec.NodeId), c.Name.TrimStart('/'));
        Assert.Equal(_platform, c.Config.Labels[DockerRuntime.PlatformLabel]);
        Assert.Equal("cell-1", c.Config.Labels[DockerRuntime.CellLabel]);
        Assert.Equal("inst-l", c.Config.Labels[DockerRuntime.InstanceLabel]);
        Assert.Equal(spec.NodeId, c.Config.Labels[DockerRuntime.NodeLabel]);
        Assert.Equal("host", c.HostConfig.NetworkMode);
        Assert.Equal(Limits.MemoryBytes, c.HostConfig.Memory);
        // Made with the start allowance (dingo.cell.docker.start-cpus, 1), labelled with the plan's ceiling it runs at
        // once its start is past (A_node_starts_at_its_allowance_and_runs_at_its_plans_ceiling_after_it).
        Assert.Equal(1_000_000_000, c.HostConfig.NanoCPUs);
        Assert.Equal("0.5", c.Config.Labels["dingo.cpus"]);
        // PostgreSQL's output is the container's log, bounded by the engine (dingo.logging.postgres-log-max, 10 MB).
        // Docker's inspect shows the driver; podman keeps the size in its own (10 MiB, as podman prints it).
        Assert.Equal("json-file", c.HostConfig.LogConfig.Type);
        Assert.Contains("\"Size\":\"10.49MB\"", await LibpodInspectAsync(node.ContainerId!), StringComparison.Ordinal);
        Assert.Equal("999:999", c.Config.User);
        var mount = Assert.Single(c.Mounts);
        Assert.Equal(DockerRuntime.VolumeName(spec.NodeId), mount.Name);
        Assert.Equal(DockerRuntime.DataMount, mount.Destination);
        var volume = await client.Volumes.InspectAsync(DockerRuntime.VolumeName(spec.NodeId));
        Assert.Equal(spec.NodeId, volume.Labels[DockerRuntime.NodeLabel]);

        // The engine's health check asks PostgreSQL on the node's own socket and port: healthy while it accepts
        // connections (a standby, as here, does), unhealthy while its postmaster hangs; the result is in the
        // container's state, where `docker ps` and container monitors read it.
        Assert.Equal(["CMD", "/usr/lib/postgresql/15/bin/pg_isready", "-q", "-h", "/var/run/postgresql", "-p", spec.Port.ToString(System.Globalization.CultureInfo.InvariantCulture), "-t", "3"],
            c.Config.Healthcheck.Test);
        Assert.Contains($"PGPORT={spec.Port}", c.Config.Env);
        var (healthy, said) = await TestPodman.RunHealthcheckAsync(node.ContainerId!, Ct());
        Assert.True(healthy == 0, $"healthcheck run: {healthy} {said}");
        Assert.Equal("healthy", (await client.Containers.InspectContainerAsync(node.ContainerId)).State.Health.Status);
        await TestPodman.SignalMainProcessAsync(node.ContainerId!, TestPodman.SIGSTOP);
        try
        {
            var (hung, saidHung) = await TestPodman.RunHealthcheckAsync(node.ContainerId!, Ct());
            Assert.True(hung != 0, $"healthcheck run on a stopped postmaster: {hung} {saidHung}");
            var health = (await client.Containers.InspectContainerAsync(node.ContainerId)).State.Health;
            Assert.True(health.FailingStreak == 1, $"failing streak {health.FailingStreak}, status {health.Status} after {hung} {saidHung}");
            Assert.NotEqual(0, health.Log[^1].ExitCode);
        }
        finally
        {
            await TestPodman.SignalMainProcessAsync(node.ContainerId!, TestPodman.SIGCONT);
        }
        Assert.Equal(0, (await TestPodman.RunHealthcheckAsync(node.ContainerId!, Ct())).ExitCode);
        Assert.Equal("healthy", (await client.Containers.InspectContainerAsync(node.ContainerId)).State.Health.Status);

        // PostgreSQL runs as the unprivileged user, standby as asked, with the replication password only in its passfile.
        Assert.Equal(Superuser, await ScalarAsync(spec, "SELECT current_user"));
        Assert.Equal(true, await ScalarAsync(spec, "SELECT pg_is_in_recovery()"));
        Assert.Contains("passfile=/etc/dingo/replication.pgpass", (string)(await ScalarAsync(spec, "SHOW primary_conninfo"))!);
        Assert.DoesNotContain("repl-secret-pw", (string)(await ScalarAsync(spec, "SHOW primary_conninfo"))!);
        var inspected = JsonSerializer.Serialize(c);
        var logs = await ((DockerRuntime)Runtime).NodeLogsAsync(spec.NodeId, 1000, Ct());
        foreach (var secret in new[] { Password, "repl-secret-pw" })
        {
            Assert.DoesNotContain(secret, inspected);
            Assert.DoesNotContain(secret, logs);
        }
    }

    /// <summary>
    /// A node whose plan allows half a core starts at a full one (crash recovery, the claim's password step, the first
    /// sessions ran at half speed: bench/Provision's Docker solo), and runs at its plan's ceiling once its allowance is past,
    /// on the running container. A cell that died inside the allowance leaves the container above its ceiling: the next
    /// cell's first look brings it down. Every new start of the container gets the allowance again and loses it again.
    /// </summary>
    [Fact]
    public async Task A_node_starts_at_its_allowance_and_runs_at_its_plans_ceiling_after_it()
    {
        var spec = NewSpec("node-cpu") with { InstanceId = "inst-cpu" };
        string containerId;
        using (var dying = NewRuntime(Settings with { StartCpusFor = TimeSpan.FromMinutes(10) }))
        {
            await dying.CreateAsync(spec, Ct());
            await dying.StartAsync(spec, null, Ct());
            await NodeSql.WaitServingAsync(spec, spec.Superuser);
            using var client = TestPodman.Client();
            var c = await client.Containers.InspectContainerAsync(DockerRuntime.ContainerName(spec.NodeId));
            containerId = c.ID;
            Assert.Equal(1_000_000_000, c.HostConfig.NanoCPUs);
            Assert.Equal(1.0, await TestPodman.CpuCeilingAsync(c.State.Pid));
            Assert.Equal(1, dying.StartAllowancesPending);
        } // the cell dies inside the allowance

        using var runtime = NewRuntime(Settings with { StartCpusFor = TimeSpan.FromSeconds(1) });
        Assert.NotNull(await runtime.InspectAsync(spec.NodeId, Ct()));
        await AssertCeilingAsync(runtime, containerId, 0.5);

        // A new start begins at the allowance (a new cgroup, made as the container was) and is brought down again.
        await runtime.StopAsync(spec.NodeId, Ct());
        await runtime.StartAsync(spec, null, Ct());
        await NodeSql.WaitServingAsync(spec, spec.Superuser);
        await AssertCeilingAsync(runtime, containerId, 0.5);
        Assert.Equal(1, await NodeSql.ScalarAsync(spec, spec.Superuser, "SELECT 1"));
    }

    private async Task AssertCeilingAsync(DockerRuntime runtime, string containerId, double cpus)
    {
        using var client = TestPodman.Client();
        var waited = System.Diagnostics.Stopwatch.StartNew();
        double? seen = null;
        // The allowance's end, then one engine call: well within 30 s on a busy machine.
        while (waited.Elapsed < TimeSpan.FromSeconds(30))
        {
            var c = await client.Containers.InspectContainerAsync(containerId);
            seen = await TestPodman.CpuCeilingAsync(c.State.Pid);
            if (seen == cpus && runtime.StartAllowancesPending == 0) break;
            await Task.Delay(100);
        }
        Output.WriteLine($"ceiling {seen} CPUs after {waited.ElapsedMilliseconds} ms");
        Assert.Equal(cpus, seen);
        Assert.Equal(0, runtime.StartAllowancesPending);
    }

    [Fact]
    public async Task Data_survives_the_container_being_recreated_for_a_new_image()
    {
        var spec = NewSpec("node-i");
        await Runtime.CreateAsync(spec, Ct());
        await Runtime.StartAsync(spec, null, Ct());
        await WaitUntilServingAsync(spec);
        await ExecAsync(spec, "CREATE TABLE t (v text); INSERT INTO t VALUES ('kept')");
        var before = Assert.Single(await Runtime.ListAsync(Ct())).ContainerId;

        // The same image under another name stands for an upgrade: it applies at the next start.
        var tag = "t" + Guid.NewGuid().ToString("N")[..8];
        using var client = TestPodman.Client();
        await client.Images.TagImageAsync(TestPodman.Image, new ImageTagParameters { RepositoryName = "localhost/dingo/postgres", Tag = tag });
        try
        {
            await Runtime.StopAsync(spec.NodeId, Ct());
            using var upgraded = NewRuntime(Settings with { Image = $"localhost/dingo/postgres:{tag}" });
            await upgraded.StartAsync(spec, null, Ct());
            await WaitUntilServingAsync(spec);
            var after = Assert.Single(await upgraded.ListAsync(Ct()));
            Assert.NotEqual(before, after.ContainerId);
            Assert.Equal($"localhost/dingo/postgres:{tag}", (await client.Containers.InspectContainerAsync(after.ContainerId)).Config.Image);
            Assert.Equal("kept", await ScalarAsync(spec, "SELECT v FROM t"));
            await upgraded.RemoveAsync(spec.NodeId, Ct());
        }
        finally
        {
            await client.Images.DeleteImageAsync($"localhost/dingo/postgres:{tag}", new ImageDeleteParameters());
        }
    }

    /// <summary>
    /// The Docker runtime's warm pool (issue 16): a new cluster's first node takes an initialised volume instead of running
    /// initdb in a tool container, logs in with its own password only (given as a SCRAM verifier in single-user mode at its
    /// first start, never shown to the engine), has its own system identifier, keeps its data across a restart and goes
    /// with its volume; what a crash leaves behind (an entry volume without its marker, a marker of an entry already taken)
    /// is tidied by the next fill without touching a node's data; a superuser of another name runs initdb as before.
    /// </summary>
    [Fact]
    public async Task A_new_node_takes_a_warm_volume_with_its_own_password_and_system_identifier()
    {
        using var runtime = NewRuntime(Settings, warmPool: 2);
        Assert.True(await runtime.FillWarmOnceAsync(Ct()));
        Assert.True(await runtime.FillWarmOnceAsync(Ct()));
        Assert.False(await runtime.FillWarmOnceAsync(Ct()), "the pool holds its size, no more");
        Assert.Equal(2, await runtime.WarmCountAsync(Ct()));
        Assert.Empty(await runtime.ListAsync(Ct())); // pool entries are not nodes

        var a = NewSpec("node-wa") with { Superuser = new Dingo.Model.Credentials(Dingo.Postgres.DatabaseAdmin.SuperuserName, "Pw" + Guid.NewGuid().ToString("N")) };
        var b = NewSpec("node-wb") with { Superuser = new Dingo.Model.Credentials(Dingo.Postgres.DatabaseAdmin.SuperuserName, "Pw" + Guid.NewGuid().ToString("N")) };
        var watch = System.Diagnostics.Stopwatch.StartNew();
        await runtime.CreateAsync(a, Ct());
        Output.WriteLine($"create from the pool: {watch.ElapsedMilliseconds} ms");
        Assert.Equal(1, await runtime.WarmCountAsync(Ct()));
        await runtime.CreateAsync(b, Ct());
        Assert.Equal(0, await runtime.WarmCountAsync(Ct()));
        await runtime.CreateAsync(a, Ct()); // idempotent: the node has its container, nothing else is taken
        Assert.Equal(0, await runtime.WarmCountAsync(Ct()));
        // b's entry password spoiled, as a session that cannot log in: its start falls back to the single-user step.
        runtime.SpoilClaimPasswordForTests(b.NodeId);
        foreach (var spec in new[] { a, b })
        {
            watch.Restart();
            await runtime.StartAsync(spec, null, Ct());
            await NodeSql.WaitServingAsync(spec, spec.Superuser);
            Output.WriteLine($"{spec.NodeId}: first start (with the password step) to serving: {watch.ElapsedMilliseconds} ms");
        }
        // a's password went over a session with the entry's own (the runtime that filled the pool knows it); b's session
        // was refused, and its start went again the single-user way.
        Assert.Equal(1, runtime.ClaimsBySession);

        using var client = TestPodman.Client();
        var containerA = await client.Containers.InspectContainerAsync(DockerRuntime.ContainerName(a.NodeId));
        var volumeA = containerA.Config.Labels[DockerRuntime.VolumeLabel];
        Assert.StartsWith(DockerRuntime.WarmPrefix, volumeA, StringComparison.Ordinal);
        Assert.Equal(volumeA, Assert.Single(containerA.Mounts).Name);
        // Nothing of the password, nor of its verifier, is left in the container or its log.
        var inspected = System.Text.Json.JsonSerializer.Serialize(containerA);
        var logs = await runtime.NodeLogsAsync(a.NodeId, 200, Ct());
        Assert.DoesNotContain(a.Superuser.Password, inspected + logs, StringComparison.Ordinal);
        Assert.DoesNotContain("SCRAM-SHA-256$", inspected + logs, StringComparison.Ordinal);
        await Assert.ThrowsAnyAsync<DockerApiException>(() => client.Containers.GetArchiveFromContainerAsync(containerA.ID,
            new GetArchiveFromContainerParameters { Path = "/etc/dingo/claim.sql" }, statOnly: true));

        // Each logs in with its own password only, and has its own system identifier; nothing but what initdb makes, and
        // the application database, made with the entry so that the first primary's preparation need not.
        await NodeSql.AssertSeparateClustersAsync(a, b);
        Assert.Equal("dingo", await NodeSql.ScalarAsync(a, a.Superuser, "SELECT string_agg(datname, ',') FROM pg_database WHERE datname NOT IN ('postgres', 'template0', 'template1')"));
        // Its WAL went on past the segment initdb and that database filled: the archiver of a new primary starts there.
        Assert.Equal(true, await NodeSql.ScalarAsync(a, a.Superuser, "SELECT pg_current_wal_lsn() >= '0/2000000'::pg_lsn"));
        await NodeSql.ScalarAsync(a, a.Superuser, "CREATE TABLE t AS SELECT 'kept'::text AS v");

        // What a crash leaves: an entry volume whose initdb never finished (no marker), and the marker of an entry a node
        // took (the claim died before removing it). The next fill removes both, and a's data stays.
        var half = DockerRuntime.WarmPrefix + Guid.NewGuid().ToString("N");
        var warmLabels = new Dictionary<string, string>
        {
            [DockerRuntime.PlatformLabel] = _platform, [DockerRuntime.CellLabel] = "cell-1", [DockerRuntime.KindLabel] = "warm",
            [DockerRuntime.VolumeLabel] = half, [DockerRuntime.ImageLabel] = TestPodman.Image,
        };
        await client.Volumes.CreateAsync(new VolumesCreateParameters { Name = half, Labels = warmLabels });
        await client.Containers.CreateContainerAsync(new CreateContainerParameters
        {
            Name = DockerRuntime.WarmPrefix + Guid.NewGuid().ToString("N"), Image = TestPodman.Image, Cmd = ["/bin/true"],
            Labels = new Dictionary<string, string>(warmLabels) { [DockerRuntime.VolumeLabel] = volumeA },
            HostConfig = new HostConfig { Mounts = [new Mount { Type = "volume", Source = volumeA, Target = DockerRuntime.DataMount }] },
        });
        Assert.Equal(0, await runtime.WarmCountAsync(Ct())); // a's volume is taken, whatever a marker says
        Assert.True(await runtime.FillWarmOnceAsync(Ct()));
        var warmVolumes = ((await client.Volumes.ListAsync()).Volumes ?? []).Where(v => v.Name.StartsWith(DockerRuntime.WarmPrefix, StringComparison.Ordinal)
            && v.Labels is { } l && l.TryGetValue(DockerRuntime.PlatformLabel, out var p) && p == _platform).Select(v => v.Name).ToList();
        Assert.DoesNotContain(half, warmVolumes);
        Assert.Contains(volumeA, warmVolumes);
        Assert.Equal(1, await runtime.WarmCountAsync(Ct()));

        // The session left the marker that says the step is done (COPY … TO, as PostgreSQL's user).
        await client.Containers.GetArchiveFromContainerAsync(containerA.ID, new GetArchiveFromContainerParameters { Path = DockerRuntime.DataMount + "/dingo-claimed" }, statOnly: true);
        // A restart does not take the password step again; the data is a's.
        await runtime.StopAsync(a.NodeId, Ct());
        await runtime.StartAsync(a, null, Ct());
        await NodeSql.WaitServingAsync(a, a.Superuser);
        Assert.Equal("kept", await NodeSql.ScalarAsync(a, a.Superuser, "SELECT v FROM t"));

        // Removing the node removes the entry's volume with it.
        await runtime.RemoveAsync(a.NodeId, Ct());
        await Assert.ThrowsAnyAsync<DockerApiException>(() => client.Volumes.InspectAsync(volumeA));

        // A superuser of another name: initdb as before, the pool untouched.
        var other = NewSpec("node-wc") with { Superuser = new Dingo.Model.Credentials("someone_else", "Pw" + Guid.NewGuid().ToString("N")) };
        await runtime.CreateAsync(other, Ct());
        Assert.Equal(1, await runtime.WarmCountAsync(Ct()));
        Assert.False((await client.Containers.InspectContainerAsync(DockerRuntime.ContainerName(other.NodeId))).Config.Labels.ContainsKey(DockerRuntime.VolumeLabel));

        // A cell restarted since the fill does not know the entry's password (it was never written anywhere): its claim
        // takes the single-user step, and the node logs in with the instance's password only.
        using var restarted = NewRuntime(Settings, warmPool: 1);
        var d = NewSpec("node-wd") with { Superuser = new Dingo.Model.Credentials(Dingo.Postgres.DatabaseAdmin.SuperuserName, "Pw" + Guid.NewGuid().ToString("N")) };
        await restarted.CreateAsync(d, Ct());
        Assert.Equal(0, await restarted.WarmCountAsync(Ct()));
        await restarted.StartAsync(d, null, Ct());
        await NodeSql.WaitServingAsync(d, d.Superuser);
        Assert.Equal(0, restarted.ClaimsBySession);
        await NodeSql.AssertSeparateClustersAsync(d, b);
        await restarted.RemoveAsync(d.NodeId, Ct());
    }

    /// <summary>
    /// A recreation (a new image or limits) cut short by the cell's death right after the old container stepped aside: the
    /// next cell finds the node's data complete (listing and a pass's inspect alike), a create does nothing, and the start
    /// takes the old container back, data and all, instead of taking the volume for half-made data.
    /// </summary>
    [Fact]
    public async Task A_recreation_cut_short_keeps_the_node_and_its_data()
    {
        var spec = NewSpec("node-r");
        await Runtime.CreateAsync(spec, Ct());
        await Runtime.StartAsync(spec, null, Ct());
        await WaitUntilServingAsync(spec);
        await ExecAsync(spec, "CREATE TABLE t (v text); INSERT INTO t VALUES ('kept')");
        await Runtime.StopAsync(spec.NodeId, Ct());
        using var client = TestPodman.Client();
        var id = (await client.Containers.InspectContainerAsync(DockerRuntime.ContainerName(spec.NodeId))).ID;
        await client.Containers.RenameContainerAsync(id, new ContainerRenameParameters { NewName = DockerRuntime.PreviousContainerName(spec.NodeId) }, Ct());

        using var restarted = NewRuntime(Settings);
        Assert.True(Assert.Single(await restarted.ListAsync(Ct())).Initialised);
        Assert.True((await restarted.InspectAsync(spec.NodeId, Ct()))?.Initialised);
        await restarted.CreateAsync(spec, Ct());
        await restarted.StartAsync(spec, null, Ct());
        await WaitUntilServingAsync(spec);
        Assert.Equal("kept", await ScalarAsync(spec, "SELECT v FROM t"));
        Assert.Equal(id, (await client.Containers.InspectContainerAsync(DockerRuntime.ContainerName(spec.NodeId))).ID);
        await restarted.RemoveAsync(spec.NodeId, Ct());
    }

    [Fact]
    public async Task Create_is_idempotent_and_redoes_a_half_made_node()
    {
        var spec = NewSpec("node-f");
        await Runtime.CreateAsync(spec, Ct());
        var container = Assert.Single(await Runtime.ListAsync(Ct())).ContainerId;
        await Runtime.CreateAsync(spec, Ct());
        Assert.Equal(container, Assert.Single(await Runtime.ListAsync(Ct())).ContainerId);

        // Half-made: the volume holds junk and no node container, as if the cell died during initdb.
        var half = NewSpec("node-g");
        using var client = TestPodman.Client();
        await client.Volumes.CreateAsync(new VolumesCreateParameters
        {
            Name = DockerRuntime.VolumeName(half.NodeId),
            Labels = new Dictionary<string, string>
            {
                [DockerRuntime.PlatformLabel] = _platform, [DockerRuntime.CellLabel] = "cell-1",
                [DockerRuntime.InstanceLabel] = half.InstanceId, [DockerRuntime.NodeLabel] = half.NodeId,
            },
        });
        await Task.Delay(new DockerRuntimeOptions("cell-1", Settings).ListCacheTtl * 2); // a listing serves the HA loops for that long
        var listed = Assert.Single(await Runtime.ListAsync(Ct()), n => n.NodeId == half.NodeId);
        Assert.False(listed.Initialised);
        Assert.Equal("data not initialised", listed.Detail);

        await Runtime.CreateAsync(half, Ct());
        Assert.True(Assert.Single(await Runtime.ListAsync(Ct()), n => n.NodeId == half.NodeId).Initialised);
        await Runtime.StartAsync(half, null, Ct());
        await WaitUntilServingAsync(half);
        Assert.Equal(1, await ScalarAsync(half, "SELECT 1"));
    }

    [Fact]
    public async Task A_missing_image_is_a_clear_error_and_touches_nothing()
    {
        using var runtime = NewRuntime(Settings with { Image = "localhost/dingo/no-such-image:1" });
        var spec = NewSpec("node-m");
        var error = await Assert.ThrowsAsync<ContainerEngineException>(() => runtime.CreateAsync(spec, Ct()));
        Assert.Contains("image localhost/dingo/no-such-image:1 is missing on the engine at unix://", error.Message);
        Assert.Contains("build-local.sh", error.Message);
        Assert.Empty(await runtime.ListAsync(Ct()));

        using var pulling = NewRuntime(Settings with { Image = "localhost/dingo/no-such-image:1", Pull = "missing" });
        var pullError = await Assert.ThrowsAsync<ContainerEngineException>(() => pulling.CreateAsync(spec, Ct()));
        Assert.Contains("pulling it failed", pullError.Message);
    }

    [Fact]
    public async Task An_unreachable_engine_is_a_clear_error()
    {
        var settings = Settings with { Endpoint = "unix:///tmp/dingo-no-such-engine/docker.sock" };
        using var runtime = NewRuntime(settings);
        var list = await Assert.ThrowsAsync<ContainerEngineException>(() => runtime.ListAsync(Ct()));
        Assert.Contains("container engine at unix:///tmp/dingo-no-such-engine/docker.sock is unreachable", list.Message);
        var create = await Assert.ThrowsAsync<ContainerEngineException>(() => runtime.CreateAsync(NewSpec("node-u"), Ct()));
        Assert.Contains("is unreachable", create.Message);
        Assert.Equal(list.Message, runtime.EngineProblem);

        // The cell shows it on its registration (`dingo status`, CELLS), and its pass fails with the same words.
        var platform = TestPlatform.NewSettings();
        await using var store = new Dingo.Store.EtcdStore(platform.EtcdEndpoints, platform.EtcdPrefix);
        try
        {
            var lease = new CellLease(store, TimeSpan.FromSeconds(5), Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance);
            var cell = new CellReconciler(store, runtime, lease, platform, Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance);
            await Assert.ThrowsAsync<ContainerEngineException>(() => cell.RunPassAsync(new HashSet<string>(), Ct()));
            var info = (await store.GetAsync<Dingo.Model.CellInfo>(store.Keys.Cell(platform.Cell.Id), Ct()))!.Value;
            Assert.Contains("is unreachable", info.Problem, StringComparison.Ordinal);
        }
        finally
        {
            await TestPlatform.DestroyDataAsync(platform);
        }
    }

    /// <summary>
    /// podman 4.3's Docker-compatible wait looks at the container in a loop without pause (podman issue 18150): its service
    /// spent one to two full cores for as long as a tool container (initdb, a clone, a restore) ran. The runtime waits
    /// through libpod's wait instead, which looks every 50 ms. On a service of its own (nobody else's calls counted), a
    /// node's creation (initdb in a tool container, waited for) costs the engine a small part of its wall time.
    /// </summary>
    [Fact]
    public async Task Waiting_for_a_tool_container_leaves_podman_idle()
    {
        var (endpoint, service) = TestPodman.StartExtraService();
        try
        {
            using var runtime = NewRuntime(Settings with { Endpoint = endpoint });
            var before = service.TotalProcessorTime;
            var wall = System.Diagnostics.Stopwatch.StartNew();
            await runtime.CreateAsync(NewSpec("node-idle"), Ct());
            wall.Stop();
            var engine = service.TotalProcessorTime - before;
            Output.WriteLine($"creation (initdb waited for): {wall.Elapsed.TotalSeconds:0.00} s; the engine's CPU meanwhile: {engine.TotalSeconds:0.00} s");
            Assert.True(runtime.WaitsThroughLibpod, "the initdb was waited for through the Docker-compatible wait");
            // The compatible wait alone cost at least a core for the whole initdb (4.6 core-s for a 3 s wait when measured).
            Assert.True(engine < wall.Elapsed * 0.3, $"the engine spent {engine.TotalSeconds:0.00} core-s during a {wall.Elapsed.TotalSeconds:0.00} s creation");
        }
        finally
        {
            service.Kill();
            await service.WaitForExitAsync();
        }
    }

    [Fact]
    public async Task When_the_engine_goes_away_running_nodes_keep_serving_and_keep_their_last_seen_state()
    {
        var (endpoint, service) = TestPodman.StartExtraService();
        using var runtime = NewRuntime(Settings with { Endpoint = endpoint });
        var spec = NewSpec("node-w");
        await runtime.CreateAsync(spec, Ct());
        await runtime.StartAsync(spec, null, Ct());
        await WaitUntilServingAsync(spec);
        Assert.True(Assert.Single(await runtime.ListAsync(Ct())).Running);

        service.Kill();
        await service.WaitForExitAsync();
        await Task.Delay(1100); // past the listing cache
        var seen = Assert.Single(await runtime.ListAsync(Ct()));
        Assert.True(seen.Running);
        Assert.Contains($"container engine at {endpoint} is unreachable", seen.Detail);
        Assert.NotNull(runtime.EngineProblem);
        Assert.Equal(1, await ScalarAsync(spec, "SELECT 1"));
        var other = await Assert.ThrowsAsync<ContainerEngineException>(() => runtime.CreateAsync(NewSpec("node-x"), Ct()));
        Assert.Contains("is unreachable", other.Message);
        Assert.Equal(1, await ScalarAsync(spec, "SELECT 1"));
    }

    [Fact]
    public async Task A_full_disk_is_a_clear_error()
    {
        // The node's volume lives on a 4 MB file system (a tmpfs mounted on the host, bound as the volume): too small
        // for a data directory, as a full disk would be.
        var spec = NewSpec("node-full");
        var disk = Path.Combine("/tmp", "dingo-full-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(disk);
        await RunAsync("mount", "-t", "tmpfs", "-o", "size=4m,uid=999,gid=999,mode=0700", "tmpfs", disk);
        try
        {
            using var client = TestPodman.Client();
            await client.Volumes.CreateAsync(new VolumesCreateParameters
            {
                Name = DockerRuntime.VolumeName(spec.NodeId),
                Driver = "local",
                DriverOpts = new Dictionary<string, string> { ["type"] = "none", ["o"] = "bind", ["device"] = disk },
                Labels = new Dictionary<string, string>
                {
                    [DockerRuntime.PlatformLabel] = _platform, [DockerRuntime.CellLabel] = "cell-1",
                    [DockerRuntime.InstanceLabel] = spec.InstanceId, [DockerRuntime.NodeLabel] = spec.NodeId,
                },
            });
            var error = await Assert.ThrowsAsync<InvalidOperationException>(() => Runtime.CreateAsync(spec, Ct()));
            Output.WriteLine(error.Message);
            Assert.Contains("initdb failed", error.Message);
            Assert.Contains("No space left on device", error.Message);
            Assert.False(Assert.Single(await Runtime.ListAsync(Ct())).Initialised);
            await Runtime.RemoveAsync(spec.NodeId, Ct());
        }
        finally
        {
            await RunAsync("umount", disk);
            Directory.Delete(disk);
        }
    }

    private static async Task RunAsync(string tool, params string[] args)
    {
        var psi = new System.Diagnostics.ProcessStartInfo(tool) { RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var process = System.Diagnostics.Process.Start(psi)!;
        var stderr = await process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync();
        if (process.ExitCode != 0) throw new InvalidOperationException($"{tool} {string.Join(' ', args)} failed (this test needs root): {stderr}");
    }
}
