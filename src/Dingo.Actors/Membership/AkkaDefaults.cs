namespace Dingo.Membership;

/// <summary>Akka.NET settings every Dingo process shares (operators tune the rest in hocon/).</summary>
public static class AkkaDefaults
{
    // Members leaving on a clean stop make remoting log "disassociated" errors that say nothing wrong:
    // keep lifecycle chatter out of the operator's logs.
    //
    // Split brain: cells act on etcd alone, so losing cells must never down a broker. The resolver counts *broker*
    // members, and the side that holds a lease in etcd goes on (lease-majority: the majority side asks first, the
    // minority 2 s later): with two brokers, losing either leaves the other in charge, and etcd's quorum makes sure
    // two sides never both act. It never downs everyone on instability; a downed cell keeps serving its nodes.
    //
    // The lease is released 5 s after the members it downed are gone (Akka's default keeps it 40 s): until then any
    // other member's decision, a broker restarted after a heal included, fails to take it and downs its own side. Its
    // etcd key lives 6 s past the holder's last renewal, so a holder that is killed frees it before the survivors'
    // next decision (failure detection, about 4 s, plus stable-after).
    //
    // Remoting on a LAN: an outbound association attempt to a host that is cut off waits for TCP (SYN retries) up to
    // connection-timeout, and while one is pending the endpoint manager stashes every inbound association from that
    // address. With Akka's 15 s a broker restarted behind a healed link was refused for up to 15 s by the other
    // broker, both marked each other unreachable, and the resolver downed both as indirectly connected. 3 s covers
    // a TCP connect, the TLS and Akka handshakes on a loaded host, and stays inside the failure detector's 3 s pause
    // after a heal; a failed address is tried again after 2 s instead of 5.
    //
    // No passive connections: each member writes only over connections it opened itself, and reads what the other
    // side opened. With Akka's default (an inbound connection is reused for writing) a member whose own handshake timed
    // out against a peer that was stalled (a broker just restarted, or stopped for a few seconds) wrote over the
    // peer's connection instead; the stalled peer, on waking, read the timed-out handshake, took it for a newer
    // connection from the same member and stopped reading its own, which then carried that member's heartbeats to
    // nowhere. Both sides marked each other unreachable while reaching everyone else, and the resolver downed both as
    // indirectly connected (fresh288; ThreeHostTests stalls the returned broker after the heal to cover it). It costs
    // one more TCP connection per pair of members, and the brokers connect back to the operator console's address
    // (ClusterConsole picks one they can reach).
    //
    // The scheduler's tick: Akka's scheduler wakes every tick whether or not anything is due (a .NET timer and a
    // thread-pool hop each time), 100 times a second per actor system at Akka's 10 ms, and a cell runs two systems.
    // Nothing here needs Akka timers finer than 100 ms (cluster heartbeats are 1 s apart, the failure detector
    // allows 3 s); the passes of cells, nodes and instances wait on .NET timers (PassActor), which are not ticked.
    //
    // For(settings) adds the etcd endpoints and key prefix the lease uses.
    public const string Hocon = Remoting + """
        akka.loglevel = WARNING
        akka.scheduler.tick-duration = 100ms
        akka.stdout-loglevel = WARNING
        akka.cluster.log-info = off
        akka.remote.log-remote-lifecycle-events = off
        akka.cluster.run-coordinated-shutdown-when-down = off
        akka.cluster.downing-provider-class = "Akka.Cluster.SBR.SplitBrainResolverProvider, Akka.Cluster"
        akka.cluster.split-brain-resolver {
          active-strategy = lease-majority
          lease-majority {
            lease-implementation = "dingo.akka-lease"
            lease-name = "split-brain-resolver"
            role = "broker"
            acquire-lease-delay-for-minority = 2s
            release-after = 5s
          }
          stable-after = 7s
          down-all-when-unstable = off
        }
        dingo.akka-lease {
          lease-class = "Dingo.Membership.EtcdLease, Dingo.Actors"
          heartbeat-timeout = 6s
          heartbeat-interval = 1s
          lease-operation-timeout = 5s
        }
        # The operator console is a ClusterClient (never a member): every broker runs the receptionist it contacts,
        # and the pub-sub registry that receptionist forwards through lives on the brokers alone.
        akka.cluster.client.receptionist.role = broker
        akka.cluster.pub-sub.role = broker
        akka.coordinated-shutdown.phases.cluster-exiting.timeout = 3s
        # The host stops the actor system after its own services have wound down in order (a cell's nodes first
        # hand over leadership); Akka must not race it from its own SIGTERM hook.
        akka.coordinated-shutdown.run-by-clr-shutdown-hook = off
        """;

    /// <summary>
    /// The remoting timings of every member (the connection timeout, the retry gate, no passive connections; see above):
    /// part of <see cref="Hocon"/>, and on their own for a test's actor system that takes no lease.
    /// </summary>
    public const string Remoting = """
        akka.remote.dot-netty.tcp.connection-timeout = 3s
        akka.remote.retry-gate-closed-for = 2s
        akka.remote.use-passive-connections = off

        """;

    /// <summary>The shared settings plus where the split-brain lease lives (this platform's etcd and prefix).</summary>
    public static string For(Config.DingoSettings settings)
    {
        var endpoints = string.Join(", ", settings.EtcdEndpoints.Select(Quoted));
        var tls = settings.EtcdTls;
        return Hocon + $$"""

            dingo.akka-lease.endpoints = [{{endpoints}}]
            dingo.akka-lease.prefix = {{Quoted(settings.EtcdPrefix)}}
            dingo.akka-lease.tls.ca-file = {{Quoted(tls.CaFile)}}
            dingo.akka-lease.tls.cert-file = {{Quoted(tls.CertFile)}}
            dingo.akka-lease.tls.key-file = {{Quoted(tls.KeyFile)}}
            """;
    }

    /// <summary>A HOCON quoted string (JSON's escapes), so a path with a quote or backslash stays one value.</summary>
    private static string Quoted(string value) => System.Text.Json.JsonSerializer.Serialize(value);
}
