using System.Text.Json.Nodes;
using Dingo.Bench.Shared;
using Dingo.Model;
using Dingo.Tests.Support;

namespace Dingo.Bench.Chaos;

/// <summary>
/// A kind of fault: its name on the command line, whether it aims at one instance, its stall target, and on which
/// platform it runs: one host (<see cref="OneHostPlatform"/>), three (<see cref="ThreeHostPlatform"/>), or both.
/// </summary>
internal sealed record FaultKind(string Name, bool AimsAtInstance, double? StallTargetSeconds, string What, bool OnOneHost = true, bool OnThreeHosts = false);

/// <summary>A fault as it was done: what it hit (key=value fields), when its last step (a restart, SIGCONT, a heal) was done.</summary>
/// <param name="FollowUp">
/// what is followed after the fault, beside the healing: the disturbed provision ("provision=… deprovisioned=…", clean
/// or not), or how long a killed cell agent took to register again
/// </param>
/// <param name="SplitSeenInside">split samples the sampler could not see: tries from inside a cut-off host that found a node writable after its fencing deadline</param>
/// <param name="CheckFailed">the fault's own check failed: for link-cut, the old primary was never seen fenced from inside its host</param>
internal sealed record AppliedFault(string Fields, DateTime Done, Task<(string Fields, bool Clean)>? FollowUp, int SplitSeenInside = 0, bool CheckFailed = false);

/// <summary>Each fault kind, carried out on the <see cref="ChaosPlatform"/>.</summary>
internal sealed class Faults(ChaosPlatform platform, Random random)
{
    public static readonly TimeSpan RestartAfter = TimeSpan.FromMilliseconds(500);
    public static readonly TimeSpan EtcdRestartAfter = TimeSpan.FromSeconds(1);
    public static readonly TimeSpan PostgresStoppedFor = TimeSpan.FromSeconds(10);
    public static readonly TimeSpan EtcdStoppedFor = TimeSpan.FromSeconds(8);
    /// <summary>A provision is disturbed at a random moment this long after its request (a `cluster` takes ~3-4 s).</summary>
    public static readonly TimeSpan ProvisionKillWithin = TimeSpan.FromSeconds(4);
    private static readonly TimeSpan OperationLimit = TimeSpan.FromSeconds(120);
    /// <summary>
    /// 2.5 times the HA ttl (4 s): the lease expires and a replica takes over while the host is still cut off (a failover
    /// takes ~6 s here: ttl, a loop, the router's leader-wait), with room for a loaded machine, and the old primary is
    /// watched from inside for seconds past its fencing deadline.
    /// </summary>
    public static readonly TimeSpan LinkCutFor = TimeSpan.FromSeconds(10);
    private static readonly TimeSpan InsideProbeReadyWithin = TimeSpan.FromSeconds(10);

    public static readonly IReadOnlyList<FaultKind> Kinds =
    [
        new("kill-pg", true, 1.0, "SIGKILL every process of the primary's PostgreSQL at once", OnThreeHosts: true),
        new("stop-pg", true, null, "SIGSTOP every process of the primary's PostgreSQL, SIGCONT 10 s later", OnThreeHosts: true),
        new("kill-cell-agent", true, 1.0, "SIGKILL the primary's cell agent alone (its PostgreSQL runs on), restart it 0.5 s later"),
        new("kill-etcd", false, null, "SIGKILL etcd, restart it 1 s later on the same data"),
        new("stop-etcd", false, null, "SIGSTOP etcd, SIGCONT 8 s later"),
        new("kill-broker", false, null, "SIGKILL the broker process serving a provision at a random moment, restart it 0.5 s later"),
        new("kill-cell", false, 5.0, "SIGKILL a whole cell (agent and PostgreSQL) during a provision, restart it 0.5 s later"),
        new("wipe-replica", true, null, "SIGKILL a replica's PostgreSQL, delete everything in its data directory", OnThreeHosts: true),
        new("link-cut", true, null, "cut the link of the primary's host for 10 s, then heal it", OnOneHost: false, OnThreeHosts: true),
    ];

    public static IReadOnlyList<FaultKind> KindsOn(int hosts) => Kinds.Where(k => hosts == 3 ? k.OnThreeHosts : k.OnOneHost).ToList();

    private int _throwaways;

    // Parse offers each kind only on the platform it runs on.
    private OneHostPlatform One => platform as OneHostPlatform ?? throw new InvalidOperationException("this fault kind runs on the one-host platform only");
    private ThreeHostPlatform Three => platform as ThreeHostPlatform ?? throw new InvalidOperationException("this fault kind runs on the three-host platform only (--hosts 3)");

