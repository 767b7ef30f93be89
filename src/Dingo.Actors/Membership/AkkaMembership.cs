using Akka.Actor;
using Dingo.Model;
using Dingo.Store;
using Grpc.Core;
using Microsoft.Extensions.Logging;

namespace Dingo.Membership;

/// <summary>
/// How a Dingo process enters the Akka cluster, with etcd as the judge of whether a cluster exists.
///
/// Akka's own rule lets the first seed node found a new cluster when it hears from no other seed within
/// seed-node-timeout. A broker that restarts on a host cut off from the others would then found a second cluster
/// (an island) that never merges back. Here a process founds a cluster only when etcd, read with quorum, lists no
/// live member and it wins the founder key; otherwise it joins the members etcd lists (and the configured seeds,
/// never itself), and a process that cannot read etcd does not join at all until it can. Once Up, each member keeps
/// its address in etcd under its own lease, so a restarting process always finds the running cluster.
/// </summary>
public static class AkkaMembership
{
    private static readonly TimeSpan MemberTtl = TimeSpan.FromSeconds(10);
    private static readonly TimeSpan RenewEvery = TimeSpan.FromSeconds(3);
    private static readonly TimeSpan FounderTtl = TimeSpan.FromSeconds(15);

    /// <summary>
    /// Joins (or, when allowed and no cluster is alive, founds) the cluster, then keeps this member registered in
    /// etcd until it is removed or <paramref name="ct"/> ends. Returns when the member is removed.
    /// </summary>
    /// <param name="seeds">configured seed addresses (akka.tcp://dingo@host:port); this process's own is skipped</param>
    /// <param name="mayFound">brokers may found a cluster; cells only ever join one</param>
    public static async Task RunAsync(ActorSystem system, EtcdStore store, IReadOnlyList<string> seeds, bool mayFound, ILogger log, CancellationToken ct)
    {
        var cluster = Akka.Cluster.Cluster.Get(system);
        var up = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var removed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        cluster.RegisterOnMemberUp(() => up.TrySetResult());
        cluster.RegisterOnMemberRemoved(() => removed.TrySetResult());
        try
        {
            await JoinAsync(cluster, store, seeds.Select(Address.Parse).ToList(), mayFound, up.Task, log, ct).ConfigureAwait(false);
            await RegisterAsync(cluster, store, removed.Task, log, ct).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
        }
    }

    private static async Task JoinAsync(Akka.Cluster.Cluster cluster, EtcdStore store, IReadOnlyList<Address> seeds, bool mayFound, Task up, ILogger log, CancellationToken ct)
    {
        var self = cluster.SelfAddress;
        List<Address>? joining = null;
        var etcdSilent = false;
        while (!up.IsCompleted)
        {
            ct.ThrowIfCancellationRequested();
            List<Address> others;
            try
            {
                // A quorum read: a member cut off from the etcd majority gets an error, never a stale empty list.
                var members = await store.ListAsync<AkkaMemberRecord>(store.Keys.AkkaMembers, ct).ConfigureAwait(false);
                others = members.Select(m => Address.Parse(m.Value.Address)).Where(a => a != self).ToList();
                if (etcdSilent) log.LogInformation("etcd answers again: joining the Akka cluster");
                etcdSilent = false;
            }
            catch (RpcException ex)
            {
                if (!etcdSilent)
                    log.LogWarning("etcd does not answer ({Status}): not joining the Akka cluster until it does, so this process never founds a cluster of its own", ex.StatusCode);
                etcdSilent = true;
                await WhenAnyAsync(up, TimeSpan.FromSeconds(1), ct).ConfigureAwait(false);
                continue;
            }

            if (others.Count == 0 && mayFound && await TryClaimFounderAsync(store, self, ct).ConfigureAwait(false))
            {
                log.LogInformation("no Akka cluster member is registered in etcd: founding the cluster at {Self}", self);
                cluster.Join(self);
                joining = [self];
                await WhenAnyAsync(up, TimeSpan.FromSeconds(10), ct).ConfigureAwait(false);
                continue;
            }

            var contacts = others.Concat(seeds).Where(a => a != self).Distinct().ToList();
            if (contacts.Count > 0 && (joining is null || !joining.SequenceEqual(contacts)))
            {
                log.LogInformation("joining the Akka cluster through {Contacts}", string.Join(", ", contacts));
                cluster.JoinSeedNodes(contacts);
                joining = contacts;
            }
            await WhenAnyAsync(up, TimeSpan.FromSeconds(3), ct).ConfigureAwait(false);
        }
    }

    /// <summary>The founder key, held briefly: of brokers starting together on an empty platform, one founds.</summary>
    private static async Task<bool> TryClaimFounderAsync(EtcdStore store, Address self, CancellationToken ct)
    {
        try
        {
            var lease = await store.GrantLeaseAsync(FounderTtl, ct).ConfigureAwait(false);
            return await store.TransactAsync(new Txn().Absent(store.Keys.AkkaFounder).Put(store.Keys.AkkaFounder, self.ToString(), lease), ct).ConfigureAwait(false);
        }
        catch (RpcException)
        {
            return false;
        }
    }

    private static async Task RegisterAsync(Akka.Cluster.Cluster cluster, EtcdStore store, Task removed, ILogger log, CancellationToken ct)
    {
        var self = cluster.SelfAddress;
        var key = store.Keys.AkkaMember($"{self.Host}:{self.Port}");
        var record = new AkkaMemberRecord { Address = self.ToString(), Roles = cluster.SelfRoles.Order(StringComparer.Ordinal).ToList(), Since = DateTimeOffset.UtcNow };
        long lease = 0;
        try
        {
            while (!removed.IsCompleted)
            {
                try
                {
                    if (lease == 0)
                    {
                        lease = await store.GrantLeaseAsync(MemberTtl, ct).ConfigureAwait(false);
                        await store.PutAsync(key, record, ct, lease).ConfigureAwait(false);
                    }
                    else if (!await store.KeepAliveOnceAsync(lease, ct).ConfigureAwait(false))
                    {
                        lease = 0; // expired while etcd was away: register again
                        continue;
                    }
                }
                catch (RpcException ex)
                {
                    log.LogDebug("Akka member registration in etcd: {Status}", ex.StatusCode);
                }
                catch (Exception ex) when (ex is not OperationCanceledException)
                {
                    // The registration is advice for other processes: nothing it meets may stop this one.
                    log.LogWarning("Akka member registration in etcd failed: {Error}; trying again", ex.Message);
                    lease = 0;
                }
                await WhenAnyAsync(removed, RenewEvery, ct).ConfigureAwait(false);
            }
            log.LogWarning("this process was removed from the Akka cluster ({Self})", self);
        }
        finally
        {
            if (lease != 0)
            {
                using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(2));
                try { await store.RevokeLeaseAsync(lease, cts.Token).ConfigureAwait(false); }
                catch (Exception ex) when (ex is RpcException or OperationCanceledException) { }
            }
        }
    }

    private static async Task WhenAnyAsync(Task signal, TimeSpan delay, CancellationToken ct)
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var timer = Task.Delay(delay, cts.Token);
        await Task.WhenAny(signal, timer).ConfigureAwait(false);
        await cts.CancelAsync().ConfigureAwait(false);
        ct.ThrowIfCancellationRequested();
    }
}
