using Akka.Event;
using Akka.Actor;
using Akka.Cluster.Sharding;
using Dingo.Config;
using Dingo.Store;
using Microsoft.Extensions.Logging;

namespace Dingo.Instances;

/// <summary>Messages the sharded <see cref="ServiceInstanceActor"/> receives.</summary>
public static class ServiceInstanceMessages
{
    /// <summary>Look at the instance now (a request changed it, or a sweep found work in progress).</summary>
    public sealed record Reconcile(string InstanceId);

    /// <summary>
    /// Look at the instance unless its actor is at work already (a pass running or due): a client asking for the
    /// operation's state wakes an actor a broker restart left idle, and adds no pass to one that is not.
    /// </summary>
    public sealed record Wake(string InstanceId);
}

/// <summary>Marker type for the shard region in Akka.Hosting's registry.</summary>
public sealed class ServiceInstanceRegion;

/// <summary>
/// One per service instance, sharded over the broker role. It holds no state of its own: every pass reads etcd,
/// decides (<see cref="Provisioning"/>), acts once, and looks again soon while an operation runs.
/// </summary>
public sealed class ServiceInstanceActor : PassActor<InstanceDecision?>
{
    /// <summary>
    /// How soon an instance with an operation in progress looks again when nothing woke it. What a pass waits for is mostly
    /// its nodes' reports, and the broker's <c>StatusWatch</c> wakes the actor the moment one changes; this look is for
    /// what no watch passes on (a failure grace running out, a leader key, a first base backup, a watch reconnecting).
    /// It was 300 ms, every in-progress instance's full read of etcd three times a second: in a burst of 20 provisions
    /// (bench/Provision) the broker's passes were three quarters of every call etcd served.
    /// </summary>
    internal static readonly TimeSpan ActiveInterval = TimeSpan.FromSeconds(1);
    private readonly string _instanceId;
    private readonly InstanceReconciler _reconciler;

    public ServiceInstanceActor(string instanceId, IInstanceStore store, DingoSettings settings, ILoggerFactory loggers, Dingo.Health.BrokerMetrics? metrics = null,
        EventJournal? events = null)
    {
        _instanceId = instanceId;
        _reconciler = new InstanceReconciler(store, settings, loggers.CreateLogger("Dingo.Instance"), metrics, events);
        Receive<ServiceInstanceMessages.Reconcile>(_ => RequestPass());
        Receive<ServiceInstanceMessages.Wake>(_ => Wake());
    }

    protected override Task<InstanceDecision?> RunPassAsync(CancellationToken cancellationToken) =>
        _reconciler.RunPassAsync(_instanceId, cancellationToken);

    protected override TimeSpan? AfterPass(InstanceDecision? decision)
    {
        switch (decision)
        {
            case null or InstanceDecision.FinishDeletion or InstanceDecision.Idle or InstanceDecision.Succeed or InstanceDecision.Fail:
                // Nothing left to watch: rest until a request or the sweep wakes us. An operation that just ended is no
                // exception: the sweep only wakes instances with work, so an entity kept after its operation stayed in
                // memory for good (ServiceInstanceActorTestKitTests).
                if (!RequestedMeanwhile) Context.Parent.Tell(new Passivate(PoisonPill.Instance));
                return null;
            case InstanceDecision.PlaceNode or InstanceDecision.RemoveNodes or InstanceDecision.ReplaceLost:
                // It acted: its next step (a cluster's next node, the replacement of a lost one) is decided on at once.
                return TimeSpan.Zero;
            default:
                return ActiveInterval;
        }
    }

    protected override TimeSpan? AfterFailure(Exception error)
    {
        Log.Warning("instance {0}: reconcile pass failed, retrying: {1}", _instanceId, error.Message);
        return TimeSpan.FromSeconds(1);
    }

    public static Props Props(string instanceId, IInstanceStore store, DingoSettings settings, ILoggerFactory loggers, Dingo.Health.BrokerMetrics? metrics = null,
        EventJournal? events = null) =>
        Akka.Actor.Props.Create(() => new ServiceInstanceActor(instanceId, store, settings, loggers, metrics, events));
}

/// <summary>Routes <see cref="ServiceInstanceMessages.Reconcile"/> and <see cref="ServiceInstanceMessages.Wake"/> to the instance's entity.</summary>
public sealed class ServiceInstanceExtractor() : HashCodeMessageExtractor(30)
{
    public override string? EntityId(object message) => message switch
    {
        ServiceInstanceMessages.Reconcile r => r.InstanceId,
        ServiceInstanceMessages.Wake w => w.InstanceId,
        _ => null,
    };
}
