using Dingo.Model;
using Dingo.Store;

namespace Dingo.Instances;

/// <summary>Hands out ports through etcd transactions, so two brokers never give one port twice.</summary>
public sealed class PortAllocator(EtcdStore store)
{
    /// <summary>
    /// The next public port for an instance. Ports only ever move forward: a retired port is never reused,
    /// so a stale binding can never reach someone else's database.
    /// </summary>
    public async Task<int> AllocatePublicPortAsync(string instanceId, int first, int last, CancellationToken ct, string role = PortRole.Primary)
    {
        var keys = store.Keys;
        for (var attempt = 0; attempt < 100; attempt++)
        {
            var counter = await store.GetAsync<int>(keys.PortCounter, ct).ConfigureAwait(false);
            var port = Math.Max(counter?.Value ?? first, first);
            // Skip ports already taken (e.g. a counter reset by a restore): never hand out a recorded port.
            while (port <= last && await store.GetStringAsync(keys.Port(port), ct).ConfigureAwait(false) is not null) port++;
            if (port > last) throw new InvalidOperationException($"the public port range {first}-{last} is used up: widen dingo.router.port-range");
            var txn = new Txn();
            if (counter is null) txn.Absent(keys.PortCounter); else txn.At(keys.PortCounter, counter.ModRevision);
            txn.Absent(keys.Port(port))
               .Put(keys.PortCounter, port + 1)
               .Put(keys.Port(port), new PortRecord { InstanceId = instanceId, State = "active", Role = role });
            if (await store.TransactAsync(txn, ct).ConfigureAwait(false)) return port;
        }
        throw new InvalidOperationException("could not allocate a public port: etcd kept changing under 100 attempts");
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
