using System.Diagnostics;
using System.Globalization;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json.Nodes;
using Dingo.Config;
using Dingo.Model;
using Dingo.Store;
using Dingo.Tests.Support;
using Npgsql;
using Xunit.Abstractions;

namespace Dingo.Tests.Ha;

/// <summary>
/// Issue 7's acceptance on three simulated hosts (network namespaces, <see cref="NetnsHosts"/>): each runs an etcd
/// member, a cell with its router, and host 0 and host 1 a broker, exactly as deploy/three-hosts.sh and
/// docs/deploy.md lay them out. A `cluster-ha` instance takes a writer committing every 20 ms through the router of
/// a host that stays up. Then the host holding the primary and a broker is lost whole.
/// </summary>
[SuiteCost(269)]
public sealed class ThreeHostTests(ITestOutputHelper output)
{
    private const string Settings = """
        dingo.ha { ttl = 4s, loop-wait = 500ms, rewind-after = 4s, lost-cell-grace = 300s }
        # Archiving is not under test here and costs CPU this 2-core machine needs for the failover.
        dingo.backups.enabled = false
        """;

    [Fact]
    public async Task Killing_a_whole_host_keeps_writes_etcd_and_the_api_going_loses_no_commit_and_the_host_rejoins()
    {
        Assert.True(NetnsHosts.Supported(out var reason), "network namespaces unavailable: " + reason);
        await using var p = await ThreeHosts.StartAsync(output, Settings);
        var store = p.Store;

        var id = "th-" + Guid.NewGuid().ToString("N")[..8];
        // The victim holds the primary and a broker: the primary goes to host 0 when it is on host 2 (no broker).
        var (leader, victim) = await ProvisionClusterHaAsync(p, id, host => host != 2, moveTo: 0);
        var survivor = 1 - victim;   // the other broker host
        const int routerHost = 2;    // never the victim
        output.WriteLine($"primary {leader} on host {victim}; writer through host {routerHost}'s router; broker on host {survivor} stays");

        using var api = p.Broker(survivor);
        await using var writer = await StartWriterAsync(p, api, id, routerHost);
        // The kill must land on a writer that commits through the router (else "no commit lost" and "writes resumed"
        // would prove nothing). How fast it commits here depends on the machine's load, not on what is under test: wait
        // for 20 commits, with a bound that only a writer that cannot commit at all would reach.
        var writing = System.Diagnostics.Stopwatch.StartNew();
        await Until(() => Task.FromResult(writer.Acknowledged.Count > 20), 60, "the writer committing 20 rows through the router before the kill");
        output.WriteLine($"the writer committed {writer.Acknowledged.Count} rows ({Interlocked.Read(ref writer.Attempts)} attempts) in {writing.Elapsed.TotalSeconds:0.0}s before the kill");

        // Provisions in flight through the broker that dies, on cells that stay (a solo node waits for its own cell).
        using var victimApi = p.Broker(victim);
        var survivingCells = Enumerable.Range(0, 3).Where(i => i != victim).Select(i => $"cell-{i + 1}").ToArray();
        var inFlight = Enumerable.Range(0, 3).Select(i => $"tf{i}-" + Guid.NewGuid().ToString("N")[..6]).ToList();
        foreach (var (pending, n) in inFlight.Select((x, n) => (x, n)))
            await ProvisionAsync(victimApi, pending, Catalog.SoloPlanId, new { cells = new[] { survivingCells[n % 2] } }, wait: false);

        await p.KillHostAsync(victim);
        var killedAt = DateTime.UtcNow; // nothing of the host runs from here
        output.WriteLine($"killed host {victim} (etcd member, broker, cell, router, PostgreSQL) at {killedAt:HH:mm:ss.fff} with {inFlight.Count} provisions in flight");

        // Writes resume through host 2's router.
        await Until(() => Task.FromResult(writer.FirstAckAfter(killedAt) is not null), 30, "a write acknowledged after the kill");
        var resumed = (writer.FirstAckAfter(killedAt)!.Value - killedAt).TotalSeconds;
        var (newLeader, newLeaderHost) = await LeaderAsync(p, id);
        Assert.NotEqual(victim, newLeaderHost);

        // etcd keeps its quorum: a write through the two members left.
        await using (var two = new EtcdStore(Enumerable.Range(0, 3).Where(i => i != victim).Select(p.EtcdUrl).ToList(), p.Settings.EtcdPrefix))
            await two.PutStringAsync(p.Settings.EtcdPrefix + "/three-hosts-probe", killedAt.ToString("O"), CancellationToken.None);

        // The other broker answers throughout and finishes what was in flight.
        var (catalogStatus, _) = await SendAsync(api, HttpMethod.Get, "/v2/catalog");
        Assert.Equal(200, catalogStatus);
        foreach (var pending in inFlight)
        {
            var final = await WaitForOperationAsync(api, pending, TimeSpan.FromSeconds(180));
            Assert.True((string?)final["state"] == "succeeded", $"{pending}: {final.ToJsonString()}");
        }
        var finished = (DateTime.UtcNow - killedAt).TotalSeconds;
        // The Akka cluster removed the dead members: the split-brain resolver (lease in etcd) downed the broker and cell
        // of the lost host (what let their shards move to the broker that stayed).
        var victimAddress = p.Hosts.HostAddress(victim);
        var survivorLog = await p.ReadLogAsync(survivor, "broker");
        Assert.True(survivorLog.Split('\n').Any(l => l.Contains("SBR took decision", StringComparison.Ordinal) && l.Contains($"{victimAddress}:4053", StringComparison.Ordinal) && l.Contains($"{victimAddress}:4054", StringComparison.Ordinal)),
            $"the broker on host {survivor} never logged the split-brain resolver downing {victimAddress}:4053 and :4054");
        output.WriteLine($"writes resumed {resumed:0.00}s after the kill (new primary {newLeader} on host {newLeaderHost}); in-flight provisions all succeeded {finished:0.0}s after it");

        // The host comes back: same data, no operator action beyond starting its processes (what systemd would do).
        var restartedAt = DateTime.UtcNow;
        p.StartHost(victim);
        await Until(async () => await FullAndHealthyAsync(store, id, 3)
                                && (await store.ListAsync<NodeStatus>(store.Keys.Statuses(id), CancellationToken.None))
                                   .Any(s => s.Value.NodeId == leader && s.Value.Role == NodeRole.Replica && s.Value.Streaming && s.Value.UpdatedAt > restartedAt),
            180, $"the old primary {leader} a streaming replica again");
        var rejoinedNode = (DateTime.UtcNow - restartedAt).TotalSeconds;
        await Until(async () => (await TrySendAsync(victimApi, HttpMethod.Get, $"/v2/service_instances/{inFlight[0]}/last_operation")) == 200, 120, $"the broker on host {victim} answering again");
        await using (var own = new EtcdStore([p.EtcdUrl(victim)], p.Settings.EtcdPrefix))
            Assert.Equal(killedAt.ToString("O"), await own.GetStringAsync(p.Settings.EtcdPrefix + "/three-hosts-probe", CancellationToken.None));
        // The returned broker is a member again: a provision through it finishes.
        var after = "ta-" + Guid.NewGuid().ToString("N")[..6];
        await ProvisionAsync(victimApi, after, Catalog.SoloPlanId, new { cells = new[] { $"cell-{victim + 1}" } });
        var rejoined = (DateTime.UtcNow - restartedAt).TotalSeconds;
        Assert.Equal(newLeader, (await LeaderAsync(p, id)).NodeId);

        await Task.Delay(500);
        await writer.DisposeAsync();
        var missing = await writer.MissingAsync();
        var figures = $"three hosts, host {victim} killed whole under a writer every 20 ms: writes resumed after {resumed:0.00}s, " +
                      $"{inFlight.Count} in-flight provisions finished by the other broker {finished:0.0}s after the kill; host back: old primary streaming " +
                      $"{rejoinedNode:0.0}s, its broker and etcd member serving {rejoined:0.0}s after its processes restarted; " +
                      $"{writer.Acknowledged.Count} commits acknowledged, {missing.Count} lost";
        output.WriteLine(figures);
        Console.WriteLine("[measure] " + figures);
        Assert.Empty(missing);
    }

