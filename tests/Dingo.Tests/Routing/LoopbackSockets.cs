using System.Diagnostics;
using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;

namespace Dingo.Tests.Routing;

/// <summary>Client-side socket steps the router tests share (all on 127.0.0.1).</summary>
internal static class LoopbackSockets
{
    public static async Task<Socket> ConnectAsync(int port, CancellationToken ct)
    {
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            await socket.ConnectAsync(new IPEndPoint(IPAddress.Loopback, port), ct);
            return socket;
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    public static async Task<byte[]> ReadExactlyAsync(Socket socket, int count, CancellationToken ct)
    {
        var buffer = new byte[count];
        var read = 0;
        while (read < count)
        {
            var n = await socket.ReceiveAsync(buffer.AsMemory(read), SocketFlags.None, ct);
            if (n == 0)
                throw new EndOfStreamException($"connection ended after {read} of {count} bytes");
            read += n;
        }
        return buffer;
    }

    /// <summary>True if the peer ends the connection (EOF or reset) within the time; data still arriving is skipped.</summary>
    public static async Task<bool> EndsWithinAsync(Socket socket, TimeSpan within)
    {
        using var cts = new CancellationTokenSource(within);
        var buffer = new byte[4096];
        try
        {
            while (await socket.ReceiveAsync(buffer, SocketFlags.None, cts.Token) > 0)
            {
            }
            return true;
        }
        catch (SocketException)
        {
            return true;
        }
        catch (OperationCanceledException)
        {
            return false;
        }
    }
}

/// <summary>A backend on 127.0.0.1:0 running <c>serve</c> for each connection; tracks its open sockets.</summary>
internal sealed class Backend : IAsyncDisposable
{
    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
    private readonly CancellationTokenSource _stop = new();
    private readonly ConcurrentDictionary<Socket, byte> _open = new();
    private readonly ConcurrentBag<Task> _serving = [];
    private readonly Func<Socket, CancellationToken, Task> _serve;
    private readonly Task _acceptLoop;

    public Backend(Func<Socket, CancellationToken, Task> serve)
    {
        _serve = serve;
        _listener.Start();
        EndPoint = (IPEndPoint)_listener.LocalEndpoint;
        _acceptLoop = AcceptAsync();
    }

    public IPEndPoint EndPoint { get; }

    public static Backend Echo() => new(async (socket, ct) =>
    {
        var buffer = new byte[64 * 1024];
        int n;
        while ((n = await socket.ReceiveAsync(buffer, SocketFlags.None, ct)) > 0)
            await socket.SendAsync(buffer.AsMemory(0, n), SocketFlags.None, ct);
        socket.Shutdown(SocketShutdown.Send);
    });

    /// <summary>Sends its tag on connect, then echoes.</summary>
    public static Backend Tagged(byte tag) => new(async (socket, ct) =>
    {
        await socket.SendAsync(new[] { tag }, SocketFlags.None, ct);
        var buffer = new byte[4096];
        int n;
        while ((n = await socket.ReceiveAsync(buffer, SocketFlags.None, ct)) > 0)
            await socket.SendAsync(buffer.AsMemory(0, n), SocketFlags.None, ct);
    });

    public async Task<bool> AllClosedWithinAsync(TimeSpan within)
    {
        var watch = Stopwatch.StartNew();
        while (!_open.IsEmpty)
        {
            if (watch.Elapsed > within)
                return false;
            await Task.Delay(20);
        }
        return true;
    }

    private async Task AcceptAsync()
    {
        while (true)
        {
            Socket socket;
            try
            {
                socket = await _listener.AcceptSocketAsync(_stop.Token);
            }
            catch (Exception) when (_stop.IsCancellationRequested)
            {
                return;
            }
            // Registered before serving starts, so a fast finish cannot remove it before it is added.
            _open[socket] = 0;
            _serving.Add(ServeAsync(socket));
        }
    }

    private async Task ServeAsync(Socket socket)
    {
        await Task.Yield(); // keep the accept loop free
        try
        {
            await _serve(socket, _stop.Token);
        }
        catch (Exception ex) when (ex is SocketException or OperationCanceledException or ObjectDisposedException or EndOfStreamException)
        {
            // The router or the test closed the link; that is what several tests provoke.
        }
        finally
        {
            socket.Dispose();
            _open.TryRemove(socket, out _);
        }
    }

    public async ValueTask DisposeAsync()
    {
        _stop.Cancel();
        _listener.Stop();
        await _acceptLoop;
        foreach (var socket in _open.Keys)
            socket.Dispose();
        await Task.WhenAll(_serving);
        _stop.Dispose();
    }
}
