using Microsoft.Extensions.Hosting;

namespace Dingo.Cell;

/// <summary>
/// Keeps the runtime's warm pool at `dingo.cell.warm-pool` (initdb done ahead for new clusters' first nodes): the process
/// runtime's data directories, the Docker runtime's volumes.
/// </summary>
internal sealed class WarmPoolKeeper(Func<CancellationToken, Task> keepWarm) : BackgroundService
{
    protected override Task ExecuteAsync(CancellationToken stoppingToken) => keepWarm(stoppingToken);
}
