using Akka.Actor;
using Akka.Event;

namespace Dingo.Cells;

/// <summary>Messages of the <see cref="CellActor"/>.</summary>
public static class CellMessages
{
    /// <summary>Reconcile now (a watch saw a change, or the timer fired).</summary>
    public sealed record Reconcile;
    internal sealed record PassDone(string Summary);
    internal sealed record PassFailed(Exception Error);
}

/// <summary>
/// Runs the cell's reconcile passes one at a time: on a timer, and at once when etcd changes under the
/// cell's assignments. Thin: the work is in <see cref="CellReconciler"/>.
/// </summary>
public sealed class CellActor : ReceiveActor, IWithTimers
{
    private readonly CellReconciler _reconciler;
    private readonly TimeSpan _interval;
    private readonly ILoggingAdapter _log = Context.GetLogger();
    private readonly CancellationTokenSource _stopping = new();
    private bool _running;
    private bool _again;
    private string _lastSummary = "";

    public ITimerScheduler Timers { get; set; } = null!;

    public CellActor(CellReconciler reconciler, TimeSpan interval)
    {
        _reconciler = reconciler;
        _interval = interval;
        Receive<CellMessages.Reconcile>(_ => Start());
        Receive<CellMessages.PassDone>(done =>
        {
            _running = false;
            if (done.Summary != _lastSummary && !done.Summary.StartsWith("no action", StringComparison.Ordinal)) _log.Info("cell pass: {0}", done.Summary);
            _lastSummary = done.Summary;
            Next();
        });
        Receive<CellMessages.PassFailed>(failed =>
        {
            _running = false;
            _log.Warning("cell pass failed: {0}", failed.Error.Message);
            Next();
        });
    }

    protected override void PreStart() => Self.Tell(new CellMessages.Reconcile());

    private void Next()
    {
        if (_again) Start();
        else Timers.StartSingleTimer("tick", new CellMessages.Reconcile(), _interval);
    }

    private void Start()
    {
        if (_running)
        {
            _again = true;
            return;
        }
        _running = true;
        _again = false;
        _reconciler.RunPassAsync(_stopping.Token).PipeTo(Self,
            success: s => new CellMessages.PassDone(s),
            failure: e => new CellMessages.PassFailed(e));
    }

    protected override void PostStop()
    {
        _stopping.Cancel();
        _stopping.Dispose();
    }

    public static Props Props(CellReconciler reconciler, TimeSpan interval) =>
        Akka.Actor.Props.Create(() => new CellActor(reconciler, interval));
}