    /// <summary>
    /// What a fault needs before it starts, not counted in it (the bench waits for the platform to heal after it):
    /// link-cut moves the target's primary off the writers' host. Its fields, or null when nothing was done.
    /// </summary>
    public async Task<string?> PrepareAsync(FaultKind kind, ChaosInstance target, CancellationToken ct) =>
        kind.Name == "link-cut" ? await Three.MovePrimaryOffWriterHostAsync(target, random, ct) : null;

    public async Task<AppliedFault> ApplyAsync(FaultKind kind, ChaosInstance target, CancellationToken ct) => kind.Name switch
    {
        "kill-pg" => await KillPostgresAsync(target, ct),
        "stop-pg" => await StopPostgresAsync(target, ct),
        "kill-cell-agent" => await KillCellAgentAsync(target, ct),
        "kill-etcd" => await KillEtcdAsync(ct),
        "stop-etcd" => await StopEtcdAsync(ct),
        "kill-broker" => await KillBrokerDuringProvisionAsync(ct),
        "kill-cell" => await KillCellDuringProvisionAsync(ct),
        "wipe-replica" => await WipeReplicaAsync(target, ct),
        "link-cut" => await CutLinkAsync(target, ct),
        _ => throw new ArgumentException($"unknown fault kind {kind.Name}", nameof(kind)),
    };

    private async Task<AppliedFault> KillPostgresAsync(ChaosInstance target, CancellationToken ct)
    {
        var node = await platform.PrimaryAsync(target.Id, ct);
        var killed = PostgresSignals.KillPostgres(platform.PostmasterPid(node));
        var done = DateTime.UtcNow;
        await PostgresSignals.WaitGoneAsync(killed, ct);
        return new AppliedFault($"victim={node.NodeId}@{node.CellId} processes={killed.Count}", done, null);
    }

    private async Task<AppliedFault> StopPostgresAsync(ChaosInstance target, CancellationToken ct)
    {
        var node = await platform.PrimaryAsync(target.Id, ct);
        var postmaster = platform.PostmasterPid(node);
        var stopped = platform.Stop(() => PostgresSignals.StopPostgres(postmaster));
        try { await Task.Delay(PostgresStoppedFor, ct); }
        finally { platform.Continue(stopped); }
        return new AppliedFault($"victim={node.NodeId}@{node.CellId} processes={stopped.Count}", DateTime.UtcNow, null);
    }

    private async Task<AppliedFault> KillCellAgentAsync(ChaosInstance target, CancellationToken ct)
    {
        var node = await platform.PrimaryAsync(target.Id, ct);
        var postmaster = platform.PostmasterPid(node);
        var cell = ChaosPlatform.CellNumber(node.CellId);
        One.Platform.KillCellProcessOnly(cell);
        var killedAt = DateTimeOffset.UtcNow;
        var survived = Directory.Exists($"/proc/{postmaster}");
        await Task.Delay(RestartAfter, ct);
        One.Platform.StartCellProcess(cell);
        return new AppliedFault($"victim={node.CellId} primary={node.NodeId} postgres_survived={(survived ? "yes" : "no")}", DateTime.UtcNow,
            CellBackAsync(node.CellId, killedAt, ct));
    }

    private async Task<AppliedFault> KillEtcdAsync(CancellationToken ct)
    {
        var etcd = One.Etcd;
        var pid = etcd.Pid(0);
        etcd.Kill(0);
        try { await Task.Delay(EtcdRestartAfter, ct); }
        finally { etcd.Start(0); }
        return new AppliedFault($"victim=etcd pid={pid}", DateTime.UtcNow, null);
    }

    private async Task<AppliedFault> StopEtcdAsync(CancellationToken ct)
    {
        var pid = One.Etcd.Pid(0);
        var stopped = platform.Stop(() =>
        {
            if (!ChildProcesses.Signal(pid, PostgresSignals.SigStop)) throw new InvalidOperationException($"kill({pid}, SIGSTOP) failed");
            return [pid];
        });
        try { await Task.Delay(EtcdStoppedFor, ct); }
        finally { platform.Continue(stopped); }
        return new AppliedFault($"victim=etcd pid={pid}", DateTime.UtcNow, null);
    }

