namespace Dingo.Store;

/// <summary>
/// What one instance's reconcile pass (<see cref="Dingo.Instances.InstanceReconciler"/>, and the
/// <see cref="Dingo.Instances.PortAllocator"/> it places nodes with) needs of etcd, and nothing more. <see cref="EtcdStore"/>
/// is the one production implementation; the interface exists so the sharded instance actor can be tested as an actor
/// against a store held in memory, which must then honour these calls exactly as etcd does (revisions, transactions).
/// </summary>
public interface IInstanceStore
{
    /// <summary>Where each record lives under this platform's prefix.</summary>
    Keys Keys { get; }

    /// <summary>The key's value decoded from JSON with its modification revision and lease; null when absent.</summary>
    Task<Versioned<T>?> GetAsync<T>(string key, CancellationToken ct);

    /// <summary>The key's value as stored; null when absent.</summary>
    Task<string?> GetStringAsync(string key, CancellationToken ct);

    /// <summary>Every key under the prefix, in key order, decoded from JSON.</summary>
    Task<IReadOnlyList<Versioned<T>>> ListAsync<T>(string prefix, CancellationToken ct);

    /// <summary>
    /// Whole prefixes and single keys in one round trip, all at one revision: each prefix's key-values as stored (in key
    /// order), then each key's (null when absent). A single key is read as itself, never as a prefix.
    /// </summary>
    Task<EtcdStore.ManyRead> ReadManyRawAsync(IReadOnlyList<string> prefixes, IReadOnlyList<string> keys, CancellationToken ct);

    /// <summary>Writes the value as JSON, unconditionally, under the lease when one is given.</summary>
    Task PutAsync<T>(string key, T value, CancellationToken ct, long lease = 0);

    /// <summary>Applies the transaction's writes if all its compares hold, atomically; true when they did.</summary>
    Task<bool> TransactAsync(Txn txn, CancellationToken ct);

    /// <summary>A new lease of at least <paramref name="ttl"/>; keys put under it go when it expires.</summary>
    Task<long> GrantLeaseAsync(TimeSpan ttl, CancellationToken ct);
}
