using System.Text;
using System.Text.Json;
using Dingo.Config;
using Dingo.Model;
using dotnet_etcd;
using Etcdserverpb;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Net.Client;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Dingo.Store;

/// <summary>A value read from etcd with the revision it was last modified at (for compare-and-swap).</summary>
public sealed record Versioned<T>(string Key, T Value, long ModRevision)
{
    /// <summary>The lease the key is attached to (0: none).</summary>
    public long Lease { get; init; }
}

/// <summary>
/// Dingo's only door to etcd: typed JSON values, create-if-absent and compare-and-swap transactions,
/// leases and prefix watches, all through dotnet-etcd's clients over one gRPC channel.
/// </summary>
public sealed class EtcdStore : IInstanceStore, IAsyncDisposable
{
    private readonly GrpcChannel[] _channels;
    private int _current;
    private readonly ILogger _logger;

    private readonly Grpc.Core.Interceptors.Interceptor? _interceptor;

    /// <param name="tls">the CA and client certificate for https:// endpoints (required for them); null for plain http://</param>
    /// <param name="interceptor">every call passes through it (tests: an etcd that hangs at a chosen moment); null in production</param>
    public EtcdStore(IReadOnlyList<string> endpoints, string root, ILogger? logger = null, EtcdClientTls? tls = null,
        Grpc.Core.Interceptors.Interceptor? interceptor = null)
    {
        _interceptor = interceptor;
        if (endpoints.Count == 0) throw new ArgumentException("at least one etcd endpoint is required", nameof(endpoints));
        _channels = endpoints.Select(e => Channel(NormaliseEndpoint(e), tls)).ToArray();
        Endpoints = endpoints;
        _callTimeout = endpoints.Count > 1 ? TimeSpan.FromSeconds(2) : TimeSpan.FromSeconds(5);
        Keys = new Keys(root);
        _logger = logger ?? NullLogger.Instance;
    }

    /// <summary>
    /// The one way processes reach etcd: the configured endpoints and prefix, over TLS with the client certificate of
    /// `dingo.etcd.tls` when the endpoints are https://. Throws naming the setting of a file it cannot use.
    /// </summary>
    public static EtcdStore Connect(DingoSettings settings, ILogger? logger = null, Grpc.Core.Interceptors.Interceptor? interceptor = null) =>
        new(settings.EtcdEndpoints, settings.EtcdPrefix, logger, EtcdClientTls.Load(settings.EtcdTls), interceptor);

    private static GrpcChannel Channel(string endpoint, EtcdClientTls? tls)
    {
        var https = endpoint.StartsWith("https://", StringComparison.OrdinalIgnoreCase);
        if (https && tls is null)
            throw new ArgumentException($"etcd endpoint {endpoint} is https:// but no CA is configured: set dingo.etcd.tls.ca-file (DINGO_ETCD_CA_FILE)");
        var handler = new SocketsHttpHandler
        {
            EnableMultipleHttp2Connections = true,
            KeepAlivePingDelay = TimeSpan.FromSeconds(5),
            KeepAlivePingTimeout = TimeSpan.FromSeconds(5),
            ConnectTimeout = TimeSpan.FromSeconds(1),
        };
        // Only etcd's own CA is trusted, and the server's certificate must name the host of the endpoint.
        if (https) handler.SslOptions = tls!.ClientOptions();
        return GrpcChannel.ForAddress(endpoint, new GrpcChannelOptions { HttpHandler = handler });
    }

    public IReadOnlyList<string> Endpoints { get; }
    public Keys Keys { get; }

    private SchemaVersion? _schema;

    /// <summary>
    /// From now on, every write of this store first makes sure etcd's records are laid out in a schema this build
    /// knows (<see cref="SchemaVersion"/>); brokers, cells and `dingo rotate-key` call it once, before they write.
    /// </summary>
    /// <param name="component">who writes, for the sentence an operator reads</param>
    /// <param name="refused">called once when they are not: the process stops</param>
    public void CheckSchemaBeforeWrites(string component, Action<SchemaVersionException> refused) =>
        _schema = new SchemaVersion(this, component, _logger, refused);

