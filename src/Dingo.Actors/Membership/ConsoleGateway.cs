using System.Collections.Immutable;
using Akka.Actor;
using Akka.Cluster;
using Akka.Cluster.Sharding;
using Akka.Event;

namespace Dingo.Membership;

// The console's questions and the brokers' answers travel between processes through ClusterClient, serialized by
// Akka.NET's default (JSON) serializer: plain records with public properties, nothing else.

/// <summary>Asks a broker for its view of the Akka cluster, with the operator's credentials (the broker's admin pair).</summary>
public sealed record ClusterViewRequest
{
    public string Username { get; init; } = "";
    public string Password { get; init; } = "";

    /// <summary>Akka logs a message it cannot deliver with its ToString: never the password.</summary>
    public override string ToString() => $"ClusterViewRequest {{ Username = {Username} }}";
}

/// <summary>The gateway's answer to a request it does not answer: why, and no data.</summary>
public sealed record ConsoleRefused
{
    public required string Reason { get; init; }
}

/// <summary>The Akka cluster as one broker sees it.</summary>
public sealed record ClusterView
{
    /// <summary>akka.tcp://dingo@host:port of the broker that answered.</summary>
    public required string Broker { get; init; }
    /// <summary>The cluster leader's address; null while there is none (no member is Up and reachable).</summary>
    public string? Leader { get; init; }
    public required IReadOnlyList<ClusterViewMember> Members { get; init; }
    /// <summary>Whether the shard counts below were read (the sharding coordinator answered in time).</summary>
    public bool HasShardStats { get; init; }
}

/// <summary>One member of the cluster.</summary>
public sealed record ClusterViewMember
{
    /// <summary>akka.tcp://dingo@host:port</summary>
    public required string Address { get; init; }
    public required IReadOnlyList<string> Roles { get; init; }
    /// <summary>Joining, WeaklyUp, Up, Leaving, Exiting, Down or Removed.</summary>
    public required string Status { get; init; }
    /// <summary>False when some member's failure detector marked it unreachable (in the answering broker's cluster state).</summary>
    public required bool Reachable { get; init; }
    /// <summary>service-instance shards this member hosts (brokers only; null when not known).</summary>
    public int? Shards { get; init; }
    /// <summary>Live service-instance actors in those shards (idle ones passivate, so this counts the busy ones).</summary>
    public int? Entities { get; init; }
}

/// <summary>
/// The `console` actor on every broker (/user/console), registered with the ClusterClientReceptionist so that
/// `dingo members` and `dingo status` can ask it from outside the cluster (a ClusterClient, never a member). It answers
/// only requests that carry the operator's credentials (<see cref="OperatorCredentials"/>); any other gets
/// <see cref="ConsoleRefused"/> and nothing of the cluster.
/// </summary>
public sealed class ConsoleGateway : ReceiveActor
{
    /// <summary>The name the actor is created under; clients send to /user/{Name}.</summary>
    public const string Name = "console";
    public const string Path = "/user/" + Name;

    /// <summary>How long the answer waits for the sharding coordinator's statistics before going without them.</summary>
    private static readonly TimeSpan ShardStatsTimeout = TimeSpan.FromSeconds(2);

    public ConsoleGateway(IActorRef? serviceInstanceRegion, OperatorCredentials operators)
    {
        var log = Context.GetLogger();
        ReceiveAsync<ClusterViewRequest>(async request =>
        {
            var sender = Sender;
            if (operators.Refusal(request.Username, request.Password) is { } refusal)
            {
                log.Warning("console gateway: refused a request (reply path {0}): {1}", sender.Path, refusal);
                sender.Tell(new ConsoleRefused { Reason = refusal });
                return;
            }
            var cluster = Cluster.Get(Context.System);
            // Read the membership first: the statistics are extra and may come late or never.
            var state = cluster.State;
            ClusterShardingStats? stats = null;
            if (serviceInstanceRegion is not null)
            {
                try
                {
                    stats = await serviceInstanceRegion.Ask<ClusterShardingStats>(new GetClusterShardingStats(ShardStatsTimeout), ShardStatsTimeout + TimeSpan.FromMilliseconds(500));
                }
                catch (Exception ex) when (ex is AskTimeoutException or TaskCanceledException)
                {
                    // No coordinator yet (the cluster is forming or moving it): answer with membership alone.
                }
            }
            sender.Tell(Build(state, cluster.SelfAddress, stats));
        });
    }

    public static Props Props(IActorRef? serviceInstanceRegion, OperatorCredentials operators) =>
        Akka.Actor.Props.Create(() => new ConsoleGateway(serviceInstanceRegion, operators));

    internal static ClusterView Build(ClusterEvent.CurrentClusterState state, Address self, ClusterShardingStats? stats)
    {
        var regions = stats?.Regions ?? ImmutableDictionary<Address, ShardRegionStats>.Empty;
        var members = state.Members
            .OrderBy(m => m.Address.ToString(), StringComparer.Ordinal)
            .Select(m =>
            {
                var hosts = regions.TryGetValue(m.Address, out var region);
                return new ClusterViewMember
                {
                    Address = m.Address.ToString(),
                    Roles = m.Roles.OrderBy(r => r, StringComparer.Ordinal).ToArray(),
                    Status = m.Status.ToString(),
                    Reachable = !state.Unreachable.Contains(m),
                    Shards = hosts ? region!.Stats.Count : null,
                    Entities = hosts ? region!.Stats.Values.Sum() : null,
                };
            })
            .ToArray();
        return new ClusterView { Broker = self.ToString(), Leader = state.Leader?.ToString(), Members = members, HasShardStats = stats is not null };
    }
}
