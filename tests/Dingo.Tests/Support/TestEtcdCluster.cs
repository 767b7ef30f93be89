using System.Diagnostics;
using Dingo.Store;

namespace Dingo.Tests.Support;

/// <summary>
/// A three-member etcd cluster of a test's own, on free loopback ports; members can be killed (SIGKILL) and
/// started again. Every process is stopped by PID and every data folder removed on dispose.
/// </summary>
public sealed class TestEtcdCluster : IAsyncDisposable
{
    private readonly (int Client, int Peer)[] _ports;
    private readonly Process?[] _processes;
    private readonly string _root = Path.Combine(EtcdForTests.DataRoot, $"dingo-etcd-cluster-{Guid.NewGuid():N}");

    private TestEtcdCluster(int members)
    {
        _ports = Enumerable.Range(0, members).Select(_ => (FreePorts.One(), FreePorts.One())).ToArray();
        _processes = new Process?[members];
    }

    public IReadOnlyList<string> ClientUrls => _ports.Select(p => $"http://127.0.0.1:{p.Client}").ToList();

    public static async Task<TestEtcdCluster> StartAsync(int members = 3)
    {
        var cluster = new TestEtcdCluster(members);
        try
        {
            for (var i = 0; i < members; i++) cluster.Start(i, "new");
            await using var store = new EtcdStore(cluster.ClientUrls, "/probe");
            await Eventually.UntilAsync(async () =>
            {
                try { await store.PutStringAsync("/probe/x", "1", CancellationToken.None); return true; }
                catch (Grpc.Core.RpcException) { return false; }
            }, TimeSpan.FromSeconds(30), "the etcd cluster accepts writes");
            return cluster;
        }
        catch
        {
            await cluster.DisposeAsync();
            throw;
        }
    }

    private string Name(int i) => $"m{i}";

    public void Start(int i, string state = "existing")
    {
        var initial = string.Join(",", _ports.Select((p, n) => $"{Name(n)}=http://127.0.0.1:{p.Peer}"));
        var (etcdFile, etcdArgs) = EtcdForTests.Command(
        [
            "--name", Name(i), "--data-dir", Path.Combine(_root, Name(i)),
            "--listen-client-urls", $"http://127.0.0.1:{_ports[i].Client}", "--advertise-client-urls", $"http://127.0.0.1:{_ports[i].Client}",
            "--listen-peer-urls", $"http://127.0.0.1:{_ports[i].Peer}", "--initial-advertise-peer-urls", $"http://127.0.0.1:{_ports[i].Peer}",
            "--initial-cluster", initial, "--initial-cluster-state", state, "--initial-cluster-token", Path.GetFileName(_root),
            "--heartbeat-interval", "100", "--election-timeout", "500", "--pre-vote", "--log-level", "error",
        ]);
        var process = RunProcesses.Start(etcdFile, etcdArgs);
        _processes[i] = process;
    }

    /// <summary>Which member is the raft leader now (etcdctl endpoint status).</summary>
    public async Task<int> LeaderIndexAsync()
    {
        var psi = new ProcessStartInfo("etcdctl") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { "--endpoints", string.Join(",", ClientUrls), "endpoint", "status", "-w", "json" }) psi.ArgumentList.Add(a);
        psi.Environment["ETCDCTL_API"] = "3";
        using var p = Process.Start(psi) ?? throw new InvalidOperationException("could not start etcdctl");
        var json = await p.StandardOutput.ReadToEndAsync();
        await p.WaitForExitAsync();
        using var doc = System.Text.Json.JsonDocument.Parse(json);
        foreach (var e in doc.RootElement.EnumerateArray())
        {
            var header = e.GetProperty("Status").GetProperty("header");
            if (header.GetProperty("member_id").GetUInt64() == e.GetProperty("Status").GetProperty("leader").GetUInt64())
                return ClientUrls.ToList().IndexOf(e.GetProperty("Endpoint").GetString()!);
        }
        throw new InvalidOperationException($"no leader in: {json}");
    }

    /// <summary>The process id of a running member (to stop and continue it).</summary>
    public int Pid(int i) => _processes[i]?.Id ?? throw new InvalidOperationException($"member {i} is not running");

    /// <summary>kill -9 of one member.</summary>
    public void Kill(int i)
    {
        var p = _processes[i];
        _processes[i] = null;
        if (p is null) return;
        try { p.Kill(); p.WaitForExit(5000); } catch (InvalidOperationException) { }
        p.Dispose();
    }

    public ValueTask DisposeAsync()
    {
        for (var i = 0; i < _processes.Length; i++) Kill(i);
        try { Directory.Delete(_root, recursive: true); } catch (DirectoryNotFoundException) { }
        return ValueTask.CompletedTask;
    }
}
