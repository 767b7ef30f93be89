using System.Net.Sockets;
using System.Text;
using Dingo.Cells;
using Dingo.Config;
using Dingo.Tests.Support;
using Microsoft.Extensions.Logging.Abstractions;

namespace Dingo.Tests.Cells;

/// <summary>
/// An engine that answers the cell's listing late, as podman does while it starts containers (it lists under every
/// container's lock), is busy, not unreachable: the cell reports no problem and so keeps taking new nodes. One that
/// does not answer within the listing's deadline is unreachable. The engine here is an in-process HTTP server on a Unix
/// socket that answers the Docker API's container listing after a delay (longer than the 2 s this deadline was).
/// </summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class SlowEngineTests : IDisposable
{
    private readonly string _socket = Path.Combine(Path.GetTempPath(), "dingo-slow-engine-" + Guid.NewGuid().ToString("N")[..8] + ".sock");
    private readonly CancellationTokenSource _stop = new();

    public void Dispose()
    {
        _stop.Cancel();
        _stop.Dispose();
        File.Delete(_socket);
    }

    /// <summary>Answers the container listing after <paramref name="delay"/> (podman's slow call), the volume listing at once: none of either.</summary>
    private void ServeSlowly(TimeSpan delay)
    {
        var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        listener.Bind(new UnixDomainSocketEndPoint(_socket));
        listener.Listen(16);
        _stop.Token.Register(listener.Dispose);
        _ = Task.Run(async () =>
        {
            while (!_stop.IsCancellationRequested)
            {
                Socket client;
                try { client = await listener.AcceptAsync(_stop.Token); }
                catch (Exception ex) when (ex is OperationCanceledException or ObjectDisposedException or SocketException) { return; }
                _ = Task.Run(async () =>
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
                            var volumes = head.ToString().Contains("/volumes", StringComparison.Ordinal);
                            var body = volumes ? """{"Volumes":[],"Warnings":[]}""" : "[]";
                            if (!volumes) await Task.Delay(delay, _stop.Token);
                            var response = $"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {body.Length}\r\nConnection: close\r\n\r\n{body}";
                            await client.SendAsync(Encoding.ASCII.GetBytes(response), _stop.Token);
                        }
                        catch (Exception ex) when (ex is OperationCanceledException or SocketException or ObjectDisposedException) { }
                    }
                });
            }
        });
    }

    private DockerRuntime Runtime(TimeSpan? listingTimeout = null)
    {
        var settings = new DockerSettings { Endpoint = "unix://" + _socket, Image = "localhost/dingo/postgres:15", Pull = "never", Platform = "/slow-engine" };
        var options = new DockerRuntimeOptions("cell-1", settings);
        if (listingTimeout is { } t) options = options with { ListingTimeout = t };
        return new DockerRuntime(options, NullLogger.Instance);
    }

    [Fact]
    public async Task A_listing_answered_in_2_5_s_is_a_busy_engine_not_an_unreachable_one()
    {
        ServeSlowly(TimeSpan.FromSeconds(2.5));
        using var runtime = Runtime();
        Assert.Empty(await runtime.ListAsync(CancellationToken.None));
        Assert.Null(runtime.EngineProblem);
        Assert.Null(runtime.Problem);
    }

    [Fact]
    public async Task A_listing_not_answered_within_its_deadline_is_an_unreachable_engine()
    {
        ServeSlowly(TimeSpan.FromSeconds(2.5));
        using var runtime = Runtime(listingTimeout: TimeSpan.FromSeconds(1));
        var error = await Assert.ThrowsAsync<ContainerEngineException>(() => runtime.ListAsync(CancellationToken.None));
        Assert.Contains("is unreachable (could not list containers): no answer within 1s", error.Message, StringComparison.Ordinal);
        Assert.NotNull(runtime.Problem);
    }
}
