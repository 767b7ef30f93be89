using System.Buffers;
using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using System.Threading.Channels;
using Akka.Actor;
using Akka.Actor.Setup;
using Akka.Configuration;
using Akka.Event;
using Akka.Remote.Transport;
using Google.Protobuf;

namespace Dingo.Membership;

/// <summary>The platform's Akka TLS identity, handed to <see cref="TlsTransport"/> through the actor system's setup.</summary>
public sealed class AkkaTlsSetup(AkkaTls tls) : Setup
{
    public AkkaTls Tls { get; } = tls;
}

/// <summary>
/// Akka remoting over mutual TLS on plain sockets and <see cref="SslStream"/>, in place of Akka.NET 1.5's DotNetty TLS
/// transport (akka.remote.dot-netty.tcp.transport-class, <see cref="AkkaTls.Hocon"/>). Addresses stay akka.ssl.tcp and
/// the settings stay under akka.remote.dot-netty.tcp (hostname, port, public-hostname, public-port, connection-timeout,
/// maximum-frame-size); frames are a 4-byte little-endian length and the payload, as DotNetty's.
///
/// Two faults of the DotNetty transport made this necessary (both reproduced against Akka.Remote 1.5.74 and 1.5.75):
/// <list type="bullet">
/// <item>An inbound TLS connection could lose the peer's first message: DotNetty's TLS handler reads on through its
/// handshake, and the Akka handshake that follows at once reached the transport before Akka had registered a reader for
/// the connection, which dropped it. The peer then waited out its handshake timeout (3 s here) and the 2 s gate before
/// trying again: the operator console, five at once against one broker, got an answer after 4–12 s in one query of
/// eight, and once not within 15 s. Here nothing is read from a connection before its reader is registered: what the
/// peer sent waits in the socket.</item>
/// <item>Any failed TLS handshake on an outbound connection shut the whole actor system down (CoordinatedShutdown, exit
/// code 79): a peer killed or restarted during the handshake, a peer whose certificate our CA does not sign, or anything
/// else answering on a member's address ended the broker or cell that connected. Here such an association fails like
/// a refused connection (Akka gates the address and tries again), and the failure is logged with its reason.</item>
/// </list>
/// TLS sessions are never resumed: every connection presents and checks a certificate against the platform CA.
/// </summary>
public sealed class TlsTransport : Akka.Remote.Transport.Transport
{
    /// <summary>How every failed TLS handshake this transport logs begins (the console's log filter drops them).</summary>
    public const string HandshakeFailedPrefix = "Akka TLS: handshake with ";

    private const int HeaderBytes = 4;
    /// <summary>Messages queued on a connection are written together up to this many bytes (one TLS record or a few).</summary>
    private const int BatchBytes = 64 * 1024;
    /// <summary>How long a disassociating connection may take to write what was queued before it is cut.</summary>
    private static readonly TimeSpan DrainTimeout = TimeSpan.FromSeconds(2);

    private readonly AkkaTls _tls;
    private readonly ILoggingAdapter _log;
    private readonly string _hostname;
    private readonly string? _publicHostname;
    private readonly int _port;
    private readonly int? _publicPort;
    private readonly TimeSpan _connectTimeout;
    private readonly int _maxFrame;
    private readonly TaskCompletionSource<IAssociationEventListener> _listener = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly CancellationTokenSource _stopping = new();
    private readonly ConcurrentDictionary<TlsAssociationHandle, byte> _handles = new();
    private readonly SslStreamCertificateContext _certificate;
    private Socket? _server;
    private Address? _localAddress;

    public TlsTransport(ActorSystem system, Akka.Configuration.Config config)
    {
        System = system;
        Config = config;
        var setup = system.Settings.Setup.Get<AkkaTlsSetup>();
        _tls = setup.HasValue ? setup.Value.Tls
            : throw new ConfigurationException($"{nameof(TlsTransport)} needs the platform's Akka TLS identity in the actor system's setup (AkkaTls.Setup())");
        _log = Akka.Event.Logging.GetLogger(system, typeof(TlsTransport));
        // Built once (offline: the chain is ours and needs no download), not per handshake.
        _certificate = SslStreamCertificateContext.Create(_tls.Certificate, additionalCertificates: null, offline: true);
        SchemeIdentifier = "ssl.tcp";
        var hostname = config.GetString("hostname", null);
        _hostname = string.IsNullOrWhiteSpace(hostname) ? IPAddress.Any.ToString() : hostname;
        var publicHostname = config.GetString("public-hostname", null);
        _publicHostname = string.IsNullOrWhiteSpace(publicHostname) ? null : publicHostname;
        _port = config.GetInt("port", 2552);
        _publicPort = config.GetInt("public-port", 0) is > 0 and var p ? p : null;
        _connectTimeout = config.GetTimeSpan("connection-timeout", TimeSpan.FromSeconds(15), allowInfinite: false);
        var frame = config.GetByteSize("maximum-frame-size", null) ?? 128000;
        if (frame < 32000 || frame > int.MaxValue - HeaderBytes)
            throw new ConfigurationException($"akka.remote.dot-netty.tcp.maximum-frame-size must be between 32000 bytes and 2 GiB, not {frame}");
        _maxFrame = (int)frame;
    }

