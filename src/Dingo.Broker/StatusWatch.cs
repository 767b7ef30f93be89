using System.Collections.Concurrent;
using Dingo.Model;
using Dingo.Store;

namespace Dingo.Broker;

/// <summary>
/// Passes a node's change on to its instance's actor the moment the node's cell reports it, while the instance has an
/// operation in progress: the actor of a provision looked again every 300 ms, so a new primary that served waited 150 ms
/// on average (up to 300) before last_operation said succeeded (bench/Provision). One etcd watch on the nodes' reports;
/// only a change of what a decision reads (state, role, streaming, writable, the report's removal) counts, not a new lag
/// or detail. A change missed while the watch reconnects is seen at the actor's next look (every second).
/// </summary>
/// <param name="inProgress">whether an instance has an operation in progress (<see cref="OperationsInProgress"/>)</param>
/// <param name="poke">asks the instance's actor for a pass now (<see cref="InstanceService.Poke"/>)</param>
public sealed class StatusWatch(EtcdStore store, Func<string, bool> inProgress, Action<string> poke, ILogger<StatusWatch> logger) : BackgroundService
{
    private readonly ConcurrentDictionary<string, (NodeState State, NodeRole Role, bool Streaming, bool Writable)> _seen = new(StringComparer.Ordinal);

    protected override Task ExecuteAsync(CancellationToken stoppingToken) =>
        store.WatchPrefixAsync(store.Keys.AllStatus, OnChangesAsync, stoppingToken);

    internal Task OnChangesAsync(IReadOnlyList<WatchedChange> changes)
    {
        var prefix = store.Keys.AllStatus;
        HashSet<string>? wake = null;
        foreach (var change in changes)
        {
            if (!change.Key.StartsWith(prefix, StringComparison.Ordinal)) continue;
            var rest = change.Key[prefix.Length..];
            var slash = rest.IndexOf('/', StringComparison.Ordinal);
            if (slash <= 0) continue;
            var instanceId = rest[..slash];
            if (change.Value is null)
            {
                // A report gone: its node was stopped and its data deleted, what a deletion's pass waits for.
                _seen.TryRemove(change.Key, out _);
                if (inProgress(instanceId)) (wake ??= new HashSet<string>(StringComparer.Ordinal)).Add(instanceId);
                continue;
            }
            NodeStatus? status;
            try
            {
                status = Json.Deserialize<NodeStatus>(change.Value);
            }
            catch (System.Text.Json.JsonException ex)
            {
                logger.LogDebug("a node report at {Key} is not one this broker reads: {Error}", change.Key, ex.Message);
                continue;
            }
            if (status is null) continue;
            var now = (status.State, status.Role, status.Streaming, status.Writable);
            if (_seen.TryGetValue(change.Key, out var before) && before == now) continue;
            _seen[change.Key] = now;
            if (inProgress(instanceId)) (wake ??= new HashSet<string>(StringComparer.Ordinal)).Add(instanceId);
        }
        if (wake is not null)
            foreach (var id in wake) poke(id);
        return Task.CompletedTask;
    }
}