    [Fact]
    public async Task Cutting_a_hosts_link_keeps_writes_etcd_and_the_api_going_never_two_writable_nodes_and_the_host_rejoins()
    {
        Assert.True(NetnsHosts.Supported(out var reason), "network namespaces unavailable: " + reason);
        await using var p = await ThreeHosts.StartAsync(output, Settings);
        var store = p.Store;

        var id = "tp-" + Guid.NewGuid().ToString("N")[..8];
        // The cut-off host holds the primary and the first Akka seed (host 0's broker): the one that, by Akka's own
        // rule, would found a second cluster when it restarts and hears from no other seed.
        const int victim = 0, survivor = 1, routerHost = 2;
        var (oldPrimary, _) = await ProvisionClusterHaAsync(p, id, host => host == victim, moveTo: victim);
        var specs = (await store.ListAsync<NodeSpec>(store.Keys.Nodes(id), CancellationToken.None)).Select(n => n.Value).ToList();
        int HostOf(string nodeId) => int.Parse(specs.Single(s => s.NodeId == nodeId).CellId["cell-".Length..], CultureInfo.InvariantCulture) - 1;
        var targets = specs.Select(s => new WritableSampler.Target(s.NodeId, p.Hosts.HostAddress(HostOf(s.NodeId)), s.Port)).ToList();
        var oldTarget = targets.Single(t => t.NodeId == oldPrimary);
        var record = (await store.GetAsync<InstanceRecord>(store.Keys.Instance(id), CancellationToken.None))!.Value;
        output.WriteLine($"primary {oldPrimary} on host {victim}; writer through host {routerHost}'s router; broker on host {survivor} stays");

        using var api = p.Broker(survivor);
        await using var writer = await StartWriterAsync(p, api, id, routerHost);

        // Every node sampled from outside; the old primary also from inside its host, where it stays visible when cut off.
        await using var sampler = new WritableSampler(targets, record.Superuser);
        var probe = PartitionTests.StartInsideProbe(p.Hosts, victim, oldTarget, record.Superuser, p.Settings.Cell.PostgresBin);
        var probeLog = p.Hosts.LogPath(probe);
        await Until(() => Task.FromResult(PartitionTests.ReadProbe(probeLog).Count(o => o.Writable) >= 3
                                          && sampler.Samples.Count(s => s.NodeId == oldPrimary && s.Seen == WritableSampler.Seen.Writable) >= 3
                                          && writer.Acknowledged.Count > 20), 30, "the probes seeing the primary writable and the writer committing");

        // Provisions in flight through the broker that is cut off, on the cells that stay reachable.
        using var victimApi = p.Broker(victim);
        var inFlight = new[] { 1, 2 }.Select(i => ($"tq{i}-" + Guid.NewGuid().ToString("N")[..6], $"cell-{i + 1}")).ToList();
        foreach (var (pending, cell) in inFlight)
            await ProvisionAsync(victimApi, pending, Catalog.SoloPlanId, new { cells = new[] { cell } }, wait: false);

        var partitionedAt = DateTime.UtcNow;
        await p.Hosts.PartitionAsync(victim);
        // Only a write begun once the link is surely down proves another primary: one begun while `ip link` was still
        // at work (tens of ms on a busy machine) may have been acknowledged by the old primary.
        var cutDone = DateTime.UtcNow;
        output.WriteLine($"cut host {victim}'s link at {partitionedAt:HH:mm:ss.fff} (down by {cutDone:HH:mm:ss.fff}) with {inFlight.Count} provisions in flight");

        await Until(() => Task.FromResult(writer.FirstAckAfter(cutDone) is not null), 30, "a write acknowledged after the partition");
        var resumed = (writer.FirstAckAfter(cutDone)!.Value - partitionedAt).TotalSeconds;
        await Until(() => Task.FromResult(PartitionTests.ReadProbe(probeLog).Any(o => !o.Writable && o.T0 > partitionedAt)), 30, "the old primary not writable, seen from inside its host");
        var (newLeader, newLeaderHost) = await LeaderAsync(p, id);
        Assert.NotEqual(victim, newLeaderHost);

        // etcd keeps its quorum on the two members left.
        await using (var two = new EtcdStore([p.EtcdUrl(survivor), p.EtcdUrl(routerHost)], p.Settings.EtcdPrefix))
            await two.PutStringAsync(p.Settings.EtcdPrefix + "/three-hosts-probe", partitionedAt.ToString("O"), CancellationToken.None);

        // The other broker answers throughout and finishes what was in flight.
        var (catalogStatus, _) = await SendAsync(api, HttpMethod.Get, "/v2/catalog");
        Assert.Equal(200, catalogStatus);
        foreach (var (pending, _) in inFlight)
        {
            var final = await WaitForOperationAsync(api, pending, TimeSpan.FromSeconds(180));
            Assert.True((string?)final["state"] == "succeeded", $"{pending}: {final.ToJsonString()}");
        }
        var finished = (DateTime.UtcNow - partitionedAt).TotalSeconds;
        var victimAddress = p.Hosts.HostAddress(victim);
        await Until(async () => (await p.ReadLogAsync(survivor, "broker")).Split('\n').Any(l => l.Contains("SBR took decision", StringComparison.Ordinal)
                                                                                            && l.Contains($"{victimAddress}:4053", StringComparison.Ordinal)), 60,
            $"the broker on host {survivor} downing the cut-off members at {victimAddress}");
        // The cut-off broker was removed and restarted (as systemd would): it must wait for etcd, never found a cluster.
        await Until(async () => (await p.ReadLogAsync(victim, "broker")).Contains("not joining the Akka cluster until it does", StringComparison.Ordinal), 90,
            $"the restarted broker on host {victim} waiting for etcd before joining");
        await Task.Delay(3000); // keep sampling while cut off: nothing may flip back

        var healedAt = DateTime.UtcNow;
        await p.Hosts.HealAsync(victim);
        output.WriteLine($"healed host {victim} at {healedAt:HH:mm:ss.fff}");
        // The returned broker stalls for longer than Akka's handshake timeout (3 s) just as its host comes back, as a
        // process does on a loaded machine: its cell, rejoining first, gives up on the handshake it began meanwhile,
        // and the broker reads that handshake late. With passive connections that left the pair unable to hear each
        // other, and the resolver downed both as indirectly connected (fresh288).
        await p.StallAsync(victim, "broker", TimeSpan.FromSeconds(5));
        output.WriteLine($"{DateTime.UtcNow:HH:mm:ss.fff} the broker on host {victim} went on after a 5 s stall");
        await Until(async () => await FullAndHealthyAsync(store, id, 3)
                                && (await store.ListAsync<NodeStatus>(store.Keys.Statuses(id), CancellationToken.None))
                                   .Any(s => s.Value.NodeId == oldPrimary && s.Value.Role == NodeRole.Replica && s.Value.Streaming && s.Value.UpdatedAt > healedAt),
            180, $"the old primary {oldPrimary} a streaming replica again");
        var rejoinedNode = DateTime.UtcNow - healedAt;
        // One Akka cluster again: both brokers and the three cells registered as members, the returned broker serving.
        await Until(async () => (await store.ListAsync<AkkaMemberRecord>(store.Keys.AkkaMembers, CancellationToken.None)).Count == 5, 120,
            "five Akka members (two brokers, three cells) registered again");
        // Asked as the console asks (a cluster client of the brokers): one cluster holds all five, every one Up and reachable.
        var brokers = new[] { 0, 1 }.Select(i => $"akka.ssl.tcp://dingo@{p.Hosts.HostAddress(i)}:4053").ToList();
        Dingo.Membership.ClusterView? view = null;
        await Until(async () =>
        {
            var access = Dingo.Membership.ConsoleAccess.From(p.Settings) with { Hostname = p.Hosts.BridgeAddress, Tls = p.ConsoleTls };
            try { view = await Dingo.Membership.ClusterConsole.QueryAsync(access, brokers, TimeSpan.FromSeconds(5), CancellationToken.None); }
            catch (Dingo.Membership.ClusterConsoleException) { return false; }
            return view.Members.Count == 5 && view.Members.All(m => m.Status == "Up" && m.Reachable);
        }, 120, "one Akka cluster of five members, all Up and reachable, as the console sees it");
        var oneClusterAt = DateTime.UtcNow;
        output.WriteLine($"cluster view from {view!.Broker}: {string.Join(", ", view.Members.Select(m => $"{m.Address} [{string.Join(",", m.Roles)}] {m.Status}"))}");
        var after = "tr-" + Guid.NewGuid().ToString("N")[..6];
        await ProvisionAsync(victimApi, after, Catalog.SoloPlanId, new { cells = new[] { $"cell-{victim + 1}" } });
        var rejoined = (DateTime.UtcNow - healedAt).TotalSeconds;
        var victimLog = await p.ReadLogAsync(victim, "broker");
        Assert.DoesNotContain("founding the cluster", victimLog, StringComparison.Ordinal);
        // One cluster that stays one: members that cannot hear each other are marked unreachable within about 5 s of
        // both being Up (a heartbeat a second, 3 s of acceptable pause), so look 12 s after the complete view.
        var settled = oneClusterAt + TimeSpan.FromSeconds(12);
        if (DateTime.UtcNow < settled) await Task.Delay(settled - DateTime.UtcNow);
        var unreachable = new List<string>();
        for (var host = 0; host < 3; host++)
            foreach (var role in host < 2 ? new[] { "broker", "cell" } : ["cell"])
                unreachable.AddRange((await p.ReadLogAsync(host, role)).Split('\n')
                    .Where(l => l.Contains("Marking node(s) as UNREACHABLE", StringComparison.Ordinal) && LoggedAfter(l, oneClusterAt))
                    .Select(l => $"host {host} {role}: {l.Trim()}"));
        Assert.True(unreachable.Count == 0, "members marked unreachable after the cluster was one again:\n" + string.Join('\n', unreachable));
        var leaderNow = (await LeaderAsync(p, id)).NodeId;
        Assert.True(newLeader == leaderNow, $"one failover for one fault: {newLeader} took over after the cut, but {leaderNow} leads now. Leadership in the cells' logs:\n{await LeadershipLogAsync(p, id)}");

        await Task.Delay(1000);
        await sampler.DisposeAsync();
        var stoppedAt = DateTime.UtcNow;
        try { ProcessTree.Kill(probe); } catch (InvalidOperationException) { }
        await writer.DisposeAsync();
        var missing = await writer.MissingAsync();
        var samples = sampler.Samples.OrderBy(s => s.T1).ToList();
        var inside = PartitionTests.ReadProbe(probeLog);
        var sampled = PartitionTests.Analyse(output, samples, inside, oldPrimary, partitionedAt, healedAt, stoppedAt, rejoinedNode,
            node => PartitionTests.PromotionFloor(p.Settings.DataDir, node, partitionedAt));
        var figures = $"three hosts, host {victim}'s link cut under a writer every 20 ms: writes resumed after {resumed:0.00}s, " +
                      $"{inFlight.Count} in-flight provisions finished by the other broker {finished:0.0}s after the cut; healed: " +
                      $"one Akka cluster and a provision through the returned broker {rejoined:0.0}s later; " +
                      $"{writer.Acknowledged.Count} commits acknowledged, {missing.Count} lost; {sampled}";
        output.WriteLine(figures);
        Console.WriteLine("[measure] " + figures);
        Assert.Empty(missing);
    }

