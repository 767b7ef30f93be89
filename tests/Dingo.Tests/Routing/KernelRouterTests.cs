using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Dingo.Routing;
using Dingo.Tests.Support;
using Microsoft.Extensions.Logging.Abstractions;

namespace Dingo.Tests.Routing;

/// <summary>
/// The kernel data path against real nftables and conntrack. Traffic stays on 127.0.0.1; each test owns a table
/// of its own, deleted afterwards even when the test fails.
/// </summary>
public sealed class KernelRouterTests
{
    private static readonly IPAddress Loopback = IPAddress.Loopback;
    private static readonly TimeSpan StepTimeout = TimeSpan.FromSeconds(5);
    // The test runner's PATH does not always include /usr/sbin.
    private static readonly string NftPath = File.Exists("/usr/sbin/nft") ? "/usr/sbin/nft" : "nft";
    private static readonly string ConntrackPath = File.Exists("/usr/sbin/conntrack") ? "/usr/sbin/conntrack" : "conntrack";
    private static int _tables;

    [Fact]
    public void The_kernel_path_is_available_here()
    {
        Assert.True(KernelRouter.Available(out var reason), reason);
        Assert.DoesNotContain("dingo_probe_", Nft("list", "tables"));
    }

    [Fact]
    public void Table_names_are_sanitised_from_the_cell_id()
    {
        Assert.Equal("dingo_cell_1", KernelRouter.TableNameFor("cell-1"));
        Assert.Equal("dingo_z1_a_b", KernelRouter.TableNameFor("Z1.a b"));
    }

    [Fact]
    public async Task With_a_target_bytes_flow_through_the_kernel_not_the_fallback()
    {
        await using var table = new Table();
        await using var backend = Backend.Tagged((byte)'A');
        await using var fallback = new TcpRouter(Loopback, NullLogger.Instance);
        await using var router = new KernelRouter(Loopback, table.Name, fallback, NullLogger.Instance);
        var port = FreePorts.One();

        await router.ApplyAsync([new Route(port, "i1", backend.EndPoint)], Timeout());

        for (var i = 0; i < 3; i++)
        {
            using var client = await ConnectAsync(port);
            Assert.Equal((byte)'A', (await ReadExactlyAsync(client, 1))[0]);
            await AssertEchoAsync(client, $"through the kernel {i}");
        }
        Assert.Equal(0, fallback.Stats.AcceptedConnections);
        Assert.Equal(1, fallback.Stats.ListeningPorts);
        Assert.Contains($"tcp dport {port} dnat to {backend.EndPoint}", Nft("list", "table", "ip", table.Name));
    }

    [Fact]
    public async Task Connections_the_kernel_forwards_are_counted_for_the_metrics()
    {
        await using var table = new Table();
        await using var backend = Backend.Tagged((byte)'A');
        await using var fallback = new TcpRouter(Loopback, NullLogger.Instance);
        await using var router = new KernelRouter(Loopback, table.Name, fallback, NullLogger.Instance);
        var port = FreePorts.One();
        await router.ApplyAsync([new Route(port, "i1", backend.EndPoint)], Timeout());
        var clients = new List<Socket>();
        try
        {
            for (var i = 0; i < 3; i++)
            {
                var client = await ConnectAsync(port);
                clients.Add(client);
                Assert.Equal((byte)'A', (await ReadExactlyAsync(client, 1))[0]);
            }
            var counts = await router.ForwardedConnectionsAsync(Timeout());
            Assert.Equal(3, counts.GetValueOrDefault(port));
            var metrics = new RouterMetrics(fallback);
            metrics.Publish([new Route(port, "i1", backend.EndPoint)], new Dictionary<string, DateTime>(), counts);
            Assert.Equal(3, metrics.OpenConnections(port));
            Assert.Contains($"dingo_router_open_connections{{service_instance=\"i1\",port=\"{port}\",role=\"primary\"}} 3", await metrics.RenderAsync(Timeout()));
        }
        finally
        {
            foreach (var c in clients) c.Dispose();
        }
    }

