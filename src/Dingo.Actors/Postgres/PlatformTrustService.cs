using Dingo.Config;
using Dingo.Security;
using Dingo.Store;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Dingo.Postgres;

/// <summary>
/// Keeps this process's trust in the platform CA current (<see cref="PlatformConnectionTls.Trust"/>): read from etcd at
/// start (with require-tls before the services after it connect to any node), then once a minute, so a replaced CA or a client certificate
/// near the end of its life is picked up without a restart. A CA that cannot be read is logged once per reason; what is
/// trusted stays. Each read is also told to the process's <see cref="IPlatformCaListener"/>s (a cell's HTTPS certificate).
/// </summary>
public sealed class PlatformTrustService(EtcdStore store, DingoSettings settings, IEnumerable<IPlatformCaListener> listeners, ILogger<PlatformTrustService> logger)
    : IHostedService, IDisposable
{
    private static readonly TimeSpan Every = TimeSpan.FromMinutes(1);
    private static readonly TimeSpan FirstReadDeadline = TimeSpan.FromSeconds(5);
    private readonly CancellationTokenSource _stopping = new();
    private Task? _loop;
    private string? _problem;

    public async Task StartAsync(CancellationToken cancellationToken)
    {
        if (settings.Postgres.RequireTls)
        {
            // Nodes ask the platform's roles for a client certificate: one bounded try before the next services start
            // connecting. With etcd away the process starts anyway and the loop goes on.
            using var first = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            first.CancelAfter(FirstReadDeadline);
            await ReadOnceAsync(first.Token).ConfigureAwait(false);
            _loop = Task.Run(() => LoopAsync(_stopping.Token), CancellationToken.None);
        }
        else
        {
            // Nothing asks for a certificate: the first read need not hold up the start.
            _loop = Task.Run(async () =>
            {
                await ReadOnceAsync(_stopping.Token).ConfigureAwait(false);
                await LoopAsync(_stopping.Token).ConfigureAwait(false);
            }, CancellationToken.None);
        }
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        await _stopping.CancelAsync().ConfigureAwait(false);
        if (_loop is not null) await _loop.WaitAsync(cancellationToken).ConfigureAwait(false);
    }

    private async Task LoopAsync(CancellationToken ct)
    {
        while (!ct.IsCancellationRequested)
        {
            try { await Task.Delay(Every, ct).ConfigureAwait(false); }
            catch (OperationCanceledException) { return; }
            await ReadOnceAsync(ct).ConfigureAwait(false);
        }
    }

    private async Task ReadOnceAsync(CancellationToken ct)
    {
        try
        {
            using var ca = await PlatformCaStore.GetOrCreateAsync(store, settings.Postgres, ct).ConfigureAwait(false);
            var known = PlatformConnectionTls.Trusts(ca.Fingerprint);
            PlatformConnectionTls.Trust(ca);
            foreach (var listener in listeners) listener.Trusted(ca);
            if (!known) logger.LogInformation("connections to nodes present a client certificate of {Ca}", ca);
            _problem = null;
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested) { }
        catch (Exception ex) when (ex is InvalidOperationException or Grpc.Core.RpcException or TimeoutException or System.Security.Cryptography.CryptographicException)
        {
            if (_problem != ex.Message) logger.LogWarning("the platform CA cannot be read for the platform's connections to nodes: {Error}", ex.Message);
            _problem = ex.Message;
        }
    }

    public void Dispose() => _stopping.Dispose();
}

/// <summary>
/// Told each time <see cref="PlatformTrustService"/> has read the platform CA (at start, then once a minute). The CA is
/// disposed after the call: keep what is issued from it, not the CA. Must not throw for a failure of its own making (log it).
/// </summary>
public interface IPlatformCaListener
{
    void Trusted(PlatformCa ca);
}

public static class PlatformTrustRegistration
{
    /// <summary>Registers <see cref="PlatformTrustService"/>: before the services that connect to nodes.</summary>
    public static IServiceCollection AddPlatformTrust(this IServiceCollection services) => services.AddHostedService<PlatformTrustService>();
}