    // ---- helpers ----

    /// <summary>Whether a process log line (it begins with the local time of day, HH:mm:ss.fff) was written after
    /// <paramref name="moment"/> (UTC): on the day that puts it within 12 hours of it, so a run across midnight counts right.</summary>
    private static bool LoggedAfter(string line, DateTime moment)
    {
        if (line.Length < 12 || !TimeSpan.TryParseExact(line[..12], @"hh\:mm\:ss\.fff", CultureInfo.InvariantCulture, out var time)) return false;
        var local = moment.ToLocalTime();
        var at = local.Date + time;
        if (at - local > TimeSpan.FromHours(12)) at -= TimeSpan.FromDays(1);
        else if (local - at > TimeSpan.FromHours(12)) at += TimeSpan.FromDays(1);
        return at > local;
    }

    /// <summary>Every cell's log lines about the leader key of <paramref name="id"/>'s nodes, in time order: what a
    /// second leader change needs explained.</summary>
    private static async Task<string> LeadershipLogAsync(ThreeHosts p, string id)
    {
        var nodes = (await p.Store.ListAsync<NodeSpec>(p.Store.Keys.Nodes(id), CancellationToken.None)).Select(n => n.Value.NodeId).ToList();
        var lines = new List<string>();
        for (var host = 0; host < 3; host++)
            foreach (var line in (await p.ReadLogAsync(host, "cell")).Split('\n'))
                if (nodes.Any(n => line.Contains(n, StringComparison.Ordinal))
                    && (line.Contains("leader key", StringComparison.Ordinal) || line.Contains("demoting", StringComparison.Ordinal)
                        || line.Contains("promot", StringComparison.Ordinal) || line.Contains("fenc", StringComparison.Ordinal)))
                    lines.Add($"host {host}: {line.Trim()}");
        return string.Join('\n', lines.OrderBy(l => l[(l.IndexOf(':') + 2)..], StringComparer.Ordinal).TakeLast(60));
    }

