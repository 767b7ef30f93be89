using Akka.Actor;
using Akka.Event;
using Dingo.Ha;

namespace Dingo.Cells;

public static class NodeMessages
{
    /// <summary>Run the HA loop now (etcd changed under the cluster).</summary>
    public sealed record Wake;
    /// <summary>The cell is stopping cleanly: give up leadership so a replica takes over at once.</summary>
    public sealed record Release;
}

/// <summary>One per PostgreSQL node on this cell: runs the node's HA loop every loop-wait. Thin: the work is in <see cref="NodeAgent"/>.</summary>
public sealed class NodeActor : PassActor<string>
{
    private readonly NodeAgent _agent;
    private readonly TimeSpan _loopWait;

    public NodeActor(NodeAgent agent, TimeSpan loopWait)
    {
        _agent = agent;
        _loopWait = loopWait;
        Receive<NodeMessages.Wake>(_ => RequestPass());
        ReceiveAsync<NodeMessages.Release>(async _ =>
        {
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(5));
            await _agent.ReleaseOnShutdownAsync(cts.Token);
            Sender.Tell(Done.Instance);
        });
    }

    public sealed class Done
    {
        public static readonly Done Instance = new();
    }

    protected override void PreStart() => RequestPass();

    protected override Task<string> RunPassAsync(CancellationToken cancellationToken) => _agent.RunPassAsync(cancellationToken);

    protected override TimeSpan? AfterPass(string sentence) => _loopWait;

    protected override TimeSpan? AfterFailure(Exception error)
    {
        Log.Warning("node {0}: HA pass failed: {1}", _agent.Spec.NodeId, error.Message);
        return _loopWait;
    }

    public static Props Props(NodeAgent agent, TimeSpan loopWait) => Akka.Actor.Props.Create(() => new NodeActor(agent, loopWait));
}
