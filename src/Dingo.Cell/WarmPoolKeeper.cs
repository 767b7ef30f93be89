using Dingo.Cells;
using Microsoft.Extensions.Hosting;

namespace Dingo.Cell;

/// <summary>Keeps the process runtime's warm pool at `dingo.cell.warm-pool` (initdb done ahead for new clusters' first nodes).</summary>
internal sealed class WarmPoolKeeper(LocalProcessRuntime runtime) : BackgroundService
{
    protected override Task ExecuteAsync(CancellationToken stoppingToken) => runtime.KeepWarmAsync(stoppingToken);
}
