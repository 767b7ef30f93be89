using Prometheus;

namespace Dingo.Routing;

/// <summary>
/// What a cell's router reports to Prometheus: open connections per instance port, connections accepted, bytes copied,
/// route changes, refusals by reason, and how long each instance has been without a leader. The router's own counters
/// are read when Prometheus scrapes (a callback of the registry), so the data path pays nothing per connection for them.
/// </summary>
public sealed class RouterMetrics : IRouterMetrics
{
    private readonly TcpRouter _router;
    private readonly Func<DateTime> _now;
    private volatile IReadOnlyList<Route> _routes = [];
    private volatile IReadOnlyDictionary<string, DateTime> _leaderless = new Dictionary<string, DateTime>();
    private volatile IReadOnlyDictionary<int, int> _kernel = new Dictionary<int, int>();

    private readonly Gauge _open, _leaderlessSeconds;
    private readonly Counter _accepted, _bytes, _routeChanges, _refused;

    /// <param name="registry">the cell's registry (null: one of its own, as in tests)</param>
    public RouterMetrics(TcpRouter router, CollectorRegistry? registry = null, Func<DateTime>? now = null)
    {
        _router = router;
        _now = now ?? (() => DateTime.UtcNow);
        Registry = registry ?? Metrics.NewCustomRegistry();
        var f = Metrics.WithCustomRegistry(Registry);
        _open = f.CreateGauge("dingo_router_open_connections", "Client connections open through this router (user space and kernel path), per instance port.",
            ["service_instance", "port", "role"]);
        _leaderlessSeconds = f.CreateGauge("dingo_router_leaderless_seconds", "Seconds since the instance last had a known primary (0 while it has one).",
            ["service_instance"]);
        _accepted = f.CreateCounter("dingo_router_accepted_connections_total", "Client connections accepted by the user-space path since the cell started.");
        _bytes = f.CreateCounter("dingo_router_copied_bytes_total", "Bytes copied by the user-space path, by direction (the kernel path's bytes are in conntrack accounting).",
            ["direction"]);
        _routeChanges = f.CreateCounter("dingo_router_route_changes_total", "Routes added, removed or pointed at a new target.");
        _refused = f.CreateCounter("dingo_router_refused_connections_total", "Client connections refused or closed without a server, by reason.", ["reason"]);
        Registry.AddBeforeCollectCallback(Refresh);
    }

    public CollectorRegistry Registry { get; }

    /// <param name="kernelForwarded">connections the kernel path forwards now, per port (empty in user-space mode)</param>
    public void Publish(IReadOnlyList<Route> routes, IReadOnlyDictionary<string, DateTime> leaderlessSince, IReadOnlyDictionary<int, int>? kernelForwarded = null)
    {
        _routes = routes;
        _leaderless = new Dictionary<string, DateTime>(leaderlessSince);
        _kernel = kernelForwarded ?? new Dictionary<int, int>();
    }

    /// <summary>Open connections on a port: through user space plus through the kernel path.</summary>
    public int OpenConnections(int port) => _router.OpenConnectionsByPort.GetValueOrDefault(port) + _kernel.GetValueOrDefault(port);

    /// <summary>The registry's figures in Prometheus' text format (what /metrics answers).</summary>
    public async Task<string> RenderAsync(CancellationToken ct)
    {
        using var buffer = new MemoryStream();
        await Registry.CollectAndExportAsTextAsync(buffer, ct).ConfigureAwait(false);
        return System.Text.Encoding.UTF8.GetString(buffer.ToArray());
    }

    private void Refresh()
    {
        var stats = _router.Stats;
        var open = _router.OpenConnectionsByPort;
        var routes = _routes;
        foreach (var labels in _open.GetAllLabelValues().ToList()) _open.RemoveLabelled(labels);
        foreach (var labels in _leaderlessSeconds.GetAllLabelValues().ToList()) _leaderlessSeconds.RemoveLabelled(labels);
        foreach (var r in routes)
            _open.WithLabels(r.InstanceId, r.Port.ToString(System.Globalization.CultureInfo.InvariantCulture), r.Pool.Count > 0 ? "read-only" : "primary")
                .Set(open.GetValueOrDefault(r.Port) + _kernel.GetValueOrDefault(r.Port));
        var now = _now();
        foreach (var id in routes.Select(r => r.InstanceId).Distinct())
            _leaderlessSeconds.WithLabels(id).Set(_leaderless.TryGetValue(id, out var since) ? Math.Max(0, (now - since).TotalSeconds) : 0);
        _accepted.IncTo(stats.AcceptedConnections);
        _bytes.WithLabels("client_to_server").IncTo(stats.BytesClientToServer);
        _bytes.WithLabels("server_to_client").IncTo(stats.BytesServerToClient);
        _routeChanges.IncTo(stats.RouteChanges);
        _refused.WithLabels("over_limit").IncTo(stats.OverLimitRefusals);
        _refused.WithLabels("no_leader").IncTo(stats.NoTargetClosures);
        _refused.WithLabels("target_unreachable").IncTo(stats.FailedTargetConnects);
    }
}
