using System.Diagnostics;
using Microsoft.Extensions.Logging;

namespace Dingo.Cells;

/// <summary>
/// The cell's own node work that a warm pool fill waits behind: creating, starting, cloning, restoring and rewinding
/// nodes, and claiming pool entries. A fill is an initdb, and on the Docker runtime a tool container's whole lifecycle
/// in the engine; in a burst of provisions it took the CPU and the engine from the nodes the burst was waiting for.
/// Within it, the work an application may be waiting for (everything but a clone and a replica's start): what a new
/// asynchronous replica's clone waits behind (<see cref="Dingo.Ha.CloneSettle"/>).
/// </summary>
internal sealed class NodeWork(Func<double?>? cpuPressure = null, double saturatedPercent = 0)
{
    private int _running;
    private long _last;
    private int _servingRunning;
    private long _servingLast;

    /// <summary>Marks one piece of node work as running until the result is disposed.</summary>
    /// <param name="serving">work an application may be waiting for: not a clone, not a replica's start</param>
    public IDisposable Begin(bool serving = true)
    {
        Interlocked.Increment(ref _running);
        if (serving) Interlocked.Increment(ref _servingRunning);
        Touch(serving);
        return new Scope(this, serving);
    }

    /// <summary>Marks a moment of node work (a claim) that has no span of its own.</summary>
    public void Touch(bool serving = true)
    {
        var now = Stopwatch.GetTimestamp();
        Interlocked.Exchange(ref _last, now);
        if (serving) Interlocked.Exchange(ref _servingLast, now);
    }

    /// <summary>
    /// No node work running, none begun or ended within <paramref name="span"/>, and the host's CPUs not saturated
    /// (<see cref="CpuPressure"/> at or above dingo.cell.saturated-cpu-pressure).
    /// </summary>
    public bool QuietFor(TimeSpan span) => Quiet(ref _running, ref _last, span) && !Saturated();

    /// <summary>
    /// No work an application may be waiting for running, none begun or ended within <paramref name="span"/>, and the
    /// host's CPUs not saturated.
    /// </summary>
    public bool ServingQuietFor(TimeSpan span) => Quiet(ref _servingRunning, ref _servingLast, span) && !Saturated();

    /// <summary>What the last look at the host's CPU pressure found (percent; null: not looked at, or not known).</summary>
    public double? LastPressure { get; private set; }

    /// <summary>
    /// A cell's own work is not all that loads its host: the binds, first sessions and preparations of the primaries it
    /// started go on after their starts, and other cells' nodes share the machine. While the host's tasks wait for a CPU
    /// most of the time, work that can wait still waits.
    /// </summary>
    private bool Saturated()
    {
        if (saturatedPercent <= 0 || cpuPressure is null) return false;
        var pressure = cpuPressure();
        LastPressure = pressure;
        return pressure >= saturatedPercent;
    }

    private static bool Quiet(ref int running, ref long last, TimeSpan span)
    {
        if (Volatile.Read(ref running) > 0) return false;
        var at = Interlocked.Read(ref last);
        return at == 0 || Stopwatch.GetElapsedTime(at) >= span;
    }

    private sealed class Scope(NodeWork work, bool serving) : IDisposable
    {
        private int _disposed;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
            work.Touch(serving);
            Interlocked.Decrement(ref work._running);
            if (serving) Interlocked.Decrement(ref work._servingRunning);
        }
    }
}

/// <summary>
/// How both runtimes keep their warm pool full (`dingo.cell.warm-pool`): one fill at a time, a second apart, and only
/// once the cell's node work (<see cref="NodeWork"/>) has been quiet for <see cref="Quiet"/>, so a burst of provisions
/// gets the CPU and the engine first; a pool kept waiting for <see cref="MostDeferred"/> (a node in a restart loop, a
/// cell that is never quiet) is filled anyway. A fill that fails (a full disk, a broken initdb, an engine that does not
/// answer) is tried again after 30 s; new nodes run initdb themselves meanwhile.
/// </summary>
internal static class WarmPoolLoop
{
    public static readonly TimeSpan Quiet = TimeSpan.FromSeconds(5);
    public static readonly TimeSpan MostDeferred = TimeSpan.FromMinutes(2);

    /// <summary>Whether a fill may run now: the cell's node work quiet, or the pool kept waiting long enough.</summary>
    internal static bool MayFill(NodeWork work, long lastFill) =>
        work.QuietFor(Quiet) || Stopwatch.GetElapsedTime(lastFill) >= MostDeferred;

    /// <param name="fillOnce">tidies the pool and adds one entry when it is short</param>
    /// <param name="work">the cell's node work, which a fill waits behind</param>
    /// <param name="transient">a failure worth another try later (anything else ends the keeper)</param>
    public static async Task RunAsync(Func<CancellationToken, Task<bool>> fillOnce, NodeWork work, Func<Exception, bool> transient, ILogger logger, CancellationToken ct)
    {
        var failures = 0;
        var lastFill = Stopwatch.GetTimestamp();
        while (!ct.IsCancellationRequested)
        {
            try
            {
                if (MayFill(work, lastFill))
                {
                    await fillOnce(ct).ConfigureAwait(false);
                    lastFill = Stopwatch.GetTimestamp();
                }
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
                lastFill = Stopwatch.GetTimestamp();
                if (failures++ == 0) logger.LogWarning("warm pool: {Error}; new nodes run initdb themselves until it works again", ex.Message);
                try { await Task.Delay(TimeSpan.FromSeconds(30), ct).ConfigureAwait(false); }
                catch (OperationCanceledException) { return; }
            }
        }
    }
}

/// <summary>
/// The host's CPU pressure (Linux pressure stall information, /proc/pressure/cpu): the share of the last 10 s in which
/// at least one runnable task waited for a CPU. Null where the kernel does not offer it (then only the cell's own node
/// work counts).
/// </summary>
internal static class CpuPressure
{
    private const string File = "/proc/pressure/cpu";

    public static double? Some10()
    {
        try
        {
            using var reader = new StreamReader(File);
            return Parse(reader.ReadLine());
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <param name="line">the file's first line: <c>some avg10=12.34 avg60=… avg300=… total=…</c></param>
    internal static double? Parse(string? line)
    {
        if (line is null || !line.StartsWith("some ", StringComparison.Ordinal)) return null;
        foreach (var field in line.Split(' ', StringSplitOptions.RemoveEmptyEntries))
            if (field.StartsWith("avg10=", StringComparison.Ordinal)
                && double.TryParse(field.AsSpan(6), System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out var value))
                return value;
        return null;
    }
}