    /// <summary>The check <see cref="CheckSchemaBeforeWrites"/> makes before the first write, made now (done once it succeeds).</summary>
    public Task CheckSchemaAsync(CancellationToken ct) => BeforeWriteAsync(ct);

    private Task BeforeWriteAsync(CancellationToken ct) => _schema is { } schema ? schema.EnsureAsync(ct) : Task.CompletedTask;

    private static string NormaliseEndpoint(string endpoint) =>
        endpoint.Contains("://", StringComparison.Ordinal) ? endpoint : "http://" + endpoint;

    private CallInvoker InvokerAt(int index)
    {
        var channel = _channels[(index & int.MaxValue) % _channels.Length];
        return _interceptor is null ? channel.CreateCallInvoker() : Grpc.Core.Interceptors.ChannelExtensions.Intercept(channel, _interceptor);
    }

    /// <summary>
    /// Moves on from the member at <paramref name="failed"/>, once: calls that failed on it together move the store one
    /// member on, not one each (which would bring them back round to the silent member).
    /// </summary>
    private void MoveOnFrom(int failed) => Interlocked.CompareExchange(ref _current, failed + 1, failed);

    /// <summary>Runs a call, moving to the next endpoint when the current one is unavailable.</summary>
    private async Task<TResult> CallAsync<TResult>(Func<EtcdClient, Task<TResult>> call, CancellationToken ct)
    {
        for (var attempt = 0; ; attempt++)
        {
            var member = Volatile.Read(ref _current);
            var started = Environment.TickCount64;
            try
            {
                return await call(new EtcdClient(InvokerAt(member))).ConfigureAwait(false);
            }
            catch (Exception ex) when (ct.IsCancellationRequested && ex is OperationCanceledException or RpcException { StatusCode: StatusCode.Cancelled }
                                       && _channels.Length > 1 && Environment.TickCount64 - started >= _callTimeout.TotalMilliseconds / 2)
            {
                // The caller gave up (a leader's fencing deadline) on a member that kept it waiting: the next call
                // asks another one, or a leader would keep asking the silent member until it must demote.
                MoveOnFrom(member);
                throw;
            }
            catch (RpcException ex) when (MemberUnreachable(ex) && attempt < _channels.Length * 2 && !ct.IsCancellationRequested)
            {
                MoveOnFrom(member);
                await Task.Delay(100, ct).ConfigureAwait(false);
            }
        }
    }

    /// <summary>
    /// Whether a failed call says the member could not be reached (ask the next one) rather than that etcd refused the
    /// request. Unavailable and DeadlineExceeded, and Internal when the transport failed under the call: a member cut
    /// off by a partition often ends an HTTP/2 connection by leaving its keepalive ping unanswered ("The HTTP/2 server
    /// didn't respond to a ping request"), which gRPC reports as Internal. Treated as an etcd error, that call failed
    /// with two healthy members left (ThreeHostTests, link cut) and the next call went to the same silent member.
    /// </summary>
    internal static bool MemberUnreachable(RpcException ex) =>
        ex.StatusCode is StatusCode.Unavailable or StatusCode.DeadlineExceeded
        || (ex.StatusCode == StatusCode.Internal && ex.Status.DebugException is HttpRequestException or IOException or System.Net.Sockets.SocketException);

    /// <summary>
    /// How long one call may wait on one member. With other members to try, a member silent for 2 s is left for the
    /// next (a member cut off by a partition drops packets: nothing fails fast); with one endpoint, waiting longer is
    /// all there is to do.
    /// </summary>
    private readonly TimeSpan _callTimeout;

    private DateTime Deadline() => DateTime.UtcNow + _callTimeout;

    /// <summary>A lease renewal kept waiting this long by one member is a reason to ask another next time.</summary>
    private const long SlowRenewalMs = 500;

    public static string RangeEnd(string prefix)
    {
        var bytes = Encoding.UTF8.GetBytes(prefix);
        for (var i = bytes.Length - 1; i >= 0; i--)
        {
            if (bytes[i] < 0xff)
            {
                bytes[i]++;
                return Encoding.UTF8.GetString(bytes, 0, i + 1);
            }
        }
        return "\0";
    }