    public override long MaximumPayloadBytes => _maxFrame;

    public override bool IsResponsibleFor(Address remote) => true;

    public override Task<(Address, TaskCompletionSource<IAssociationEventListener>)> Listen()
    {
        var endpoint = IPAddress.TryParse(_hostname, out var ip)
            ? new IPEndPoint(ip, _port)
            : new IPEndPoint(Dns.GetHostAddresses(_hostname).FirstOrDefault()
                ?? throw new ConfigurationException($"akka.remote.dot-netty.tcp.hostname {_hostname} resolves to no address"), _port);
        var server = new Socket(endpoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            if (endpoint.AddressFamily == AddressFamily.InterNetworkV6) server.DualMode = true;
            server.Bind(endpoint);
            server.Listen(4096);
        }
        catch
        {
            server.Dispose();
            throw;
        }
        _server = server;
        var bound = (IPEndPoint)server.LocalEndPoint!;
        _localAddress = new Address(SchemeIdentifier, System.Name, HostOf(_publicHostname ?? _hostname), _publicPort ?? bound.Port);
        _ = Task.Run(AcceptAsync);
        return Task.FromResult<(Address, TaskCompletionSource<IAssociationEventListener>)>((_localAddress, _listener));
    }

    public override async Task<AssociationHandle> Associate(Address remoteAddress)
    {
        if (_localAddress is null) throw new InvalidAssociationException("the TLS transport is not listening yet");
        if (remoteAddress.Host is null || remoteAddress.Port is not { } port) throw new InvalidAssociationException($"no host and port in {remoteAddress}");
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(_stopping.Token);
        deadline.CancelAfter(_connectTimeout);
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        SslStream? ssl = null;
        var opened = false;
        try
        {
            try
            {
                // An IPv6 address is bracketed in an Akka address ([::1]); a name is resolved by the connect.
                if (IPAddress.TryParse(remoteAddress.Host.Trim('[', ']'), out var ip))
                    await socket.ConnectAsync(new IPEndPoint(ip, port), deadline.Token).ConfigureAwait(false);
                else
                    await socket.ConnectAsync(remoteAddress.Host, port, deadline.Token).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is SocketException or OperationCanceledException)
            {
                throw new InvalidAssociationException(deadline.IsCancellationRequested && !_stopping.IsCancellationRequested
                    ? $"connecting to {remoteAddress} timed out after {_connectTimeout.TotalSeconds:0.#}s"
                    : $"cannot connect to {remoteAddress}: {ex.Message}");
            }
            socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.KeepAlive, true);
            ssl = new SslStream(new NetworkStream(socket, ownsSocket: true), leaveInnerStreamOpen: false);
            var peer = remoteAddress.ToString();
            var refused = false;
            try
            {
                await ssl.AuthenticateAsClientAsync(new SslClientAuthenticationOptions
                {
                    TargetHost = remoteAddress.Host,
                    ClientCertificateContext = _certificate,
                    RemoteCertificateValidationCallback = (_, certificate, _, errors) => !(refused = !_tls.Accepts(certificate as X509Certificate2, errors, peer, _log)),
                    CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
                    AllowTlsResume = false,
                }, deadline.Token).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is AuthenticationException or IOException or OperationCanceledException or SocketException)
            {
                throw new InvalidAssociationException($"TLS handshake with {remoteAddress} failed: {HandshakeFailed(peer, ex, refused, deadline)}");
            }
            var handle = Open(ssl, socket, remoteAddress);
            opened = true;
            return handle;
        }
        finally
        {
            if (!opened)
            {
                if (ssl is not null) await ssl.DisposeAsync().ConfigureAwait(false);
                socket.Dispose();
            }
        }
    }

    public override Task<bool> Shutdown()
    {
        if (!_stopping.IsCancellationRequested) _stopping.Cancel();
        _server?.Dispose();
        foreach (var handle in _handles.Keys) handle.Abort();
        return Task.FromResult(true);
    }

    private async Task AcceptAsync()
    {
        IAssociationEventListener listener;
        try
        {
            // Akka registers its listener once every transport listens; nothing is accepted before.
            listener = await _listener.Task.WaitAsync(_stopping.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            return;
        }
        while (!_stopping.IsCancellationRequested)
        {
            Socket socket;
            try
            {
                socket = await _server!.AcceptAsync(_stopping.Token).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is OperationCanceledException or ObjectDisposedException or SocketException && _stopping.IsCancellationRequested)
            {
                return;
            }
            catch (SocketException ex)
            {
                // A connection reset between the kernel's accept and ours, or out of descriptors: go on accepting.
                _log.Warning("Akka TLS: accepting a connection failed: {0}", ex.Message);
                try { await Task.Delay(100, _stopping.Token).ConfigureAwait(false); }
                catch (OperationCanceledException) { return; }
                continue;
            }
            _ = Task.Run(() => InboundAsync(socket, listener));
        }
    }

    private async Task InboundAsync(Socket socket, IAssociationEventListener listener)
    {
        socket.NoDelay = true;
        var remote = (IPEndPoint)socket.RemoteEndPoint!;
        var peer = $"{HostOf(remote.Address)}:{remote.Port}";
        var ssl = new SslStream(new NetworkStream(socket, ownsSocket: true), leaveInnerStreamOpen: false);
        var refused = false;
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(_stopping.Token);
        deadline.CancelAfter(_connectTimeout);
        try
        {
            await ssl.AuthenticateAsServerAsync(new SslServerAuthenticationOptions
            {
                ServerCertificateContext = _certificate,
                ClientCertificateRequired = true,
                RemoteCertificateValidationCallback = (_, certificate, _, errors) => !(refused = !_tls.Accepts(certificate as X509Certificate2, errors, peer, _log)),
                CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
                AllowTlsResume = false,
            }, deadline.Token).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is AuthenticationException or IOException or OperationCanceledException or SocketException or ObjectDisposedException)
        {
            if (!_stopping.IsCancellationRequested) HandshakeFailed(peer, ex, refused, deadline);
            await ssl.DisposeAsync().ConfigureAwait(false);
            return;
        }
        var handle = Open(ssl, socket, new Address(SchemeIdentifier, System.Name, HostOf(remote.Address), remote.Port));
        listener.Notify(new InboundAssociation(handle));
    }

    private TlsAssociationHandle Open(SslStream ssl, Socket socket, Address remoteAddress)
    {
        var handle = new TlsAssociationHandle(_localAddress!, remoteAddress, ssl, socket, _maxFrame, _log, h => _handles.TryRemove(h, out _));
        _handles.TryAdd(handle, 0);
        if (_stopping.IsCancellationRequested) handle.Abort();
        else handle.Start();
        return handle;
    }

    /// <summary>A configured host name as an address names it (an IPv6 literal in brackets).</summary>
    private static string HostOf(string host) => IPAddress.TryParse(host, out var ip) ? HostOf(ip) : host;

    private static string HostOf(IPAddress address)
    {
        if (address.IsIPv4MappedToIPv6) address = address.MapToIPv4();
        return address.AddressFamily == AddressFamily.InterNetworkV6 ? $"[{address}]" : address.ToString();
    }

    /// <summary>
    /// Why a handshake with <paramref name="peer"/> failed, logged unless it was our check that refused its certificate
    /// (the check logged that with its reason).
    /// </summary>
    private string HandshakeFailed(string peer, Exception ex, bool refused, CancellationTokenSource deadline)
    {
        if (refused) return "its certificate was refused (logged above)";
        var reason = deadline.IsCancellationRequested && !_stopping.IsCancellationRequested
            ? $"no answer within {_connectTimeout.TotalSeconds:0.#}s"
            : ClusterConsole.Innermost(ex).Message;
        _log.Warning(HandshakeFailedPrefix + "{0} failed: {1}", peer, reason);
        return reason;
    }

    /// <summary>
    /// One TLS connection: a reader that starts only once Akka registered its listener (what the peer sent before waits
    /// in the socket), and a writer that sends queued messages in order, several per write when they queue up.
    /// </summary>
    private sealed class TlsAssociationHandle(Address localAddress, Address remoteAddress, SslStream ssl, Socket socket, int maxFrame,
        ILoggingAdapter log, Action<TlsAssociationHandle> closed) : AssociationHandle(localAddress, remoteAddress)
    {
        private readonly Channel<ByteString> _outbox = Channel.CreateUnbounded<ByteString>(new UnboundedChannelOptions { SingleReader = true });
        private readonly CancellationTokenSource _abort = new();
        private int _closed;
        private int _notified;
        private IHandleEventListener? _listener;

        public void Start()
        {
            _ = Task.Run(WriteLoopAsync);
            _ = Task.Run(ReadLoopAsync);
        }

        /// <summary>Queues the message (Akka keeps payloads within <see cref="MaximumPayloadBytes"/>); false once closing.</summary>
        public override bool Write(ByteString payload) => _outbox.Writer.TryWrite(payload);

#pragma warning disable CS0672 // Akka's abstract member is marked obsolete in favour of the overload that logs a reason.
        public override void Disassociate()
#pragma warning restore CS0672
        {
            // What was queued is written first (the peer reads Akka's disassociate message), within DrainTimeout.
            if (!_outbox.Writer.TryComplete()) return;
            _abort.CancelAfter(DrainTimeout);
        }

        /// <summary>Cuts the connection at once (the transport is shutting down).</summary>
        public void Abort()
        {
            _outbox.Writer.TryComplete();
            Close();
        }

        private async Task ReadLoopAsync()
        {
            var header = new byte[HeaderBytes];
            try
            {
                _listener = await ReadHandlerSource.Task.WaitAsync(_abort.Token).ConfigureAwait(false);
                while (true)
                {
                    if (!await FillAsync(header).ConfigureAwait(false)) break;
                    var length = BinaryPrimitives.ReadInt32LittleEndian(header);
                    if (length < 0 || length > maxFrame)
                    {
                        log.Warning("Akka TLS: {0} sent a frame of {1} bytes (the limit is {2}): closing the connection", RemoteAddress, length, maxFrame);
                        break;
                    }
                    var payload = new byte[length];
                    if (!await FillAsync(payload).ConfigureAwait(false)) break;
                    _listener.Notify(new InboundPayload(UnsafeByteOperations.UnsafeWrap(payload)));
                }
            }
            catch (Exception ex) when (ex is IOException or SocketException or ObjectDisposedException or OperationCanceledException or AuthenticationException)
            {
                // The peer went, the connection was cut, or this side closed it: Akka hears Disassociated below.
            }
            Close();
        }

        /// <summary>Reads <paramref name="buffer"/> full; false when the peer closed first.</summary>
        private async Task<bool> FillAsync(byte[] buffer) =>
            await ssl.ReadAtLeastAsync(buffer, buffer.Length, throwOnEndOfStream: false, _abort.Token).ConfigureAwait(false) == buffer.Length;

        private async Task WriteLoopAsync()
        {
            var buffer = ArrayPool<byte>.Shared.Rent(BatchBytes + HeaderBytes);
            try
            {
                while (await _outbox.Reader.WaitToReadAsync(_abort.Token).ConfigureAwait(false))
                {
                    var used = 0;
                    while (_outbox.Reader.TryPeek(out var next))
                    {
                        var size = HeaderBytes + next.Length;
                        if (used > 0 && used + size > BatchBytes) break;
                        _outbox.Reader.TryRead(out _);
                        if (size > buffer.Length)
                        {
                            // One message larger than a batch (alone: a batch under way stopped above): its length, then
                            // the payload where it lies.
                            BinaryPrimitives.WriteInt32LittleEndian(buffer, next.Length);
                            await ssl.WriteAsync(buffer.AsMemory(0, HeaderBytes), _abort.Token).ConfigureAwait(false);
                            await ssl.WriteAsync(next.Memory, _abort.Token).ConfigureAwait(false);
                            break;
                        }
                        BinaryPrimitives.WriteInt32LittleEndian(buffer.AsSpan(used), next.Length);
                        next.Span.CopyTo(buffer.AsSpan(used + HeaderBytes));
                        used += size;
                    }
                    if (used > 0) await ssl.WriteAsync(buffer.AsMemory(0, used), _abort.Token).ConfigureAwait(false);
                }
                // Disassociated by Akka and everything queued is written: end the TLS session and the connection.
                // The reader goes on until the peer closes too (closing with its data unread would reset the connection
                // and could lose ours), or until DrainTimeout cuts it.
                await ssl.ShutdownAsync().WaitAsync(_abort.Token).ConfigureAwait(false);
                socket.Shutdown(SocketShutdown.Send);
                return;
            }
            catch (Exception ex) when (ex is IOException or SocketException or ObjectDisposedException or OperationCanceledException or AuthenticationException or InvalidOperationException)
            {
                // The connection broke or was cut: the reader ends too.
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(buffer);
            }
            Close();
        }

        private void Close()
        {
            if (Interlocked.Exchange(ref _closed, 1) == 0)
            {
                _outbox.Writer.TryComplete();
                _abort.Cancel();
                ssl.Dispose();
                closed(this);
            }
            // Akka hears of the end once, and only through the listener it registered.
            if (_listener is { } listener && Interlocked.Exchange(ref _notified, 1) == 0)
                listener.Notify(new Disassociated(DisassociateInfo.Unknown));
        }
    }
}