    private async Task<AppliedFault> KillBrokerDuringProvisionAsync(CancellationToken ct)
    {
        var id = $"throwaway-{++_throwaways}";
        var one = One;
        using var broker = TestPlatform.ClientFor(one.BrokerUrl);
        var put = PutProvisionAsync(broker, id, ct);
        var after = RandomDelay();
        await Task.Delay(after, ct);
        one.KillBroker();
        var done = DateTime.UtcNow;
        await Task.Delay(RestartAfter, ct);
        var restart = one.StartBrokerAsync(ct);
        var outcome = CheckProvisionAsync(id, put, restart, ct);
        return new AppliedFault($"victim=broker-1 throwaway={id} kill_after_s={after.TotalSeconds:0.00}", done, outcome);
    }

    private async Task<AppliedFault> KillCellDuringProvisionAsync(CancellationToken ct)
    {
        var id = $"throwaway-{++_throwaways}";
        var one = One;
        var put = PutProvisionAsync(one.Platform.Http, id, ct);
        var after = RandomDelay();
        await Task.Delay(after, ct);
        // A cell the new instance has a node on if it has one yet: the provision is what this fault disturbs.
        var placed = await platform.NodesAsync(id, ct);
        var cellId = placed.Count > 0 ? placed[random.Next(placed.Count)].CellId : $"cell-{random.Next(1, ChaosPlatform.Cells + 1)}";
        var cell = ChaosPlatform.CellNumber(cellId);
        one.Platform.KillCell(cell);
        await Task.Delay(RestartAfter, ct);
        one.Platform.StartCellProcess(cell);
        var outcome = CheckProvisionAsync(id, put, Task.CompletedTask, ct);
        return new AppliedFault($"victim={cellId} throwaway={id} kill_after_s={after.TotalSeconds:0.00} held_its_node={(placed.Count > 0 ? "yes" : "none-placed")}",
            DateTime.UtcNow, outcome);
    }

    private async Task<AppliedFault> WipeReplicaAsync(ChaosInstance target, CancellationToken ct)
    {
        var primary = await platform.PrimaryAsync(target.Id, ct);
        var replicas = (await platform.NodesAsync(target.Id, ct)).Where(n => n.NodeId != primary.NodeId).ToList();
        if (replicas.Count == 0) throw new InvalidOperationException($"{target.Id} has no replica to wipe");
        var node = replicas[random.Next(replicas.Count)];
        var killed = PostgresSignals.KillPostgres(platform.PostmasterPid(node));
        await PostgresSignals.WaitGoneAsync(killed, ct);
        // The folder stays (owned by postgres, 0700) and is emptied, as a replaced disk mounted there would be.
        var pgdata = new DirectoryInfo(platform.PgData(node));
        var entries = 0;
        // The cell may already be acting on its dead node (removing or re-creating files): what vanished meanwhile is gone anyway.
        foreach (var entry in pgdata.GetFileSystemInfos())
        {
            try
            {
                if (entry is DirectoryInfo dir) dir.Delete(recursive: true);
                else entry.Delete();
                entries++;
            }
            catch (Exception ex) when (ex is DirectoryNotFoundException or FileNotFoundException) { }
        }
        return new AppliedFault($"victim={node.NodeId}@{node.CellId} stopped=sigkill deleted_entries={entries}", DateTime.UtcNow, null);
    }