    /// <summary>
    /// A healthy `cluster-ha` instance (3 nodes, 2 replicas streaming), provisioned through host 0's broker, with its
    /// primary on a host <paramref name="acceptable"/> allows (a planned switchover to <paramref name="moveTo"/> otherwise).
    /// </summary>
    private static async Task<(string NodeId, int Host)> ProvisionClusterHaAsync(ThreeHosts p, string id, Func<int, bool> acceptable, int moveTo)
    {
        var store = p.Store;
        using var api0 = p.Broker(0);
        await ProvisionAsync(api0, id, Catalog.ClusterHaPlanId);
        await Until(() => FullAndHealthyAsync(store, id, 3), 90, "3 nodes running, 2 replicas streaming");
        if (!acceptable((await LeaderAsync(p, id)).Host))
        {
            var specs = (await store.ListAsync<NodeSpec>(store.Keys.Nodes(id), CancellationToken.None)).Select(n => n.Value).ToList();
            var to = specs.Single(s => s.CellId == $"cell-{moveTo + 1}").NodeId;
            var (status, body) = await SendAsync(api0, HttpMethod.Post, $"/admin/service_instances/{id}/switchover", new JsonObject { ["to"] = to }.ToJsonString());
            Assert.True(status == 202, $"switchover answered {status}: {body.ToJsonString()}");
            await Until(async () => (await LeaderAsync(p, id)).Host == moveTo && await FullAndHealthyAsync(store, id, 3), 60, $"{to} on host {moveTo} the primary");
        }
        return await LeaderAsync(p, id);
    }

