using Akka.Actor;
using Akka.Event;

namespace Dingo;

/// <summary>
/// An actor that runs one asynchronous reconcile pass at a time. A request that arrives during a pass
/// schedules exactly one more pass after it; otherwise the subclass says when to look again.
/// </summary>
/// <remarks>
/// The wait between passes is a .NET timer (Task.Delay), not an Akka timer: Akka's scheduler fires only on its
/// ticks (akka.scheduler.tick-duration, which AkkaDefaults makes coarse so that an idle actor system does not wake
/// 100 times a second), and the HA loop's loop-wait must not be rounded up to a tick.
/// </remarks>
public abstract class PassActor<TResult> : ReceiveActor
{
    /// <summary>The wait between passes ended; a wait that a later Schedule replaced is stale.</summary>
    private sealed record Run(int Wait);
    private sealed record Done(TResult Result);
    private sealed record Failed(Exception Error);

    private readonly CancellationTokenSource _stopping = new();
    private bool _running;
    private bool _again;
    private int _wait;
    /// <summary>A wait for the next pass is pending (<see cref="Schedule"/>).</summary>
    private bool _waiting;

    protected ILoggingAdapter Log { get; } = Context.GetLogger();

    /// <summary>True when a request arrived while the pass that just ended was running.</summary>
    protected bool RequestedMeanwhile => _again;

    protected PassActor()
    {
        Receive<Run>(run =>
        {
            if (run.Wait != _wait) return;
            _waiting = false;
            RequestPass();
        });
        Receive<Done>(done =>
        {
            _running = false;
            Schedule(AfterPass(done.Result));
        });
        Receive<Failed>(failed =>
        {
            _running = false;
            Schedule(AfterFailure(failed.Error));
        });
    }

    /// <summary>The work of one pass: read, decide, act once.</summary>
    protected abstract Task<TResult> RunPassAsync(CancellationToken cancellationToken);

    /// <summary>When to run the next pass after this result; null waits for a request.</summary>
    protected abstract TimeSpan? AfterPass(TResult result);

    /// <summary>When to retry after a failed pass; null waits for a request.</summary>
    protected abstract TimeSpan? AfterFailure(Exception error);

    /// <summary>
    /// A pass unless one runs or is already due (a wait pending): a nudge that must not add passes to an actor at work,
    /// as a client polling an operation every 100 ms did (bench/Provision: 20 instances polled, each actor passing back
    /// to back and reading etcd each time). An actor resting with no wait, or a new one, passes at once.
    /// </summary>
    protected void Wake()
    {
        if (_running || _waiting) return;
        RequestPass();
    }

    protected void RequestPass()
    {
        if (_running)
        {
            _again = true;
            return;
        }
        _running = true;
        _again = false;
        _waiting = false;
        RunPassAsync(_stopping.Token).PipeTo(Self, success: r => new Done(r), failure: e => new Failed(e));
    }

    private void Schedule(TimeSpan? delay)
    {
        if (_again) RequestPass();
        else if (delay is { } d)
        {
            // As Akka's single timer did: a new wait replaces the one pending.
            var wait = ++_wait;
            _waiting = true;
            var self = Self;
            Task.Delay(d > TimeSpan.Zero ? d : TimeSpan.Zero, _stopping.Token).ContinueWith(
                t => { if (t.IsCompletedSuccessfully) self.Tell(new Run(wait)); },
                CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        }
    }

    protected override void PostStop()
    {
        _stopping.Cancel();
        _stopping.Dispose();
    }
}
