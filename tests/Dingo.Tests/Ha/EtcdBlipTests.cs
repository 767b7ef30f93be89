using Dingo.Model;
using Dingo.Tests.Support;
using Xunit.Abstractions;
using static Dingo.Tests.Ha.WritableSampler;

namespace Dingo.Tests.Ha;

/// <summary>
/// An etcd blip under a writer (every 20 ms through the router) on real processes: an etcd of this test's own, SIGKILLed
/// and started again a second later. The cluster's members still reach each other, so the primary keeps serving in
/// failsafe mode: no failover, no fencing, never two writable nodes, nothing lost.
/// </summary>
[SuiteCost(76)]
public sealed class EtcdBlipTests(ITestOutputHelper output)
{
    [Fact]
    public async Task An_etcd_restart_takes_no_database_away()
    {
        await using var etcd = await TestEtcdCluster.StartAsync(members: 1);
        await using var platform = await TestPlatform.StartAsync(cells: 0,
            TestPlatform.NewSettings(extra: "dingo.ha { ttl = 4s, loop-wait = 500ms, rewind-after = 4s, lost-cell-grace = 300s }", etcdEndpoint: etcd.ClientUrls[0]),
            ownsData: true);
        await platform.StartCellProcessesAsync(1, 2, 3);
        var store = platform.Store;
        var id = "eb-" + Guid.NewGuid().ToString("N")[..8];
        await platform.ProvisionReadyAsync(id, Catalog.ClusterHaPlanId);
        await Eventually.UntilAsync(() => FailoverTests.FullAndHealthyAsync(platform, id, 3), TimeSpan.FromSeconds(90), "3 nodes, 2 streaming");
        var record = (await store.GetAsync<InstanceRecord>(store.Keys.Instance(id), CancellationToken.None))!.Value;
        var specs = (await store.ListAsync<NodeSpec>(store.Keys.Nodes(id), CancellationToken.None)).Select(n => n.Value).ToList();
        var primary = (await store.GetAsync<LeaderRecord>(store.Keys.Leader(id), CancellationToken.None))!.Value.NodeId;
        var creds = await platform.BindAsync(id, "w", Catalog.ClusterHaPlanId);
        await using var writer = new Writer(TestPlatform.ConnectionStringFromUri((string)creds["uri"]!), TimeSpan.FromMilliseconds(20));
        await writer.CreateTableAsync();
        writer.Start();
        await using var sampler = new WritableSampler(specs.Select(s => new Target(s.NodeId, "127.0.0.1", s.Port)), record.Superuser);
        // The failsafe endpoint is no open door: an ask not signed with the instance's key makes no replica promise
        // anything (403). The signed asks of the real primary are what carry it through the 8 s hang below.
        using (var http = new HttpClient { Timeout = TimeSpan.FromSeconds(5) })
            foreach (var replica in specs.Where(s => s.NodeId != primary))
            {
                using var forged = await http.PostAsync($"http://127.0.0.1:{replica.ApiPort}/failsafe?leader={primary}&nonce=00&proof={new string('0', 64)}", null);
                Assert.Equal(System.Net.HttpStatusCode.Forbidden, forged.StatusCode);
            }
        await Task.Delay(2000);

        // SIGKILL, and started again a second later.
        var killedAt = DateTime.UtcNow;
        etcd.Kill(0);
        await Task.Delay(1000);
        etcd.Start(0);
        await Task.Delay(8000);
        var stall1 = writer.LongestStall(killedAt, DateTime.UtcNow);
        output.WriteLine($"etcd SIGKILLed and restarted after 1 s: longest commit stall {stall1.TotalSeconds:0.00}s");
        var leaderAfterRestart = (await store.GetAsync<LeaderRecord>(store.Keys.Leader(id), CancellationToken.None))?.Value.NodeId;

        // Hung for 8 s (SIGSTOP, then SIGCONT): every member still reaches the primary, which keeps serving (failsafe).
        var stoppedAt = DateTime.UtcNow;
        _ = kill(etcd.Pid(0), 19); // SIGSTOP
        try { await Task.Delay(8000); }
        finally { _ = kill(etcd.Pid(0), 18); } // SIGCONT
        await Task.Delay(8000);
        var stall2 = writer.LongestStall(stoppedAt, DateTime.UtcNow);
        output.WriteLine($"etcd hung (SIGSTOP) for 8 s: longest commit stall {stall2.TotalSeconds:0.00}s");
        Console.WriteLine($"[measure] etcd blips under a cluster-ha writer every 20 ms: SIGKILL + restart after 1 s stalled commits {stall1.TotalSeconds:0.00}s, an 8 s SIGSTOP {stall2.TotalSeconds:0.00}s");

        await sampler.DisposeAsync();
        await writer.DisposeAsync();
        var leader = (await store.GetAsync<LeaderRecord>(store.Keys.Leader(id), CancellationToken.None))?.Value.NodeId;
        var statuses = await FailoverTests.StatusesAsync(platform, id);
        output.WriteLine("statuses: " + string.Join("; ", statuses.Select(s => $"{s.NodeId} {s.Role} {s.Decision}")));
        Assert.Equal(primary, leaderAfterRestart);
        Assert.Equal(primary, leader);
        // The primary never stopped accepting writes: no fencing, so no sample saw it read-only or refusing.
        Assert.DoesNotContain(sampler.Samples, s => s.NodeId == primary && s.Seen == Seen.ReadOnly);
        Assert.True(stall1 < TimeSpan.FromSeconds(2), $"commits stalled {stall1} across an etcd restart");
        Assert.True(stall2 < TimeSpan.FromSeconds(2), $"commits stalled {stall2} across an 8 s etcd hang");
        var split = AgentFaultTests.SplitMoments(sampler.Samples);
        Assert.True(split.Count == 0, "two writable nodes at: " + string.Join("; ", split.Take(5)));
        var missing = await writer.MissingAsync();
        Assert.True(missing.Count == 0, $"{missing.Count} acknowledged commits lost of {writer.Acknowledged.Count}");
    }

    [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)]
    private static extern int kill(int pid, int sig);
}
