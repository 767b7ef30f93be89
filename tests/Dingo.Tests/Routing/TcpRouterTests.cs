using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Dingo.Routing;
using Dingo.Tests.Support;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Dingo.Tests.Routing;

[Trait(Tier.Name, Tier.Fast)]
public sealed class TcpRouterTests
{
    private static readonly IPAddress Loopback = IPAddress.Loopback;
    private static readonly TimeSpan StepTimeout = TimeSpan.FromSeconds(4);

    [Fact]
    public async Task Bytes_round_trip_through_the_router_to_the_target()
    {
        await using var backend = Backend.Echo();
        await using var router = new TcpRouter(Loopback, NullLogger.Instance);
        var port = FreePort();
        await router.ApplyAsync([new Route(port, "i1", backend.EndPoint)], Timeout());

        var payload = new byte[1024 * 1024];
        new Random(42).NextBytes(payload);
        using var client = await ConnectAsync(port);

        var send = client.SendAsync(payload, SocketFlags.None, Timeout()).AsTask();
        var echoed = await ReadExactlyAsync(client, payload.Length);
        await send;

        Assert.Equal(payload, echoed);
        // Counters are bumped just after each send completes, so they may trail the client by a moment.
        await WaitUntilAsync(() => router.Stats.BytesClientToServer == payload.Length && router.Stats.BytesServerToClient == payload.Length);
        var stats = router.Stats;
        Assert.Equal(1, stats.AcceptedConnections);
        Assert.Equal(1, stats.OpenConnections);
        Assert.Equal(1, router.OpenConnectionsByPort[port]);
    }

    [Fact]
    public async Task Two_routers_share_a_port_with_reuseport_and_either_can_serve_alone()
    {
        await using var backend = Backend.Echo();
        var port = FreePort();
        var first = new TcpRouter(Loopback, NullLogger.Instance);
        await using var second = new TcpRouter(Loopback, NullLogger.Instance);
        try
        {
            var routes = new[] { new Route(port, "i1", backend.EndPoint) };
            await first.ApplyAsync(routes, Timeout());
            await second.ApplyAsync(routes, Timeout());
            Assert.Equal(1, first.Stats.ListeningPorts);
            Assert.Equal(1, second.Stats.ListeningPorts);

            // The kernel hashes each connection to one listener; 30 connections all landing on one is ~2^-29.
            for (var i = 0; i < 30; i++)
                await AssertEchoesAsync(port, $"shared {i}");
            Assert.True(first.Stats.AcceptedConnections > 0, "first router accepted nothing");
            Assert.True(second.Stats.AcceptedConnections > 0, "second router accepted nothing");

            await first.DisposeAsync();
            var before = second.Stats.AcceptedConnections;
            for (var i = 0; i < 10; i++)
                await AssertEchoesAsync(port, $"alone {i}");
            Assert.Equal(before + 10, second.Stats.AcceptedConnections);
        }
        finally
        {
            await first.DisposeAsync();
        }
    }

    [Fact]
    public async Task Changing_the_target_sends_new_connections_to_it_and_closes_old_ones_within_a_second()
    {
        await using var a = Backend.Tagged((byte)'A');
        await using var b = Backend.Tagged((byte)'B');
        await using var router = new TcpRouter(Loopback, NullLogger.Instance);
        var port = FreePort();
        await router.ApplyAsync([new Route(port, "i1", a.EndPoint)], Timeout());

        using var old = await ConnectAsync(port);
        Assert.Equal((byte)'A', (await ReadExactlyAsync(old, 1))[0]);
        var changesBefore = router.Stats.RouteChanges;

        await router.ApplyAsync([new Route(port, "i1", b.EndPoint)], Timeout());

        var watch = Stopwatch.StartNew();
        Assert.True(await EndsWithinAsync(old, TimeSpan.FromSeconds(1)), "connection to the old target stayed open");
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(1));
        Assert.True(await a.AllClosedWithinAsync(TimeSpan.FromSeconds(1)), "backend side of the old link stayed open");

        using var fresh = await ConnectAsync(port);
        Assert.Equal((byte)'B', (await ReadExactlyAsync(fresh, 1))[0]);
        Assert.Equal(changesBefore + 1, router.Stats.RouteChanges);

