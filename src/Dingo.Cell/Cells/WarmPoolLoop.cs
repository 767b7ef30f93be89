using System.Diagnostics;
using Microsoft.Extensions.Logging;

namespace Dingo.Cells;

/// <summary>
/// How both runtimes keep their warm pool full (`dingo.cell.warm-pool`): one fill at a time, a second apart, none within
/// 2 s of a claim (a burst of provisions gets the CPU first). A fill that fails (a full disk, a broken initdb, an engine
/// that does not answer) is tried again after 30 s; new nodes run initdb themselves meanwhile.
/// </summary>
internal static class WarmPoolLoop
{
    /// <param name="fillOnce">tidies the pool and adds one entry when it is short</param>
    /// <param name="lastClaim">the <see cref="Stopwatch"/> timestamp of the last claim, 0 before any</param>
    /// <param name="transient">a failure worth another try later (anything else ends the keeper)</param>
    public static async Task RunAsync(Func<CancellationToken, Task<bool>> fillOnce, Func<long> lastClaim, Func<Exception, bool> transient, ILogger logger, CancellationToken ct)
    {
        var failures = 0;
        while (!ct.IsCancellationRequested)
        {
            try
            {
                var claimed = lastClaim();
                if (claimed == 0 || Stopwatch.GetElapsedTime(claimed) > TimeSpan.FromSeconds(2)) await fillOnce(ct).ConfigureAwait(false);
                if (failures > 0) logger.LogInformation("warm pool: filling again");
                failures = 0;
                await Task.Delay(TimeSpan.FromSeconds(1), ct).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested)
            {
                return;
            }
            catch (Exception ex) when (transient(ex))
            {
                if (failures++ == 0) logger.LogWarning("warm pool: {Error}; new nodes run initdb themselves until it works again", ex.Message);
                try { await Task.Delay(TimeSpan.FromSeconds(30), ct).ConfigureAwait(false); }
                catch (OperationCanceledException) { return; }
            }
        }
    }
}
