namespace Dingo;

/// <summary>Akka.NET settings every Dingo process shares (operators tune the rest in hocon/).</summary>
public static class AkkaDefaults
{
    // Members leaving on a clean stop make remoting log "disassociated" errors that say nothing wrong:
    // keep lifecycle chatter out of the operator's logs.
    public const string Hocon = """
        akka.loglevel = WARNING
        akka.stdout-loglevel = WARNING
        akka.cluster.log-info = off
        akka.remote.log-remote-lifecycle-events = off
        akka.cluster.run-coordinated-shutdown-when-down = on
        akka.coordinated-shutdown.phases.cluster-exiting.timeout = 3s
        """;
}
