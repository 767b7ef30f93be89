using Dingo.Model;
using Dingo.Store;

namespace Dingo.Broker;

/// <summary>
/// Wakes the actor of every instance with an operation in progress, every few seconds. After a broker
/// restart this is what resumes provisioning and deletions that were in flight.
/// </summary>
public sealed class OperationSweeper(EtcdStore store, InstanceService instances, ILogger<OperationSweeper> logger) : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        while (!stoppingToken.IsCancellationRequested)
        {
            try
            {
                var ops = await store.ListAsync<OperationRecord>(store.Keys.Operations, stoppingToken);
                foreach (var op in ops.Where(o => o.Value.InProgress))
                {
                    instances.Poke(op.Key[store.Keys.Operations.Length..]);
                }
            }
            catch (Exception ex) when (ex is not OperationCanceledException)
            {
                logger.LogWarning("sweep of operations in progress failed: {Error}", ex.Message);
            }
            try { await Task.Delay(TimeSpan.FromSeconds(3), stoppingToken); }
            catch (OperationCanceledException) { return; }
        }
    }
}
