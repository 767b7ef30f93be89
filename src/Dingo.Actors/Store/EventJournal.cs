using System.Threading.Channels;
using Dingo.Config;
using Dingo.Model;
using Microsoft.Extensions.Logging;
using Prometheus;

namespace Dingo.Store;

/// <summary>
/// Writes instances' events to etcd (<see cref="Keys.Events"/>) in the background. <see cref="Record"/> never waits:
/// the HA loop that calls it must never be held by etcd. Events wait in a bounded queue while etcd is away (the oldest
/// dropped first, and counted, when it fills) and are written once it answers again. Every event is put under an
/// hourly lease of <see cref="EventSettings.Retention"/> plus an hour, so etcd forgets it on its own; each instance
/// keeps at most <see cref="EventSettings.PerInstance"/> (the oldest deleted first).
/// </summary>
public sealed class EventJournal : IAsyncDisposable
{
    public const int QueueCapacity = 2000;
    private static readonly TimeSpan WriteDeadline = TimeSpan.FromSeconds(5);
    private static readonly TimeSpan RetryPause = TimeSpan.FromSeconds(1);
    private static readonly TimeSpan LeaseEvery = TimeSpan.FromHours(1);
    private const int TrimEvery = 25;

    private readonly EtcdStore _store;
    private readonly EventSettings _settings;
    private readonly string _source;
    private readonly ILogger _logger;
    private readonly Channel<EventRecord> _queue;
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _writing;
    private readonly Counter? _recorded;
    private readonly Dictionary<string, int> _sinceTrim = new(StringComparer.Ordinal);
    private long _lease;
    private DateTimeOffset _leaseAt = DateTimeOffset.MinValue;
    private long _droppedCount;
    private long _lastTicks;

    /// <param name="source">who records: the cell's id, or "broker"</param>
    /// <param name="registry">where to count events by kind and those dropped (null: not counted)</param>
    public EventJournal(EtcdStore store, EventSettings settings, string source, ILogger logger, CollectorRegistry? registry = null)
    {
        _store = store;
        _settings = settings;
        _source = source;
        _logger = logger;
        _queue = Channel.CreateBounded<EventRecord>(new BoundedChannelOptions(QueueCapacity)
        {
            FullMode = BoundedChannelFullMode.DropOldest,
            SingleReader = true,
        }, _ => Interlocked.Increment(ref _droppedCount));
        if (registry is not null)
        {
            var f = Metrics.WithCustomRegistry(registry);
            _recorded = f.CreateCounter("dingo_events_total", "Events recorded for instances, by kind (docs/operator-guide.md, \"Events\").", ["kind"]);
            var dropped = f.CreateCounter("dingo_events_dropped_total", "Events dropped before reaching etcd (the queue was full while etcd did not answer).");
            registry.AddBeforeCollectCallback(() => dropped.IncTo(Interlocked.Read(ref _droppedCount)));
        }
        _writing = Task.Run(() => WriteAsync(_stop.Token));
    }

    /// <summary>Events dropped so far because the queue was full.</summary>
    public long Dropped => Interlocked.Read(ref _droppedCount);

    /// <summary>Queues one event; returns at once, whatever etcd does.</summary>
    public void Record(string instanceId, string? nodeId, string kind, string sentence)
    {
        // Strictly increasing within this process: keys sort by time, so two events of one tick keep the order they happened in.
        long ticks, last;
        do
        {
            last = Interlocked.Read(ref _lastTicks);
            ticks = Math.Max(DateTimeOffset.UtcNow.UtcTicks, last + 1);
        }
        while (Interlocked.CompareExchange(ref _lastTicks, ticks, last) != last);
        var record = new EventRecord { At = new DateTimeOffset(ticks, TimeSpan.Zero), InstanceId = instanceId, NodeId = nodeId, Source = _source, Kind = kind, Sentence = sentence };
        _recorded?.WithLabels(kind).Inc();
        _queue.Writer.TryWrite(record);
    }

