using System.Collections.Concurrent;
using System.Net.Sockets;
using System.Text;

namespace Dingo.Tests.Support;

/// <summary>
/// An in-process Docker Engine API on a Unix socket for the fast tier: each request's method and path go to
/// <c>answer</c>, which gives the status, the JSON body and how long to wait before answering (a busy engine). Every
/// request is kept in <see cref="Requests"/>, so a test can count what a runtime asked.
/// </summary>
public sealed class FakeEngine : IDisposable
{
    private readonly string _socket = Path.Combine(Path.GetTempPath(), "dingo-fake-engine-" + Guid.NewGuid().ToString("N")[..8] + ".sock");
    private readonly CancellationTokenSource _stop = new();
    private readonly Func<string, string, (int Status, string Body, TimeSpan Delay)> _answer;

    /// <param name="answer">(method, path with query) → status, body, delay</param>
    public FakeEngine(Func<string, string, (int Status, string Body, TimeSpan Delay)> answer)
    {
        _answer = answer;
        var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        listener.Bind(new UnixDomainSocketEndPoint(_socket));
        listener.Listen(16);
        _stop.Token.Register(listener.Dispose);
        _ = Task.Run(() => AcceptAsync(listener));
    }

    public string Endpoint => "unix://" + _socket;

    /// <summary>Docker settings of a cell on this engine, under <paramref name="platform"/>'s label.</summary>
    public Dingo.Config.DockerSettings Settings(string platform) =>
        new() { Endpoint = Endpoint, Image = "localhost/dingo/postgres:15", Pull = "never", Platform = platform };

    /// <summary>"METHOD path" of every request, in the order they came.</summary>
    public ConcurrentQueue<string> Requests { get; } = new();

    public void Dispose()
    {
        _stop.Cancel();
        _stop.Dispose();
        File.Delete(_socket);
    }

    private async Task AcceptAsync(Socket listener)
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket client;
            try { client = await listener.AcceptAsync(_stop.Token); }
            catch (Exception ex) when (ex is OperationCanceledException or ObjectDisposedException or SocketException) { return; }
            _ = Task.Run(() => ServeAsync(client));
        }
    }

    private async Task ServeAsync(Socket client)
    {
        using (client)
        {
            try
            {
                var buffer = new byte[8192];
                var head = new StringBuilder();
                // The header ends at an empty line; Docker.DotNet ends its header lines with a bare LF ("…\n\r\n").
                while (head.ToString() is var h && !h.Contains("\n\r\n", StringComparison.Ordinal) && !h.Contains("\n\n", StringComparison.Ordinal))
                {
                    var read = await client.ReceiveAsync(buffer, _stop.Token);
                    if (read == 0) return;
                    head.Append(Encoding.ASCII.GetString(buffer, 0, read));
                }
                var requestLine = head.ToString().Split('\n')[0].Trim().Split(' ');
                var (method, path) = (requestLine[0], requestLine.Length > 1 ? requestLine[1] : "/");
                Requests.Enqueue($"{method} {path}");
                var (status, body, delay) = _answer(method, path);
                if (delay > TimeSpan.Zero) await Task.Delay(delay, _stop.Token);
                var reason = status switch { 200 => "OK", 201 => "Created", 204 => "No Content", 404 => "Not Found", _ => "Error" };
                var bytes = Encoding.UTF8.GetBytes(body);
                var response = $"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {bytes.Length}\r\nConnection: close\r\n\r\n";
                await client.SendAsync(Encoding.ASCII.GetBytes(response).Concat(bytes).ToArray(), _stop.Token);
            }
            catch (Exception ex) when (ex is OperationCanceledException or SocketException or ObjectDisposedException) { }
        }
    }
}
