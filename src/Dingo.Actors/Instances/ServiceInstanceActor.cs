using Akka.Actor;
using Akka.Cluster.Sharding;
using Akka.Event;
using Dingo.Config;
using Dingo.Store;
using Microsoft.Extensions.Logging;

namespace Dingo.Instances;

/// <summary>Messages the sharded <see cref="ServiceInstanceActor"/> receives.</summary>
public static class ServiceInstanceMessages
{
    /// <summary>Look at the instance now (a request changed it, or a sweep found work in progress).</summary>
    public sealed record Reconcile(string InstanceId);

    internal sealed record PassDone(InstanceDecision? Decision);
    internal sealed record PassFailed(Exception Error);
    internal sealed record Tick;
}

/// <summary>Marker type for the shard region in Akka.Hosting's registry.</summary>
public sealed class ServiceInstanceRegion;

/// <summary>
/// One per service instance, sharded over the broker role. It holds no state of its own: every pass reads etcd,
/// decides (<see cref="Provisioning"/>), acts once, and looks again soon while an operation runs.
/// </summary>
public sealed class ServiceInstanceActor : ReceiveActor, IWithTimers
{
    private static readonly TimeSpan ActiveInterval = TimeSpan.FromMilliseconds(300);
    private readonly string _instanceId;
    private readonly InstanceReconciler _reconciler;
    private readonly ILoggingAdapter _log = Context.GetLogger();
    private readonly CancellationTokenSource _stopping = new();
    private bool _running;
    private bool _again;

    public ITimerScheduler Timers { get; set; } = null!;

    public ServiceInstanceActor(string instanceId, EtcdStore store, DingoSettings settings, ILoggerFactory loggers)
    {
        _instanceId = instanceId;
        _reconciler = new InstanceReconciler(store, settings, loggers.CreateLogger("Dingo.Instance"));
        Receive<ServiceInstanceMessages.Reconcile>(_ => StartPass());
        Receive<ServiceInstanceMessages.Tick>(_ => StartPass());
        Receive<ServiceInstanceMessages.PassDone>(done =>
        {
            _running = false;
            switch (done.Decision)
            {
                case null or InstanceDecision.FinishDeletion or InstanceDecision.Idle:
                    // Nothing left to watch: rest until a request or the sweep wakes us.
                    if (_again) StartPass();
                    else Context.Parent.Tell(new Passivate(PoisonPill.Instance));
                    break;
                case InstanceDecision.Succeed or InstanceDecision.Fail:
                    if (_again) StartPass();
                    break;
                default:
                    if (_again) StartPass();
                    else Timers.StartSingleTimer("tick", new ServiceInstanceMessages.Tick(), ActiveInterval);
                    break;
            }
        });
        Receive<ServiceInstanceMessages.PassFailed>(failed =>
        {
            _running = false;
            _log.Warning("instance {0}: reconcile pass failed, retrying: {1}", _instanceId, failed.Error.Message);
            Timers.StartSingleTimer("tick", new ServiceInstanceMessages.Tick(), TimeSpan.FromSeconds(1));
        });
    }

    private void StartPass()
    {
        if (_running)
        {
            _again = true; // a change arrived mid-pass: look once more when it ends
            return;
        }
        _running = true;
        _again = false;
        _reconciler.RunPassAsync(_instanceId, _stopping.Token).PipeTo(Self,
            success: d => new ServiceInstanceMessages.PassDone(d),
            failure: e => new ServiceInstanceMessages.PassFailed(e));
    }

    protected override void PostStop()
    {
        _stopping.Cancel();
        _stopping.Dispose();
    }

    public static Props Props(string instanceId, EtcdStore store, DingoSettings settings, ILoggerFactory loggers) =>
        Akka.Actor.Props.Create(() => new ServiceInstanceActor(instanceId, store, settings, loggers));
}

/// <summary>Routes <see cref="ServiceInstanceMessages.Reconcile"/> to the instance's entity.</summary>
public sealed class ServiceInstanceExtractor() : HashCodeMessageExtractor(30)
{
    public override string? EntityId(object message) => message switch
    {
        ServiceInstanceMessages.Reconcile r => r.InstanceId,
        _ => null,
    };
}