    private async Task WriteAsync(CancellationToken ct)
    {
        try
        {
            await foreach (var record in _queue.Reader.ReadAllAsync(ct).ConfigureAwait(false))
            {
                while (!await TryPutAsync(record, ct).ConfigureAwait(false))
                    await Task.Delay(RetryPause, ct).ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested) { }
    }

    /// <summary>One attempt: false when etcd did not take it (the caller waits and tries again).</summary>
    private async Task<bool> TryPutAsync(EventRecord record, CancellationToken ct)
    {
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(ct);
        deadline.CancelAfter(WriteDeadline);
        try
        {
            var lease = await LeaseAsync(deadline.Token).ConfigureAwait(false);
            var suffix = Convert.ToHexString(System.Security.Cryptography.RandomNumberGenerator.GetBytes(4)).ToLowerInvariant();
            await _store.PutAsync(_store.Keys.Event(record.InstanceId, record.At, suffix), record, deadline.Token, lease).ConfigureAwait(false);
            await TrimIfDueAsync(record.InstanceId, deadline.Token).ConfigureAwait(false);
            return true;
        }
        catch (Exception ex) when (!ct.IsCancellationRequested && ex is OperationCanceledException or Grpc.Core.RpcException)
        {
            // A lease granted by an etcd that has since lost it (restored from a snapshot) is refused: grant a new one.
            if (ex is Grpc.Core.RpcException { StatusCode: Grpc.Core.StatusCode.NotFound }) _leaseAt = DateTimeOffset.MinValue;
            _logger.LogDebug("events: etcd did not take an event of {Instance} yet: {Error}", record.InstanceId, ex.Message);
            return false;
        }
    }

    /// <summary>The hour's lease: granted anew every hour, never kept alive, so each event outlives it by the retention at most.</summary>
    private async Task<long> LeaseAsync(CancellationToken ct)
    {
        if (DateTimeOffset.UtcNow - _leaseAt < LeaseEvery) return _lease;
        _lease = await _store.GrantLeaseAsync(_settings.Retention + LeaseEvery, ct).ConfigureAwait(false);
        _leaseAt = DateTimeOffset.UtcNow;
        return _lease;
    }

    /// <summary>Every <see cref="TrimEvery"/> events of an instance: deletes its oldest beyond the cap.</summary>
    private async Task TrimIfDueAsync(string instanceId, CancellationToken ct)
    {
        var n = _sinceTrim.GetValueOrDefault(instanceId) + 1;
        if (n < TrimEvery)
        {
            _sinceTrim[instanceId] = n;
            return;
        }
        _sinceTrim[instanceId] = 0;
        var keys = await _store.ListKeysAsync(_store.Keys.Events(instanceId), ct).ConfigureAwait(false);
        foreach (var key in keys.Take(Math.Max(0, keys.Count - _settings.PerInstance)))
            await _store.DeleteAsync(key, ct).ConfigureAwait(false);
    }

    /// <summary>Reads an instance's events, oldest first (`dingo events`, the broker's dashboard).</summary>
    public static async Task<IReadOnlyList<EventRecord>> ReadAsync(EtcdStore store, string instanceId, CancellationToken ct) =>
        (await store.ListAsync<EventRecord>(store.Keys.Events(instanceId), ct).ConfigureAwait(false))
            .OrderBy(e => e.Key, StringComparer.Ordinal).Select(e => e.Value).ToList();

    /// <summary>Writes what is queued for up to <paramref name="grace"/>, then stops.</summary>
    public async Task FlushAndStopAsync(TimeSpan grace)
    {
        _queue.Writer.TryComplete();
        if (await Task.WhenAny(_writing, Task.Delay(grace)).ConfigureAwait(false) != _writing) await _stop.CancelAsync().ConfigureAwait(false);
        try { await _writing.ConfigureAwait(false); }
        catch (OperationCanceledException) { }
    }

    public async ValueTask DisposeAsync()
    {
        await FlushAndStopAsync(TimeSpan.FromSeconds(2)).ConfigureAwait(false);
        _stop.Dispose();
    }
}
