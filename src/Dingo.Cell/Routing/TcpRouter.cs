using System.Buffers;
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;

namespace Dingo.Routing;

/// <summary>A snapshot of a router's counters.</summary>
/// <param name="OpenConnections">client connections currently held (waiting for a target, connecting or copying).</param>
/// <param name="AcceptedConnections">client connections accepted since start.</param>
/// <param name="BytesClientToServer">bytes copied from clients to targets.</param>
/// <param name="BytesServerToClient">bytes copied from targets to clients.</param>
/// <param name="RouteChanges">routes added, removed, or given a new target or instance.</param>
/// <param name="FailedTargetConnects">connections closed because the target could not be reached.</param>
/// <param name="NoTargetClosures">connections closed because no target appeared within the leader wait.</param>
/// <param name="ListeningPorts">ports currently bound.</param>
/// <param name="OverLimitRefusals">connections refused with a PostgreSQL error because the port was at its limit.</param>
public sealed record RouterStats(
    int OpenConnections,
    long AcceptedConnections,
    long BytesClientToServer,
    long BytesServerToClient,
    long RouteChanges,
    long FailedTargetConnects,
    long NoTargetClosures,
    int ListeningPorts,
    long OverLimitRefusals = 0);

/// <summary>
/// Forwards TCP connections on each instance's public port to that instance's current primary.
/// Several routers (one per cell) bind the same ports with SO_REUSEPORT, so the kernel spreads
/// connections among them and any one can go away without the port going dark.
/// </summary>
public sealed class TcpRouter : IRouteDataPath
{
    private const int BufferSize = 32 * 1024;
    private const int ListenBacklog = 1024;
    // Linux values; .NET has no named option for SO_REUSEPORT.
    private const int SolSocket = 1;
    private const int SoReusePort = 15;
    // A silent target (SYN dropped) would otherwise hold the client for the kernel's ~2 min of retries.
    private static readonly TimeSpan ConnectTimeout = TimeSpan.FromSeconds(10);

    private readonly IPAddress _bindAddress;
    private readonly ILogger _logger;
    private readonly TimeSpan _leaderWait;
    // Serialises ApplyAsync/DisposeAsync so each applied set is a whole, ordered step.
    private readonly SemaphoreSlim _applyGate = new(1, 1);
    private readonly ConcurrentDictionary<int, PortEntry> _ports = new();
    private readonly ConcurrentDictionary<Task, byte> _handlers = new();

    private IReadOnlyCollection<Route> _appliedRoutes = [];
    private int _disposed;
    private int _open;
    private long _accepted;
    private long _bytesUp;
    private long _bytesDown;
    private long _routeChanges;
    private long _failedConnects;
    private long _noTarget;
    private long _overLimit;

    public TcpRouter(IPAddress bindAddress, ILogger logger, TimeSpan? leaderWait = null)
    {
        ArgumentNullException.ThrowIfNull(bindAddress);
        ArgumentNullException.ThrowIfNull(logger);
        if (leaderWait is { } w && w < TimeSpan.Zero)
            throw new ArgumentOutOfRangeException(nameof(leaderWait), "must not be negative");
        _bindAddress = bindAddress;
        _logger = logger;
        _leaderWait = leaderWait ?? TimeSpan.FromSeconds(5);
    }

    public RouterStats Stats => new(
        Volatile.Read(ref _open),
        Interlocked.Read(ref _accepted),
        Interlocked.Read(ref _bytesUp),
        Interlocked.Read(ref _bytesDown),
        Interlocked.Read(ref _routeChanges),
        Interlocked.Read(ref _failedConnects),
        Interlocked.Read(ref _noTarget),
        _ports.Values.Count(e => e.Listener is not null),
        Interlocked.Read(ref _overLimit));

    public IReadOnlyCollection<Route> Applied => Volatile.Read(ref _appliedRoutes);

