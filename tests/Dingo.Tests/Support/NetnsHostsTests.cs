using System.Diagnostics;
using System.Net.Sockets;

namespace Dingo.Tests.Support;

/// <summary>The simulated-hosts harness on real network namespaces. Needs root; fails (not skips) otherwise,
/// so a machine that cannot run the multi-host tests is noticed.</summary>
[SuiteCost(11)]
public class NetnsHostsTests
{
    private const int Port = 8080; // each host is a namespace of its own, so a fixed port cannot clash
    private static readonly TimeSpan Short = TimeSpan.FromSeconds(2);

    private static async Task<NetnsHosts> NewHostsAsync(int count, CancellationToken ct)
    {
        Assert.True(NetnsHosts.Supported(out var reason), "network namespaces unavailable: " + reason);
        return await NetnsHosts.CreateAsync(count, ct: ct);
    }

    /// <summary>
    /// A directory-listing HTTP server on host i. Not `python3 -m http.server`: its HTTPServer calls
    /// getfqdn() on the bind address, a reverse DNS lookup sent to the machine's resolver, outside the hosts.
    /// </summary>
    private static Process StartHttpServer(NetnsHosts hosts, int i) =>
        hosts.Start(i, "python3",
        [
            "-c",
            "import sys, socketserver, http.server as h; socketserver.TCPServer.allow_reuse_address = True; " +
            "socketserver.TCPServer((sys.argv[1], int(sys.argv[2])), h.SimpleHTTPRequestHandler).serve_forever()",
            hosts.HostAddress(i), Port.ToString(),
        ]);

    private static string Url(NetnsHosts hosts, int i) => $"http://{hosts.HostAddress(i)}:{Port}/";

    /// <summary>curl from host `from` to host `to`'s server; --noproxy so nothing is sent to a proxy.</summary>
    private static async Task<bool> CurlAsync(NetnsHosts hosts, int from, int to, CancellationToken ct)
    {
        var (code, _) = await hosts.RunAsync(from, "curl",
            ["-sS", "-o", "/dev/null", "--noproxy", "*", "--connect-timeout", "2", "--max-time", "3", Url(hosts, to)],
            TimeSpan.FromSeconds(5), ct);
        return code == 0;
    }

