using System.Net;
using Akka.Actor;
using Akka.Configuration;
using Akka.TestKit.Xunit2;
using Dingo.Config;
using Dingo.Membership;
using Dingo.Model;
using Dingo.Routing;
using Dingo.Tests.Support;
using Microsoft.Extensions.Logging.Abstractions;

namespace Dingo.Tests.Actors;

/// <summary>
/// The router actor as an actor, with etcd and the data path in memory: a leader change reaches the data path with the
/// new target on the next refresh, and the time an instance spends without a leader is counted from the first pass
/// that found none until one that finds one.
/// </summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class RouterActorTests() : TestKit(ConfigurationFactory.ParseString(AkkaDefaults.Hocon))
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(5);
    private static readonly DateTime T0 = new(2026, 12, 6, 4, 0, 0, DateTimeKind.Utc);

    private static readonly RouterSettings Settings = new()
    {
        PortFirst = 20000, PortLast = 20099, BindAddress = "127.0.0.1", LeaderWait = TimeSpan.Zero, MaxConnectionsPerInstance = 0,
        ReadOnlyMaxLag = long.MaxValue, MetricsPort = 0, Mode = "userspace",
    };

    private static NodeStatus Status(string nodeId, int port, NodeRole role) => new()
    {
        NodeId = nodeId, InstanceId = "i-1", CellId = "cell-1", State = NodeState.Running, Detail = "", Host = "127.0.0.1", Port = port,
        Role = role, Writable = role == NodeRole.Primary, Streaming = role == NodeRole.Replica, UpdatedAt = DateTimeOffset.UtcNow,
    };

    private static RouteInputs Inputs(string? leader) => new(
        [(20000, new PortRecord { InstanceId = "i-1", State = PortState.Active })],
        new Dictionary<string, RoutedCluster>
        {
            ["i-1"] = new(
                leader is null ? null : new LeaderRecord { NodeId = leader, Host = "127.0.0.1", Port = leader == "n-1" ? 5001 : 5002 },
                100,
                [Status("n-1", 5001, leader == "n-1" ? NodeRole.Primary : NodeRole.Replica), Status("n-2", 5002, leader == "n-2" ? NodeRole.Primary : NodeRole.Replica)]),
        });

    private static int? TargetPort(FakeDataPath path) => path.Applied.SingleOrDefault(r => r.Port == 20000)?.Target?.Port;

    [Fact]
    public async Task A_leader_change_reaches_the_data_path_with_the_new_target()
    {
        var source = new FakeRouteSource { Inputs = Inputs("n-1") };
        var path = new FakeDataPath();
        // No resync within the test: only the first pass and the refresh run.
        var router = Sys.ActorOf(RouterActor.Props(source, path, Settings, resync: TimeSpan.FromHours(1)));
        await AwaitConditionAsync(() => Task.FromResult(TargetPort(path) == 5001), Wait);

        source.Inputs = Inputs("n-2");
        await Task.Delay(100);
        Assert.Equal(5001, TargetPort(path)); // etcd changed, nothing told the router yet
        router.Tell(new RouterMessages.Refresh()); // what a watch on the leader key sends
        await AwaitConditionAsync(() => Task.FromResult(TargetPort(path) == 5002), Wait);
        Assert.Equal(2, source.Reads);
        Assert.Equal(new IPEndPoint(IPAddress.Loopback, 5002), path.Applied.Single().Target);
    }

    [Fact]
    public async Task Leaderless_time_is_counted_until_a_leader_is_back()
    {
        var now = T0;
        DateTime Clock() => now;
        var source = new FakeRouteSource { Inputs = Inputs("n-1") };
        var path = new FakeDataPath();
        await using var tcp = new TcpRouter(IPAddress.Loopback, NullLogger.Instance);
        var metrics = new RouterMetrics(tcp, now: Clock);
        var router = Sys.ActorOf(RouterActor.Props(source, path, Settings, metrics, Clock, TimeSpan.FromHours(1)));
        await AwaitConditionAsync(() => Task.FromResult(TargetPort(path) == 5001), Wait);
        Assert.Equal(0, await LeaderlessAsync(metrics));

        // The leader key is gone (the primary's cell died): the route has no target from the next pass on.
        source.Inputs = Inputs(null);
        var reads = source.Reads;
        router.Tell(new RouterMessages.Refresh());
        await AwaitConditionAsync(() => Task.FromResult(source.Reads > reads && path.Applied.Count == 1 && TargetPort(path) is null), Wait);
        now = T0.AddSeconds(3);
        // Passes that still find none do not restart the count.
        reads = source.Reads;
        router.Tell(new RouterMessages.Refresh());
        await AwaitConditionAsync(() => Task.FromResult(source.Reads > reads), Wait);
        now = T0.AddSeconds(4.5);
        Assert.Equal(4.5, await LeaderlessAsync(metrics), 3);

        source.Inputs = Inputs("n-2");
        router.Tell(new RouterMessages.Refresh());
        await AwaitConditionAsync(() => Task.FromResult(TargetPort(path) == 5002), Wait);
        Assert.Equal(0, await LeaderlessAsync(metrics));
    }

    private static async Task<double> LeaderlessAsync(RouterMetrics metrics)
    {
        var text = await metrics.RenderAsync(CancellationToken.None);
        var line = text.Split('\n').Single(l => l.StartsWith("dingo_router_leaderless_seconds{", StringComparison.Ordinal));
        return double.Parse(line[(line.LastIndexOf(' ') + 1)..], System.Globalization.CultureInfo.InvariantCulture);
    }
}
