using Akka.Actor;
using Akka.Coordination;
using Dingo.Config;
using Dingo.Store;

namespace Dingo.Membership;

/// <summary>
/// An Akka.Coordination lease held in etcd, for the split-brain resolver's lease-majority strategy: when the
/// cluster splits, only the side that holds this key (under an etcd lease it keeps alive) goes on; the other downs
/// itself. etcd's own quorum decides, so two sides can never both act, whatever the network did.
/// Configured under `dingo.akka-lease` (see <see cref="AkkaDefaults.Hocon"/>): lease-class, timeouts, etcd endpoints, prefix.
/// </summary>
public sealed class EtcdLease : Lease
{
    private readonly EtcdStore _store;
    private readonly string _key;
    private readonly TimeSpan _ttl;
    private readonly TimeSpan _interval;
    private long _lease;
    private volatile bool _held;
    private CancellationTokenSource? _keepAlive;
    private readonly object _gate = new();

    public EtcdLease(LeaseSettings settings, ExtendedActorSystem system) : base(settings)
    {
        var config = settings.LeaseConfig;
        var endpoints = config.GetStringList("endpoints");
        var prefix = config.GetString("prefix", "/dingo");
        // The process's own etcd TLS files (AkkaDefaults.For copies dingo.etcd.tls here).
        var tls = EtcdClientTls.Load(new EtcdTlsSettings
        {
            CaFile = config.GetString("tls.ca-file", ""),
            CertFile = config.GetString("tls.cert-file", ""),
            KeyFile = config.GetString("tls.key-file", ""),
        });
        _store = new EtcdStore(endpoints.Count > 0 ? endpoints.ToList() : ["http://127.0.0.1:2379"], prefix, tls: tls);
        _key = $"{_store.Keys.Root}/akka-lease/{settings.LeaseName}";
        _ttl = settings.TimeoutSettings.HeartbeatTimeout;
        _interval = settings.TimeoutSettings.HeartbeatInterval;
    }

    public override Task<bool> Acquire() => Acquire(_ => { });

    public override async Task<bool> Acquire(Action<Exception?> leaseLostCallback)
    {
        using var cts = new CancellationTokenSource(Settings.TimeoutSettings.OperationTimeout);
        var ct = cts.Token;
        if (_held) return true;
        var lease = await _store.GrantLeaseAsync(_ttl, ct).ConfigureAwait(false);
        var taken = await _store.CreateIfAbsentAsync(_key, Settings.OwnerName, ct, lease).ConfigureAwait(false);
        if (!taken)
        {
            var holder = await _store.GetAsync<string>(_key, ct).ConfigureAwait(false);
            if (holder?.Value == Settings.OwnerName)
            {
                // Ours from before (a restart of the resolver within the TTL): move it under the new lease.
                taken = await _store.CompareAndPutAsync(_key, Settings.OwnerName, holder.ModRevision, ct, lease).ConfigureAwait(false);
            }
        }
        if (!taken)
        {
            await _store.RevokeLeaseAsync(lease, ct).ConfigureAwait(false);
            return false;
        }
        lock (_gate)
        {
            _lease = lease;
            _held = true;
            _keepAlive?.Cancel();
            _keepAlive = new CancellationTokenSource();
            _ = KeepAliveAsync(lease, leaseLostCallback, _keepAlive.Token);
        }
        return true;
    }

    private async Task KeepAliveAsync(long lease, Action<Exception?> lost, CancellationToken ct)
    {
        var lastRenewal = DateTime.UtcNow;
        while (!ct.IsCancellationRequested)
        {
            try { await Task.Delay(_interval, ct).ConfigureAwait(false); }
            catch (OperationCanceledException) { return; }
            Exception? error = null;
            try
            {
                using var call = CancellationTokenSource.CreateLinkedTokenSource(ct);
                call.CancelAfter(_interval);
                if (await _store.KeepAliveOnceAsync(lease, call.Token).ConfigureAwait(false)) { lastRenewal = DateTime.UtcNow; continue; }
                error = new LeaseException($"etcd lease behind {_key} expired");
            }
            catch (Exception ex) when (ex is Grpc.Core.RpcException or OperationCanceledException && !ct.IsCancellationRequested)
            {
                // Unreachable etcd: the lease may still be valid; give up only once it cannot be any more.
                if (DateTime.UtcNow - lastRenewal < _ttl) continue;
                error = ex;
            }
            _held = false;
            lost(error);
            return;
        }
    }

    public override async Task<bool> Release()
    {
        long lease;
        lock (_gate)
        {
            lease = _lease;
            _held = false;
            _keepAlive?.Cancel();
            _keepAlive = null;
        }
        using var cts = new CancellationTokenSource(Settings.TimeoutSettings.OperationTimeout);
        var holder = await _store.GetAsync<string>(_key, cts.Token).ConfigureAwait(false);
        if (holder?.Value == Settings.OwnerName)
            await _store.TransactAsync(new Txn().At(_key, holder.ModRevision).Delete(_key), cts.Token).ConfigureAwait(false);
        if (lease != 0) await _store.RevokeLeaseAsync(lease, cts.Token).ConfigureAwait(false);
        return true;
    }

    public override bool CheckLease() => _held;

    /// <summary>Stops renewing without a word to etcd, as a process killed while holding the lease does (tests).</summary>
    internal void StopRenewingAsIfKilled()
    {
        lock (_gate)
        {
            _keepAlive?.Cancel();
            _keepAlive = null;
        }
    }
}
