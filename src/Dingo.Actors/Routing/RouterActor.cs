using Dingo.Config;
using Akka.Event;
using Akka.Actor;
using Dingo.Model;
using Dingo.Store;

namespace Dingo.Routing;

public static class RouterMessages
{
    /// <summary>Re-read ports and leaders from etcd and apply them (a watch saw a change, or the timer fired).</summary>
    public sealed record Refresh;
}

/// <summary>What one router pass reads: every instance port and the cluster behind each.</summary>
public sealed record RouteInputs(IReadOnlyList<(int Port, PortRecord Record)> Ports, IReadOnlyDictionary<string, RoutedCluster> Clusters);

/// <summary>Where a router reads its inputs: etcd (<see cref="EtcdRouteSource"/>); an in-memory source in RouterActorTests.</summary>
public interface IRouteSource
{
    Task<RouteInputs> ReadAsync(CancellationToken ct);
}

/// <summary>The port records, leader keys and node reports in etcd: three reads a pass.</summary>
public sealed class EtcdRouteSource(EtcdStore store) : IRouteSource
{
    public async Task<RouteInputs> ReadAsync(CancellationToken ct)
    {
        var keys = store.Keys;
        var ports = await store.ListAsync<PortRecord>(keys.Ports, ct).ConfigureAwait(false);
        var clusters = await store.ClustersAsync(ct).ConfigureAwait(false);
        var statuses = (await store.ListAsync<NodeStatus>(keys.AllStatus, ct).ConfigureAwait(false)).Select(s => s.Value).ToLookup(s => s.InstanceId);
        var views = ports.Select(p => p.Value.InstanceId).Distinct().ToDictionary(id => id, id =>
        {
            var c = clusters.GetValueOrDefault(id);
            return new RoutedCluster(c.Leader, c.Optime, statuses[id].ToList());
        });
        return new RouteInputs(
            ports.Select(p => (int.Parse(p.Key[keys.Ports.Length..], System.Globalization.CultureInfo.InvariantCulture), p.Value)).ToList(), views);
    }
}

/// <summary>
/// Keeps this cell's router in step with etcd: every active instance port listens, and forwards to the
/// instance's current leader. Thin: the table is <see cref="RouteTable"/>, the data path an <see cref="IRouteDataPath"/>.
/// </summary>
public sealed class RouterActor : PassActor<(int Routes, int WithTarget)>
{
    private static readonly TimeSpan DefaultResync = TimeSpan.FromSeconds(2);
    private readonly TimeSpan _resync;
    private readonly IRouteSource _source;
    private readonly IRouteDataPath _router;
    private readonly RouterSettings _settings;
    private readonly Dictionary<string, DateTime> _leaderlessSince = new();
    private readonly IRouterMetrics? _metrics;
    private readonly Func<DateTime> _now;
    private (int, int) _last = (-1, -1);

    /// <param name="resync">passes without a request (a watch's Refresh): every 2 s unless a test says otherwise</param>
    public RouterActor(IRouteSource source, IRouteDataPath router, RouterSettings settings, IRouterMetrics? metrics, Func<DateTime>? now = null, TimeSpan? resync = null)
    {
        _resync = resync ?? DefaultResync;
        _metrics = metrics;
        _source = source;
        _router = router;
        _settings = settings;
        _now = now ?? (() => DateTime.UtcNow);
        Receive<RouterMessages.Refresh>(_ => RequestPass());
    }

    protected override void PreStart() => RequestPass();

    protected override TimeSpan? AfterPass((int Routes, int WithTarget) applied)
    {
        if (applied != _last) Log.Info("router: {0} instance port(s), {1} with a primary", applied.Routes, applied.WithTarget);
        _last = applied;
        return _resync;
    }

    protected override TimeSpan? AfterFailure(Exception error)
    {
        Log.Warning("router refresh failed: {0}", error.Message);
        return _resync;
    }

    protected override async Task<(int Routes, int WithTarget)> RunPassAsync(CancellationToken ct)
    {
        var inputs = await _source.ReadAsync(ct).ConfigureAwait(false);
        var routes = RouteTable.Compute(inputs.Ports, inputs.Clusters, _settings.MaxConnectionsPerInstance, _settings.ReadOnlyMaxLag);
        var now = _now();
        foreach (var r in routes.Where(r => r.Target is null)) _leaderlessSince.TryAdd(r.InstanceId, now);
        foreach (var id in _leaderlessSince.Keys.Where(id => routes.Any(r => r.InstanceId == id && r.Target is not null) || routes.All(r => r.InstanceId != id)).ToList())
            _leaderlessSince.Remove(id);
        IReadOnlyDictionary<int, int>? forwarded = null;
        if (_metrics is not null && _router is IForwardedConnections kernel)
        {
            try { forwarded = await kernel.ForwardedConnectionsAsync(ct).ConfigureAwait(false); }
            catch (Exception ex) when (ex is InvalidOperationException or TimeoutException) { Log.Debug("conntrack count failed: {0}", ex.Message); }
        }
        _metrics?.Publish(routes, _leaderlessSince, forwarded);
        await _router.ApplyAsync(routes, ct).ConfigureAwait(false);
        return (routes.Count, routes.Count(r => r.Target is not null));
    }

    public static Props Props(IRouteSource source, IRouteDataPath router, RouterSettings settings, IRouterMetrics? metrics = null, Func<DateTime>? now = null,
        TimeSpan? resync = null) =>
        Akka.Actor.Props.Create(() => new RouterActor(source, router, settings, metrics, now, resync));
}
