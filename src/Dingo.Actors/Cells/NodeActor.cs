using Akka.Actor;
using Akka.Event;
using Dingo.Ha;
using Dingo.Model;

namespace Dingo.Cells;

public static class NodeMessages
{
    /// <summary>Run the HA loop now (etcd changed under the cluster).</summary>
    public sealed record Wake;
    /// <summary>The cell is stopping cleanly: give up leadership so a replica takes over at once.</summary>
    public sealed record Release;
}

/// <summary>
/// One node's HA loop as its <see cref="NodeActor"/> drives it: <see cref="NodeAgent"/> on a cell, an in-memory loop in
/// NodeActorTests.
/// </summary>
public interface INodeLoop
{
    NodeSpec Spec { get; }
    /// <summary>The cell's address: where the node's health API listens.</summary>
    string Address { get; }
    /// <summary>Called when the node's PostgreSQL ends (a crash, a kill), so a pass runs at once.</summary>
    Action? PostgresExited { get; set; }
    /// <summary>One pass: observe, decide, act, report; returns the decision's sentence.</summary>
    Task<string> RunPassAsync(CancellationToken ct);
    /// <summary>When the next pass should run (zero: loop-wait).</summary>
    TimeSpan NextPassAfter { get; }
    /// <summary>
    /// The node's Patroni-compatible health API on <paramref name="address"/> and the spec's API port, not started yet: it
    /// answers from the last pass's observation and never waits for a pass.
    /// </summary>
    INodeHealthApi HealthApi(System.Net.IPAddress address);
    void StopWatchingPostgres();
    Task StopBackupsAsync();
    /// <summary>The cell stops cleanly: writes stop and the leader key goes, whatever a pass is doing.</summary>
    Task ReleaseOnShutdownAsync(CancellationToken ct);
}

/// <summary>A node's health API as its actor runs it: started with the actor, disposed when it stops.</summary>
public interface INodeHealthApi : IAsyncDisposable
{
    Task StartAsync(CancellationToken ct);
}

/// <summary>One per PostgreSQL node on this cell: runs the node's HA loop every loop-wait. Thin: the work is in <see cref="NodeAgent"/>.</summary>
public sealed class NodeActor : PassActor<string>
{
    private readonly INodeLoop _agent;
    private readonly TimeSpan _loopWait;
    private readonly System.Net.IPAddress _apiAddress;
    private INodeHealthApi? _health;

    public NodeActor(INodeLoop agent, TimeSpan loopWait, System.Net.IPAddress apiAddress)
    {
        _agent = agent;
        _loopWait = loopWait;
        _apiAddress = apiAddress;
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

    protected override void PreStart()
    {
        // The node's Patroni-compatible health API, so HAProxy checks written for Patroni work unchanged.
        if (_agent.Spec.ApiPort > 0)
        {
            _health = _agent.HealthApi(_apiAddress);
            var log = Log;
            var node = _agent.Spec.NodeId;
            _ = _health.StartAsync(CancellationToken.None).ContinueWith(
                t => log.Warning("node {0}: health API not started: {1}", node, t.Exception?.GetBaseException().Message),
                CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted, TaskScheduler.Default);
        }
        // A PostgreSQL that ends (a crash, a kill) wakes a pass at once rather than at the next loop-wait.
        var self = Self;
        _agent.PostgresExited = () => self.Tell(new NodeMessages.Wake());
        RequestPass();
    }

    protected override void PostStop()
    {
        _agent.StopWatchingPostgres();
        if (_health is not null) _ = _health.DisposeAsync().AsTask();
        _ = _agent.StopBackupsAsync();
        base.PostStop();
    }

    protected override Task<string> RunPassAsync(CancellationToken cancellationToken) => _agent.RunPassAsync(cancellationToken);

    /// <summary>
    /// Every loop-wait; a fifth of one while a leader recovers its PostgreSQL in place (promoted as soon as it answers);
    /// idle-loop-wait for a quiet node (PassCadence).
    /// </summary>
    protected override TimeSpan? AfterPass(string sentence) => _agent.NextPassAfter > TimeSpan.Zero ? _agent.NextPassAfter : _loopWait;

    protected override TimeSpan? AfterFailure(Exception error)
    {
        Log.Warning("node {0}: HA pass failed: {1}", _agent.Spec.NodeId, error.Message);
        return _loopWait;
    }

    public static Props Props(INodeLoop agent, TimeSpan loopWait, System.Net.IPAddress apiAddress) =>
        Akka.Actor.Props.Create(() => new NodeActor(agent, loopWait, apiAddress));
}
