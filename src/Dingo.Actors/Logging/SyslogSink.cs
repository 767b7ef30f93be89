using System.Globalization;
using System.Net.Security;
using System.Security.Authentication;
using System.Net.Sockets;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using System.Threading.Channels;
using Dingo.Config;

namespace Dingo.Logging;

/// <summary>Syslog severities (RFC 5424 §6.2.1) a log entry maps to.</summary>
public enum SyslogSeverity
{
    Critical = 2,
    Error = 3,
    Warning = 4,
    Notice = 5,
    Informational = 6,
    Debug = 7,
}

/// <summary>
/// Ships log lines to one syslog receiver as RFC 5424 messages over TCP (RFC 6587 octet counting) or TLS (RFC 5425).
/// Writing never blocks a caller: lines go into a bounded queue that one background task drains; when the receiver is
/// slow or gone, the oldest lines are dropped and counted (<see cref="Dropped"/>), and a notice saying how many goes
/// out first once it is back. A broken connection is dialled again with a growing pause (up to 30 s); the line being
/// sent when it broke is sent again, so a receiver may see it twice but never misses it for a break alone.
/// </summary>
public sealed class SyslogSink : IAsyncDisposable, IDisposable
{
    public const int QueueLength = 10_000;
    private const int Facility = 16; // local0: the operator's receiver routes it (docs/operator-guide.md)
    private static readonly TimeSpan ConnectTimeout = TimeSpan.FromSeconds(5);
    private static readonly TimeSpan MaxPause = TimeSpan.FromSeconds(30);

    private readonly SyslogSettings _settings;
    private readonly X509Certificate2Collection? _trusted;
    private readonly string _hostname;
    private readonly Channel<string> _queue;
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _pump;
    private readonly Action<string> _problem;
    private long _dropped;
    private long _sent;
    private int _disposed;

    /// <param name="problem">where the sink says it cannot deliver (stderr by default: never back into itself)</param>
    public SyslogSink(SyslogSettings settings, Action<string>? problem = null)
    {
        ArgumentNullException.ThrowIfNull(settings);
        _settings = settings;
        _hostname = Header(Environment.MachineName, 255);
        if (settings.CaFile is { } caFile)
        {
            _trusted = [];
            _trusted.ImportFromPemFile(caFile);
        }
        _problem = problem ?? (m => Console.Error.WriteLine(m));
        _queue = Channel.CreateBounded<string>(new BoundedChannelOptions(QueueLength)
        {
            FullMode = BoundedChannelFullMode.DropOldest,
            SingleReader = true,
        }, _ => Interlocked.Increment(ref _dropped));
        _pump = Task.Run(() => PumpAsync(_stop.Token));
    }

    /// <summary>Lines dropped because the queue was full (the receiver slow or gone).</summary>
    public long Dropped => Interlocked.Read(ref _dropped);

    /// <summary>Messages the receiver's connection accepted.</summary>
    public long Sent => Interlocked.Read(ref _sent);

    /// <summary>Queues one message. <paramref name="appName"/> and <paramref name="procId"/> are RFC 5424 header fields
    /// (printable ASCII, at most 48 and 128 characters: longer ones are cut, others replaced by '_').</summary>
    public void Write(SyslogSeverity severity, string appName, string procId, string msgId, string message, DateTimeOffset? at = null)
    {
        ArgumentNullException.ThrowIfNull(message);
        _queue.Writer.TryWrite(Format(severity, appName, procId, msgId, message, at ?? DateTimeOffset.UtcNow));
    }

    /// <summary>One RFC 5424 message: PRI, version, timestamp (UTC, microseconds), host, app, procid, msgid, no SD.</summary>
    private string Format(SyslogSeverity severity, string appName, string procId, string msgId, string message, DateTimeOffset at) =>
        $"<{Facility * 8 + (int)severity}>1 {at.UtcDateTime.ToString("yyyy-MM-dd'T'HH:mm:ss.ffffff'Z'", CultureInfo.InvariantCulture)} " +
        $"{_hostname} {Header(appName, 48)} {Header(procId, 128)} {Header(msgId, 32)} - {message}";

    /// <summary>An RFC 5424 header field: printable US-ASCII without spaces, bounded, "-" when empty.</summary>
    internal static string Header(string? value, int max)
    {
        if (string.IsNullOrEmpty(value)) return "-";
        var chars = value.Select(c => c is > ' ' and <= '~' ? c : '_').Take(max).ToArray();
        return new string(chars);
    }

