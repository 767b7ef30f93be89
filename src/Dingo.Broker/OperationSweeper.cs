using Dingo.Config;
using Dingo.Model;
using Dingo.Store;

namespace Dingo.Broker;

/// <summary>
/// Every few seconds: wakes the actor of every instance with an operation in progress (after a broker restart
/// this resumes provisioning and deletions in flight), declares cells lost once they have been gone past the
/// grace period, and wakes the instances that must heal (nodes on lost cells, or fewer nodes than planned).
/// </summary>
public sealed class OperationSweeper(EtcdStore store, InstanceService instances, DingoSettings settings, ILogger<OperationSweeper> logger) : BackgroundService
{
    private readonly Dictionary<string, DateTime> _missingSince = new();

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
            catch (OperationCanceledException) { return; }
        }
    }

    private async Task SweepAsync(CancellationToken ct)
    {
        var keys = store.Keys;
        var ops = await store.ListAsync<OperationRecord>(keys.Operations, ct);
        foreach (var op in ops.Where(o => o.Value.InProgress)) instances.Poke(op.Key[keys.Operations.Length..]);

        var cells = (await store.ListAsync<CellInfo>(keys.Cells, ct)).Select(c => c.Value.Id).ToHashSet();
        var nodes = (await store.ListAsync<NodeSpec>(keys.AllNodes, ct)).Select(n => n.Value).ToList();
        var lost = (await store.ListAsync<string>(keys.LostCells, ct)).Select(l => l.Key[keys.LostCells.Length..]).ToHashSet();
        var now = DateTime.UtcNow;
        foreach (var cell in _missingSince.Keys.Where(cells.Contains).ToList()) _missingSince.Remove(cell);
        foreach (var cell in nodes.Select(n => n.CellId).Where(c => !cells.Contains(c)).Distinct())
        {
            var since = _missingSince.TryGetValue(cell, out var s) ? s : _missingSince[cell] = now;
            if (now - since >= settings.Ha.LostCellGrace && !lost.Contains(cell))
            {
                logger.LogWarning("cell {Cell} has been gone for {Seconds:0}s (grace {Grace:0}s): declaring it lost; its nodes will be replaced", cell, (now - since).TotalSeconds, settings.Ha.LostCellGrace.TotalSeconds);
                await store.PutAsync(keys.LostCell(cell), now.ToString("O"), ct);
                lost.Add(cell);
            }
        }
        var drained = (await store.ListAsync<string>(keys.DrainedCells, ct)).Select(l => l.Key[keys.DrainedCells.Length..]).ToHashSet();
        var records = (await store.ListAsync<InstanceRecord>(keys.Instances, ct)).Select(r => r.Value).ToList();
        foreach (var instance in records)
        {
            var mine = nodes.Where(n => n.InstanceId == instance.Id).ToList();
            if (mine.Any(n => lost.Contains(n.CellId) || drained.Contains(n.CellId)) || (mine.Count > 0 && mine.Count < instance.NodeCount)) instances.Poke(instance.Id);
        }
    }
}
