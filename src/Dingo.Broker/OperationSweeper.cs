using Dingo.Model;
using Dingo.Store;

namespace Dingo.Broker;

/// <summary>
/// Every few seconds: wakes the actor of every instance with an operation in progress (after a broker restart
/// this resumes provisioning and deletions in flight), runs the lost-cell duty when this broker holds it
/// (<see cref="LostCellDuty"/>: one broker declares cells lost), and wakes the instances that must heal (nodes on lost
/// or drained cells, or fewer nodes than planned).
/// </summary>
public sealed class OperationSweeper(EtcdStore store, InstanceService instances, LostCellDuty lostCells, ILogger<OperationSweeper> logger) : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        while (!stoppingToken.IsCancellationRequested)
        {
            try
            {
                await SweepAsync(stoppingToken);
            }
            catch (Exception ex) when (ex is not OperationCanceledException)
            {
                logger.LogWarning("sweep failed: {Error}", ex.Message);
            }
            try { await Task.Delay(TimeSpan.FromSeconds(2), stoppingToken); }
            catch (OperationCanceledException) { break; }
        }
        // Stopping: the duty passes on to another broker at once.
        await lostCells.DisposeAsync();
    }

    private async Task SweepAsync(CancellationToken ct)
    {
        var keys = store.Keys;
        var readAt = System.Diagnostics.Stopwatch.GetTimestamp();
        var ops = await store.ListAsync<OperationRecord>(keys.Operations, ct);
        var inProgress = ops.Where(o => o.Value.InProgress).Select(o => o.Key[keys.Operations.Length..]).ToList();
        instances.InProgress.Are(inProgress, readAt);
        foreach (var id in inProgress) instances.Poke(id);

        // Read once for the duty and the instances to wake.
        var nodes = (await store.ListAsync<NodeSpec>(keys.AllNodes, ct)).Select(n => n.Value).ToList();
        var lost = await LostCellDuty.LostAsync(store, ct);
        await lostCells.SweepAsync(nodes, lost, ct);

        var drained = (await store.ListAsync<string>(keys.DrainedCells, ct)).Select(l => l.Key[keys.DrainedCells.Length..]).ToHashSet();
        var records = (await store.ListAsync<InstanceRecord>(keys.Instances, ct)).Select(r => r.Value).ToList();
        foreach (var instance in records)
        {
            var mine = nodes.Where(n => n.InstanceId == instance.Id).ToList();
            if (mine.Any(n => lost.Contains(n.CellId) || drained.Contains(n.CellId)) || (mine.Count > 0 && mine.Count < instance.NodeCount)) instances.Poke(instance.Id);
        }
    }
}