    /// <summary>A binding made through <paramref name="api"/>, and a writer committing every 20 ms through host <paramref name="routerHost"/>'s router.</summary>
    private static async Task<Writer> StartWriterAsync(ThreeHosts p, HttpClient api, string id, int routerHost)
    {
        var creds = await BindAsync(api, id, "w", Catalog.ClusterHaPlanId);
        var cs = new NpgsqlConnectionStringBuilder(TestPlatform.ConnectionStringFromUri((string)creds["uri"]!)) { Host = p.Hosts.HostAddress(routerHost) }.ConnectionString;
        var writer = new Writer(cs, TimeSpan.FromMilliseconds(20));
        try
        {
            await writer.CreateTableAsync();
            writer.Start();
            return writer;
        }
        catch
        {
            await writer.DisposeAsync();
            throw;
        }
    }

    private static async Task<(string NodeId, int Host)> LeaderAsync(ThreeHosts p, string id)
    {
        var leader = (await p.Store.GetAsync<LeaderRecord>(p.Store.Keys.Leader(id), CancellationToken.None))?.Value
                     ?? throw new InvalidOperationException($"{id} has no leader");
        var node = (await p.Store.GetAsync<NodeSpec>(p.Store.Keys.Node(id, leader.NodeId), CancellationToken.None))!.Value;
        return (leader.NodeId, int.Parse(node.CellId["cell-".Length..], CultureInfo.InvariantCulture) - 1);
    }

    private static async Task<bool> FullAndHealthyAsync(EtcdStore store, string id, int nodes)
    {
        try
        {
            var specs = await store.ListAsync<NodeSpec>(store.Keys.Nodes(id), CancellationToken.None);
            var statuses = (await store.ListAsync<NodeStatus>(store.Keys.Statuses(id), CancellationToken.None)).Select(s => s.Value).ToList();
            var leader = await store.GetAsync<LeaderRecord>(store.Keys.Leader(id), CancellationToken.None);
            return specs.Count == nodes && leader is not null
                   && statuses.Count(s => specs.Any(n => n.Value.NodeId == s.NodeId) && s.State == NodeState.Running) == nodes
                   && statuses.Count(s => s.Role == NodeRole.Replica && s.Streaming && specs.Any(n => n.Value.NodeId == s.NodeId)) == nodes - 1;
        }
        catch (Grpc.Core.RpcException) { return false; }
    }

