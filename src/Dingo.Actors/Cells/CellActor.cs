using Akka.Actor;
using Akka.Event;
using Dingo.Ha;
using Dingo.Model;

namespace Dingo.Cells;

/// <summary>Messages of the <see cref="CellActor"/>.</summary>
public static class CellMessages
{
    /// <summary>Reconcile now (a watch saw a change, or the timer fired).</summary>
    public sealed record Reconcile;
    /// <summary>Wake the node actors of one instance (etcd changed under its cluster keys).</summary>
    public sealed record WakeInstance(string InstanceId);
    /// <summary>Clean stop: every node gives up leadership; replies when done.</summary>
    public sealed record ReleaseAll;
}

/// <summary>What one cell pass found: the nodes etcd assigns to this cell.</summary>
public sealed record CellPass(IReadOnlyList<NodeSpec> Desired, string Summary);

/// <summary>A cell's pass as its <see cref="CellActor"/> runs it: <see cref="CellReconciler"/>; an in-memory one in CellActorTests.</summary>
public interface ICellPasses
{
    /// <param name="busy">the nodes that have an HA loop running on this cell now</param>
    Task<CellPass> RunPassAsync(IReadOnlySet<string> busy, CancellationToken ct);
}

/// <summary>
/// Runs the cell's passes one at a time (on a timer, and at once when its assignments change) and keeps one
/// <see cref="NodeActor"/> child per node assigned to it. Thin: the work is in <see cref="CellReconciler"/>.
/// </summary>
public sealed class CellActor : PassActor<CellPass>
{
    private readonly ICellPasses _reconciler;
    private readonly Func<NodeSpec, INodeLoop> _agents;
    private readonly TimeSpan _interval;
    private readonly TimeSpan _loopWait;
    private readonly Dictionary<string, (IActorRef Actor, NodeSpec Spec)> _nodes = new();
    private string _lastSummary = "";

    public CellActor(ICellPasses reconciler, Func<NodeSpec, INodeLoop> agents, TimeSpan interval, TimeSpan loopWait)
    {
        _reconciler = reconciler;
        _agents = agents;
        _interval = interval;
        _loopWait = loopWait;
        Receive<CellMessages.Reconcile>(_ => RequestPass());
        Receive<CellMessages.WakeInstance>(w =>
        {
            foreach (var (actor, spec) in _nodes.Values) if (spec.InstanceId == w.InstanceId) actor.Tell(new NodeMessages.Wake());
        });
        ReceiveAsync<CellMessages.ReleaseAll>(async _ =>
        {
            var waits = _nodes.Values.Select(n => n.Actor.Ask<NodeActor.Done>(new NodeMessages.Release(), TimeSpan.FromSeconds(6)));
            try { await Task.WhenAll(waits); }
            catch (Exception ex) when (ex is AskTimeoutException or TaskCanceledException) { Log.Warning("some nodes did not release leadership in time"); }
            Sender.Tell(NodeActor.Done.Instance);
        });
        Receive<Terminated>(t =>
        {
            var gone = _nodes.FirstOrDefault(n => n.Value.Actor.Equals(t.ActorRef));
            if (gone.Key is not null) _nodes.Remove(gone.Key);
        });
    }

    protected override void PreStart() => RequestPass();

    protected override Task<CellPass> RunPassAsync(CancellationToken cancellationToken) =>
        _reconciler.RunPassAsync(_nodes.Keys.ToHashSet(), cancellationToken);

    protected override TimeSpan? AfterPass(CellPass pass)
    {
        var wanted = pass.Desired.ToDictionary(n => n.NodeId);
        foreach (var (id, (actor, _)) in _nodes.Where(n => !wanted.ContainsKey(n.Key)).ToList())
        {
            Log.Info("node {0}: no longer assigned; stopping its HA loop", id);
            Context.Stop(actor); // removed from _nodes when Terminated arrives; then the data goes
        }
        foreach (var spec in pass.Desired.Where(s => !_nodes.ContainsKey(s.NodeId)))
        {
            var agent = _agents(spec);
            var actor = Context.ActorOf(NodeActor.Props(agent, _loopWait, System.Net.IPAddress.Parse(agent.Address)), spec.NodeId);
            Context.Watch(actor);
            _nodes[spec.NodeId] = (actor, spec);
        }
        if (pass.Summary != _lastSummary && !pass.Summary.StartsWith("no action", StringComparison.Ordinal)) Log.Info("cell pass: {0}", pass.Summary);
        _lastSummary = pass.Summary;
        return _interval;
    }

    protected override TimeSpan? AfterFailure(Exception error)
    {
        Log.Warning("cell pass failed: {0}", error.Message);
        return _interval;
    }

    public static Props Props(ICellPasses reconciler, Func<NodeSpec, INodeLoop> agents, TimeSpan interval, TimeSpan loopWait) =>
        Akka.Actor.Props.Create(() => new CellActor(reconciler, agents, interval, loopWait));
}
