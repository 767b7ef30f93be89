using Dingo.Model;
using Dingo.Store;
using Etcdserverpb;

namespace Dingo.Tests.Actors;

/// <summary>
/// etcd as an instance's pass sees it, held in memory, so the sharded instance actor can be tested as an actor without a
/// server: keys in order (ordinal, which is etcd's byte order for the ASCII keys Dingo writes), each with its value, create and modification revisions, version and lease, under one
/// revision counter that every write advances by one. Transactions are read from the request <see cref="Txn"/> builds and
/// applied as etcd applies them: every compare judged on the state before, then the success (or failure) branch applied
/// at one new revision, all or nothing. Requests etcd refuses (too many operations, a key twice, an unknown lease) are
/// refused here too, so a pass that only works against the fake cannot pass. <see cref="InMemoryStoreTests"/> runs one
/// table of cases against this store and against a real etcd.
/// </summary>
internal sealed class InMemoryStore(string root = "/dingo-test") : IInstanceStore
{
    /// <summary>etcd's default --max-txn-ops: a transaction with more compares or operations in a branch is refused.</summary>
    public const int MaxTxnOps = 128;

    private sealed record Entry(string Value, long CreateRevision, long ModRevision, long Version, long Lease);

    private readonly Lock _gate = new();
    private readonly SortedDictionary<string, Entry> _kvs = new(StringComparer.Ordinal);
    private readonly Dictionary<long, TimeSpan> _leases = new();
    // A new etcd is at revision 1 before its first write.
    private long _revision = 1;
    private long _lastLease = 0x5eed0000;
    private int _calls;

    public Keys Keys { get; } = new(root);

    /// <summary>
    /// Awaited at the start of every call of <see cref="IInstanceStore"/>, with the call's name: a test makes the store
    /// fail (throw) or hang (wait on the call's token) at the moment it chooses. Null: every call goes through.
    /// </summary>
    public Func<string, CancellationToken, Task>? BeforeCall { get; set; }

    /// <summary>The store's revision: the modification revision the last write gave its keys.</summary>
    public long Revision
    {
        get { lock (_gate) return _revision; }
    }

    /// <summary>Calls of <see cref="IInstanceStore"/> so far (those the hook failed included).</summary>
    public int Calls => Volatile.Read(ref _calls);

    public async Task<Versioned<T>?> GetAsync<T>(string key, CancellationToken ct)
    {
        await EnterAsync(nameof(GetAsync), ct).ConfigureAwait(false);
        return Read<T>(key);
    }

    public async Task<string?> GetStringAsync(string key, CancellationToken ct)
    {
        await EnterAsync(nameof(GetStringAsync), ct).ConfigureAwait(false);
        lock (_gate) return _kvs.TryGetValue(key, out var entry) ? entry.Value : null;
    }

    public async Task<IReadOnlyList<Versioned<T>>> ListAsync<T>(string prefix, CancellationToken ct)
    {
        await EnterAsync(nameof(ListAsync), ct).ConfigureAwait(false);
        return List<T>(prefix);
    }

    public async Task<EtcdStore.ManyRead> ReadManyRawAsync(IReadOnlyList<string> prefixes, IReadOnlyList<string> keys, CancellationToken ct)
    {
        await EnterAsync(nameof(ReadManyRawAsync), ct).ConfigureAwait(false);
        lock (_gate)
        {
            return new EtcdStore.ManyRead(
                prefixes.Select(p => (IReadOnlyList<Versioned<string>>)InRange(p, EtcdStore.RangeEnd(p)).Select(key => Raw(key, _kvs[key])).ToList()).ToList(),
                keys.Select(key => _kvs.TryGetValue(key, out var entry) ? Raw(key, entry) : null).ToList(),
                0);
        }
    }

    public async Task PutAsync<T>(string key, T value, CancellationToken ct, long lease = 0)
    {
        await EnterAsync(nameof(PutAsync), ct).ConfigureAwait(false);
        Apply(new Txn().Put(key, value, lease).Build());
    }

    public async Task<bool> TransactAsync(Txn txn, CancellationToken ct)
    {
        await EnterAsync(nameof(TransactAsync), ct).ConfigureAwait(false);
        return Apply(txn.Build());
    }

    public async Task<long> GrantLeaseAsync(TimeSpan ttl, CancellationToken ct)
    {
        await EnterAsync(nameof(GrantLeaseAsync), ct).ConfigureAwait(false);
        lock (_gate)
        {
            _leases[++_lastLease] = ttl;
            return _lastLease;
        }
    }

    /// <summary>The key as a pass would read it, without the hook: for a test to look while the store hangs or fails.</summary>
    public Versioned<T>? Read<T>(string key)
    {
        lock (_gate) return _kvs.TryGetValue(key, out var entry) ? Decode<T>(key, entry) : null;
    }

    /// <summary>The keys under the prefix as a pass would list them, without the hook.</summary>
    public IReadOnlyList<Versioned<T>> List<T>(string prefix)
    {
        lock (_gate) return InRange(prefix, EtcdStore.RangeEnd(prefix)).Select(key => Decode<T>(key, _kvs[key])).ToList();
    }

    /// <summary>A write as another process (a cell, the broker) makes it, without the hook.</summary>
    public void Put<T>(string key, T value) => Apply(new Txn().Put(key, value).Build());

    private async Task EnterAsync(string call, CancellationToken ct)
    {
        Interlocked.Increment(ref _calls);
        ct.ThrowIfCancellationRequested();
        if (BeforeCall is { } hook) await hook(call, ct).ConfigureAwait(false);
    }

    private static Versioned<string> Raw(string key, Entry entry) => new(key, entry.Value, entry.ModRevision) { Lease = entry.Lease };