    public async Task<Versioned<T>?> GetAsync<T>(string key, CancellationToken ct)
    {
        var response = await CallAsync(c => c.GetAsync(new RangeRequest { Key = ByteString.CopyFromUtf8(key) },
            deadline: Deadline(), cancellationToken: ct), ct).ConfigureAwait(false);
        if (response.Kvs.Count == 0) return null;
        var kv = response.Kvs[0];
        return new Versioned<T>(key, Json.Deserialize<T>(kv.Value.ToStringUtf8()), kv.ModRevision) { Lease = kv.Lease };
    }

    public async Task<string?> GetStringAsync(string key, CancellationToken ct)
    {
        var response = await CallAsync(c => c.GetAsync(new RangeRequest { Key = ByteString.CopyFromUtf8(key) },
            deadline: Deadline(), cancellationToken: ct), ct).ConfigureAwait(false);
        return response.Kvs.Count == 0 ? null : response.Kvs[0].Value.ToStringUtf8();
    }

    /// <summary>
    /// A string value together with the id of the etcd cluster that answered (the response header's cluster_id): which
    /// etcd a cell is talking to. etcd derives that id from its members' names, peer URLs and cluster token, so an etcd
    /// wiped and started again with the same flags answers with the same id.
    /// </summary>
    public async Task<(string? Value, ulong ClusterId)> GetStringWithClusterAsync(string key, CancellationToken ct)
    {
        var response = await CallAsync(c => c.GetAsync(new RangeRequest { Key = ByteString.CopyFromUtf8(key) },
            deadline: Deadline(), cancellationToken: ct), ct).ConfigureAwait(false);
        return (response.Kvs.Count == 0 ? null : response.Kvs[0].Value.ToStringUtf8(), response.Header.ClusterId);
    }

    public async Task<IReadOnlyList<Versioned<T>>> ListAsync<T>(string prefix, CancellationToken ct)
    {
        var response = await CallAsync(c => c.GetAsync(new RangeRequest
        {
            Key = ByteString.CopyFromUtf8(prefix),
            RangeEnd = ByteString.CopyFromUtf8(RangeEnd(prefix)),
        }, deadline: Deadline(), cancellationToken: ct), ct).ConfigureAwait(false);
        var list = new List<Versioned<T>>(response.Kvs.Count);
        foreach (var kv in response.Kvs)
        {
            list.Add(new Versioned<T>(kv.Key.ToStringUtf8(), Json.Deserialize<T>(kv.Value.ToStringUtf8()), kv.ModRevision) { Lease = kv.Lease });
        }
        return list;
    }

    /// <summary>
    /// Several prefixes in one round trip, all at one revision (a transaction of range reads only, which etcd serves as
    /// a read, with no raft entry): values as stored, one list per prefix in the order given. A node's HA pass reads its
    /// cluster this way: one call instead of three, twice a second for every node.
    /// </summary>
    public async Task<IReadOnlyList<IReadOnlyList<Versioned<string>>>> ListManyRawAsync(IReadOnlyList<string> prefixes, CancellationToken ct) =>
        (await ReadManyRawAsync(prefixes, [], ct).ConfigureAwait(false)).Prefixes;

    /// <summary>
    /// Whole prefixes and single keys in one read, at one revision: each prefix's key-values as stored, then each key's
    /// (null when absent), and the id of the etcd cluster that answered. A single key is asked as itself, never as a
    /// prefix (instance "a1" is no part of "a10").
    /// </summary>
    public async Task<ManyRead> ReadManyRawAsync(IReadOnlyList<string> prefixes, IReadOnlyList<string> keys, CancellationToken ct)
    {
        var request = new TxnRequest();
        foreach (var prefix in prefixes)
            request.Success.Add(new RequestOp
            {
                RequestRange = new RangeRequest { Key = ByteString.CopyFromUtf8(prefix), RangeEnd = ByteString.CopyFromUtf8(RangeEnd(prefix)) },
            });
        foreach (var key in keys)
            request.Success.Add(new RequestOp { RequestRange = new RangeRequest { Key = ByteString.CopyFromUtf8(key) } });
        var response = await CallAsync(c => c.TransactionAsync(request, deadline: Deadline(), cancellationToken: ct), ct).ConfigureAwait(false);
        if (response.Responses.Count != prefixes.Count + keys.Count)
            throw new InvalidOperationException($"etcd answered {response.Responses.Count} ranges for {prefixes.Count + keys.Count} asked");
        var ranges = response.Responses.Select(r => r.ResponseRange.Kvs).ToList();
        return new ManyRead(ranges.Take(prefixes.Count).Select(kvs => (IReadOnlyList<Versioned<string>>)kvs.Select(Raw).ToList()).ToList(),
            ranges.Skip(prefixes.Count).Select(kvs => kvs.Count == 0 ? null : Raw(kvs[0])).ToList(), response.Header.ClusterId);
    }