    /// <summary>
    /// Cuts the link of the host holding the target's primary for <see cref="LinkCutFor"/>, then heals it (also when the
    /// bench is interrupted meanwhile). The sampler cannot reach a cut-off host: its nodes count as unanswered there. So
    /// every node of the bench's instances on that host is also asked from inside it (<see cref="InsideProbe"/>): a try
    /// begun after the fencing deadline (the cut plus the HA ttl: by then the lease may have expired and a replica may
    /// lead) that finds a node writable is a split sample. The old primary never seen fenced from inside fails the check.
    /// </summary>
    private async Task<AppliedFault> CutLinkAsync(ChaosInstance target, CancellationToken ct)
    {
        var three = Three;
        var primary = await platform.PrimaryAsync(target.Id, ct);
        var host = ThreeHostPlatform.HostOf(primary.CellId);
        if (host == ThreeHostPlatform.WriterHost)
            throw new InvalidOperationException($"{target.Id}'s primary {primary.NodeId} is on host {host}, whose router the writers use: it should have been moved off");
        var onHost = new List<(ChaosInstance Instance, NodeSpec Node)>();
        foreach (var instance in platform.Instances)
            foreach (var node in await platform.NodesAsync(instance.Id, ct))
                if (ThreeHostPlatform.HostOf(node.CellId) == host) onHost.Add((instance, node));
        var probes = new List<InsideProbe>();
        try
        {
            foreach (var (instance, node) in onHost) probes.Add(InsideProbe.Start(three.Hosts, host, node, instance.Superuser, platform.Settings.Cell.PostgresBin));
            var mine = probes[onHost.FindIndex(n => n.Instance == target && n.Node.NodeId == primary.NodeId)];
            var seeing = await mine.SeenWritableAsync(InsideProbeReadyWithin, ct);

            var cutAt = DateTime.UtcNow;
            DateTime cutDone, healAt;
            try
            {
                await three.Hosts.PartitionAsync(host, ct);
                // Tries begun once the link is surely down are what the verdict reads.
                cutDone = DateTime.UtcNow;
                await Task.Delay(LinkCutFor, ct);
            }
            finally
            {
                healAt = DateTime.UtcNow;
                await three.Hosts.HealAsync(host, CancellationToken.None);
            }
            var done = DateTime.UtcNow;

            var deadline = cutDone + platform.Settings.Ha.Ttl;
            List<InsideProbe.Answer> During(InsideProbe probe) => probe.Answers().Where(a => a.T0 >= cutDone && a.T1 <= healAt).ToList();
            var late = probes.Select(p => (p.NodeId, Tries: During(p).Where(a => a.Writable && a.T0 >= deadline).ToList())).Where(p => p.Tries.Count > 0).ToList();
            foreach (var (nodeId, tries) in late)
                Console.Error.WriteLine($"bench: {nodeId} on cut-off host {host} writable after its fencing deadline ({deadline:HH:mm:ss.fff}), seen from inside {tries.Count} times, first at {tries[0].T0:HH:mm:ss.fff}");
            var tried = During(mine);
            // Fenced: the first try not finding it writable with none finding it writable after it.
            var lastWritable = tried.FindLastIndex(a => a.Writable);
            var fenced = lastWritable + 1 < tried.Count ? tried[lastWritable + 1] : null;
            string Since(DateTime t) => ((t - cutDone).TotalSeconds).ToString("0.00", System.Globalization.CultureInfo.InvariantCulture);
            var failed = !seeing || fenced is null;
            if (failed)
                Console.Error.WriteLine($"bench: the old primary {primary.NodeId} was {(seeing ? "never seen fenced" : "never seen writable")} from inside host {host}: "
                                        + string.Join(", ", tried.Select(a => $"{a.T0:HH:mm:ss.fff} {a.Result}").TakeLast(20)));
            return new AppliedFault(
                $"victim={primary.NodeId}@{primary.CellId} host={host} cut_s={(healAt - cutAt).TotalSeconds:0.00} inside_tries={tried.Count} "
                + $"last_writable_s={(lastWritable >= 0 ? Since(tried[lastWritable].T0) : "none")} "
                + $"fenced_by_s={(fenced is not null ? Since(fenced.T1) : "never")} fenced_as={fenced?.Result ?? "none"} "
                + $"writable_after_deadline={late.Sum(l => l.Tries.Count)} probed={probes.Count}" + (seeing ? "" : " inside=blind"),
                done, null, late.Sum(l => l.Tries.Count), failed);
        }
        finally
        {
            foreach (var probe in probes) await probe.DisposeAsync();
        }
    }

    /// <summary>Seconds from the kill until the restarted cell registered again (a new StartedAt), at most 60 s.</summary>
    private async Task<(string Fields, bool Clean)> CellBackAsync(string cellId, DateTimeOffset killedAt, CancellationToken ct)
    {
        var store = platform.Store;
        while (DateTimeOffset.UtcNow - killedAt < TimeSpan.FromSeconds(60))
        {
            try
            {
                if (await store.GetAsync<CellInfo>(store.Keys.Cell(cellId), ct) is { } info && info.Value.StartedAt > killedAt)
                    return ($"agent_back_s={(DateTimeOffset.UtcNow - killedAt).TotalSeconds:0.00}", true);
            }
            catch (Grpc.Core.RpcException) { }
            await Task.Delay(100, ct);
        }
        return ("agent_back_s=never", true);
    }

    private TimeSpan RandomDelay() => TimeSpan.FromMilliseconds(random.Next((int)ProvisionKillWithin.TotalMilliseconds));

