using Dingo.Tests.Support;
using System.Net;
using Dingo.Model;
using Dingo.Routing;

namespace Dingo.Tests.Routing;

[Trait(Tier.Name, Tier.Fast)]
public sealed class RouteTableTests
{
    private static NodeStatus Member(string id, int port, NodeRole role, bool streaming, long lsn, NodeState state = NodeState.Running) =>
        new() { NodeId = id, InstanceId = "i1", CellId = "c", State = state, Detail = "", Host = "127.0.0.1", Port = port, Role = role, Streaming = streaming, Lsn = lsn };

    private static readonly LeaderRecord Leader = new() { NodeId = "n1", Host = "127.0.0.1", Port = 15001 };

    private static IReadOnlyList<Route> Compute(params NodeStatus[] members) => RouteTable.Compute(
        [(20000, new PortRecord { InstanceId = "i1", State = PortState.Active }), (20001, new PortRecord { InstanceId = "i1", State = PortState.Active, Role = PortRole.ReadOnly }),
         (20002, new PortRecord { InstanceId = "gone", State = PortState.Retired })],
        new Dictionary<string, RoutedCluster> { ["i1"] = new(Leader, 10_000_000, members) },
        maxConnections: 50, readOnlyMaxLag: 1_000_000);

    [Fact]
    public void The_primary_port_goes_to_the_leader_and_retired_ports_get_no_route()
    {
        var routes = Compute(Member("n1", 15001, NodeRole.Primary, false, 10_000_000));
        var primary = routes.Single(r => r.Port == 20000);
        Assert.Equal(new IPEndPoint(IPAddress.Loopback, 15001), primary.Target);
        Assert.Empty(primary.Pool);
        Assert.Equal(50, primary.MaxConnections);
        Assert.DoesNotContain(routes, r => r.Port == 20002);
    }

    [Fact]
    public void The_read_only_port_balances_over_streaming_replicas_within_the_lag_bound()
    {
        var routes = Compute(
            Member("n1", 15001, NodeRole.Primary, false, 10_000_000),
            Member("n2", 15002, NodeRole.Replica, true, 9_500_000),   // 0.5 MB behind: in
            Member("n3", 15003, NodeRole.Replica, true, 8_000_000),   // 2 MB behind: out
            Member("n4", 15004, NodeRole.Replica, false, 10_000_000), // not streaming: out
            Member("n5", 15005, NodeRole.Replica, true, 10_000_000, NodeState.Starting)); // not running: out
        var ro = routes.Single(r => r.Port == 20001);
        Assert.Equal([new IPEndPoint(IPAddress.Loopback, 15002)], ro.Pool);
        Assert.Equal(new IPEndPoint(IPAddress.Loopback, 15001), ro.Target);
    }

    [Fact]
    public void With_no_healthy_replica_the_read_only_port_goes_to_the_primary()
    {
        var ro = Compute(Member("n1", 15001, NodeRole.Primary, false, 10_000_000)).Single(r => r.Port == 20001);
        Assert.Empty(ro.Pool);
        Assert.Equal(new IPEndPoint(IPAddress.Loopback, 15001), ro.Target);
    }
}