    /// <summary>What <see cref="ReadManyRawAsync"/> read: per prefix, per key, and which etcd cluster answered.</summary>
    public sealed record ManyRead(IReadOnlyList<IReadOnlyList<Versioned<string>>> Prefixes, IReadOnlyList<Versioned<string>?> Keys, ulong ClusterId);

    /// <summary>A key-value as stored, with its revision and lease.</summary>
    private static Versioned<string> Raw(Mvccpb.KeyValue kv) =>
        new(kv.Key.ToStringUtf8(), kv.Value.ToStringUtf8(), kv.ModRevision) { Lease = kv.Lease };

    /// <summary>A value of <see cref="ListManyRawAsync"/> decoded as <see cref="ListAsync{T}"/> decodes it.</summary>
    public static Versioned<T> Decode<T>(Versioned<string> raw) =>
        new(raw.Key, Json.Deserialize<T>(raw.Value), raw.ModRevision) { Lease = raw.Lease };

    /// <summary>Values as stored (no JSON decoding), with their revisions and leases: for tools that rewrite records as they are.</summary>
    public async Task<IReadOnlyList<Versioned<string>>> ListRawAsync(string prefix, CancellationToken ct)
    {
        var response = await CallAsync(c => c.GetAsync(new RangeRequest
        {
            Key = ByteString.CopyFromUtf8(prefix),
            RangeEnd = ByteString.CopyFromUtf8(RangeEnd(prefix)),
        }, deadline: Deadline(), cancellationToken: ct), ct).ConfigureAwait(false);
        return response.Kvs.Select(Raw).ToList();
    }

    public async Task<Versioned<string>?> GetRawAsync(string key, CancellationToken ct)
    {
        var response = await CallAsync(c => c.GetAsync(new RangeRequest { Key = ByteString.CopyFromUtf8(key) },
            deadline: Deadline(), cancellationToken: ct), ct).ConfigureAwait(false);
        if (response.Kvs.Count == 0) return null;
        var kv = response.Kvs[0];
        return new Versioned<string>(key, kv.Value.ToStringUtf8(), kv.ModRevision) { Lease = kv.Lease };
    }

    /// <summary>Every cluster's leader and last leader WAL position, by instance id, in one read.</summary>
    public async Task<IReadOnlyDictionary<string, (LeaderRecord? Leader, long? Optime)>> ClustersAsync(CancellationToken ct)
    {
        var raw = await ListAsync<JsonElement>(Keys.Clusters, ct).ConfigureAwait(false);
        var result = new Dictionary<string, (LeaderRecord? Leader, long? Optime)>();
        foreach (var kv in raw)
        {
            var rest = kv.Key[Keys.Clusters.Length..];
            var slash = rest.IndexOf('/');
            if (slash < 0) continue;
            var id = rest[..slash];
            var current = result.GetValueOrDefault(id);
            switch (rest[(slash + 1)..])
            {
                case "leader": result[id] = (kv.Value.Deserialize<LeaderRecord>(Json.Options), current.Optime); break;
                case "optime": result[id] = (current.Leader, kv.Value.GetInt64()); break;
            }
        }
        return result;
    }

    /// <summary>Every leader key (the `.../leader` keys under /clusters/), by instance id.</summary>
    public async Task<IReadOnlyDictionary<string, LeaderRecord>> LeadersAsync(CancellationToken ct) =>
        (await ClustersAsync(ct).ConfigureAwait(false))
            .Where(c => c.Value.Leader is not null)
            .ToDictionary(c => c.Key, c => c.Value.Leader!);