    /// <summary>The provision request of a throwaway `cluster` instance; its answer, or null when the request failed.</summary>
    private static async Task<int?> PutProvisionAsync(HttpClient broker, string id, CancellationToken ct)
    {
        try
        {
            using var content = new StringContent(TestPlatform.ProvisionBody(Catalog.ClusterPlanId), System.Text.Encoding.UTF8, "application/json");
            using var response = await broker.PutAsync($"/v2/service_instances/{id}?accepts_incomplete=true", content, ct);
            return (int)response.StatusCode;
        }
        catch (Exception ex) when (ex is HttpRequestException or TaskCanceledException && !ct.IsCancellationRequested)
        {
            return null;
        }
    }

    /// <summary>
    /// Follows the disturbed provision to its end through the in-process broker (at most 120 s), then deprovisions
    /// it and waits until its nodes are gone. Clean: it succeeded, or failed saying why, or was never accepted
    /// (the request got no 202) and left nothing; and the deprovision removed every node.
    /// </summary>
    private async Task<(string Outcome, bool Clean)> CheckProvisionAsync(string id, Task<int?> put, Task brokerRestart, CancellationToken ct)
    {
        var answer = await put;
        var started = DateTime.UtcNow;
        var state = "stuck";
        var description = "";
        while (DateTime.UtcNow - started < OperationLimit)
        {
            var (status, op) = await TrySendAsync(HttpMethod.Get, $"/v2/service_instances/{id}/last_operation", ct);
            if (status is 410 or 404) { state = "absent"; break; }
            if (status == 200 && (string?)op["state"] is { } s && s != OperationState.InProgress.Wire())
            {
                state = s;
                description = (string?)op["description"] ?? "";
                break;
            }
            await Task.Delay(200, ct);
        }
        if (description.Length > 0) Console.Error.WriteLine($"bench: {id}: provision {state}: {description}");

        var deleted = await DeprovisionAsync(id, ct);
        try { await brokerRestart; }
        catch (Exception ex) when (ex is TimeoutException or InvalidOperationException)
        {
            Console.Error.WriteLine($"bench: broker-1 did not come back: {ex.Message}");
            return ($"provision={state} request={answer?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "none"} deprovisioned={(deleted ? "yes" : "no")} broker_back=no", false);
        }
        var clean = deleted && (state == OperationState.Succeeded.Wire() || (state == OperationState.Failed.Wire() && description.Length > 0) || (state == "absent" && answer is not 202));
        return ($"provision={state} request={answer?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "none"} deprovisioned={(deleted ? "yes" : "no")}", clean);
    }

    private async Task<bool> DeprovisionAsync(string id, CancellationToken ct)
    {
        var started = DateTime.UtcNow;
        var accepted = false;
        while (!accepted && DateTime.UtcNow - started < OperationLimit)
        {
            var (status, body) = await TrySendAsync(HttpMethod.Delete, $"/v2/service_instances/{id}?accepts_incomplete=true&service_id={Catalog.ServiceId}&plan_id={Catalog.ClusterPlanId}", ct);
            if (status is 200 or 202 or 410) accepted = true;
            else
            {
                Console.Error.WriteLine($"bench: deprovision {id} answered {status}: {body.ToJsonString()}");
                await Task.Delay(1000, ct);
            }
        }
        while (accepted && DateTime.UtcNow - started < OperationLimit)
        {
            var (status, op) = await TrySendAsync(HttpMethod.Get, $"/v2/service_instances/{id}/last_operation", ct);
            if (status is 410 or 404 || (status == 200 && (string?)op["state"] != OperationState.InProgress.Wire())) break;
            await Task.Delay(200, ct);
        }
        // The cells stop and remove the nodes once the records are gone.
        while (accepted && DateTime.UtcNow - started < OperationLimit)
        {
            try
            {
                var store = platform.Store;
                if ((await store.ListAsync<NodeSpec>(store.Keys.Nodes(id), ct)).Count == 0
                    && (await store.ListAsync<NodeStatus>(store.Keys.Statuses(id), ct)).Count == 0)
                    return true;
            }
            catch (Grpc.Core.RpcException) { }
            await Task.Delay(500, ct);
        }
        return false;
    }

    /// <summary>An OSB call through the in-process broker; status 0 when it did not answer.</summary>
    private async Task<(int Status, JsonObject Body)> TrySendAsync(HttpMethod method, string path, CancellationToken ct)
    {
        try { return await One.SendAsync(method, path, null, ct); }
        catch (Exception ex) when (ex is HttpRequestException or TaskCanceledException or System.Text.Json.JsonException && !ct.IsCancellationRequested)
        {
            return (0, new JsonObject());
        }
    }
}
