using System.Net;
using Dingo.Model;

namespace Dingo.Routing;

/// <summary>What the router needs to know of one cluster: its leader, its last WAL position and its members' reports.</summary>
public sealed record RoutedCluster(LeaderRecord? Leader, long? Optime, IReadOnlyList<NodeStatus> Members);

/// <summary>Which port goes where, computed from etcd's port records, leader keys and node reports. Pure.</summary>
public static class RouteTable
{
    /// <param name="maxConnections">per-instance connection limit (0: none)</param>
    /// <param name="readOnlyMaxLag">a replica further behind than this gets no read-only connections</param>
    public static IReadOnlyList<Route> Compute(
        IEnumerable<(int Port, PortRecord Record)> ports,
        IReadOnlyDictionary<string, RoutedCluster> clusters,
        int maxConnections = 0,
        long readOnlyMaxLag = long.MaxValue)
    {
        var routes = new List<Route>();
        foreach (var (port, record) in ports)
        {
            if (record.State != PortState.Active) continue; // retired ports refuse connections for good
            clusters.TryGetValue(record.InstanceId, out var cluster);
            IPEndPoint? primary = null;
            if (cluster?.Leader is { } leader && IPAddress.TryParse(leader.Host, out var address))
                primary = new IPEndPoint(address, leader.Port);
            IReadOnlyList<IPEndPoint> pool = [];
            if (record.Role == PortRole.ReadOnly && cluster is not null)
            {
                pool = cluster.Members
                    .Where(m => m.State == NodeState.Running && m.Role == NodeRole.Replica && m.Streaming && m.NodeId != cluster.Leader?.NodeId)
                    .Where(m => cluster.Optime is not { } optime || optime - m.Lsn <= readOnlyMaxLag)
                    .Select(m => IPAddress.TryParse(m.Host, out var a) ? new IPEndPoint(a, m.Port) : null)
                    .OfType<IPEndPoint>()
                    .OrderBy(e => e.ToString(), StringComparer.Ordinal)
                    .ToList();
            }
            routes.Add(new Route(port, record.InstanceId, primary) { Pool = pool, MaxConnections = maxConnections });
        }
        return routes;
    }
}
