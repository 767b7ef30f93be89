using System.Globalization;
using System.Text;

namespace Dingo.Routing;

/// <summary>
/// What a cell's router reports, in Prometheus' text format: open connections per instance, bytes, route changes,
/// refusals, and how long each instance has been without a leader.
/// </summary>
public sealed class RouterMetrics(TcpRouter router)
{
    private volatile IReadOnlyList<Route> _routes = [];
    private volatile IReadOnlyDictionary<string, DateTime> _leaderless = new Dictionary<string, DateTime>();
    private volatile IReadOnlyDictionary<int, int> _kernel = new Dictionary<int, int>();

    /// <param name="kernelForwarded">connections the kernel path forwards now, per port (empty in user-space mode)</param>
    public void Publish(IReadOnlyList<Route> routes, IReadOnlyDictionary<string, DateTime> leaderlessSince, IReadOnlyDictionary<int, int>? kernelForwarded = null)
    {
        _routes = routes;
        _leaderless = new Dictionary<string, DateTime>(leaderlessSince);
        _kernel = kernelForwarded ?? new Dictionary<int, int>();
    }

    /// <summary>Open connections on a port: through user space plus through the kernel path.</summary>
    public int OpenConnections(int port) => router.OpenConnectionsByPort.GetValueOrDefault(port) + _kernel.GetValueOrDefault(port);

    public string Render(DateTime now)
    {
        var stats = router.Stats;
        var open = router.OpenConnectionsByPort;
        var sb = new StringBuilder();
        void Metric(string name, string type, string help)
        {
            sb.Append("# HELP ").Append(name).Append(' ').AppendLine(help);
            sb.Append("# TYPE ").Append(name).Append(' ').AppendLine(type);
        }
        string L(string instance, int port, string role) => $"{{instance=\"{instance}\",port=\"{port}\",role=\"{role}\"}}";

        Metric("dingo_router_open_connections", "gauge", "Client connections open through this router (user space and kernel path), per instance port.");
        foreach (var r in _routes)
            sb.Append("dingo_router_open_connections").Append(L(r.InstanceId, r.Port, r.Pool.Count > 0 ? "read-only" : "primary")).Append(' ')
              .AppendLine((open.GetValueOrDefault(r.Port) + _kernel.GetValueOrDefault(r.Port)).ToString(CultureInfo.InvariantCulture));
        Metric("dingo_router_connections_total", "counter", "Client connections accepted since start.");
        sb.Append("dingo_router_connections_total ").AppendLine(stats.AcceptedConnections.ToString(CultureInfo.InvariantCulture));
        Metric("dingo_router_bytes_total", "counter", "Bytes copied by the user-space path, by direction (the kernel path's bytes are in conntrack accounting).");
        sb.Append("dingo_router_bytes_total{direction=\"client_to_server\"} ").AppendLine(stats.BytesClientToServer.ToString(CultureInfo.InvariantCulture));
        sb.Append("dingo_router_bytes_total{direction=\"server_to_client\"} ").AppendLine(stats.BytesServerToClient.ToString(CultureInfo.InvariantCulture));
        Metric("dingo_router_route_changes_total", "counter", "Routes added, removed or pointed at a new target.");
        sb.Append("dingo_router_route_changes_total ").AppendLine(stats.RouteChanges.ToString(CultureInfo.InvariantCulture));
        Metric("dingo_router_refused_total", "counter", "Connections refused, by reason.");
        sb.Append("dingo_router_refused_total{reason=\"over_limit\"} ").AppendLine(stats.OverLimitRefusals.ToString(CultureInfo.InvariantCulture));
        sb.Append("dingo_router_refused_total{reason=\"no_leader\"} ").AppendLine(stats.NoTargetClosures.ToString(CultureInfo.InvariantCulture));
        sb.Append("dingo_router_refused_total{reason=\"target_unreachable\"} ").AppendLine(stats.FailedTargetConnects.ToString(CultureInfo.InvariantCulture));
        Metric("dingo_router_seconds_without_leader", "gauge", "Seconds since the instance last had a known primary (0 when it has one).");
        foreach (var id in _routes.Select(r => r.InstanceId).Distinct())
        {
            var seconds = _leaderless.TryGetValue(id, out var since) ? (now - since).TotalSeconds : 0;
            sb.Append("dingo_router_seconds_without_leader{instance=\"").Append(id).Append("\"} ").AppendLine(seconds.ToString("0.###", CultureInfo.InvariantCulture));
        }
        return sb.ToString();
    }
}
