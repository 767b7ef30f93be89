using Akka.Event;
using Akka.Actor;

namespace Dingo.Cells;

/// <summary>Messages of the <see cref="CellActor"/>.</summary>
public static class CellMessages
{
    /// <summary>Reconcile now (a watch saw a change, or the timer fired).</summary>
    public sealed record Reconcile;
}

/// <summary>
/// Runs the cell's reconcile passes one at a time: on a timer, and at once when etcd changes under the
/// cell's assignments. Thin: the work is in <see cref="CellReconciler"/>.
/// </summary>
public sealed class CellActor : PassActor<string>
{
    private readonly CellReconciler _reconciler;
    private readonly TimeSpan _interval;
    private string _lastSummary = "";

    public CellActor(CellReconciler reconciler, TimeSpan interval)
    {
        _reconciler = reconciler;
        _interval = interval;
        Receive<CellMessages.Reconcile>(_ => RequestPass());
    }

    protected override void PreStart() => RequestPass();

    protected override Task<string> RunPassAsync(CancellationToken cancellationToken) => _reconciler.RunPassAsync(cancellationToken);

    protected override TimeSpan? AfterPass(string summary)
    {
        if (summary != _lastSummary && !summary.StartsWith("no action", StringComparison.Ordinal)) Log.Info("cell pass: {0}", summary);
        _lastSummary = summary;
        return _interval;
    }

    protected override TimeSpan? AfterFailure(Exception error)
    {
        Log.Warning("cell pass failed: {0}", error.Message);
        return _interval;
    }

    public static Props Props(CellReconciler reconciler, TimeSpan interval) =>
        Akka.Actor.Props.Create(() => new CellActor(reconciler, interval));
}
