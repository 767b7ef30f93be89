using System.Buffers;
using System.Globalization;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using System.Text.Json;
using Dingo.Model;
using Microsoft.Extensions.Logging;

namespace Dingo.Ha;

/// <summary>
/// A node's health API: answers the HTTP checks that HAProxy setups written for Patroni send
/// (<c>/primary</c>, <c>/replica?lag=…</c>, <c>/read-only</c>, …) with Patroni's status codes, so they work unchanged.
/// Hand-rolled over a socket so it has no web stack to configure and every resource a client can hold is bounded:
/// request head size, time to send it, and connections served at once. Each connection gets one answer and is closed.
/// HTTPS and HTTP share the port: a connection whose first byte opens a TLS handshake gets TLS with the node's
/// certificate (<see cref="Tls"/>); a plain one is answered, or with require-tls refused with 426.
/// </summary>
public sealed class NodeHealthServer : Dingo.Cells.INodeHealthApi
{
    internal const int MaxHeadBytes = 8 * 1024;
    internal const int DefaultMaxConnections = 64;
    internal static readonly TimeSpan DefaultReadTimeout = TimeSpan.FromSeconds(5);

    private const int ListenBacklog = 128;
    // After answering, read what the client still sends (a body, a pipelined request) before closing, so the kernel
    // does not reset the connection and destroy the answer in flight. Bounded, as everything else.
    private const int MaxDrainBytes = 64 * 1024;
    private static readonly TimeSpan DrainTimeout = TimeSpan.FromSeconds(1);
    private static readonly TimeSpan WriteTimeout = TimeSpan.FromSeconds(5);
    private const string AllowedMethods = "GET, HEAD, OPTIONS";

    private static readonly Dictionary<string, Endpoint> Endpoints = new(StringComparer.Ordinal)
    {
        ["/"] = Endpoint.Primary,
        ["/primary"] = Endpoint.Primary,
        ["/master"] = Endpoint.Primary,
        ["/read-write"] = Endpoint.Primary,
        ["/replica"] = Endpoint.Replica,
        ["/read-only"] = Endpoint.ReadOnly,
        ["/read-only-sync"] = Endpoint.ReadOnlySync,
        ["/read-only-synchronous"] = Endpoint.ReadOnlySync,
        ["/health"] = Endpoint.Health,
        ["/leader"] = Endpoint.Leader,
        ["/sync"] = Endpoint.Sync,
        ["/synchronous"] = Endpoint.Sync,
        ["/async"] = Endpoint.Async,
        ["/asynchronous"] = Endpoint.Async,
        ["/patroni"] = Endpoint.Status,
        ["/status"] = Endpoint.Status,
    };

    private readonly IPAddress _address;
    private readonly int _requestedPort;
    private readonly Func<NodeHealth> _snapshot;
    private readonly ILogger _logger;
    private readonly TimeSpan _readTimeout;
    private readonly int _maxConnections;
    // One slot per connection being served; the accept loop takes a slot before accepting, so excess clients
    // wait in the kernel's backlog instead of costing us memory or being refused.
    private readonly SemaphoreSlim _slots;
    private readonly CancellationTokenSource _stopping = new();
    private readonly object _gate = new();

    private Socket? _listener;
    private Task? _acceptLoop;
    private int _port;
    private bool _started;
    private bool _disposed;
    private int _snapshotFailing;

    public NodeHealthServer(IPAddress address, int port, Func<NodeHealth> snapshot, ILogger logger)
        : this(address, port, snapshot, logger, DefaultReadTimeout, DefaultMaxConnections)
    {
    }

    /// <summary>Tests shorten the read timeout and shrink the connection cap to exercise them quickly.</summary>
    internal NodeHealthServer(IPAddress address, int port, Func<NodeHealth> snapshot, ILogger logger, TimeSpan readTimeout, int maxConnections)
    {
        ArgumentNullException.ThrowIfNull(address);
        ArgumentNullException.ThrowIfNull(snapshot);
        ArgumentNullException.ThrowIfNull(logger);
        if (port is < 0 or > IPEndPoint.MaxPort)
            throw new ArgumentOutOfRangeException(nameof(port), port, "must be 0..65535");
        if (readTimeout <= TimeSpan.Zero)
            throw new ArgumentOutOfRangeException(nameof(readTimeout), "must be positive");
        ArgumentOutOfRangeException.ThrowIfLessThan(maxConnections, 1);

        _address = address;
        _requestedPort = port;
        _port = port;
        _snapshot = snapshot;
        _logger = logger;
        _readTimeout = readTimeout;
        _maxConnections = maxConnections;
        _slots = new SemaphoreSlim(maxConnections, maxConnections);
    }