        // Applying the same set again changes nothing and keeps the new link.
        await router.ApplyAsync([new Route(port, "i1", b.EndPoint)], Timeout());
        Assert.Equal(changesBefore + 1, router.Stats.RouteChanges);
        await SendAsync(fresh, "still here");
        Assert.Equal("still here", Encoding.UTF8.GetString(await ReadExactlyAsync(fresh, 10)));
    }

    [Fact]
    public async Task Removing_a_route_closes_its_connections_and_the_port_refuses_connections()
    {
        await using var backend = Backend.Echo();
        await using var router = new TcpRouter(Loopback, NullLogger.Instance);
        var port = FreePort();
        var kept = FreePort();
        await router.ApplyAsync([new Route(port, "i1", backend.EndPoint), new Route(kept, "i2", backend.EndPoint)], Timeout());
        await AssertEchoesAsync(port, "before");

        using var open = await ConnectAsync(port);
        await SendAsync(open, "x");
        await ReadExactlyAsync(open, 1);

        await router.ApplyAsync([new Route(kept, "i2", backend.EndPoint)], Timeout());

        Assert.True(await EndsWithinAsync(open, TimeSpan.FromSeconds(1)), "connection through the removed port stayed open");
        var refused = await Assert.ThrowsAsync<SocketException>(() => ConnectAsync(port));
        Assert.Equal(SocketError.ConnectionRefused, refused.SocketErrorCode);
        Assert.False(router.OpenConnectionsByPort.ContainsKey(port));
        await AssertEchoesAsync(kept, "other route unaffected");
    }

    [Fact]
    public async Task Half_close_from_the_client_still_delivers_the_full_reply()
    {
        var request = new byte[200_000];
        new Random(1).NextBytes(request);
        var reply = new byte[300_000];
        new Random(2).NextBytes(reply);
        var backendSawBytes = -1;

        await using var backend = new Backend(async (socket, ct) =>
        {
            // Reads to EOF first: only possible if the router forwarded the client's FIN.
            backendSawBytes = (await ReadToEndAsync(socket, ct)).Length;
            await socket.SendAsync(reply, SocketFlags.None, ct);
            socket.Shutdown(SocketShutdown.Send);
        });
        await using var router = new TcpRouter(Loopback, NullLogger.Instance);
        var port = FreePort();
        await router.ApplyAsync([new Route(port, "i1", backend.EndPoint)], Timeout());

        using var client = await ConnectAsync(port);
        await client.SendAsync(request, SocketFlags.None, Timeout());
        client.Shutdown(SocketShutdown.Send);
        var received = await ReadToEndAsync(client, Timeout());

        Assert.Equal(request.Length, backendSawBytes);
        Assert.Equal(reply, received);
    }

    [Fact]
    public async Task Backend_reset_ends_the_client_connection()
    {
        await using var backend = new Backend(async (socket, ct) =>
        {
            await ReadExactlyAsync(socket, 1, ct);
            socket.LingerState = new LingerOption(true, 0);
            socket.Close();
        });
        await using var router = new TcpRouter(Loopback, NullLogger.Instance);
        var port = FreePort();
        await router.ApplyAsync([new Route(port, "i1", backend.EndPoint)], Timeout());

        using var client = await ConnectAsync(port);
        await SendAsync(client, "x");

        Assert.True(await EndsWithinAsync(client, TimeSpan.FromSeconds(2)), "client stayed connected after the backend reset");
        await WaitUntilAsync(() => router.Stats.OpenConnections == 0);
    }

    [Fact]
    public async Task Null_target_waits_for_a_target_that_appears_within_the_leader_wait()
    {
        await using var backend = Backend.Echo();
        await using var router = new TcpRouter(Loopback, NullLogger.Instance, TimeSpan.FromSeconds(3));
        var port = FreePort();
        await router.ApplyAsync([new Route(port, "i1", null)], Timeout());

        using var client = await ConnectAsync(port);
        await SendAsync(client, "early bytes");
        await Task.Delay(200);
        Assert.Equal(1, router.Stats.OpenConnections);

        await router.ApplyAsync([new Route(port, "i1", backend.EndPoint)], Timeout());

        // Bytes sent before the primary was known are buffered by the kernel and arrive once linked.
        Assert.Equal("early bytes", Encoding.UTF8.GetString(await ReadExactlyAsync(client, 11)));
        Assert.Equal(0, router.Stats.NoTargetClosures);
    }

    [Fact]
    public async Task Null_target_that_stays_null_closes_the_client_after_the_leader_wait()
    {
        var wait = TimeSpan.FromMilliseconds(300);
        await using var router = new TcpRouter(Loopback, NullLogger.Instance, wait);
        var port = FreePort();
        await router.ApplyAsync([new Route(port, "i1", null)], Timeout());

        var watch = Stopwatch.StartNew();
        using var client = await ConnectAsync(port);
        Assert.True(await EndsWithinAsync(client, TimeSpan.FromSeconds(3)), "client not closed without a target");

        Assert.True(watch.Elapsed >= wait - TimeSpan.FromMilliseconds(50), $"closed too early: {watch.Elapsed}");
        await WaitUntilAsync(() => router.Stats.NoTargetClosures == 1 && router.Stats.OpenConnections == 0);
    }

    [Fact]
    public async Task One_thousand_concurrent_connections_through_one_router_all_echo()
    {
        await using var backend = Backend.Echo();
        await using var router = new TcpRouter(Loopback, NullLogger.Instance);
        var port = FreePort();
        await router.ApplyAsync([new Route(port, "i1", backend.EndPoint)], Timeout());

        // What this proves is that every one of 1000 concurrent connections is linked and echoes, not how fast (that is
        // bench/router's): the steps share one generous budget instead of 4 s each, which accepting and linking 1000
        // connections overran on this 2-core machine while a platform test ran in the same process.
        var within = TimeSpan.FromSeconds(30);
        using var budget = new CancellationTokenSource(within);
        var clients = new List<Socket>();
        try
        {
            var connects = Enumerable.Range(0, 1000).Select(_ => LoopbackSockets.ConnectAsync(port, budget.Token)).ToList();
            foreach (var c in connects)
                clients.Add(await c);
            await WaitUntilAsync(() => router.Stats.OpenConnections == 1000, within);
            Assert.Equal(1000, router.OpenConnectionsByPort[port]);

            await Task.WhenAll(clients.Select(async (socket, i) =>
            {
                var message = $"message {i:D4} " + new string((char)('a' + i % 26), 1000);
                await socket.SendAsync(Encoding.UTF8.GetBytes(message), SocketFlags.None, budget.Token);
                Assert.Equal(message, Encoding.UTF8.GetString(await ReadExactlyAsync(socket, Encoding.UTF8.GetByteCount(message), budget.Token)));
            }));
            Assert.Equal(1000, router.Stats.AcceptedConnections);
        }
        finally
        {
            foreach (var c in clients)
                c.Dispose();
        }
    }

    [Fact]
    public async Task Over_the_instance_limit_a_client_gets_a_PostgreSQL_error_not_a_reset()
    {
        await using var backend = Backend.Echo();
        await using var router = new TcpRouter(Loopback, NullLogger.Instance);
        var port = FreePort();
        await router.ApplyAsync([new Route(port, "busy-db", backend.EndPoint) { MaxConnections = 2 }], Timeout());
        var first = await ConnectAsync(port);
        using var second = await ConnectAsync(port);
        await WaitUntilAsync(() => router.Stats.OpenConnections == 2);

        using var refused = await ConnectAsync(port);
        // As libpq and Npgsql do: ask for SSL first (declined with 'N'), then send a startup packet.
        await refused.SendAsync(new byte[] { 0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f }, SocketFlags.None);
        Assert.Equal((byte)'N', (await ReadExactlyAsync(refused, 1))[0]);
        var user = Encoding.UTF8.GetBytes("user\0app\0\0");
        var startup = new byte[8 + user.Length];
        System.Buffers.Binary.BinaryPrimitives.WriteInt32BigEndian(startup, startup.Length);
        System.Buffers.Binary.BinaryPrimitives.WriteInt32BigEndian(startup.AsSpan(4), 196608);
        user.CopyTo(startup, 8);
        await refused.SendAsync(startup, SocketFlags.None);
        var reply = await ReadToEndAsync(refused, Timeout());
        Assert.Equal((byte)'E', reply[0]);
        var text = Encoding.UTF8.GetString(reply);
        Assert.Contains("C53300", text);
        Assert.Contains("too many connections for instance busy-db (limit 2)", text);
        Assert.Equal(1, router.Stats.OverLimitRefusals);

        // Once one closes, a new connection gets through.
        first.Dispose();
        await WaitUntilAsync(() => router.Stats.OpenConnections == 1);
        await AssertEchoesAsync(port, "room again");
    }

    [Fact]
    public async Task A_read_only_pool_balances_new_connections_round_robin_and_drops_links_to_replicas_that_leave_it()
    {
        await using var a = Backend.Tagged((byte)'a');
        await using var b = Backend.Tagged((byte)'b');
        await using var router = new TcpRouter(Loopback, NullLogger.Instance);
        var port = FreePort();
        await router.ApplyAsync([new Route(port, "i1", null) { Pool = [a.EndPoint, b.EndPoint] }], Timeout());
        var tags = new List<char>();
        var sockets = new List<Socket>();
        for (var i = 0; i < 4; i++)
        {
            var s = await ConnectAsync(port);
            sockets.Add(s);
            tags.Add((char)(await ReadExactlyAsync(s, 1))[0]);
        }
        Assert.Equal(2, tags.Count(t => t == 'a'));
        Assert.Equal(2, tags.Count(t => t == 'b'));

        // b leaves the pool (it fell behind): its links are closed, a's stay.
        await router.ApplyAsync([new Route(port, "i1", null) { Pool = [a.EndPoint] }], Timeout());
        for (var i = 0; i < 4; i++)
        {
            if (tags[i] == 'b') Assert.True(await EndsWithinAsync(sockets[i], TimeSpan.FromSeconds(1)));
        }
        using var next = await ConnectAsync(port);
        Assert.Equal((byte)'a', (await ReadExactlyAsync(next, 1))[0]);
        foreach (var s in sockets) s.Dispose();
    }

    [Fact]
    public async Task A_port_that_cannot_be_bound_is_logged_and_retried_while_other_routes_work()
    {
        await using var backend = Backend.Echo();
        var logger = new ListLogger();
        await using var router = new TcpRouter(Loopback, logger);
        var blockedPort = FreePort();
        var goodPort = FreePort();
        var routes = new[] { new Route(blockedPort, "blocked-instance", backend.EndPoint), new Route(goodPort, "good", backend.EndPoint) };

        // A listener without SO_REUSEPORT holds the port exclusively.
        using (var blocker = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp))
        {
            blocker.Bind(new IPEndPoint(Loopback, blockedPort));
            blocker.Listen();
            await router.ApplyAsync(routes, Timeout());

            var error = Assert.Single(logger.Entries, e => e.Level == LogLevel.Error);
            Assert.Contains(blockedPort.ToString(), error.Message);
            Assert.Contains("blocked-instance", error.Message);
            Assert.Equal(1, router.Stats.ListeningPorts);
            await AssertEchoesAsync(goodPort, "unaffected");
        }

        await router.ApplyAsync(routes, Timeout());
        Assert.Equal(2, router.Stats.ListeningPorts);
        await AssertEchoesAsync(blockedPort, "bound on retry");
    }

    // ---- helpers ----

    private static CancellationToken Timeout() => new CancellationTokenSource(StepTimeout).Token;

    /// <summary>A port free right now: bound to 0 and released.</summary>
    /// <summary>
    /// A port below the kernel's ephemeral range (FreePorts), not one it picks for port 0: every outgoing connection of
    /// the machine draws its source port from that range while the routers listen on it with SO_REUSEADDR and
    /// SO_REUSEPORT. fresh181 saw a connection to the surviving router reset (Two_routers_share_a_port…, the first
    /// connection after the other router closed) with the port from the ephemeral range; the rest of the suite left it
    /// for this reason before (FreePorts).
    /// </summary>
    private static int FreePort() => FreePorts.One();

    private static async Task AssertEchoesAsync(int port, string message)
    {
        using var socket = await ConnectAsync(port);
        await SendAsync(socket, message);
        Assert.Equal(message, Encoding.UTF8.GetString(await ReadExactlyAsync(socket, Encoding.UTF8.GetByteCount(message))));
    }

    private static async Task SendAsync(Socket socket, string text) =>
        await socket.SendAsync(Encoding.UTF8.GetBytes(text), SocketFlags.None, Timeout());

    private static Task<Socket> ConnectAsync(int port) => LoopbackSockets.ConnectAsync(port, Timeout());

    private static Task<byte[]> ReadExactlyAsync(Socket socket, int count) => LoopbackSockets.ReadExactlyAsync(socket, count, Timeout());

    private static Task<byte[]> ReadExactlyAsync(Socket socket, int count, CancellationToken ct) => LoopbackSockets.ReadExactlyAsync(socket, count, ct);

    private static Task<bool> EndsWithinAsync(Socket socket, TimeSpan within) => LoopbackSockets.EndsWithinAsync(socket, within);

    private static async Task<byte[]> ReadToEndAsync(Socket socket, CancellationToken ct)
    {
        using var all = new MemoryStream();
        var buffer = new byte[16 * 1024];
        int n;
        while ((n = await socket.ReceiveAsync(buffer, SocketFlags.None, ct)) > 0)
            all.Write(buffer, 0, n);
        return all.ToArray();
    }

    private static async Task WaitUntilAsync(Func<bool> condition, TimeSpan? within = null)
    {
        var watch = Stopwatch.StartNew();
        while (!condition())
        {
            Assert.True(watch.Elapsed < (within ?? StepTimeout), "condition not reached in time");
            await Task.Delay(20);
        }
    }

    private sealed class ListLogger : ILogger
    {
        public ConcurrentQueue<(LogLevel Level, string Message)> Entries { get; } = new();

        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => true;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
            Entries.Enqueue((logLevel, formatter(state, exception)));
    }
}
