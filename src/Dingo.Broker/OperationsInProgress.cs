using System.Collections.Concurrent;
using System.Diagnostics;

namespace Dingo.Broker;

/// <summary>
/// Instances with an operation in progress, as one broker knows them: the operations it accepted, and every operation in
/// progress in etcd at the last sweep (<see cref="OperationSweeper"/>, every 2 s). <see cref="StatusWatch"/> passes their
/// nodes' changes on at once; an instance missing here is passed on at its actor's next look (every second).
/// </summary>
public sealed class OperationsInProgress
{
    private readonly ConcurrentDictionary<string, long> _marked = new(StringComparer.Ordinal);

    public bool Contains(string instanceId) => _marked.ContainsKey(instanceId);

    public int Count => _marked.Count;

    /// <summary>An operation accepted by this broker.</summary>
    public void Mark(string instanceId) => _marked[instanceId] = Stopwatch.GetTimestamp();

    /// <summary>
    /// A sweep's list, read at <paramref name="readAt"/> (a <see cref="Stopwatch"/> timestamp): what it holds is in
    /// progress; what it does not hold and was marked before the read has ended (one marked after the read is kept until
    /// the next sweep: its operation may have begun after the list was read).
    /// </summary>
    public void Are(IReadOnlyCollection<string> instanceIds, long readAt)
    {
        var listed = instanceIds.ToHashSet(StringComparer.Ordinal);
        foreach (var id in listed) _marked.AddOrUpdate(id, readAt, (_, at) => Math.Max(at, readAt));
        foreach (var (id, at) in _marked)
            if (!listed.Contains(id) && at < readAt) _marked.TryRemove(new KeyValuePair<string, long>(id, at));
    }
}