    /// <summary>
    /// Answers <c>POST /failsafe?leader=NODE&amp;nonce=N&amp;proof=P</c> (Patroni 3's failsafe idea): a leader that cannot
    /// reach etcd asks every member whether it streams from it. The delegate checks the ask's proof
    /// (<see cref="FailsafeProof"/>) and confirms (promising not to take the leader key for a TTL) with a proof of its
    /// own, refuses with the reason (409), or finds the ask unsigned (403). Null: the endpoint is not served.
    /// </summary>
    public Func<FailsafeAsk, FailsafeReply>? Failsafe { get; init; }

    /// <summary>
    /// Answers <c>GET /wal-position</c> with the WAL position PostgreSQL has right now (<c>{"wal_position": N}</c>, bytes:
    /// a primary's current, a standby's furthest received or replayed), asked on the agent's own pooled connection, for
    /// at most a second. A node about to take a free leader key asks its members this way (HA rule 5): cheaper than a
    /// new PostgreSQL session of its own, which took 130-470 ms on a loaded machine. Null: the endpoint is not served.
    /// </summary>
    public Func<CancellationToken, Task<long>>? WalPosition { get; init; }

    private static readonly TimeSpan WalPositionTimeout = TimeSpan.FromSeconds(1);

    private static bool AsksWalPosition(string head) =>
        HttpRequestHead.TryParse(head, out var request, out _) && request.Method == "GET" && request.Path == "/wal-position";

    private async Task<byte[]> AnswerWalPositionAsync()
    {
        using var timeout = new CancellationTokenSource(WalPositionTimeout);
        var output = new ArrayBufferWriter<byte>();
        int status;
        using (var w = new Utf8JsonWriter(output))
        {
            w.WriteStartObject();
            try
            {
                var lsn = await WalPosition!(timeout.Token).WaitAsync(timeout.Token).ConfigureAwait(false);
                w.WriteNumber("wal_position", lsn);
                status = 200;
            }
            catch (Exception ex)
            {
                w.WriteString("reason", ex is OperationCanceledException ? "PostgreSQL did not answer within 1 s" : ex.Message);
                status = 503;
            }
            w.WriteEndObject();
        }
        return Response(status, output.WrittenSpan.ToArray());
    }

    /// <summary>The certificate and TLS policy for each new connection (read per connection: certificates renew). Null: plain HTTP.</summary>
    public Func<HealthTls>? Tls { get; init; }

    /// <summary>The port listened on: the one asked for, or the kernel's pick once started with port 0.</summary>
    public int Port => Volatile.Read(ref _port);

    /// <summary>Binds and starts answering. Throws <see cref="InvalidOperationException"/> naming the port if it cannot bind.</summary>
    public Task StartAsync(CancellationToken ct)
    {
        ct.ThrowIfCancellationRequested();
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_started)
                throw new InvalidOperationException("The node health server is already started.");

            var socket = new Socket(_address.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
            try
            {
                // No SO_REUSEPORT (unlike the router): a second server on the same port must fail loudly, not share it.
                socket.Bind(new IPEndPoint(_address, _requestedPort));
                socket.Listen(ListenBacklog);
            }
            catch (SocketException ex)
            {
                socket.Dispose();
                throw new InvalidOperationException(
                    $"Node health API cannot listen on {_address}:{_requestedPort}: {ex.Message} ({ex.SocketErrorCode})", ex);
            }

            _listener = socket;
            Volatile.Write(ref _port, ((IPEndPoint)socket.LocalEndPoint!).Port);
            _started = true;
            // Task.Run: the loop must live on the thread pool, not on whatever scheduler the caller runs on (e.g. an actor's).
            _acceptLoop = Task.Run(() => AcceptLoopAsync(socket));
        }

