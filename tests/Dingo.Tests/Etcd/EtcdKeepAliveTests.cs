using System.Net;
using System.Net.Sockets;
using Dingo.Store;
using Dingo.Tests.Support;
using Grpc.Core;
using Xunit.Abstractions;

namespace Dingo.Tests.Etcd;

/// <summary>
/// Lease renewals are a streaming call; when the connection to etcd is reset under one (the member SIGKILLed), the request
/// side reports it as the transport's own exception, not as an RpcException. Every caller (leader renewals, the cell
/// lease, the Akka member key) handles an unreachable etcd as an RpcException, and anything else once stopped a whole cell
/// process (EtcdBlipTests on a fresh clone). A real etcd behind a proxy that resets the connection as a renewal starts.
/// </summary>
[SuiteCost(6)]
public sealed class EtcdKeepAliveTests(ITestOutputHelper output)
{
    [Fact]
    public async Task A_renewal_whose_connection_is_reset_under_it_retries_and_never_throws_a_transport_exception()
    {
        await using var etcd = await TestEtcdCluster.StartAsync(members: 1);
        using var proxy = new ResettingProxy(new Uri(etcd.ClientUrls[0]).Port);
        await using var store = new EtcdStore([$"http://127.0.0.1:{proxy.Port}"], "/keepalive-" + Guid.NewGuid().ToString("N")[..8]);
        var lease = await store.GrantLeaseAsync(TimeSpan.FromSeconds(60), CancellationToken.None);
        for (var round = 0; round < 5; round++)
        {
            Assert.True(await store.KeepAliveOnceAsync(lease, Ct()), "a renewal through the proxy");
            proxy.ResetNext();
            bool renewed;
            try
            {
                renewed = await store.KeepAliveOnceAsync(lease, Ct());
            }
            catch (RpcException ex)
            {
                output.WriteLine($"round {round}: {ex.StatusCode} {ex.Status.Detail}");
                continue; // an unreachable etcd, as every caller expects
            }
            output.WriteLine($"round {round}: renewed on a new connection after the reset: {renewed}");
            Assert.True(renewed);
        }
        Assert.True(proxy.Resets >= 5, $"the proxy reset {proxy.Resets} connection(s)");
    }

    private static CancellationToken Ct() => new CancellationTokenSource(TimeSpan.FromSeconds(20)).Token;

    /// <summary>Forwards TCP to a port; after <see cref="ResetNext"/>, the next bytes a client sends get its connection reset (RST).</summary>
    private sealed class ResettingProxy : IDisposable
    {
        private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
        private readonly int _target;
        private readonly CancellationTokenSource _stop = new();
        private int _armed;
        private int _resets;

        public ResettingProxy(int target)
        {
            _target = target;
            _listener.Start();
            _ = Task.Run(AcceptAsync);
        }

        public int Port => ((IPEndPoint)_listener.LocalEndpoint).Port;
        public int Resets => Volatile.Read(ref _resets);
        public void ResetNext() => Volatile.Write(ref _armed, 1);

        private async Task AcceptAsync()
        {
            while (!_stop.IsCancellationRequested)
            {
                Socket client;
                try { client = await _listener.AcceptSocketAsync(_stop.Token); }
                catch (Exception ex) when (ex is OperationCanceledException or SocketException or ObjectDisposedException) { return; }
                _ = Task.Run(() => ServeAsync(client));
            }
        }

        private async Task ServeAsync(Socket client)
        {
            using var upstream = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            try
            {
                await upstream.ConnectAsync(IPAddress.Loopback, _target, _stop.Token);
                var down = PumpAsync(upstream, client, reset: false);
                var up = PumpAsync(client, upstream, reset: true);
                await Task.WhenAny(up, down);
            }
            catch (Exception ex) when (ex is SocketException or OperationCanceledException or ObjectDisposedException) { }
            finally
            {
                client.Dispose();
            }
        }

        private async Task PumpAsync(Socket from, Socket to, bool reset)
        {
            var buffer = new byte[16 * 1024];
            try
            {
                while (true)
                {
                    var read = await from.ReceiveAsync(buffer, SocketFlags.None, _stop.Token);
                    if (read == 0) return;
                    if (reset && Interlocked.Exchange(ref _armed, 0) == 1)
                    {
                        // The client's first bytes since armed (a new call's frames): answer with a reset, as a killed
                        // member's kernel does.
                        from.LingerState = new LingerOption(true, 0);
                        from.Close();
                        Interlocked.Increment(ref _resets);
                        return;
                    }
                    await to.SendAsync(buffer.AsMemory(0, read), SocketFlags.None, _stop.Token);
                }
            }
            catch (Exception ex) when (ex is SocketException or OperationCanceledException or ObjectDisposedException) { }
        }

        public void Dispose()
        {
            _stop.Cancel();
            _listener.Stop();
            _stop.Dispose();
        }
    }
}