    /// <summary>The keys under the prefix, in key order, without their values.</summary>
    public async Task<IReadOnlyList<string>> ListKeysAsync(string prefix, CancellationToken ct)
    {
        var response = await CallAsync(c => c.GetAsync(new RangeRequest
        {
            Key = ByteString.CopyFromUtf8(prefix),
            RangeEnd = ByteString.CopyFromUtf8(RangeEnd(prefix)),
            KeysOnly = true,
            SortOrder = RangeRequest.Types.SortOrder.Ascend,
            SortTarget = RangeRequest.Types.SortTarget.Key,
        }, deadline: Deadline(), cancellationToken: ct), ct).ConfigureAwait(false);
        return response.Kvs.Select(kv => kv.Key.ToStringUtf8()).ToList();
    }

    public async Task<long> CountAsync(string prefix, CancellationToken ct)
    {
        var response = await CallAsync(c => c.GetAsync(new RangeRequest
        {
            Key = ByteString.CopyFromUtf8(prefix),
            RangeEnd = ByteString.CopyFromUtf8(RangeEnd(prefix)),
            CountOnly = true,
        }, deadline: Deadline(), cancellationToken: ct), ct).ConfigureAwait(false);
        return response.Count;
    }

    public Task PutAsync<T>(string key, T value, CancellationToken ct, long lease = 0) =>
        PutStringAsync(key, Json.Serialize(value), ct, lease);

    public async Task PutStringAsync(string key, string value, CancellationToken ct, long lease = 0)
    {
        await BeforeWriteAsync(ct).ConfigureAwait(false);
        await CallAsync(c => c.PutAsync(new PutRequest
        {
            Key = ByteString.CopyFromUtf8(key),
            Value = ByteString.CopyFromUtf8(value),
            Lease = lease,
        }, deadline: Deadline(), cancellationToken: ct), ct).ConfigureAwait(false);
    }

    public async Task<bool> DeleteAsync(string key, CancellationToken ct)
    {
        await BeforeWriteAsync(ct).ConfigureAwait(false);
        var r = await CallAsync(c => c.DeleteAsync(new DeleteRangeRequest { Key = ByteString.CopyFromUtf8(key) },
            deadline: Deadline(), cancellationToken: ct), ct).ConfigureAwait(false);
        return r.Deleted > 0;
    }

    public async Task<long> DeletePrefixAsync(string prefix, CancellationToken ct)
    {
        await BeforeWriteAsync(ct).ConfigureAwait(false);
        var r = await CallAsync(c => c.DeleteAsync(new DeleteRangeRequest
        {
            Key = ByteString.CopyFromUtf8(prefix),
            RangeEnd = ByteString.CopyFromUtf8(RangeEnd(prefix)),
        }, deadline: Deadline(), cancellationToken: ct), ct).ConfigureAwait(false);
        return r.Deleted;
    }

    /// <summary>Puts the value only if the key does not exist; true when this call created it.</summary>
    public Task<bool> CreateIfAbsentAsync<T>(string key, T value, CancellationToken ct, long lease = 0) =>
        TransactAsync(new Txn().Absent(key).Put(key, value, lease), ct);

    /// <summary>Puts the value only if the key is still at the revision read; true on success.</summary>
    public Task<bool> CompareAndPutAsync<T>(string key, T value, long expectedModRevision, CancellationToken ct, long lease = 0) =>
        TransactAsync(new Txn().At(key, expectedModRevision).Put(key, value, lease), ct);

    public async Task<bool> TransactAsync(Txn txn, CancellationToken ct)
    {
        await BeforeWriteAsync(ct).ConfigureAwait(false);
        return await TransactUngatedAsync(txn, ct).ConfigureAwait(false);
    }

    /// <summary>A transaction without the schema check: the check's own write.</summary>
    internal async Task<bool> TransactUngatedAsync(Txn txn, CancellationToken ct)
    {
        var r = await CallAsync(c => c.TransactionAsync(txn.Build(), deadline: Deadline(), cancellationToken: ct), ct)
            .ConfigureAwait(false);
        return r.Succeeded;
    }

