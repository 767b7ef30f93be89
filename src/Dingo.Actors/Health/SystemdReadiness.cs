using System.Globalization;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Hosting.Systemd;
using Microsoft.Extensions.Logging;

namespace Dingo.Health;

/// <summary>
/// systemd's notify protocol for a `Type=notify` unit (Microsoft.Extensions.Hosting.Systemd's notifier, which speaks it
/// over $NOTIFY_SOCKET): READY=1 once every readiness check passes, not merely once the process started, so `systemctl
/// start` returns, and units ordered after this one start, only when the broker or cell can work. Meanwhile STATUS= says
/// what it waits for (`systemctl status`). With `WatchdogSec=`, WATCHDOG=1 at half the interval while the process's
/// thread pool runs: a hung process is killed and restarted by systemd. Nothing happens without $NOTIFY_SOCKET.
/// </summary>
public sealed class SystemdReadiness(Readiness readiness, ILogger logger, ISystemdNotifier? notifier = null) : BackgroundService
{
    private static readonly TimeSpan Retry = TimeSpan.FromSeconds(1);

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var systemd = notifier ?? new SystemdNotifier();
        if (!systemd.IsEnabled) return;
        var watchdog = WatchdogInterval();
        var watching = watchdog is { } every ? WatchdogAsync(systemd, every, stoppingToken) : Task.CompletedTask;
        string? said = null;
        try
        {
            while (!stoppingToken.IsCancellationRequested)
            {
                var report = await readiness.CheckAsync(stoppingToken).ConfigureAwait(false);
                if (report.Ready)
                {
                    systemd.Notify(new ServiceState("STATUS=ready"));
                    systemd.Notify(ServiceState.Ready);
                    logger.LogInformation("ready: told systemd (READY=1)");
                    break;
                }
                var status = "waiting: " + report.Summary;
                if (status != said)
                {
                    // One line per line break is all STATUS= takes.
                    systemd.Notify(new ServiceState("STATUS=" + status.ReplaceLineEndings(" ")));
                    logger.LogInformation("not ready yet ({Status}); READY=1 follows once every check passes", report.Summary);
                    said = status;
                }
                await Task.Delay(Retry, stoppingToken).ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested) { }
        await watching.ConfigureAwait(false);
    }

    /// <summary>Half of $WATCHDOG_USEC when systemd set it for this very process ($WATCHDOG_PID absent or ours).</summary>
    internal static TimeSpan? WatchdogInterval()
    {
        if (!long.TryParse(Environment.GetEnvironmentVariable("WATCHDOG_USEC"), NumberStyles.None, CultureInfo.InvariantCulture, out var usec) || usec <= 0)
            return null;
        var pid = Environment.GetEnvironmentVariable("WATCHDOG_PID");
        if (!string.IsNullOrEmpty(pid) && pid != Environment.ProcessId.ToString(CultureInfo.InvariantCulture)) return null;
        return TimeSpan.FromTicks(usec * 10 / 2);
    }

    private static async Task WatchdogAsync(ISystemdNotifier systemd, TimeSpan every, CancellationToken ct)
    {
        try
        {
            while (!ct.IsCancellationRequested)
            {
                systemd.Notify(new ServiceState("WATCHDOG=1"));
                await Task.Delay(every, ct).ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested) { }
    }
}