        _logger.LogInformation("Node health API listening on {Address}:{Port}", _address, Port);
        return Task.CompletedTask;
    }

    public async ValueTask DisposeAsync()
    {
        Task? acceptLoop;
        lock (_gate)
        {
            if (_disposed)
                return;
            _disposed = true;
            acceptLoop = _acceptLoop;
        }

        _stopping.Cancel();
        _listener?.Dispose();
        if (acceptLoop is null)
            return;
        await acceptLoop.ConfigureAwait(false);

        // Every connection holds a slot until its socket is closed; having them all back means none is left.
        for (var i = 0; i < _maxConnections; i++)
            await _slots.WaitAsync().ConfigureAwait(false);
    }

    private async Task AcceptLoopAsync(Socket listener)
    {
        var ct = _stopping.Token;
        while (!ct.IsCancellationRequested)
        {
            try
            {
                await _slots.WaitAsync(ct).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                break;
            }

            Socket client;
            try
            {
                client = await listener.AcceptAsync(ct).ConfigureAwait(false);
            }
            catch (Exception ex) when (ct.IsCancellationRequested || ex is ObjectDisposedException)
            {
                _slots.Release();
                break;
            }
            catch (SocketException ex)
            {
                _slots.Release();
                // E.g. out of file descriptors or a client that reset before accept: back off briefly, keep serving.
                _logger.LogWarning("Node health API accept failed on port {Port}: {Error}", Port, ex.Message);
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

            // Off the accept loop so a slow snapshot delegate cannot hold up accepting the next check.
            _ = Task.Run(() => ServeAsync(client), CancellationToken.None);
        }
    }

    /// <summary>Answers one request on <paramref name="client"/> and closes it; always gives the slot back.</summary>
    private async Task ServeAsync(Socket client)
    {
        var buffer = ArrayPool<byte>.Shared.Rent(MaxHeadBytes);
        SslStream? ssl = null;
        try
        {
            client.NoDelay = true;
            var tls = Tls?.Invoke() ?? HealthTls.Plain;
            await using var network = new NetworkStream(client, ownsSocket: false);
            Stream stream = network;
            var first = await PeekAsync(client, buffer).ConfigureAwait(false);
            if (first is null)
                return; // closed or silent before a byte (port scans, TCP-only checks): just close
            if (first == TlsHandshakeRecord)
            {
                if (tls.Certificate is not { } certificate)
                    return; // TLS asked of a node that has no certificate yet: nothing it could read
                ssl = new SslStream(stream, leaveInnerStreamOpen: true);
                using var handshake = CancellationTokenSource.CreateLinkedTokenSource(_stopping.Token);
                handshake.CancelAfter(_readTimeout);
                await ssl.AuthenticateAsServerAsync(new SslServerAuthenticationOptions
                {
                    ServerCertificate = certificate,
                    EnabledSslProtocols = Dingo.Security.PemTls.Protocols,
                    ClientCertificateRequired = false,
                }, handshake.Token).ConfigureAwait(false);
                stream = ssl;
            }
            else if (tls.Required)
            {
                await SendAndDrainAsync(client, stream, null, Error(426, "this node's health API takes HTTPS only (dingo.postgres.require-tls): connect with TLS and the platform CA"), buffer).ConfigureAwait(false);
                return;
            }
            var (outcome, headLength) = await ReadHeadAsync(stream, buffer).ConfigureAwait(false);
            var head = outcome == ReadOutcome.Complete ? Encoding.Latin1.GetString(buffer, 0, headLength) : "";
            byte[]? response = outcome switch
            {
                ReadOutcome.Complete when WalPosition is not null && AsksWalPosition(head) => await AnswerWalPositionAsync().ConfigureAwait(false),
                ReadOutcome.Complete => Answer(head),
                ReadOutcome.TooLarge => Error(431, "request header too large"),
                ReadOutcome.Truncated => Error(400, "incomplete request"),
                ReadOutcome.TimedOut => Error(408, "request timeout"),
                // Closed before sending anything, or timed out without a byte: just close.
                _ => null,
            };
            if (response is not null)
                await SendAndDrainAsync(client, stream, ssl, response, buffer).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException or OperationCanceledException or IOException or AuthenticationException)
        {
            // Client reset, slow reader, a failed handshake or shutdown: nothing useful to do but close.
        }
        catch (Exception ex)
        {
            _logger.LogWarning(ex, "Node health API request failed on port {Port}", Port);
        }
        finally
        {
            if (ssl is not null) await ssl.DisposeAsync().ConfigureAwait(false);
            ArrayPool<byte>.Shared.Return(buffer);
            client.Dispose();
            _slots.Release();
        }
    }

    /// <summary>The first byte of a TLS connection: a handshake record.</summary>
    private const byte TlsHandshakeRecord = 0x16;

    /// <summary>The connection's first byte, left unread; null when it closes or sends nothing within the read timeout.</summary>
    private async Task<byte?> PeekAsync(Socket client, byte[] buffer)
    {
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(_stopping.Token);
        deadline.CancelAfter(_readTimeout);
        try
        {
            var read = await client.ReceiveAsync(buffer.AsMemory(0, 1), SocketFlags.Peek, deadline.Token).ConfigureAwait(false);
            return read == 0 ? null : buffer[0];
        }
        catch (OperationCanceledException) when (!_stopping.IsCancellationRequested)
        {
            return null;
        }
    }

    private enum ReadOutcome { Complete, Closed, Truncated, TooLarge, TimedOut, Silent }

    /// <summary>
    /// Reads up to the blank line ending the request head. One deadline covers the whole head, so a client
    /// trickling a byte at a time is cut just like a silent one.
    /// </summary>
    private async Task<(ReadOutcome Outcome, int HeadLength)> ReadHeadAsync(Stream stream, byte[] buffer)
    {
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(_stopping.Token);
        deadline.CancelAfter(_readTimeout);
        var filled = 0;
        var scanned = 0;
        while (true)
        {
            int read;
            try
            {
                read = await stream.ReadAsync(buffer.AsMemory(filled, MaxHeadBytes - filled), deadline.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (!_stopping.IsCancellationRequested)
            {
                return (filled == 0 ? ReadOutcome.Silent : ReadOutcome.TimedOut, 0);
            }

            if (read == 0)
                return (filled == 0 ? ReadOutcome.Closed : ReadOutcome.Truncated, 0);
            filled += read;

            // Bare LF line ends are accepted too (RFC 9112 §2.2 lets recipients), so the head ends at LF [CR] LF.
            for (; scanned < filled; scanned++)
            {
                if (buffer[scanned] != (byte)'\n')
                    continue;
                if ((scanned >= 1 && buffer[scanned - 1] == (byte)'\n')
                    || (scanned >= 2 && buffer[scanned - 1] == (byte)'\r' && buffer[scanned - 2] == (byte)'\n'))
                    return (ReadOutcome.Complete, scanned + 1);
            }

            if (filled == MaxHeadBytes)
                return (ReadOutcome.TooLarge, 0);
        }
    }

    private async Task SendAndDrainAsync(Socket client, Stream stream, SslStream? ssl, byte[] response, byte[] buffer)
    {
        using (var write = CancellationTokenSource.CreateLinkedTokenSource(_stopping.Token))
        {
            // A client that never reads must not keep the slot: the answer is small, but its window may be zero.
            write.CancelAfter(WriteTimeout);
            await stream.WriteAsync(response, write.Token).ConfigureAwait(false);
            await stream.FlushAsync(write.Token).ConfigureAwait(false);
            // TLS: close_notify first, so the client knows the answer is whole.
            if (ssl is not null) await ssl.ShutdownAsync().WaitAsync(write.Token).ConfigureAwait(false);
        }

        client.Shutdown(SocketShutdown.Send);
        // What the client still sends is discarded from the socket itself (TLS records included: nothing is read from them).
        using var drain = CancellationTokenSource.CreateLinkedTokenSource(_stopping.Token);
        drain.CancelAfter(DrainTimeout);
        var drained = 0;
        while (drained < MaxDrainBytes)
        {
            var read = await client.ReceiveAsync(buffer.AsMemory(0, MaxHeadBytes), SocketFlags.None, drain.Token).ConfigureAwait(false);
            if (read == 0)
                return;
            drained += read;
        }
    }

    /// <summary>Parses the request head and builds the whole response.</summary>
    private byte[] Answer(string head)
    {
        if (!HttpRequestHead.TryParse(head, out var request, out var parseStatus))
            return Error(parseStatus, parseStatus == 505 ? "HTTP version not supported" : "malformed request");

        if (request.Method == "POST" && request.Path == "/failsafe" && Failsafe is not null) return AnswerFailsafe(request.Query);
        var withBody = request.Method == "GET";
        if (!withBody && request.Method is not ("HEAD" or "OPTIONS"))
            return Error(405, "method not allowed", allow: true);

        // "OPTIONS *" asks about the server as a whole, not about the node.
        if (request.Target == "*")
            return request.Method == "OPTIONS" ? Response(200, [], allow: true) : Error(400, "malformed request");

        if (request.Path == "/metrics") return AnswerMetrics(withBody);
        if (!Endpoints.TryGetValue(request.Path, out var endpoint))
            return Error(404, "not found", withBody);

        if (!HealthQuery.TryParse(request.Query, out var query, out var queryError))
            return Error(400, queryError, withBody);

        NodeHealth health;
        byte[] body;
        try
        {
            // A null from a delegate declared non-null is a broken snapshot, same as a throw.
            health = _snapshot() ?? throw new InvalidOperationException("snapshot returned null");
            body = StatusJson(health);
            if (Interlocked.Exchange(ref _snapshotFailing, 0) != 0)
                _logger.LogInformation("Node health snapshot available again on port {Port}", Port);
        }
        catch (Exception ex)
        {
            // Logged loudly once per outage: checkers poll every second or two and would flood the log.
            if (Interlocked.Exchange(ref _snapshotFailing, 1) == 0)
                _logger.LogWarning(ex, "Node health snapshot failed on port {Port}; answering 503 until it recovers", Port);
            else
                _logger.LogDebug("Node health snapshot still failing on port {Port}: {Error}", Port, ex.Message);
            return Error(503, "node status unavailable", withBody);
        }

        var status = Evaluate(endpoint, health, query);
        // HEAD and OPTIONS answer with the status alone, as Patroni does: HAProxy's classic
        // "option httpchk OPTIONS /primary" reads nothing else.
        return withBody
            ? Response(status, body)
            : Response(status, [], contentLength: request.Method == "HEAD" ? body.Length : 0);
    }

    /// <summary>The node's figures in Prometheus' text format under Patroni's metric names, for dashboards made for Patroni.</summary>
    private byte[] AnswerMetrics(bool withBody)
    {
        NodeHealth health;
        try { health = _snapshot() ?? throw new InvalidOperationException("snapshot returned null"); }
        catch (Exception ex)
        {
            _logger.LogDebug("Node health snapshot failed on port {Port}: {Error}", Port, ex.Message);
            return Error(503, "node status unavailable", withBody);
        }
        var body = PatroniMetrics(health);
        return withBody
            ? Response(200, body, contentType: "text/plain; version=0.0.4; charset=utf-8")
            : Response(200, [], contentLength: body.Length, contentType: "text/plain; version=0.0.4; charset=utf-8");
    }

    /// <summary>
    /// Patroni's /metrics for what this node knows: running, primary, replica, sync standby, WAL positions, timeline,
    /// cluster unlocked; labelled scope (the instance) and name (the node), as Patroni labels them. Paused and standby
    /// leader are always 0: this platform has neither.
    /// </summary>
    internal static byte[] PatroniMetrics(NodeHealth h)
    {
        var role = h.Role;
        var labels = $"{{scope=\"{EscapeLabel(h.InstanceId)}\",name=\"{EscapeLabel(h.NodeId)}\"}}";
        var sb = new StringBuilder(2048);
        void Gauge(string name, string help, long? value)
        {
            if (value is null) return;
            sb.Append("# HELP ").Append(name).Append(' ').Append(help).Append('\n');
            sb.Append("# TYPE ").Append(name).Append(" gauge\n");
            sb.Append(name).Append(labels).Append(' ').Append(value.Value.ToString(CultureInfo.InvariantCulture)).Append('\n');
        }
        Gauge("patroni_postgres_running", "Value is 1 if Postgres is running, 0 otherwise.", h.State == NodeState.Running ? 1 : 0);
        Gauge("patroni_primary", "Value is 1 if this node is the leader, 0 otherwise.", role == NodeRole.Primary && h.IsLeader ? 1 : 0);
        Gauge("patroni_master", "Value is 1 if this node is the leader, 0 otherwise.", role == NodeRole.Primary && h.IsLeader ? 1 : 0);
        Gauge("patroni_standby_leader", "Value is 1 if this node is the standby_leader, 0 otherwise.", 0);
        Gauge("patroni_replica", "Value is 1 if this node is a replica, 0 otherwise.", role == NodeRole.Replica ? 1 : 0);
        Gauge("patroni_sync_standby", "Value is 1 if this node is a sync standby replica, 0 otherwise.", role == NodeRole.Replica && h.IsSyncStandby ? 1 : 0);
        Gauge("patroni_xlog_location", "Current location of the Postgres transaction log, 0 if this node is not the leader.", role == NodeRole.Primary ? h.WalLsn ?? 0 : 0);
        Gauge("patroni_xlog_received_location", "Current location of the received Postgres transaction log, 0 if this node is not a replica.", role == NodeRole.Replica ? h.WalLsn ?? 0 : 0);
        Gauge("patroni_postgres_timeline", "Postgres timeline of this node (if running), 0 otherwise.", h.State == NodeState.Running ? h.Timeline ?? 0 : 0);
        Gauge("patroni_cluster_unlocked", "Value is 1 if the cluster is unlocked, 0 if locked.", h.LeaderNodeId is null && !h.IsLeader ? 1 : 0);
        Gauge("patroni_is_paused", "Value is 1 if auto failover is disabled, 0 otherwise.", 0);
        return Encoding.UTF8.GetBytes(sb.ToString());
    }

    /// <summary>A label value as Prometheus' text format wants it: backslash, double quote and newline escaped.</summary>
    internal static string EscapeLabel(string value) => value.Replace("\\", "\\\\", StringComparison.Ordinal)
        .Replace("\"", "\\\"", StringComparison.Ordinal).Replace("\n", "\\n", StringComparison.Ordinal);

    /// <summary>
    /// 200 {"confirmed": true, "proof": …} when this node follows the asking leader; 409 with the reason when it does not;
    /// 403 when the ask is not signed with the instance's key; 400 when it lacks the leader or the nonce.
    /// </summary>
    private byte[] AnswerFailsafe(string query)
    {
        string? leader = null, nonce = null, proof = null;
        foreach (var part in query.Split('&', StringSplitOptions.RemoveEmptyEntries))
        {
            var eq = part.IndexOf('=');
            if (eq <= 0) continue;
            var value = Uri.UnescapeDataString(part[(eq + 1)..]);
            switch (part[..eq])
            {
                case "leader": leader ??= value; break;
                case "nonce": nonce ??= value; break;
                case "proof": proof ??= value; break;
            }
        }
        if (string.IsNullOrEmpty(leader) || leader.Length > 128) return Error(400, "failsafe needs ?leader=<node id>", withBody: true);
        if (string.IsNullOrEmpty(nonce) || nonce.Length > 128) return Error(400, "failsafe needs ?nonce=<a fresh value>", withBody: true);
        FailsafeReply reply;
        try { reply = Failsafe!(new FailsafeAsk(leader, nonce, proof is { Length: <= 256 } ? proof : null)); }
        catch (Exception ex) { reply = FailsafeReply.Refused("cannot tell: " + ex.Message); }
        var output = new ArrayBufferWriter<byte>();
        using (var w = new Utf8JsonWriter(output))
        {
            w.WriteStartObject();
            w.WriteBoolean("confirmed", reply.Refusal is null);
            if (reply.Refusal is not null) w.WriteString("reason", reply.Refusal);
            else w.WriteString("proof", reply.Proof);
            w.WriteEndObject();
        }
        return Response(reply.Refusal is null ? 200 : reply.Forbidden ? 403 : 409, output.WrittenSpan.ToArray());
    }

    /// <summary>The status code an endpoint gives for a snapshot, following Patroni's REST API.</summary>
    internal static int Evaluate(Endpoint endpoint, NodeHealth health, HealthQuery query)
    {
        var running = health.State == NodeState.Running;
        var role = health.Role;
        var primary = running && role == NodeRole.Primary && health.IsLeader;
        var lagOk = query.MaxLagBytes is not { } max || (health.LagBytes is { } lag && lag <= max);
        var stateOk = query.ReplicationState is not { } wanted
            || (health.Streaming && string.Equals(wanted, "streaming", StringComparison.Ordinal));
        // This node has no tags, so like Patroni any tag_* filter excludes it from the replica-ish endpoints.
        var replica = running && role == NodeRole.Replica && health.Streaming && lagOk && stateOk && !query.HasTagFilter;

        var ok = endpoint switch
        {
            Endpoint.Primary => primary,
            Endpoint.Leader => health.IsLeader,
            Endpoint.Replica => replica,
            Endpoint.ReadOnly => (primary && !query.HasTagFilter) || replica,
            Endpoint.ReadOnlySync => (primary && !query.HasTagFilter) || (replica && health.IsSyncStandby),
            Endpoint.Sync => replica && health.IsSyncStandby,
            Endpoint.Async => replica && !health.IsSyncStandby,
            Endpoint.Health => running && !query.HasTagFilter,
            Endpoint.Status => true,
            _ => false,
        };
        return ok ? 200 : 503;
    }

    /// <summary>The snapshot as JSON, shaped like Patroni's status document so tools reading it keep working.</summary>
    internal static byte[] StatusJson(NodeHealth h)
    {
        var role = h.Role;
        var output = new ArrayBufferWriter<byte>(512);
        using (var w = new Utf8JsonWriter(output))
        {
            w.WriteStartObject();
            w.WriteString("state", h.State.Wire());
            w.WriteString("role", role.Wire());
            WriteNumber(w, "timeline", h.Timeline);
            w.WriteStartObject("xlog");
            // Patroni: a primary reports where it writes, a replica where it has received up to.
            WriteNumber(w, role == NodeRole.Replica ? "received_location" : "location", h.WalLsn);
            w.WriteEndObject();
            if (role == NodeRole.Replica)
            {
                if (h.Streaming)
                    w.WriteString("replication_state", "streaming");
                else
                    w.WriteNull("replication_state");
                w.WriteBoolean("sync_standby", h.IsSyncStandby);
            }
            w.WriteBoolean("is_leader", h.IsLeader);
            WriteNumber(w, "lag", h.LagBytes);
            w.WriteString("leader", h.LeaderNodeId);
            if (h.LeaderNodeId is null && !h.IsLeader)
                w.WriteBoolean("cluster_unlocked", true);
            w.WriteString("node", h.NodeId);
            w.WriteString("instance", h.InstanceId);
            w.WriteStartObject("patroni");
            w.WriteString("scope", h.InstanceId);
            w.WriteString("name", h.NodeId);
            w.WriteEndObject();
            w.WriteStartObject("dingo");
            w.WriteString("decision", h.Decision);
            w.WriteEndObject();
            w.WriteEndObject();
        }
        return output.WrittenSpan.ToArray();
    }

    private static void WriteNumber(Utf8JsonWriter w, string name, long? value)
    {
        if (value is { } v)
            w.WriteNumber(name, v);
        else
            w.WriteNull(name);
    }

    private static byte[] Error(int status, string message, bool withBody = true, bool allow = false)
    {
        byte[] body = [];
        if (withBody)
        {
            var output = new ArrayBufferWriter<byte>(64);
            using (var w = new Utf8JsonWriter(output))
            {
                w.WriteStartObject();
                if (status == 503)
                {
                    // Still a status document: checkers and humans see why the node is out.
                    w.WriteString("state", "unknown");
                    w.WriteString("role", "unknown");
                }
                w.WriteString("error", message);
                w.WriteEndObject();
            }
            body = output.WrittenSpan.ToArray();
        }
        return Response(status, body, allow: allow);
    }

    private static byte[] Response(int status, byte[] body, int? contentLength = null, bool allow = false, string contentType = "application/json")
    {
        var head = new StringBuilder(192);
        head.Append("HTTP/1.1 ").Append(status.ToString(CultureInfo.InvariantCulture)).Append(' ').Append(Reason(status)).Append("\r\n");
        head.Append("Date: ").Append(DateTime.UtcNow.ToString("R", CultureInfo.InvariantCulture)).Append("\r\n");
        head.Append("Content-Type: ").Append(contentType).Append("\r\n");
        head.Append("Content-Length: ").Append((contentLength ?? body.Length).ToString(CultureInfo.InvariantCulture)).Append("\r\n");
        head.Append("Cache-Control: no-store\r\n");
        if (allow)
            head.Append("Allow: ").Append(AllowedMethods).Append("\r\n");
        head.Append("Connection: close\r\n\r\n");

        var bytes = new byte[Encoding.ASCII.GetByteCount(head.ToString()) + body.Length];
        var written = Encoding.ASCII.GetBytes(head.ToString(), bytes);
        body.CopyTo(bytes, written);
        return bytes;
    }

    private static string Reason(int status) => status switch
    {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        409 => "Conflict",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    };

    internal enum Endpoint { Primary, Leader, Replica, ReadOnly, ReadOnlySync, Sync, Async, Health, Status }
}

/// <summary>The parts of a request line and header block the health API needs; headers are only validated.</summary>
internal readonly record struct HttpRequestHead(string Method, string Target, string Path, string Query)
{
    /// <summary>Parses a complete head (ending in a blank line); on failure gives the status to answer (400 or 505).</summary>
    public static bool TryParse(string head, out HttpRequestHead request, out int errorStatus)
    {
        request = default;
        errorStatus = 400;
        var lines = head.Split('\n');
        // Lines end in CRLF or bare LF; a CR anywhere else is malformed (request smuggling territory).
        for (var i = 0; i < lines.Length; i++)
        {
            var line = lines[i];
            if (line.EndsWith('\r'))
                line = line[..^1];
            if (line.Contains('\r'))
                return false;
            lines[i] = line;
        }

        var parts = lines[0].Split(' ');
        if (parts.Length != 3 || !IsToken(parts[0]) || parts[1].Length == 0 || parts[1].Any(c => c <= ' ' || c >= '\x7f'))
            return false;

        var version = parts[2];
        if (version is not ("HTTP/1.0" or "HTTP/1.1"))
        {
            if (version.Length == 8 && version.StartsWith("HTTP/", StringComparison.Ordinal)
                && char.IsAsciiDigit(version[5]) && version[6] == '.' && char.IsAsciiDigit(version[7]))
                errorStatus = 505;
            return false;
        }

        // lines[^1] and lines[^2] are the empty tail after the final line break(s).
        for (var i = 1; i < lines.Length; i++)
        {
            var line = lines[i];
            if (line.Length == 0)
                continue;
            var colon = line.IndexOf(':');
            // No obs-fold, no space before the colon, a token name and no NULs (RFC 9112 §5).
            if (colon <= 0 || !IsToken(line[..colon]) || line.Contains('\0'))
                return false;
        }

        var target = parts[1];
        if (target.StartsWith("http://", StringComparison.OrdinalIgnoreCase) || target.StartsWith("https://", StringComparison.OrdinalIgnoreCase))
        {
            // Absolute form (proxies send it): keep only the path and query.
            var afterScheme = target.IndexOf("//", StringComparison.Ordinal) + 2;
            var slash = target.IndexOfAny(['/', '?'], afterScheme);
            target = slash < 0 ? "/" : target[slash] == '?' ? "/" + target[slash..] : target[slash..];
        }
        else if (target != "*" && !target.StartsWith('/'))
        {
            return false;
        }

        var hash = target.IndexOf('#');
        if (hash >= 0)
            target = target[..hash];
        var question = target.IndexOf('?');
        var path = question < 0 ? target : target[..question];
        var query = question < 0 ? "" : target[(question + 1)..];
        // "/replica/" is "/replica", as Patroni's substring matching would have it.
        if (path.Length > 1 && path.EndsWith('/'))
            path = path[..^1];

        request = new HttpRequestHead(parts[0], target, path, query);
        return true;
    }

    private static bool IsToken(string s)
    {
        if (s.Length == 0)
            return false;
        foreach (var c in s)
        {
            if (!(char.IsAsciiLetterOrDigit(c) || "!#$%&'*+-.^_`|~".Contains(c)))
                return false;
        }
        return true;
    }
}

/// <summary>The query parameters the health endpoints understand.</summary>
/// <param name="MaxLagBytes">from <c>lag=</c>: the most a replica may be behind.</param>
/// <param name="ReplicationState">from <c>replication_state=</c>: the replication state required (Patroni knows "streaming").</param>
/// <param name="HasTagFilter">any <c>tag_*=</c> parameter: Patroni's filter on member tags.</param>
internal readonly record struct HealthQuery(long? MaxLagBytes, string? ReplicationState, bool HasTagFilter)
{
    public static bool TryParse(string query, out HealthQuery result, out string error)
    {
        result = default;
        error = "";
        long? maxLag = null;
        string? replicationState = null;
        var hasTags = false;
        foreach (var pair in query.Split('&', StringSplitOptions.RemoveEmptyEntries))
        {
            var eq = pair.IndexOf('=');
            string key, value;
            try
            {
                key = Uri.UnescapeDataString((eq < 0 ? pair : pair[..eq]).Replace('+', ' '));
                value = eq < 0 ? "" : Uri.UnescapeDataString(pair[(eq + 1)..].Replace('+', ' '));
            }
            catch (UriFormatException)
            {
                error = "malformed query";
                return false;
            }

            // Repeated parameters: the first wins, as in Patroni.
            if (key == "lag" && maxLag is null)
            {
                // Patroni ignores a lag it cannot parse; a typo silently turning the lag check off is worse than a
                // visibly failing check, so this is refused.
                if (ParseByteSize(value) is not { } parsed)
                {
                    error = $"invalid lag '{value}': use bytes or a size such as 16kB, 64MB, 1GB";
                    return false;
                }
                maxLag = parsed;
            }
            else if (key == "replication_state")
            {
                replicationState ??= value;
            }
            else if (key.StartsWith("tag_", StringComparison.Ordinal))
            {
                hasTags = true;
            }
        }

        result = new HealthQuery(maxLag, replicationState, hasTags);
        return true;
    }

    /// <summary>
    /// "1048576", "1024kB", "10MB", "1GB", "1.5 MB": bytes, with PostgreSQL's units (B, kB, MB, GB, TB; powers of 1024),
    /// case-insensitive. Null if not a non-negative size that fits in a long.
    /// </summary>
    public static long? ParseByteSize(string text)
    {
        var s = text.Trim();
        var end = 0;
        while (end < s.Length && (char.IsAsciiDigit(s[end]) || s[end] == '.'))
            end++;
        var number = s[..end];
        var unit = s[end..].TrimStart();
        if (number.Length == 0 || !char.IsAsciiDigit(number[0]) || number.Count(c => c == '.') > 1
            || !decimal.TryParse(number, NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out var value))
            return null;

        decimal multiplier = unit.ToUpperInvariant() switch
        {
            "" or "B" => 1m,
            "KB" => 1024m,
            "MB" => 1024m * 1024,
            "GB" => 1024m * 1024 * 1024,
            "TB" => 1024m * 1024 * 1024 * 1024,
            _ => 0m,
        };
        if (multiplier == 0m)
            return null;
        try
        {
            var bytes = decimal.Floor(value * multiplier);
            return bytes > long.MaxValue ? null : (long)bytes;
        }
        catch (OverflowException)
        {
            return null;
        }
    }
}