    public async Task<long> GrantLeaseAsync(TimeSpan ttl, CancellationToken ct)
    {
        var r = await CallAsync(c => c.LeaseGrantAsync(new LeaseGrantRequest { TTL = (long)Math.Ceiling(ttl.TotalSeconds) },
            deadline: Deadline(), cancellationToken: ct), ct).ConfigureAwait(false);
        return r.ID;
    }

    public async Task RevokeLeaseAsync(long lease, CancellationToken ct)
    {
        try
        {
            await CallAsync(c => c.LeaseRevokeAsync(new LeaseRevokeRequest { ID = lease }, deadline: Deadline(), cancellationToken: ct), ct)
                .ConfigureAwait(false);
        }
        catch (RpcException ex) when (ex.StatusCode == StatusCode.NotFound)
        {
            // already expired: nothing to revoke
        }
    }

    /// <summary>Refreshes a lease once; false when etcd no longer knows it (expired).</summary>
    public async Task<bool> KeepAliveOnceAsync(long lease, CancellationToken ct) =>
        await KeepAliveOnceTtlAsync(lease, ct).ConfigureAwait(false) > 0;

    /// <summary>Renews a lease once; the TTL etcd granted it (seconds), or 0 when the lease is gone.</summary>
    public async Task<long> KeepAliveOnceTtlAsync(long lease, CancellationToken ct)
    {
        for (var attempt = 0; ; attempt++)
        {
            var member = Volatile.Read(ref _current);
            var started = Environment.TickCount64;
            try
            {
                var client = new Lease.LeaseClient(InvokerAt(member));
                using var call = client.LeaseKeepAlive(deadline: Deadline(), cancellationToken: ct);
                try
                {
                    await call.RequestStream.WriteAsync(new LeaseKeepAliveRequest { ID = lease }, ct).ConfigureAwait(false);
                    await call.RequestStream.CompleteAsync().ConfigureAwait(false);
                    if (!await call.ResponseStream.MoveNext(ct).ConfigureAwait(false)) return 0;
                    return Math.Max(0, call.ResponseStream.Current.TTL);
                }
                catch (Exception ex) when (ex is IOException or HttpRequestException or InvalidOperationException && !ct.IsCancellationRequested)
                {
                    // A streaming call's request side reports a connection that broke under it (the member killed or cut
                    // off) as the transport's own exception, not as an RpcException as unary calls do. Every caller (leader
                    // renewals, the cell lease, the Akka member key) handles an unreachable etcd as an RpcException;
                    // anything else escaped them and once stopped a whole cell process (EtcdBlipTests, etcd SIGKILLed).
                    throw new RpcException(new Status(StatusCode.Unavailable, $"the connection to etcd broke: {ex.Message}", ex));
                }
            }
            catch (Exception ex) when (ct.IsCancellationRequested && ex is OperationCanceledException or RpcException { StatusCode: StatusCode.Cancelled }
                                       && _channels.Length > 1 && Environment.TickCount64 - started >= SlowRenewalMs)
            {
                // A leader's renewal budget ran out on a member that kept it waiting (overloaded, or catching up after a
                // partition healed): the next renewal asks another member, or the leader would keep asking the slow
                // one until it must fence.
                MoveOnFrom(member);
                throw;
            }
            catch (RpcException ex) when (MemberUnreachable(ex) && attempt < _channels.Length * 2 && !ct.IsCancellationRequested)
            {
                // Like every other call: move to the next member.
                MoveOnFrom(member);
                await Task.Delay(100, ct).ConfigureAwait(false);
            }
        }
    }