    [Fact]
    public async Task Without_a_target_the_fallback_holds_the_client_until_a_target_appears()
    {
        await using var table = new Table();
        await using var backend = Backend.Tagged((byte)'A');
        await using var fallback = new TcpRouter(Loopback, NullLogger.Instance, TimeSpan.FromSeconds(4));
        await using var router = new KernelRouter(Loopback, table.Name, fallback, NullLogger.Instance);
        var port = FreePorts.One();

        await router.ApplyAsync([new Route(port, "i1", null)], Timeout());
        Assert.DoesNotContain($"dport {port}", Nft("list", "table", "ip", table.Name));

        using var waiting = await ConnectAsync(port);
        await WaitUntilAsync(() => fallback.Stats.OpenConnections == 1);
        Assert.Equal(1, fallback.Stats.AcceptedConnections);

        await router.ApplyAsync([new Route(port, "i1", backend.EndPoint)], Timeout());
        // As if the held connection began before connection tracking was on: its next packet is picked up by
        // conntrack mid-stream and must not be translated to the target (which would reset it).
        Conntrack("-D", "-p", "tcp", "--orig-port-dst", port.ToString(CultureInfo.InvariantCulture));

        // The held connection is linked by the fallback; new ones go through the kernel.
        Assert.Equal((byte)'A', (await ReadExactlyAsync(waiting, 1))[0]);
        await AssertEchoAsync(waiting, "served after the wait");
        using var fresh = await ConnectAsync(port);
        Assert.Equal((byte)'A', (await ReadExactlyAsync(fresh, 1))[0]);
        Assert.Equal(1, fallback.Stats.AcceptedConnections);
        Assert.Equal(0, fallback.Stats.NoTargetClosures);
    }

    [Fact]
    public async Task A_leader_change_cuts_sessions_to_the_old_target_and_sends_new_ones_to_the_new()
    {
        await using var table = new Table();
        await using var a = Backend.Tagged((byte)'A');
        await using var b = Backend.Tagged((byte)'B');
        await using var fallback = new TcpRouter(Loopback, NullLogger.Instance);
        await using var router = new KernelRouter(Loopback, table.Name, fallback, NullLogger.Instance);
        var port = FreePorts.One();
        var other = FreePorts.One();
        await router.ApplyAsync([new Route(port, "i1", a.EndPoint), new Route(other, "i2", a.EndPoint)], Timeout());

        using var old = await ConnectAsync(port);
        Assert.Equal((byte)'A', (await ReadExactlyAsync(old, 1))[0]);
        using var untouched = await ConnectAsync(other);
        Assert.Equal((byte)'A', (await ReadExactlyAsync(untouched, 1))[0]);

        await router.ApplyAsync([new Route(port, "i1", b.EndPoint), new Route(other, "i2", a.EndPoint)], Timeout());
        var watch = Stopwatch.StartNew();

        // Its conntrack entry is gone: the next packet is translated to the new target, which resets it.
        await old.SendAsync("q"u8.ToArray(), SocketFlags.None, Timeout());
        Assert.True(await EndsWithinAsync(old, TimeSpan.FromSeconds(1)), "session to the old target stayed open");
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(1), $"cut after {watch.Elapsed}");