    private static Versioned<T> Decode<T>(string key, Entry entry) =>
        EtcdStore.Decode<T>(new Versioned<string>(key, entry.Value, entry.ModRevision) { Lease = entry.Lease });

    /// <summary>
    /// One transaction, as etcd's server checks and applies it; throws where etcd answers with an error. Open to tests
    /// for a request <see cref="Txn"/> never builds (a failure branch), and for writes made past the hook.
    /// </summary>
    public bool Apply(TxnRequest request)
    {
        if (request.Compare.Count > MaxTxnOps || request.Success.Count > MaxTxnOps || request.Failure.Count > MaxTxnOps)
            throw new InvalidOperationException("etcdserver: too many operations in txn request");
        // etcd checks both branches before it looks at the compares.
        CheckIntervals(request.Success);
        CheckIntervals(request.Failure);
        lock (_gate)
        {
            var succeeded = request.Compare.All(Holds);
            var ops = succeeded ? request.Success : request.Failure;
            foreach (var put in ops.Where(op => op.RequestCase == RequestOp.RequestOneofCase.RequestPut).Select(op => op.RequestPut))
            {
                if (put.PrevKv || put.IgnoreValue || put.IgnoreLease) throw new NotSupportedException("the instance's pass never asks for prev_kv, ignore_value or ignore_lease");
                if (put.Lease != 0 && !_leases.ContainsKey(put.Lease)) throw new InvalidOperationException("etcdserver: requested lease not found");
            }
            var revision = _revision + 1;
            var changed = false;
            foreach (var op in ops)
            {
                switch (op.RequestCase)
                {
                    case RequestOp.RequestOneofCase.RequestPut:
                        var key = op.RequestPut.Key.ToStringUtf8();
                        var before = _kvs.GetValueOrDefault(key);
                        _kvs[key] = new Entry(op.RequestPut.Value.ToStringUtf8(), before?.CreateRevision ?? revision, revision, (before?.Version ?? 0) + 1, op.RequestPut.Lease);
                        changed = true;
                        break;
                    case RequestOp.RequestOneofCase.RequestDeleteRange:
                        var doomed = InRange(op.RequestDeleteRange.Key.ToStringUtf8(), op.RequestDeleteRange.RangeEnd.ToStringUtf8());
                        foreach (var gone in doomed) _kvs.Remove(gone);
                        changed |= doomed.Count > 0;
                        break;
                    default:
                        throw new NotSupportedException($"{op.RequestCase} in a transaction: the instance's pass only puts and deletes");
                }
            }
            // A transaction that changed nothing (compares only, deletes of missing keys) leaves the revision where it was.
            if (changed) _revision = revision;
            return succeeded;
        }
    }

    /// <summary>etcd's refusal of a branch that puts one key twice, or puts a key it also deletes.</summary>
    private static void CheckIntervals(IEnumerable<RequestOp> ops)
    {
        var puts = new HashSet<string>(StringComparer.Ordinal);
        var deletes = new List<(string Key, string End)>();
        foreach (var op in ops)
        {
            if (op.RequestCase == RequestOp.RequestOneofCase.RequestPut && !puts.Add(op.RequestPut.Key.ToStringUtf8()))
                throw new InvalidOperationException("etcdserver: duplicate key given in txn request");
            if (op.RequestCase == RequestOp.RequestOneofCase.RequestDeleteRange)
                deletes.Add((op.RequestDeleteRange.Key.ToStringUtf8(), op.RequestDeleteRange.RangeEnd.ToStringUtf8()));
        }
        if (puts.Any(put => deletes.Any(d => Within(put, d.Key, d.End))))
            throw new InvalidOperationException("etcdserver: duplicate key given in txn request");
    }

    /// <summary>A compare as etcd judges it: a missing key has revisions, version and lease 0, and no value to compare.</summary>
    private bool Holds(Compare compare)
    {
        if (!compare.RangeEnd.IsEmpty) throw new NotSupportedException("compares over a range: Txn never builds them");
        var entry = _kvs.GetValueOrDefault(compare.Key.ToStringUtf8());
        if (compare.Target == Compare.Types.CompareTarget.Value && entry is null) return false;
        var order = compare.Target switch
        {
            Compare.Types.CompareTarget.Create => (entry?.CreateRevision ?? 0).CompareTo(compare.CreateRevision),
            Compare.Types.CompareTarget.Mod => (entry?.ModRevision ?? 0).CompareTo(compare.ModRevision),
            Compare.Types.CompareTarget.Version => (entry?.Version ?? 0).CompareTo(compare.Version),
            Compare.Types.CompareTarget.Lease => (entry?.Lease ?? 0).CompareTo(compare.Lease),
            Compare.Types.CompareTarget.Value => string.CompareOrdinal(entry!.Value, compare.Value.ToStringUtf8()),
            _ => throw new NotSupportedException($"compare target {compare.Target}"),
        };
        return compare.Result switch
        {
            Compare.Types.CompareResult.Equal => order == 0,
            Compare.Types.CompareResult.NotEqual => order != 0,
            Compare.Types.CompareResult.Greater => order > 0,
            Compare.Types.CompareResult.Less => order < 0,
            _ => throw new NotSupportedException($"compare result {compare.Result}"),
        };
    }

    /// <summary>The keys etcd's range [key, end) holds: the key alone when end is empty, every key from it on when end is "\0".</summary>
    private List<string> InRange(string key, string end) => _kvs.Keys.Where(k => Within(k, key, end)).ToList();

    private static bool Within(string candidate, string key, string end) =>
        end.Length == 0 ? candidate == key
        : string.CompareOrdinal(candidate, key) >= 0 && (end == "\0" || string.CompareOrdinal(candidate, end) < 0);
}