    private static async Task Until(Func<Task<bool>> condition, int seconds, string what)
    {
        var deadline = DateTime.UtcNow.AddSeconds(seconds);
        while (!await condition())
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"not within {seconds}s: {what}");
            await Task.Delay(200);
        }
    }

    private static async Task<(int Status, JsonObject Body)> SendAsync(HttpClient http, HttpMethod method, string path, string? body = null)
    {
        using var request = new HttpRequestMessage(method, path);
        if (body is not null) request.Content = new StringContent(body, Encoding.UTF8, "application/json");
        if (path.StartsWith("/admin", StringComparison.Ordinal)) request.Headers.Authorization = TestPlatform.AdminAuthorization; // the operator's credentials
        using var response = await http.SendAsync(request);
        var text = await response.Content.ReadAsStringAsync();
        return ((int)response.StatusCode, text.Length == 0 ? new JsonObject() : JsonNode.Parse(text) as JsonObject ?? new JsonObject());
    }

    private static async Task<int> TrySendAsync(HttpClient http, HttpMethod method, string path)
    {
        try { return (await SendAsync(http, method, path)).Status; }
        catch (HttpRequestException) { return 0; }
        catch (TaskCanceledException) { return 0; }
    }

    private static async Task ProvisionAsync(HttpClient http, string id, string planId, object? parameters = null, bool wait = true)
    {
        var (status, body) = await SendAsync(http, HttpMethod.Put, $"/v2/service_instances/{id}?accepts_incomplete=true", TestPlatform.ProvisionBody(planId, parameters));
        Assert.True(status == 202, $"provision of {id} answered {status}: {body.ToJsonString()}");
        if (!wait) return;
        var final = await WaitForOperationAsync(http, id, TimeSpan.FromSeconds(180));
        Assert.True((string?)final["state"] == "succeeded", $"provision of {id} ended {final.ToJsonString()}");
    }

    private static async Task<JsonObject> WaitForOperationAsync(HttpClient http, string id, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        JsonObject last = new();
        while (DateTime.UtcNow < deadline)
        {
            var (status, body) = await SendAsync(http, HttpMethod.Get, $"/v2/service_instances/{id}/last_operation");
            Assert.True(status == 200, $"last_operation of {id} answered {status}: {body.ToJsonString()}");
            last = body;
            if ((string?)body["state"] != "in progress") return body;
            await Task.Delay(250);
        }
        throw new TimeoutException($"operation on {id} still in progress after {timeout}: {last.ToJsonString()}");
    }

    private static async Task<JsonObject> BindAsync(HttpClient http, string id, string bindingId, string planId)
    {
        var body = new JsonObject { ["service_id"] = Catalog.ServiceId, ["plan_id"] = planId, ["app_guid"] = "app-1" }.ToJsonString();
        var (status, json) = await SendAsync(http, HttpMethod.Put, $"/v2/service_instances/{id}/service_bindings/{bindingId}", body);
        Assert.True(status == 201, $"bind answered {status}: {json.ToJsonString()}");
        return json["credentials"]!.AsObject();
    }
}

/// <summary>
/// Three hosts in namespaces with the platform of docs/deploy.md: an etcd member on each (one cluster), brokers on
/// hosts 0 and 1, a cell and router on each; seeds and endpoints list every host; Akka remoting is mutual TLS with a
/// certificate per host from a CA of the run's own (as deploy/three-hosts.sh makes them). Processes that exit are started
/// again (as systemd would) unless their host was killed. Disposal kills everything by pid, deletes the namespaces,
/// the data and the keys; the logs stay in /tmp/dingo-test-logs.
/// </summary>
public sealed class ThreeHosts : IAsyncDisposable
{
    private const string Username = TestPlatform.Username;
    private readonly ITestOutputHelper _output;
    private readonly string _etcdRoot = Path.Combine(EtcdForTests.DataRoot, $"dingo-3h-etcd-{Guid.NewGuid():N}"[..30]);
    private readonly Dictionary<(int Host, string Role), Process> _running = new();
    private readonly HashSet<int> _down = new();
    private readonly object _gate = new();
    private readonly CancellationTokenSource _stop = new();
    private readonly Security.TestCertificates _akkaCa = new("akka-ca");
    private readonly AkkaTlsSettings[] _hostTls;
    private Task? _supervisor;

    private ThreeHosts(NetnsHosts hosts, DingoSettings settings, ITestOutputHelper output)
    {
        Hosts = hosts;
        Settings = settings;
        _output = output;
        // One certificate per host, shared by its broker and cell (deploy/akka-certs.sh), and one for the test's console.
        _hostTls = Enumerable.Range(0, 3).Select(i => _akkaCa.IssuePem($"host-{i + 1}")).ToArray();
        ConsoleTls = _akkaCa.IssuePem("console");
        Store = new EtcdStore(Enumerable.Range(0, 3).Select(EtcdUrl).ToList(), settings.EtcdPrefix);
    }

    public NetnsHosts Hosts { get; }
    public DingoSettings Settings { get; }
    public EtcdStore Store { get; }
    /// <summary>The test console's Akka certificate (the platform CA's, as an operator's host would have).</summary>
    public AkkaTlsSettings ConsoleTls { get; }

    public string EtcdUrl(int i) => $"http://{Hosts.HostAddress(i)}:2379";
    private string Endpoints => string.Join(",", Enumerable.Range(0, 3).Select(EtcdUrl));
    private string Seeds => string.Join(",", new[] { (0, 4053), (1, 4053), (0, 4054), (1, 4054), (2, 4054) }.Select(s => $"akka.ssl.tcp://dingo@{Hosts.HostAddress(s.Item1)}:{s.Item2}"));
    public Uri BrokerUrl(int i) => new($"http://{Hosts.HostAddress(i)}:8080");

