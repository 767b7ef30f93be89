namespace Dingo.Ha;

/// <summary>
/// Watches the answering PostgreSQL's postmaster, so its end wakes a pass at once (<see cref="ProcessExits"/>): a
/// leader's crashed PostgreSQL is then restarted or its key given up within milliseconds, not up to a loop-wait later.
/// </summary>
internal sealed class PostmasterWatch(AgentState state)
{
    private ProcessExits.Watching? _watching;
    private long _failedNs;

    /// <summary>Called (on the thread pool) when the PostgreSQL this agent saw answering ends: a pass should run now.</summary>
    public Action? Exited { get; set; }

    /// <summary>Asks the runtime for the postmaster only when nothing is watched; where watching fails, again 10 s later.</summary>
    public async Task WatchAsync(CancellationToken ct)
    {
        if (Exited is not { } exited || _watching is { Ended: false }) return;
        if (_failedNs != 0 && Monotonic.Between(_failedNs, Monotonic.NowNs()) < TimeSpan.FromSeconds(10)) return;
        _watching = null;
        int? pid;
        // Only a quicker wake-up: a runtime that cannot say (an engine that does not answer) must not fail the pass.
        try { pid = await state.Runtime.PostmasterPidAsync(state.Spec.NodeId, ct).ConfigureAwait(false); }
        catch (Exception ex) when (ex is not OperationCanceledException || !ct.IsCancellationRequested) { pid = null; }
        if (pid is null)
        {
            _failedNs = Monotonic.NowNs();
            return;
        }
        _watching = ProcessExits.Shared.Watch(pid.Value, exited);
        _failedNs = _watching is null ? Monotonic.NowNs() : 0;
    }

    /// <summary>The node's actor stops: its PostgreSQL's end no longer concerns anyone here.</summary>
    public void Stop()
    {
        Exited = null;
        _watching?.Dispose();
        _watching = null;
    }
}
