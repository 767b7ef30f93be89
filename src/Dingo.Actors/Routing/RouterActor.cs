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

/// <summary>
/// Keeps this cell's router in step with etcd: every active instance port listens, and forwards to the
/// instance's current leader. Thin: the table is <see cref="RouteTable"/>, the data path <see cref="TcpRouter"/>.
/// </summary>
public sealed class RouterActor : PassActor<(int Routes, int WithTarget)>
{
    private static readonly TimeSpan ResyncInterval = TimeSpan.FromSeconds(2);
    private readonly EtcdStore _store;
    private readonly TcpRouter _router;
    private (int, int) _last = (-1, -1);

    public RouterActor(EtcdStore store, TcpRouter router)
    {
        _store = store;
        _router = router;
        Receive<RouterMessages.Refresh>(_ => RequestPass());
    }

    protected override void PreStart() => RequestPass();

    protected override TimeSpan? AfterPass((int Routes, int WithTarget) applied)
    {
        if (applied != _last) Log.Info("router: {0} instance port(s), {1} with a primary", applied.Routes, applied.WithTarget);
        _last = applied;
        return ResyncInterval;
    }

    protected override TimeSpan? AfterFailure(Exception error)
    {
        Log.Warning("router refresh failed: {0}", error.Message);
        return ResyncInterval;
    }

    protected override async Task<(int Routes, int WithTarget)> RunPassAsync(CancellationToken ct)
    {
        var keys = _store.Keys;
        var ports = await _store.ListAsync<PortRecord>(keys.Ports, ct).ConfigureAwait(false);
        var byInstance = await _store.LeadersAsync(ct).ConfigureAwait(false);
        var routes = RouteTable.Compute(
            ports.Select(p => (int.Parse(p.Key[keys.Ports.Length..], System.Globalization.CultureInfo.InvariantCulture), p.Value)),
            byInstance);
        await _router.ApplyAsync(routes, ct).ConfigureAwait(false);
        return (routes.Count, routes.Count(r => r.Target is not null));
    }

    public static Props Props(EtcdStore store, TcpRouter router) => Akka.Actor.Props.Create(() => new RouterActor(store, router));
}
