namespace Dingo;

/// <summary>Akka.NET settings every Dingo process shares (operators tune the rest in hocon/).</summary>
public static class AkkaDefaults
{
    // Members leaving on a clean stop make remoting log "disassociated" errors that say nothing wrong:
    // keep lifecycle chatter out of the operator's logs.
    //
    // Split brain: cells act on etcd alone, so losing cells must never down a broker. The resolver keeps the
    // side with the majority of *broker* members and never downs everyone on instability; a downed member keeps
    // its actor system running (a cell goes on serving its nodes; it rejoins the cluster when restarted).
    public const string Hocon = """
        akka.loglevel = WARNING
        akka.stdout-loglevel = WARNING
        akka.cluster.log-info = off
        akka.remote.log-remote-lifecycle-events = off
        akka.cluster.run-coordinated-shutdown-when-down = off
        akka.cluster.downing-provider-class = "Akka.Cluster.SBR.SplitBrainResolverProvider, Akka.Cluster"
        akka.cluster.split-brain-resolver {
          active-strategy = keep-majority
          keep-majority.role = "broker"
          stable-after = 7s
          down-all-when-unstable = off
        }
        akka.coordinated-shutdown.phases.cluster-exiting.timeout = 3s
        # The host stops the actor system after its own services have wound down in order (a cell's nodes first
        # hand over leadership); Akka must not race it from its own SIGTERM hook.
        akka.coordinated-shutdown.run-by-clr-shutdown-hook = off
        """;
}
