using Dingo.Store;
using Microsoft.Extensions.Logging;

namespace Dingo.Cells;

/// <summary>
/// The cell's etcd lease: its registration, its node statuses and the leader keys it holds all hang on it,
/// so they vanish together when the cell dies. Renewed every third of its TTL; re-granted when lost.
/// </summary>
public sealed class CellLease(EtcdStore store, TimeSpan ttl, ILogger logger)
{
    private long _id;
    private DateTime _renewedAt;

    /// <summary>Changes whenever a new lease replaces a lost one: keys written under the old one are gone.</summary>
    public long Id => Interlocked.Read(ref _id);

    public TimeSpan Ttl => ttl;

    /// <summary>Returns a valid lease id, renewing or re-granting as needed. Cheap when called often.</summary>
    public async Task<long> EnsureAsync(CancellationToken ct)
    {
        var id = Id;
        if (id != 0 && DateTime.UtcNow - _renewedAt < ttl / 3) return id;
        if (id != 0)
        {
            try
            {
                if (await store.KeepAliveOnceAsync(id, ct).ConfigureAwait(false))
                {
                    _renewedAt = DateTime.UtcNow;
                    return id;
                }
                logger.LogWarning("cell lease {Lease} expired; granting a new one and re-registering", id);
            }
            catch (Exception ex) when (ex is not OperationCanceledException)
            {
                logger.LogWarning("renewing cell lease failed: {Error}", ex.Message);
                throw;
            }
        }
        var granted = await store.GrantLeaseAsync(ttl, ct).ConfigureAwait(false);
        Interlocked.Exchange(ref _id, granted);
        _renewedAt = DateTime.UtcNow;
        return granted;
    }

    public async Task RevokeAsync(CancellationToken ct)
    {
        var id = Interlocked.Exchange(ref _id, 0);
        if (id != 0) await store.RevokeLeaseAsync(id, ct).ConfigureAwait(false);
    }
}
