using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;

namespace Dingo.Cells;

/// <summary>
/// A node container whose plan allows fewer CPUs than <c>dingo.cell.docker.start-cpus</c> is made with that allowance and
/// brought down to its plan's ceiling <see cref="Window"/> after each start, on the running container (docs/docker.md,
/// "A start at a full core"). Every look at a running node container is reported here (<see cref="Observe"/>); a start
/// not yet brought down is, once its window has passed. Nothing is kept but in memory: a cell that died in a window
/// finds the container above its ceiling at its first look and brings it down then, however long ago it started.
/// </summary>
/// <param name="lower">sets a running container's CPU ceiling (container id, CPUs)</param>
/// <param name="started">the container's start time as the engine says it now; null when it is gone or not running</param>
internal sealed class StartAllowance(
    TimeSpan window,
    Func<string, double, CancellationToken, Task> lower,
    Func<string, CancellationToken, Task<string?>> started,
    ILogger logger) : IDisposable
{
    private sealed record Due(string NodeId, string ContainerId, string StartedAt, double Ceiling, DateTimeOffset At, int Failures);

    private readonly ConcurrentDictionary<string, Due> _due = new(StringComparer.Ordinal);
    /// <summary>Container id → the start whose ceiling is set.</summary>
    private readonly ConcurrentDictionary<string, string> _lowered = new(StringComparer.Ordinal);
    private readonly SemaphoreSlim _wake = new(0);
    private readonly CancellationTokenSource _stop = new();
    private readonly Lock _gate = new();
    private Task? _loop;

    public TimeSpan Window => window;

    /// <summary>Starts whose ceiling is still to set (tests).</summary>
    internal int Pending => _due.Count;

    /// <summary>
    /// A look at a running node container: <paramref name="configuredCpus"/> is what it was made with, <paramref name="ceiling"/>
    /// its plan's. A container made at its ceiling needs nothing; a start already brought down neither.
    /// </summary>
    public void Observe(string nodeId, string containerId, string? startedAt, double ceiling, double configuredCpus)
    {
        if (configuredCpus <= ceiling || configuredCpus <= 0 || string.IsNullOrEmpty(startedAt) || _stop.IsCancellationRequested) return;
        if (_lowered.TryGetValue(containerId, out var done) && done == startedAt) return;
        if (_due.TryGetValue(containerId, out var known) && known.StartedAt == startedAt) return;
        var at = DateTimeOffset.TryParse(startedAt, System.Globalization.CultureInfo.InvariantCulture, System.Globalization.DateTimeStyles.AssumeUniversal, out var began)
            ? began + window
            : DateTimeOffset.UtcNow; // a start time the engine wrote oddly: the ceiling at once
        _due[containerId] = new Due(nodeId, containerId, startedAt, ceiling, at, 0);
        EnsureLoop();
        Wake();
    }

    private void Wake()
    {
        try
        {
            if (_wake.CurrentCount == 0) _wake.Release();
        }
        catch (SemaphoreFullException)
        {
        }
    }

    /// <summary>A container removed: nothing of it is kept.</summary>
    public void Forget(string containerId)
    {
        _due.TryRemove(containerId, out _);
        _lowered.TryRemove(containerId, out _);
    }

    private void EnsureLoop()
    {
        lock (_gate)
        {
            if (_loop is null && !_stop.IsCancellationRequested) _loop = Task.Run(() => RunAsync(_stop.Token));
        }
    }

    private async Task RunAsync(CancellationToken ct)
    {
        while (!ct.IsCancellationRequested)
        {
            var now = DateTimeOffset.UtcNow;
            foreach (var due in _due.Values.Where(d => d.At <= now).ToList())
                await ApplyAsync(due, ct).ConfigureAwait(false);
            // At least once a minute, whatever start time an engine wrote.
            var next = _due.IsEmpty ? Timeout.InfiniteTimeSpan : _due.Values.Min(d => d.At) - DateTimeOffset.UtcNow;
            if (next != Timeout.InfiniteTimeSpan) next = next < TimeSpan.Zero ? TimeSpan.Zero : next > TimeSpan.FromMinutes(1) ? TimeSpan.FromMinutes(1) : next;
            try
            {
                await _wake.WaitAsync(next, ct).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested)
            {
                return;
            }
        }
    }

    private async Task ApplyAsync(Due due, CancellationToken ct)
    {
        try
        {
            using var deadline = CancellationTokenSource.CreateLinkedTokenSource(ct);
            deadline.CancelAfter(TimeSpan.FromSeconds(30));
            await lower(due.ContainerId, due.Ceiling, deadline.Token).ConfigureAwait(false);
            _lowered[due.ContainerId] = due.StartedAt;
            // Only this entry: a newer start of the container observed meanwhile stays due.
            _due.TryRemove(new KeyValuePair<string, Due>(due.ContainerId, due));
            if (due.Failures > 0)
                logger.LogInformation("Node {NodeId}: its CPU ceiling ({Cpus}) is set after {Failures} failed attempt(s)", due.NodeId, due.Ceiling, due.Failures);
            else
                logger.LogDebug("Node {NodeId}: its CPU ceiling ({Cpus}) is set, {Window:0.#} s after its start", due.NodeId, due.Ceiling, window.TotalSeconds);
        }
        catch (Exception ex) when (!ct.IsCancellationRequested)
        {
            // A container stopped, removed or started again since: its next start is observed anew (the engine cannot
            // set a stopped container's running ceiling, and needs not: the ceiling is the start's).
            string? now;
            try
            {
                using var deadline = CancellationTokenSource.CreateLinkedTokenSource(ct);
                deadline.CancelAfter(TimeSpan.FromSeconds(30));
                now = await started(due.ContainerId, deadline.Token).ConfigureAwait(false);
            }
            catch (Exception inspect) when (!ct.IsCancellationRequested)
            {
                now = due.StartedAt; // unknown: try again
                logger.LogDebug("Node {NodeId}: the container's state is unknown after a failed CPU ceiling: {Error}", due.NodeId, inspect.Message);
            }
            if (now != due.StartedAt)
            {
                _due.TryRemove(new KeyValuePair<string, Due>(due.ContainerId, due));
                return;
            }
            var failures = due.Failures + 1;
            var retry = TimeSpan.FromSeconds(Math.Min(30, Math.Pow(2, failures - 1)));
            if (failures == 1 || failures % 10 == 0)
                logger.LogWarning("Node {NodeId}: the engine did not set its CPU ceiling ({Cpus}) after the start allowance (attempt {Failures}; again in {Retry:0} s): {Error}",
                    due.NodeId, due.Ceiling, failures, retry.TotalSeconds, ex.Message);
            _due.TryUpdate(due.ContainerId, due with { Failures = failures, At = DateTimeOffset.UtcNow + retry }, due);
        }
    }

    public void Dispose()
    {
        Task? loop;
        lock (_gate)
        {
            _stop.Cancel();
            loop = _loop;
        }
        try { loop?.Wait(TimeSpan.FromSeconds(5)); }
        catch (AggregateException) { }
        // The token source and the semaphore are left to the collector: a pass still inspecting a node as the cell stops
        // reports its look here after this, and must find them usable (Observe returns once stopped).
    }
}
