using Dingo.Model;
using Dingo.Store;

namespace Dingo.Instances;

/// <summary>Hands out ports through etcd transactions, so two brokers never give one port twice.</summary>
public sealed class PortAllocator(IInstanceStore store)
{
    /// <summary>
    /// The next public port for an instance, claimed on its own. Ports only ever move forward: a retired port is never
    /// reused, so a stale binding can never reach someone else's database.
    /// </summary>
    public async Task<int> AllocatePublicPortAsync(string instanceId, int first, int last, CancellationToken ct, PortRole role = PortRole.Primary)
    {
        for (var attempt = 0; attempt < 100; attempt++)
        {
            var txn = new Txn();
            var ports = await ReservePublicPortsAsync(instanceId, [role], first, last, txn, ct).ConfigureAwait(false);
            if (await store.TransactAsync(txn, ct).ConfigureAwait(false)) return ports[0];
        }
        throw new InvalidOperationException("could not allocate a public port: etcd kept changing under 100 attempts");
    }

    /// <summary>
    /// Chooses the next free public port for each role and adds their claim to <paramref name="txn"/>: the counter
    /// compared at the revision read, each port absent, then the counter moved past them and the ports recorded.
    /// Nothing is written until the caller commits that transaction with its own writes (the instance record), so a
    /// request that fails for any reason (a conflict, an oversized record, etcd unreachable) can never leave ports behind.
    /// When the commit fails because another allocation moved the counter, the caller reserves again on a new Txn.
    /// </summary>
    public async Task<IReadOnlyList<int>> ReservePublicPortsAsync(string instanceId, IReadOnlyList<PortRole> roles, int first, int last, Txn txn, CancellationToken ct)
    {
        var keys = store.Keys;
        var counter = await store.GetAsync<int>(keys.PortCounter, ct).ConfigureAwait(false);
        var port = Math.Max(counter?.Value ?? first, first);
        var chosen = new List<int>(roles.Count);
        foreach (var _ in roles)
        {
            // Skip ports already taken (e.g. a counter reset by a restore): never hand out a recorded port.
            while (port <= last && await store.GetStringAsync(keys.Port(port), ct).ConfigureAwait(false) is not null) port++;
            if (port > last) throw new InvalidOperationException($"the public port range {first}-{last} is used up: widen dingo.router.port-range");
            chosen.Add(port++);
        }
        if (counter is null) txn.Absent(keys.PortCounter); else txn.At(keys.PortCounter, counter.ModRevision);
        txn.Put(keys.PortCounter, port);
        for (var i = 0; i < roles.Count; i++)
            txn.Absent(keys.Port(chosen[i])).Put(keys.Port(chosen[i]), new PortRecord { InstanceId = instanceId, State = PortState.Active, Role = roles[i] });
        return chosen;
    }

    /// <summary>
    /// A free port for a PostgreSQL node. It is only a candidate: the caller claims it in the same transaction
    /// that places the node, so a crash between the two can never leak or double-book a port.
    /// </summary>
    public async Task<int> PickNodePortAsync(int first, int last, CancellationToken ct)
    {
        var keys = store.Keys;
        var taken = (await store.ListAsync<string>(keys.NodePorts, ct).ConfigureAwait(false))
            .Select(v => int.Parse(v.Key[keys.NodePorts.Length..], System.Globalization.CultureInfo.InvariantCulture))
            .ToHashSet();
        // Start at a random point so concurrent allocations rarely collide.
        var span = last - first + 1;
        var start = Random.Shared.Next(span);
        for (var i = 0; i < span; i++)
        {
            var port = first + (start + i) % span;
            if (!taken.Contains(port)) return port;
        }
        throw new InvalidOperationException($"the node port range {first}-{last} is used up: widen dingo.node-port-range");
    }
}