    /// <summary>Open client connections per routed port (every routed port appears, possibly with 0).</summary>
    public IReadOnlyDictionary<int, int> OpenConnectionsByPort
    {
        get
        {
            var result = new Dictionary<int, int>();
            foreach (var (port, entry) in _ports)
                lock (entry.Gate)
                    result[port] = entry.Connections.Count;
            return result;
        }
    }

    /// <summary>
    /// Makes <paramref name="routes"/> the full set of routes: binds new ports, closes removed ones with
    /// their connections, and on a target change closes every connection to the old target. Ports that
    /// failed to bind earlier are retried.
    /// </summary>
    public async Task ApplyAsync(IReadOnlyCollection<Route> routes, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(routes);
        var desired = new Dictionary<int, Route>(routes.Count);
        foreach (var route in routes)
        {
            ArgumentNullException.ThrowIfNull(route);
            if (route.Port is < 1 or > IPEndPoint.MaxPort)
                throw new ArgumentException($"route for instance {route.InstanceId} has invalid port {route.Port}", nameof(routes));
            if (!desired.TryAdd(route.Port, route))
                throw new ArgumentException($"port {route.Port} is routed twice ({desired[route.Port].InstanceId}, {route.InstanceId})", nameof(routes));
        }

        await _applyGate.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);

            var stopping = new List<Task>();
            foreach (var (port, entry) in _ports)
            {
                if (desired.ContainsKey(port) || !_ports.TryRemove(port, out _))
                    continue;
                Interlocked.Increment(ref _routeChanges);
                _logger.LogInformation("Route removed: port {Port} (instance {InstanceId})", port, entry.InstanceId);
                stopping.Add(Stop(entry));
            }

            foreach (var route in desired.Values)
            {
                if (!_ports.TryGetValue(route.Port, out var entry))
                {
                    entry = new PortEntry(route.Port, route.InstanceId, route.Target) { Pool = route.Pool, MaxConnections = route.MaxConnections, OverflowOnly = route.OverflowOnly };
                    _ports[route.Port] = entry;
                    Interlocked.Increment(ref _routeChanges);
                    _logger.LogInformation("Route added: port {Port} (instance {InstanceId}) -> {Target}",
                        route.Port, route.InstanceId, Describe(route.Target));
                }
                else
                {
                    Retarget(entry, route);
                }

                if (entry.Listener is null)
                    StartListening(entry);
            }