    public static async Task<ThreeHosts> StartAsync(ITestOutputHelper output, string extra)
    {
        var hosts = await NetnsHosts.CreateAsync(3, keepLogs: true);
        ThreeHosts? p = null;
        try
        {
            var endpoints = string.Join(",", Enumerable.Range(0, 3).Select(i => $"http://{hosts.HostAddress(i)}:2379"));
            var settings = TestPlatform.NewSettings(extra: extra, etcdEndpoint: endpoints.Split(',')[0]);
            p = new ThreeHosts(hosts, settings, output);
            for (var i = 0; i < 3; i++) p.StartEtcd(i, "new");
            await Eventually.UntilAsync(async () =>
            {
                try { await p.Store.PutStringAsync(settings.EtcdPrefix + "/probe", "1", CancellationToken.None); return true; }
                catch (Grpc.Core.RpcException) { return false; }
            }, TimeSpan.FromSeconds(30), "the three-member etcd cluster accepts writes");
            for (var i = 0; i < 2; i++)
            {
                p.StartBroker(i);
                using var http = p.Broker(i);
                var url = p.BrokerUrl(i);
                await Eventually.UntilAsync(async () =>
                {
                    try { return (await http.GetAsync("/healthz")).IsSuccessStatusCode; }
                    catch (HttpRequestException) { return false; }
                    catch (TaskCanceledException) { return false; }
                }, TimeSpan.FromSeconds(60), $"the broker on {url} answers");
            }
            for (var i = 0; i < 3; i++) p.StartCell(i);
            await Eventually.UntilAsync(async () => (await p.Store.ListAsync<CellInfo>(p.Store.Keys.Cells, CancellationToken.None)).Count == 3,
                TimeSpan.FromSeconds(60), "the three cells registered");
            p._supervisor = Task.Run(() => p.SuperviseAsync(p._stop.Token));
            return p;
        }
        catch
        {
            if (p is not null) await p.DisposeAsync();
            else await hosts.DisposeAsync();
            throw;
        }
    }

    public HttpClient Broker(int i)
    {
        var http = new HttpClient { BaseAddress = BrokerUrl(i), Timeout = TimeSpan.FromSeconds(10) };
        http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Basic", Convert.ToBase64String(Encoding.UTF8.GetBytes($"{Username}:{TestPlatform.Password}")));
        http.DefaultRequestHeaders.Add("X-Broker-API-Version", "2.17");
        return http;
    }

    private void StartEtcd(int i, string state = "existing")
    {
        var a = Hosts.HostAddress(i);
        var initial = string.Join(",", Enumerable.Range(0, 3).Select(n => $"h{n}=http://{Hosts.HostAddress(n)}:2380"));
        var (etcdFile, etcdArgs) = EtcdForTests.Command(
        [
            "--name", $"h{i}", "--data-dir", Path.Combine(_etcdRoot, $"h{i}"),
            "--listen-client-urls", $"http://{a}:2379", "--advertise-client-urls", $"http://{a}:2379",
            "--listen-peer-urls", $"http://{a}:2380", "--initial-advertise-peer-urls", $"http://{a}:2380",
            "--initial-cluster", initial, "--initial-cluster-state", state, "--initial-cluster-token", Path.GetFileName(_etcdRoot),
            // Pre-vote: a member cut off and healed must not depose the leader with the terms it ran up alone (etcd 3.4
            // leaves it off): that election left etcd leaderless for ~2 s right after the heal and fenced the new primary.
            "--heartbeat-interval", "100", "--election-timeout", "1000", "--pre-vote", "--log-level", "warn",
        ]);
        Track(i, "etcd", Hosts.Start(i, etcdFile, etcdArgs));
    }

    private void StartBroker(int i) => Track(i, "broker", Hosts.Start(i, DotnetHost(),
        [Path.Combine(AppContext.BaseDirectory, "Dingo.Broker.dll"), .. Configs(i)],
        new Dictionary<string, string>(Common(i)) { ["DINGO_AKKA_PORT"] = "4053", ["DINGO_BROKER_URL"] = BrokerUrl(i).ToString().TrimEnd('/') }));

    private void StartCell(int i) => Track(i, "cell", Hosts.Start(i, DotnetHost(),
        [TestPlatform.CellDll, .. Configs(i)],
        new Dictionary<string, string>(Common(i))
        {
            ["DINGO_AKKA_PORT"] = "4054", ["DINGO_CELL_ID"] = $"cell-{i + 1}", ["DINGO_CELL_ZONE"] = $"z{i + 1}", ["DINGO_CELL_ADDRESS"] = Hosts.HostAddress(i),
            // The test's samplers log in as the superuser from the host side of the bridge, which is no cell.
            ["DINGO_CELL_ADMIN_NETWORKS"] = Hosts.BridgeAddress,
        }));

    private string[] Configs(int i)
    {
        var conf = Path.Combine(Settings.DataDir, $"host-{i}.conf");
        File.WriteAllText(conf, $"dingo.router.bind-address = \"{Hosts.HostAddress(i)}\"\n");
        return ["--config", Path.Combine(TestPlatform.RepoRoot(), "hocon", "dingo.conf"), "--config", Path.Combine(Settings.DataDir, "test.conf"), "--config", conf];
    }