    /// <summary>
    /// Calls onChange after every batch of changes under the prefix, until cancelled. Reconnects after
    /// errors; callers must also re-read on a timer, since a change during a reconnect is only seen then.
    /// </summary>
    public async Task WatchPrefixAsync(string prefix, Func<IReadOnlyList<WatchedChange>, Task> onChange, CancellationToken ct)
    {
        while (!ct.IsCancellationRequested)
        {
            var member = Volatile.Read(ref _current);
            try
            {
                var client = new Watch.WatchClient(InvokerAt(member));
                using var call = client.Watch(cancellationToken: ct);
                await call.RequestStream.WriteAsync(new WatchRequest
                {
                    CreateRequest = new WatchCreateRequest
                    {
                        Key = ByteString.CopyFromUtf8(prefix),
                        RangeEnd = ByteString.CopyFromUtf8(RangeEnd(prefix)),
                    },
                }, ct).ConfigureAwait(false);
                while (await call.ResponseStream.MoveNext(ct).ConfigureAwait(false))
                {
                    var response = call.ResponseStream.Current;
                    if (response.Events.Count == 0) continue;
                    var changes = response.Events.Select(e => new WatchedChange(
                        e.Kv.Key.ToStringUtf8(),
                        e.Type == Mvccpb.Event.Types.EventType.Delete ? null : e.Kv.Value.ToStringUtf8())
                    {
                        Created = e.Type == Mvccpb.Event.Types.EventType.Put && e.Kv.Version == 1,
                    }).ToList();
                    await onChange(changes).ConfigureAwait(false);
                }
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested)
            {
                return;
            }
            catch (RpcException ex) when (ex.StatusCode == StatusCode.Cancelled && ct.IsCancellationRequested)
            {
                return;
            }
            catch (Exception ex)
            {
                _logger.LogDebug(ex, "watch on {Prefix} broke; reconnecting", prefix);
                MoveOnFrom(member);
            }
            try { await Task.Delay(500, ct).ConfigureAwait(false); }
            catch (OperationCanceledException) { return; }
        }
    }

    public ValueTask DisposeAsync()
    {
        foreach (var channel in _channels) channel.Dispose();
        return ValueTask.CompletedTask;
    }
}

public sealed record WatchedChange(string Key, string? Value)
{
    /// <summary>The key did not exist before this change.</summary>
    public bool Created { get; init; }
}

/// <summary>A small builder for etcd transactions: all compares must hold for the puts and deletes to apply.</summary>
public sealed class Txn
{
    private readonly TxnRequest _request = new();

    public Txn Absent(string key)
    {
        _request.Compare.Add(new Compare
        {
            Key = ByteString.CopyFromUtf8(key),
            Target = Compare.Types.CompareTarget.Create,
            Result = Compare.Types.CompareResult.Equal,
            CreateRevision = 0,
        });
        return this;
    }

    public Txn At(string key, long modRevision)
    {
        _request.Compare.Add(new Compare
        {
            Key = ByteString.CopyFromUtf8(key),
            Target = Compare.Types.CompareTarget.Mod,
            Result = Compare.Types.CompareResult.Equal,
            ModRevision = modRevision,
        });
        return this;
    }

    public Txn Put<T>(string key, T value, long lease = 0) => PutString(key, Json.Serialize(value), lease);

    public Txn PutString(string key, string value, long lease = 0)
    {
        _request.Success.Add(new RequestOp
        {
            RequestPut = new PutRequest { Key = ByteString.CopyFromUtf8(key), Value = ByteString.CopyFromUtf8(value), Lease = lease },
        });
        return this;
    }

    public Txn Delete(string key)
    {
        _request.Success.Add(new RequestOp { RequestDeleteRange = new DeleteRangeRequest { Key = ByteString.CopyFromUtf8(key) } });
        return this;
    }

    public Txn DeletePrefix(string prefix)
    {
        _request.Success.Add(new RequestOp
        {
            RequestDeleteRange = new DeleteRangeRequest
            {
                Key = ByteString.CopyFromUtf8(prefix),
                RangeEnd = ByteString.CopyFromUtf8(EtcdStore.RangeEnd(prefix)),
            },
        });
        return this;
    }

    internal TxnRequest Build() => _request;
}

/// <summary>
/// Registered in a process's services, every call of its <see cref="EtcdStore"/> passes through this interceptor. Only
/// tests register one (an etcd that hangs for one cell at a chosen moment); a process built without it is unchanged.
/// </summary>
public sealed record EtcdCallInterceptor(Grpc.Core.Interceptors.Interceptor Interceptor);