    private static async Task WaitUntilAsync(Func<Task<bool>> condition, TimeSpan timeout, string what, CancellationToken ct)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (!await condition())
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"{what} not within {timeout}");
            await Task.Delay(100, ct);
        }
    }

    /// <summary>Connects from the test process (root namespace) with a short timeout.</summary>
    private static async Task<bool> RootCanConnectAsync(string address, CancellationToken ct)
    {
        using var client = new TcpClient();
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        cts.CancelAfter(Short);
        try
        {
            await client.ConnectAsync(address, Port, cts.Token);
            return true;
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested) { return false; }
        catch (SocketException) { return false; }
    }

    [Fact]
    public async Task Hosts_reach_each_other_and_the_root_namespace_reaches_them_through_the_bridge()
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        await using var hosts = await NewHostsAsync(2, cts.Token);
        Assert.Matches(@"^10\.213\.\d+\.1$", hosts.BridgeAddress);
        Assert.Equal(hosts.BridgeAddress[..^1] + "10", hosts.HostAddress(0));

        var server = StartHttpServer(hosts, 0);
        await WaitUntilAsync(() => CurlAsync(hosts, 1, 0, cts.Token), TimeSpan.FromSeconds(10), "host 1 fetching from host 0", cts.Token);

        // UseProxy = false: the request must go to the namespace, never to a proxy elsewhere.
        using var http = new HttpClient(new HttpClientHandler { UseProxy = false }) { Timeout = Short };
        var body = await http.GetStringAsync(Url(hosts, 0), cts.Token);
        Assert.Contains("Directory listing", body);

        // The server's own log (stderr) reaches its log file.
        await WaitUntilAsync(async () => (await File.ReadAllTextAsync(hosts.LogPath(server), cts.Token)).Contains("\"GET / HTTP"),
            TimeSpan.FromSeconds(5), "the request in the server's log", cts.Token);

        // Host 0's address lives on its eth0, and not in the root namespace.
        var (code, output) = await hosts.RunAsync(0, NetnsHosts.IpPath, ["-4", "-o", "addr", "show", "dev", "eth0"], Short, cts.Token);
        Assert.Equal(0, code);
        Assert.Contains(hosts.HostAddress(0) + "/24", output);
        var root = await NetnsHosts.RunCommandAsync(NetnsHosts.IpPath, ["-4", "-o", "addr", "show"], cts.Token);
        Assert.DoesNotContain(hosts.HostAddress(0) + "/", root.Out);

        // Nothing beyond the subnet is routable from a host (a routing-table query: no packet is sent).
        var toBridge = await NetnsHosts.RunCommandAsync(NetnsHosts.IpPath, ["-n", hosts.Namespace(1), "route", "get", hosts.BridgeAddress], cts.Token);
        Assert.Contains("dev eth0", toBridge.Out);
        var outside = await NetnsHosts.RunCommandAsync(NetnsHosts.IpPath, ["-n", hosts.Namespace(1), "route", "get", "203.0.113.1"], cts.Token);
        Assert.NotEqual(0, outside.Code);
        Assert.Contains("No route to host", outside.Err); // the `unreachable default` route
    }

    [Fact]
    public async Task Partitioned_host_is_unreachable_until_healed()
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        await using var hosts = await NewHostsAsync(2, cts.Token);
        StartHttpServer(hosts, 0);
        await WaitUntilAsync(() => CurlAsync(hosts, 1, 0, cts.Token), TimeSpan.FromSeconds(10), "host 0's server", cts.Token);

        await hosts.PartitionAsync(0, cts.Token);
        var fromHost = CurlAsync(hosts, 1, 0, cts.Token);
        var fromRoot = RootCanConnectAsync(hosts.HostAddress(0), cts.Token);
        Assert.False(await fromHost, "host 1 still reaches the partitioned host 0");
        Assert.False(await fromRoot, "the root namespace still reaches the partitioned host 0");

        await hosts.HealAsync(0, cts.Token);
        await WaitUntilAsync(() => CurlAsync(hosts, 1, 0, cts.Token), TimeSpan.FromSeconds(5), "host 1 reaching healed host 0", cts.Token);
        Assert.True(await RootCanConnectAsync(hosts.HostAddress(0), cts.Token));
    }

    [Fact]
    public async Task KillHost_kills_every_process_in_the_namespace_and_only_there()
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        await using var hosts = await NewHostsAsync(2, cts.Token);
        var sleeper = hosts.Start(0, "sleep", ["300"]);
        // setsid and a background job: processes in the namespace that the harness did not start itself.
        var shell = hosts.Start(0, "bash", ["-c", "setsid sleep 301 & sleep 302 & wait"]);
        var other = hosts.Start(1, "sleep", ["300"]);
        await WaitUntilAsync(async () => (await hosts.PidsAsync(0, cts.Token)).Count >= 4, TimeSpan.FromSeconds(5), "4 processes on host 0", cts.Token);

        await hosts.KillHostAsync(0, cts.Token);

        Assert.True(sleeper.HasExited);
        Assert.True(shell.HasExited);
        Assert.Empty(await hosts.PidsAsync(0, cts.Token));
        Assert.False(other.HasExited);
        Assert.Contains(other.Id, await hosts.PidsAsync(1, cts.Token));

        // The host can be "rebooted": the namespace is still there for new processes.
        var again = hosts.Start(0, "sleep", ["300"]);
        await WaitUntilAsync(async () => (await hosts.PidsAsync(0, cts.Token)).Contains(again.Id), Short, "a new process on host 0", cts.Token);
    }

    [Fact]
    public async Task Dispose_removes_processes_namespaces_veths_and_bridge_and_is_idempotent()
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        var hosts = await NewHostsAsync(2, cts.Token);
        var sleeper = hosts.Start(1, "sleep", ["300"]);
        var namespaces = new[] { hosts.Namespace(0), hosts.Namespace(1) };
        var links = new[] { hosts.BridgeName, hosts.BridgePort(0), hosts.BridgePort(1) };
        var logs = hosts.LogDirectory;
        Assert.True(Directory.Exists(logs));

        await hosts.DisposeAsync();

        Assert.True(sleeper.HasExited);
        var list = await NetnsHosts.RunCommandAsync(NetnsHosts.IpPath, ["netns", "list"], cts.Token);
        Assert.Equal(0, list.Code);
        foreach (var ns in namespaces) Assert.DoesNotContain(ns, list.Out);
        foreach (var link in links)
        {
            var show = await NetnsHosts.RunCommandAsync(NetnsHosts.IpPath, ["link", "show", link], cts.Token);
            Assert.NotEqual(0, show.Code);
        }
        Assert.False(Directory.Exists(logs));

        await hosts.DisposeAsync();
        Assert.Throws<ObjectDisposedException>(() => hosts.Start(0, "true", []));
    }

    [Fact]
    public async Task Parallel_harnesses_get_distinct_subnets_and_names()
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        Assert.True(NetnsHosts.Supported(out var reason), "network namespaces unavailable: " + reason);
        var creating = Enumerable.Range(0, 3).Select(k => NetnsHosts.CreateAsync(1, defaultViaBridge: k == 0, ct: cts.Token)).ToList();
        try
        {
            var created = await Task.WhenAll(creating);
            Assert.Equal(3, created.Select(h => h.Subnet).Distinct().Count());
            Assert.Equal(3, created.Select(h => h.BridgeName).Distinct().Count());
            Assert.Equal(3, created.Select(h => h.Namespace(0)).Distinct().Count());
            Assert.All(created, h => Assert.InRange(h.BridgeName.Length, 1, 15));

            // The opt-in default route goes via the bridge (a routing-table query: no packet is sent).
            var route = await NetnsHosts.RunCommandAsync(NetnsHosts.IpPath, ["-n", created[0].Namespace(0), "route", "get", "203.0.113.1"], cts.Token);
            Assert.Contains($"via {created[0].BridgeAddress} dev eth0", route.Out);
        }
        finally
        {
            // Also those that succeeded when another failed.
            foreach (var t in creating.Where(t => t.IsCompletedSuccessfully)) await (await t).DisposeAsync();
        }
    }
}