    private Dictionary<string, string> Common(int i) => new()
    {
        ["DINGO_ETCD_ENDPOINTS"] = Endpoints,
        ["DINGO_AKKA_SEEDS"] = Seeds,
        ["DINGO_AKKA_HOSTNAME"] = Hosts.HostAddress(i),
        ["DINGO_AKKA_TLS_CA"] = _hostTls[i].Ca,
        ["DINGO_AKKA_TLS_CERTIFICATE"] = _hostTls[i].Certificate,
        ["DINGO_AKKA_TLS_KEY"] = _hostTls[i].Key,
        ["DINGO_DATA_DIR"] = Settings.DataDir,
        ["DINGO_BINDING_HOST"] = Hosts.HostAddress(0),
    };

    private void Track(int host, string role, Process process)
    {
        lock (_gate) _running[(host, role)] = process;
    }

    /// <summary>What systemd's Restart= does: a broker or cell that exits on a host that is up starts again.</summary>
    private async Task SuperviseAsync(CancellationToken ct)
    {
        while (!ct.IsCancellationRequested)
        {
            try { await Task.Delay(1000, ct); } catch (OperationCanceledException) { return; }
            List<(int Host, string Role)> exited;
            lock (_gate) exited = _running.Where(r => !_down.Contains(r.Key.Host) && r.Value.HasExited).Select(r => r.Key).ToList();
            foreach (var (host, role) in exited)
            {
                _output.WriteLine($"{DateTime.UtcNow:HH:mm:ss.fff} {role} on host {host} exited; starting it again");
                try
                {
                    switch (role)
                    {
                        case "etcd": StartEtcd(host); break;
                        case "broker": StartBroker(host); break;
                        case "cell": StartCell(host); break;
                    }
                }
                catch (ObjectDisposedException) { return; }
            }
        }
    }

    /// <summary>Stops the newest process of this role on host i (SIGSTOP) for <paramref name="time"/>, then lets it go on
    /// (SIGCONT): a process that stalls, as one starved of CPU or paused by the kernel does.</summary>
    public async Task StallAsync(int host, string role, TimeSpan time)
    {
        Process process;
        lock (_gate) process = _running[(host, role)];
        Assert.Equal(0, kill(process.Id, 19));
        try { await Task.Delay(time); }
        finally { Assert.Equal(0, kill(process.Id, 18)); }
    }

    [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)]
    private static extern int kill(int pid, int sig);

    /// <summary>The log of the newest process of this role on host i.</summary>
    public async Task<string> ReadLogAsync(int host, string role)
    {
        Process process;
        lock (_gate) process = _running[(host, role)];
        await using var stream = new FileStream(Hosts.LogPath(process), FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        using var reader = new StreamReader(stream);
        return await reader.ReadToEndAsync();
    }

    /// <summary>SIGKILL of everything in host i's namespace at once; its processes stay down until <see cref="StartHost"/>.</summary>
    public async Task KillHostAsync(int i)
    {
        lock (_gate) _down.Add(i);
        await Hosts.KillHostAsync(i);
    }

    /// <summary>The host's processes start again, on their data (etcd rejoins from its data folder).</summary>
    public void StartHost(int i)
    {
        StartEtcd(i);
        if (i < 2) StartBroker(i);
        StartCell(i);
        lock (_gate) _down.Remove(i);
    }

    private static string DotnetHost() =>
        Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } path && File.Exists(path) ? path
        : Path.GetFileNameWithoutExtension(Environment.ProcessPath) == "dotnet" ? Environment.ProcessPath! : "dotnet";

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        if (_supervisor is not null) await _supervisor;
        var logs = Path.Combine(Path.GetTempPath(), "dingo-test-logs");
        try
        {
            Directory.CreateDirectory(logs);
            foreach (var log in Directory.Exists(Hosts.LogDirectory) ? Directory.GetFiles(Hosts.LogDirectory) : [])
                File.Copy(log, Path.Combine(logs, $"three-hosts-{Hosts.Id}-{Path.GetFileName(log)}"), overwrite: true);
        }
        catch (IOException ex) { _output.WriteLine($"keeping logs: {ex.Message}"); }
        // Keys go while etcd still runs; then every process in the namespaces, the namespaces, the data.
        try { await Store.DeletePrefixAsync(Settings.EtcdPrefix + "/", CancellationToken.None); }
        catch (Grpc.Core.RpcException ex) { _output.WriteLine($"deleting keys: {ex.Status.Detail}"); }
        await Store.DisposeAsync();
        try { await Hosts.DisposeAsync(); }
        finally
        {
            try { Directory.Delete(Hosts.LogDirectory, recursive: true); } catch (DirectoryNotFoundException) { }
            for (var attempt = 0; attempt < 5 && Directory.Exists(Settings.DataDir); attempt++)
            {
                try { Directory.Delete(Settings.DataDir, recursive: true); }
                catch (IOException) { await Task.Delay(300); }
            }
            try { Directory.Delete(_etcdRoot, recursive: true); } catch (DirectoryNotFoundException) { }
            _akkaCa.Dispose();
            _stop.Dispose();
        }
    }
}