    /// <summary>One message framed for TCP: its length in octets, a space, the message (RFC 6587 §3.4.1).</summary>
    internal static byte[] Frame(string message)
    {
        var body = Encoding.UTF8.GetBytes(message);
        var prefix = Encoding.ASCII.GetBytes(body.Length.ToString(CultureInfo.InvariantCulture) + " ");
        var frame = new byte[prefix.Length + body.Length];
        prefix.CopyTo(frame, 0);
        body.CopyTo(frame, prefix.Length);
        return frame;
    }

    private async Task PumpAsync(CancellationToken ct)
    {
        var pause = TimeSpan.FromSeconds(1);
        string? pending = null;
        long reportedDrops = 0;
        while (!ct.IsCancellationRequested)
        {
            Stream? stream = null;
            TcpClient? client = null;
            try
            {
                (client, stream) = await ConnectAsync(ct).ConfigureAwait(false);
                pause = TimeSpan.FromSeconds(1);
                while (true)
                {
                    var dropped = Dropped;
                    if (dropped > reportedDrops && pending is null)
                    {
                        pending = Format(SyslogSeverity.Warning, "dingo", "-", "dropped",
                            $"{dropped - reportedDrops} log line(s) were dropped while this receiver was slow or unreachable", DateTimeOffset.UtcNow);
                        reportedDrops = dropped;
                    }
                    pending ??= await _queue.Reader.ReadAsync(ct).ConfigureAwait(false);
                    var frame = Frame(pending);
                    await stream.WriteAsync(frame, ct).ConfigureAwait(false);
                    // Flushed per message only while nothing else waits: a burst goes out in few packets.
                    if (!_queue.Reader.TryPeek(out _)) await stream.FlushAsync(ct).ConfigureAwait(false);
                    pending = null;
                    Interlocked.Increment(ref _sent);
                }
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested)
            {
                break;
            }
            catch (Exception ex) when (ex is IOException or SocketException or AuthenticationException or OperationCanceledException or ObjectDisposedException)
            {
                _problem($"syslog: cannot deliver to {_settings.Host}:{_settings.Port} ({_settings.Transport}): {ex.Message}; trying again in {pause.TotalSeconds:0}s");
            }
            finally
            {
                if (stream is not null) await stream.DisposeAsync().ConfigureAwait(false);
                client?.Dispose();
            }
            try { await Task.Delay(pause, ct).ConfigureAwait(false); }
            catch (OperationCanceledException) { break; }
            pause = TimeSpan.FromTicks(Math.Min(MaxPause.Ticks, pause.Ticks * 2));
        }
    }

    private async Task<(TcpClient, Stream)> ConnectAsync(CancellationToken ct)
    {
        var client = new TcpClient { NoDelay = true };
        try
        {
            using (var connect = CancellationTokenSource.CreateLinkedTokenSource(ct))
            {
                connect.CancelAfter(ConnectTimeout);
                await client.ConnectAsync(_settings.Host, _settings.Port, connect.Token).ConfigureAwait(false);
            }
            Stream stream = client.GetStream();
            if (_settings.Transport == SyslogSettings.Tls)
            {
                var tls = new SslStream(stream, leaveInnerStreamOpen: false);
                using var handshake = CancellationTokenSource.CreateLinkedTokenSource(ct);
                handshake.CancelAfter(ConnectTimeout);
                // A configured CA replaces the system's store (PemTls: chain to it alone, host name checked as always).
                var options = _trusted is null ? new SslClientAuthenticationOptions() : Dingo.Security.PemTls.ClientOptions(_trusted, null);
                options.TargetHost = _settings.Host;
                await tls.AuthenticateAsClientAsync(options, handshake.Token).ConfigureAwait(false);
                stream = tls;
            }
            return (client, stream);
        }
        catch
        {
            client.Dispose();
            throw;
        }
    }

    public void Dispose() => DisposeAsync().AsTask().GetAwaiter().GetResult();

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        // What is queued gets a short moment to go out; then the pump stops.
        var until = DateTime.UtcNow.AddSeconds(2);
        while (_queue.Reader.Count > 0 && DateTime.UtcNow < until) await Task.Delay(20).ConfigureAwait(false);
        await _stop.CancelAsync().ConfigureAwait(false);
        try { await _pump.ConfigureAwait(false); }
        catch (OperationCanceledException) { }
        _stop.Dispose();
        foreach (var ca in _trusted ?? []) ca.Dispose();
    }
}
