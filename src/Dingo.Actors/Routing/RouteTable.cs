using System.Net;
using Dingo.Model;

namespace Dingo.Routing;

/// <summary>Which port goes where, computed from etcd's port records and leader keys. Pure.</summary>
public static class RouteTable
{
    public static IReadOnlyList<Route> Compute(IEnumerable<(int Port, PortRecord Record)> ports, IReadOnlyDictionary<string, LeaderRecord> leaders)
    {
        var routes = new List<Route>();
        foreach (var (port, record) in ports)
        {
            if (record.State != "active") continue; // retired ports refuse connections for good
            IPEndPoint? target = null;
            if (leaders.TryGetValue(record.InstanceId, out var leader) && IPAddress.TryParse(leader.Host, out var address))
                target = new IPEndPoint(address, leader.Port);
            routes.Add(new Route(port, record.InstanceId, target));
        }
        return routes;
    }
}