        using var fresh = await ConnectAsync(port);
        Assert.Equal((byte)'B', (await ReadExactlyAsync(fresh, 1))[0]);
        await AssertEchoAsync(fresh, "new leader");
        // Another port to the same old target keeps its sessions.
        await AssertEchoAsync(untouched, "other port unaffected");
        Assert.Equal(0, fallback.Stats.AcceptedConnections);
    }

    [Fact]
    public async Task A_removed_route_loses_its_rule_and_sessions_and_the_port_refuses()
    {
        await using var table = new Table();
        await using var backend = Backend.Tagged((byte)'A');
        await using var fallback = new TcpRouter(Loopback, NullLogger.Instance);
        await using var router = new KernelRouter(Loopback, table.Name, fallback, NullLogger.Instance);
        var port = FreePorts.One();
        var kept = FreePorts.One();
        await router.ApplyAsync([new Route(port, "i1", backend.EndPoint), new Route(kept, "i2", backend.EndPoint)], Timeout());

        using var open = await ConnectAsync(port);
        Assert.Equal((byte)'A', (await ReadExactlyAsync(open, 1))[0]);

        await router.ApplyAsync([new Route(kept, "i2", backend.EndPoint)], Timeout());

        var listing = Nft("list", "table", "ip", table.Name);
        Assert.DoesNotContain($"dport {port} ", listing);
        Assert.Contains($"dport {kept} ", listing);
        Assert.Equal(1, fallback.Stats.ListeningPorts);

        var refused = await Assert.ThrowsAsync<SocketException>(() => ConnectAsync(port));
        Assert.Equal(SocketError.ConnectionRefused, refused.SocketErrorCode);
        await open.SendAsync("q"u8.ToArray(), SocketFlags.None, Timeout());
        Assert.True(await EndsWithinAsync(open, TimeSpan.FromSeconds(1)), "session through the removed port stayed open");

        using var other = await ConnectAsync(kept);
        Assert.Equal((byte)'A', (await ReadExactlyAsync(other, 1))[0]);
    }

    [Fact]
    public async Task The_limit_still_counts_open_connections_after_the_table_is_programmed_again()
    {
        await using var table = new Table();
        await using var backend = Backend.Tagged((byte)'A');
        await using var fallback = new TcpRouter(Loopback, NullLogger.Instance);
        await using var router = new KernelRouter(Loopback, table.Name, fallback, NullLogger.Instance);
        var limited = FreePorts.One();
        var other = FreePorts.One();
        await router.ApplyAsync([new Route(limited, "busy-db", backend.EndPoint) { MaxConnections = 2 }, new Route(other, "i2", null)], Timeout());
        using var first = await ConnectAsync(limited);
        using var second = await ConnectAsync(limited);
        Assert.Equal((byte)'A', (await ReadExactlyAsync(first, 1))[0]);
        Assert.Equal((byte)'A', (await ReadExactlyAsync(second, 1))[0]);

        // Another instance of the cell gets a primary: the whole table is programmed again in one transaction.
        var runs = router.NftRuns;
        await router.ApplyAsync([new Route(limited, "busy-db", backend.EndPoint) { MaxConnections = 2 }, new Route(other, "i2", backend.EndPoint)], Timeout());
        Assert.Equal(runs + 1, router.NftRuns);

        // The two sessions still count: a third connection is not translated, and user space refuses it.
        using var third = await ConnectAsync(limited);
        await WaitUntilAsync(() => fallback.Stats.OverLimitRefusals == 1);
        Assert.Equal(1, fallback.Stats.AcceptedConnections);
    }

    [Fact]
    public async Task Applying_the_same_routes_again_runs_nothing()
    {
        await using var table = new Table();
        await using var a = Backend.Tagged((byte)'A');
        await using var b = Backend.Tagged((byte)'B');
        await using var fallback = new TcpRouter(Loopback, NullLogger.Instance);
        await using var router = new KernelRouter(Loopback, table.Name, fallback, NullLogger.Instance);
        var p1 = FreePorts.One();
        var p2 = FreePorts.One();

        await router.ApplyAsync([new Route(p1, "i1", a.EndPoint), new Route(p2, "i2", null)], Timeout());
        Assert.Equal(1, router.NftRuns);
        Assert.Equal(0, router.ConntrackRuns);

        // Equal routes in another order and new objects.
        await router.ApplyAsync([new Route(p2, "i2", null), new Route(p1, "i1", new IPEndPoint(Loopback, a.EndPoint.Port))], Timeout());
        Assert.Equal(1, router.NftRuns);
        Assert.Equal(0, router.ConntrackRuns);

        await router.ApplyAsync([new Route(p1, "i1", b.EndPoint), new Route(p2, "i2", null)], Timeout());
        Assert.Equal(2, router.NftRuns);
        Assert.Equal(1, router.ConntrackRuns);
        await router.ApplyAsync([new Route(p1, "i1", b.EndPoint), new Route(p2, "i2", null)], Timeout());
        Assert.Equal(2, router.NftRuns);
        Assert.Equal(1, router.ConntrackRuns);
    }

    [Fact]
    public async Task Disposing_deletes_the_table_and_leaves_the_fallback_running()
    {
        await using var table = new Table();
        await using var backend = Backend.Tagged((byte)'A');
        await using var fallback = new TcpRouter(Loopback, NullLogger.Instance);
        var router = new KernelRouter(Loopback, table.Name, fallback, NullLogger.Instance);
        var port = FreePorts.One();
        await router.ApplyAsync([new Route(port, "i1", backend.EndPoint)], Timeout());
        Assert.Contains(table.Name, Nft("list", "tables"));

        await router.DisposeAsync();

        Assert.DoesNotContain(table.Name, Nft("list", "tables"));
        // New connections now reach the user-space router, still listening.
        using var client = await ConnectAsync(port);
        Assert.Equal((byte)'A', (await ReadExactlyAsync(client, 1))[0]);
        Assert.Equal(1, fallback.Stats.AcceptedConnections);
        await Assert.ThrowsAsync<ObjectDisposedException>(() => router.ApplyAsync([], Timeout()));
    }

    [Fact]
    public async Task Bind_address_any_matches_local_addresses()
    {
        await using var table = new Table();
        await using var backend = Backend.Tagged((byte)'A');
        // The fallback stays on loopback: nothing here listens beyond 127.0.0.1.
        await using var fallback = new TcpRouter(Loopback, NullLogger.Instance);
        await using var router = new KernelRouter(IPAddress.Any, table.Name, fallback, NullLogger.Instance);
        var port = FreePorts.One();

        await router.ApplyAsync([new Route(port, "i1", backend.EndPoint)], Timeout());

        using var client = await ConnectAsync(port);
        Assert.Equal((byte)'A', (await ReadExactlyAsync(client, 1))[0]);
        Assert.Equal(0, fallback.Stats.AcceptedConnections);
        Assert.Contains($"fib daddr type local tcp dport {port} dnat to", Nft("list", "table", "ip", table.Name));
    }

    // ---- helpers ----

    /// <summary>A unique table name; the table is deleted on dispose whatever happened.</summary>
    private sealed class Table : IAsyncDisposable
    {
        public string Name { get; } = $"dingo_test_{Environment.ProcessId}_{Interlocked.Increment(ref _tables)}";

        public ValueTask DisposeAsync()
        {
            Run(check: false, stdin: $"add table ip {Name}\ndelete table ip {Name}\n", "-f", "-");
            return ValueTask.CompletedTask;
        }
    }

    private static string Nft(params string[] args) => Run(check: true, stdin: null, args);

    private static string Run(bool check, string? stdin, params string[] args) => Run(NftPath, check, stdin, args);

    /// <summary>Runs conntrack; exit code 1 (nothing matched) is fine.</summary>
    private static void Conntrack(params string[] args) => Run(ConntrackPath, check: false, stdin: null, args);

    private static string Run(string file, bool check, string? stdin, params string[] args)
    {
        var psi = new ProcessStartInfo(file)
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        foreach (var arg in args)
            psi.ArgumentList.Add(arg);
        using var process = Process.Start(psi)!;
        if (stdin is not null)
            process.StandardInput.Write(stdin);
        process.StandardInput.Close();
        var stderr = process.StandardError.ReadToEndAsync();
        var output = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        if (check && process.ExitCode != 0)
            throw new InvalidOperationException($"{file} {string.Join(' ', args)}: {stderr.Result}");
        return output;
    }

    private static CancellationToken Timeout() => new CancellationTokenSource(StepTimeout).Token;

    private static Task<Socket> ConnectAsync(int port) => LoopbackSockets.ConnectAsync(port, Timeout());

    private static async Task AssertEchoAsync(Socket socket, string message)
    {
        var bytes = Encoding.UTF8.GetBytes(message);
        await socket.SendAsync(bytes, SocketFlags.None, Timeout());
        Assert.Equal(message, Encoding.UTF8.GetString(await ReadExactlyAsync(socket, bytes.Length)));
    }

    private static Task<byte[]> ReadExactlyAsync(Socket socket, int count) => LoopbackSockets.ReadExactlyAsync(socket, count, Timeout());

    private static Task<bool> EndsWithinAsync(Socket socket, TimeSpan within) => LoopbackSockets.EndsWithinAsync(socket, within);

    private static async Task WaitUntilAsync(Func<bool> condition)
    {
        var watch = Stopwatch.StartNew();
        while (!condition())
        {
            Assert.True(watch.Elapsed < StepTimeout, "condition not reached in time");
            await Task.Delay(20);
        }
    }
}