            // Removed ports must be released once ApplyAsync returns; the accept loops end as soon as
            // their sockets are closed, so this wait is short.
            await Task.WhenAll(stopping).WaitAsync(ct).ConfigureAwait(false);
            Volatile.Write(ref _appliedRoutes, desired.Values.ToList());
        }
        finally
        {
            _applyGate.Release();
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
            return;

        var stopping = new List<Task>();
        await _applyGate.WaitAsync().ConfigureAwait(false);
        try
        {
            foreach (var port in _ports.Keys)
                if (_ports.TryRemove(port, out var entry))
                    stopping.Add(Stop(entry));
        }
        finally
        {
            _applyGate.Release();
        }

        stopping.AddRange(_handlers.Keys);
        await Task.WhenAll(stopping).ConfigureAwait(false);
    }

    private void Retarget(PortEntry entry, Route route)
    {
        List<Connection> stale = [];
        IPEndPoint? old;
        lock (entry.Gate)
        {
            entry.MaxConnections = route.MaxConnections;
            entry.OverflowOnly = route.OverflowOnly;
            var instanceChanged = entry.InstanceId != route.InstanceId;
            if (!instanceChanged && Equals(entry.Target, route.Target) && entry.Pool.Count == route.Pool.Count && entry.Pool.All(route.Pool.Contains))
                return;

            old = entry.Target;
            entry.InstanceId = route.InstanceId;
            entry.Target = route.Target;
            entry.Pool = route.Pool;
            foreach (var c in entry.Connections)
            {
                // A port handed to another instance keeps nothing; otherwise only links to a target that is no
                // longer wanted go (clients still waiting for a target stay and get the new one).
                if (instanceChanged || (c.Target is not null && !c.Target.Equals(route.Target) && !route.Pool.Contains(c.Target)))
                    stale.Add(c);
            }

            if (route.Target is not null || route.Pool.Count > 0)
                entry.SignalTargetChanged();
        }

        Interlocked.Increment(ref _routeChanges);
        _logger.LogInformation(
            "Route changed: port {Port} (instance {InstanceId}) {OldTarget} -> {Target}; closing {Count} connection(s)",
            route.Port, route.InstanceId, Describe(old), Describe(route.Target), stale.Count);

        foreach (var c in stale)
            c.Abort();
    }

    private void StartListening(PortEntry entry)
    {
        var socket = new Socket(_bindAddress.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
            // .NET's ReuseAddress already implies SO_REUSEPORT on Linux today; set it explicitly so sharing
            // the port does not hinge on that runtime detail.
            if (OperatingSystem.IsLinux())
                socket.SetRawSocketOption(SolSocket, SoReusePort, BitConverter.GetBytes(1));
            socket.Bind(new IPEndPoint(_bindAddress, entry.Port));
            socket.Listen(ListenBacklog);
        }
        catch (SocketException ex)
        {
            socket.Dispose();
            // Logged as an error once per route; later ApplyAsync calls retry quietly until it works.
            if (!entry.BindFailureLogged)
            {
                entry.BindFailureLogged = true;
                _logger.LogError(
                    "Cannot listen on {Address}:{Port} for instance {InstanceId}: {Error} ({Code}); will retry on the next route update",
                    _bindAddress, entry.Port, entry.InstanceId, ex.Message, ex.SocketErrorCode);
            }
            else
            {
                _logger.LogDebug("Still cannot listen on {Address}:{Port} for instance {InstanceId}: {Error}",
                    _bindAddress, entry.Port, entry.InstanceId, ex.Message);
            }
            return;
        }

        if (entry.BindFailureLogged)
            _logger.LogInformation("Now listening on {Address}:{Port} for instance {InstanceId}", _bindAddress, entry.Port, entry.InstanceId);
        else
            _logger.LogDebug("Listening on {Address}:{Port} for instance {InstanceId}", _bindAddress, entry.Port, entry.InstanceId);
        entry.BindFailureLogged = false;
        entry.Listener = socket;
        // Task.Run: the loop must live on the thread pool, not on whatever scheduler the caller runs on (e.g. an actor's).
        entry.AcceptLoop = Task.Run(() => AcceptLoopAsync(entry, socket));
    }

    /// <summary>Closes the port's listener and every connection through it; returns the accept loop to await.</summary>
    private static Task Stop(PortEntry entry)
    {
        List<Connection> connections;
        lock (entry.Gate)
        {
            entry.Closed = true;
            connections = [.. entry.Connections];
            entry.SignalTargetChanged(); // wakes clients waiting for a target so they see Closed
        }

        entry.StopAccepting.Cancel();
        entry.Listener?.Dispose();
        foreach (var c in connections)
            c.Abort();
        return entry.AcceptLoop ?? Task.CompletedTask;
    }

    private async Task AcceptLoopAsync(PortEntry entry, Socket listener)
    {
        var ct = entry.StopAccepting.Token;
        while (!ct.IsCancellationRequested)
        {
            Socket client;
            try
            {
                client = await listener.AcceptAsync(ct).ConfigureAwait(false);
            }
            catch (Exception ex) when (ct.IsCancellationRequested || ex is ObjectDisposedException)
            {
                break;
            }
            catch (SocketException ex)
            {
                // E.g. out of file descriptors or a client that reset before accept: back off briefly, keep serving.
                _logger.LogWarning("Accept failed on port {Port} (instance {InstanceId}): {Error}", entry.Port, entry.InstanceId, ex.Message);
                try
                {
                    await Task.Delay(100, ct).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    break;
                }
                continue;
            }

            Interlocked.Increment(ref _accepted);
            var handler = HandleClientAsync(entry, client);
            if (!handler.IsCompleted)
            {
                // Tracked only so DisposeAsync can wait for buffers to be returned and sockets closed.
                _handlers.TryAdd(handler, 0);
                _ = handler.ContinueWith(
                    static (t, state) => ((ConcurrentDictionary<Task, byte>)state!).TryRemove(t, out _),
                    _handlers, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
            }
        }
    }

    private async Task HandleClientAsync(PortEntry entry, Socket client)
    {
        var conn = new Connection(client);
        bool registered, overLimit = false;
        lock (entry.Gate)
        {
            overLimit = entry.OverflowOnly || (entry.MaxConnections > 0 && entry.Connections.Count >= entry.MaxConnections);
            registered = !entry.Closed && !overLimit && entry.Connections.Add(conn);
        }
        if (overLimit)
        {
            Interlocked.Increment(ref _overLimit);
            await RefuseAsync(client, $"too many connections for instance {entry.InstanceId} (limit {entry.MaxConnections})").ConfigureAwait(false);
            return;
        }
        if (!registered)
        {
            conn.Abort();
            return;
        }

        Interlocked.Increment(ref _open);
        try
        {
            ConfigureSocket(client);

            var target = await WaitForTargetAsync(entry, conn).ConfigureAwait(false);
            if (target is null)
            {
                if (!conn.IsClosed)
                {
                    Interlocked.Increment(ref _noTarget);
                    _logger.LogInformation("No primary for port {Port} (instance {InstanceId}) within {Wait}; closing client {Client}",
                        entry.Port, entry.InstanceId, _leaderWait, SafeRemote(client));
                }
                return;
            }

            var backend = new Socket(target.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
            if (!conn.TryAttachBackend(backend))
            {
                backend.Dispose();
                return;
            }
            ConfigureSocket(backend);

            try
            {
                using var timeout = CancellationTokenSource.CreateLinkedTokenSource(conn.Token);
                timeout.CancelAfter(ConnectTimeout);
                await backend.ConnectAsync(target, timeout.Token).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is SocketException or OperationCanceledException or ObjectDisposedException)
            {
                if (!conn.IsClosed)
                {
                    Interlocked.Increment(ref _failedConnects);
                    _logger.LogInformation("Cannot connect port {Port} (instance {InstanceId}) to target {Target}: {Error}; closing client",
                        entry.Port, entry.InstanceId, target, ex is OperationCanceledException ? "timed out" : ex.Message);
                }
                return;
            }

            await Task.WhenAll(
                PumpAsync(conn, client, backend, upstream: true),
                PumpAsync(conn, backend, client, upstream: false)).ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            // Only reached for surprises (e.g. socket options on an already reset socket).
            _logger.LogDebug(ex, "Connection on port {Port} (instance {InstanceId}) failed", entry.Port, entry.InstanceId);
        }
        finally
        {
            lock (entry.Gate)
                entry.Connections.Remove(conn);
            Interlocked.Decrement(ref _open);
            conn.Close();
        }
    }

    /// <summary>The port's target, waiting up to the leader wait for one to appear; null if none or the connection was closed.</summary>
    private async Task<IPEndPoint?> WaitForTargetAsync(PortEntry entry, Connection conn)
    {
        var started = Stopwatch.GetTimestamp();
        while (true)
        {
            Task changed;
            lock (entry.Gate)
            {
                if (entry.Closed || conn.IsClosed)
                    return null;
                if (entry.Pool.Count > 0)
                {
                    // Balance new connections over the pool, round robin.
                    var picked = entry.Pool[(int)((uint)Interlocked.Increment(ref entry.NextInPool) % (uint)entry.Pool.Count)];
                    conn.Target = picked;
                    return picked;
                }
                if (entry.Target is { } target)
                {
                    // Set under the gate so Retarget either sees this link or we see its new target.
                    conn.Target = target;
                    return target;
                }
                changed = entry.TargetChanged.Task;
            }

            var remaining = _leaderWait - Stopwatch.GetElapsedTime(started);
            if (remaining <= TimeSpan.Zero)
                return null;
            try
            {
                await changed.WaitAsync(remaining, conn.Token).ConfigureAwait(false);
            }
            catch (TimeoutException)
            {
                // Loop once more: the deadline check returns null.
            }
            catch (OperationCanceledException)
            {
                return null;
            }
        }
    }

    /// <summary>Copies one direction until EOF (then half-closes the other side) or an error (then tears down both).</summary>
    private async Task PumpAsync(Connection conn, Socket from, Socket to, bool upstream)
    {
        var buffer = ArrayPool<byte>.Shared.Rent(BufferSize);
        try
        {
            var ct = conn.Token;
            while (true)
            {
                var read = await from.ReceiveAsync(buffer.AsMemory(), SocketFlags.None, ct).ConfigureAwait(false);
                if (read == 0)
                {
                    to.Shutdown(SocketShutdown.Send);
                    return;
                }

                var sent = 0;
                while (sent < read)
                    sent += await to.SendAsync(buffer.AsMemory(sent, read - sent), SocketFlags.None, ct).ConfigureAwait(false);

                if (upstream)
                    Interlocked.Add(ref _bytesUp, read);
                else
                    Interlocked.Add(ref _bytesDown, read);
            }
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException or OperationCanceledException or IOException)
        {
            // Reset, route change or shutdown: neither direction can continue meaningfully.
            conn.Abort();
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private void ConfigureSocket(Socket socket)
    {
        socket.NoDelay = true;
        socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.KeepAlive, true);
        try
        {
            // Detect a vanished peer in about a minute instead of the kernel default of two hours.
            socket.SetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveTime, 30);
            socket.SetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveInterval, 10);
            socket.SetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveRetryCount, 3);
        }
        catch (Exception ex) when (ex is SocketException or PlatformNotSupportedException)
        {
            _logger.LogDebug("Cannot tune TCP keepalive: {Error}", ex.Message);
        }
    }

    private static string Describe(IPEndPoint? target) => target?.ToString() ?? "(no primary)";

    private static async Task<bool> ReceiveExactlyAsync(Socket socket, byte[] buffer, CancellationToken ct)
    {
        var read = 0;
        while (read < buffer.Length)
        {
            var n = await socket.ReceiveAsync(buffer.AsMemory(read), SocketFlags.None, ct).ConfigureAwait(false);
            if (n == 0) return false;
            read += n;
        }
        return true;
    }

    /// <summary>
    /// Answers in PostgreSQL's own protocol so the client shows a clear message instead of a reset: declines an
    /// SSL or GSS encryption request ('N') as a server without them would, reads the startup packet, then sends an
    /// ErrorResponse (SQLSTATE 53300) and closes.
    /// </summary>
    private static async Task RefuseAsync(Socket client, string message)
    {
        try
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(3));
            for (var round = 0; round < 3; round++)
            {
                var header = new byte[8];
                if (!await ReceiveExactlyAsync(client, header, timeout.Token).ConfigureAwait(false)) return;
                var length = System.Buffers.Binary.BinaryPrimitives.ReadInt32BigEndian(header);
                var code = System.Buffers.Binary.BinaryPrimitives.ReadInt32BigEndian(header.AsSpan(4));
                if (length == 8 && code is 80877103 or 80877104)
                {
                    await client.SendAsync(new[] { (byte)'N' }, SocketFlags.None, timeout.Token).ConfigureAwait(false);
                    continue; // the client goes on with its startup packet in clear
                }
                // The rest of the startup packet (bounded: startup packets are small).
                if (length is > 8 and < 10_000 && !await ReceiveExactlyAsync(client, new byte[length - 8], timeout.Token).ConfigureAwait(false)) return;
                break;
            }
            var body = new List<byte>();
            void Field(char fieldCode, string value) { body.Add((byte)fieldCode); body.AddRange(System.Text.Encoding.UTF8.GetBytes(value)); body.Add(0); }
            Field('S', "FATAL");
            Field('V', "FATAL");
            Field('C', "53300");
            Field('M', message);
            body.Add(0);
            var packet = new byte[5 + body.Count];
            packet[0] = (byte)'E';
            System.Buffers.Binary.BinaryPrimitives.WriteInt32BigEndian(packet.AsSpan(1), 4 + body.Count);
            body.CopyTo(packet, 5);
            await client.SendAsync(packet, SocketFlags.None, timeout.Token).ConfigureAwait(false);
            client.Shutdown(SocketShutdown.Send);
            // Let the client read the message before the socket goes (a reset could discard it).
            var sink = new byte[1024];
            while (await client.ReceiveAsync(sink, SocketFlags.None, timeout.Token).ConfigureAwait(false) > 0) { }
        }
        catch (Exception ex) when (ex is SocketException or OperationCanceledException or ObjectDisposedException)
        {
        }
        finally
        {
            client.Dispose();
        }
    }

    private static string SafeRemote(Socket socket)
    {
        try
        {
            return socket.RemoteEndPoint?.ToString() ?? "?";
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
        {
            return "?";
        }
    }

    private sealed class PortEntry(int port, string instanceId, IPEndPoint? target)
    {
        public int Port { get; } = port;
        public object Gate { get; } = new();
        public CancellationTokenSource StopAccepting { get; } = new();

        // Guarded by Gate.
        public string InstanceId { get; set; } = instanceId;
        public IPEndPoint? Target { get; set; } = target;
        public IReadOnlyList<IPEndPoint> Pool { get; set; } = [];
        public int MaxConnections { get; set; }
        public bool OverflowOnly { get; set; }
        public int NextInPool = Random.Shared.Next(1024); // routers sharing a port start at different points
        public bool Closed { get; set; }
        public HashSet<Connection> Connections { get; } = [];
        public TaskCompletionSource TargetChanged { get; private set; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        // Touched only under the router's apply gate.
        public Socket? Listener { get; set; }
        public Task? AcceptLoop { get; set; }
        public bool BindFailureLogged { get; set; }

        /// <summary>Wakes current waiters; later waiters get a fresh signal. Call under Gate.</summary>
        public void SignalTargetChanged()
        {
            var fired = TargetChanged;
            TargetChanged = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            fired.TrySetResult();
        }
    }

    private sealed class Connection
    {
        private readonly object _gate = new();
        private readonly Socket _client;
        private readonly CancellationTokenSource _cts = new();
        private Socket? _backend;
        private bool _closed;

        public Connection(Socket client)
        {
            _client = client;
            Token = _cts.Token;
        }

        /// <summary>Cancelled when the connection is closed, so pending connects, waits and copies end.</summary>
        public CancellationToken Token { get; }

        // Set under the port's Gate once the connection is bound to a target.
        public IPEndPoint? Target { get; set; }

        public bool IsClosed
        {
            get
            {
                lock (_gate)
                    return _closed;
            }
        }

        public bool TryAttachBackend(Socket backend)
        {
            lock (_gate)
            {
                if (_closed)
                    return false;
                _backend = backend;
                return true;
            }
        }

        /// <summary>Tears the link down at once, sending RST both ways so neither peer mistakes it for a clean end.</summary>
        public void Abort() => Shut(reset: true);

        /// <summary>Closes after both directions finished normally.</summary>
        public void Close() => Shut(reset: false);

        private void Shut(bool reset)
        {
            Socket? backend;
            lock (_gate)
            {
                if (_closed)
                    return;
                _closed = true;
                backend = _backend;
            }

            _cts.Cancel();
            CloseSocket(_client, reset);
            if (backend is not null)
                CloseSocket(backend, reset);
        }

        private static void CloseSocket(Socket socket, bool reset)
        {
            try
            {
                if (reset)
                    socket.LingerState = new LingerOption(true, 0);
            }
            catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
            {
                // Already gone: nothing to reset.
            }
            socket.Dispose();
        }
    }
}
