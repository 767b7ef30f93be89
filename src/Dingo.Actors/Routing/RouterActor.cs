using Akka.Actor;
using Akka.Event;
using Dingo.Model;
using Dingo.Store;

namespace Dingo.Routing;

public static class RouterMessages
{
    /// <summary>Re-read ports and leaders from etcd and apply them (a watch saw a change, or the timer fired).</summary>
    public sealed record Refresh;
    internal sealed record Applied(int Routes, int WithTarget);
    internal sealed record Failed(Exception Error);
}

/// <summary>
/// Keeps this cell's router in step with etcd: every active instance port listens, and forwards to the
/// instance's current leader. Thin: the table is <see cref="RouteTable"/>, the data path <see cref="TcpRouter"/>.
/// </summary>
public sealed class RouterActor : ReceiveActor, IWithTimers
{
    private static readonly TimeSpan ResyncInterval = TimeSpan.FromSeconds(2);
    private readonly EtcdStore _store;
    private readonly TcpRouter _router;
    private readonly ILoggingAdapter _log = Context.GetLogger();
    private readonly CancellationTokenSource _stopping = new();
    private bool _running;
    private bool _again;
    private (int, int) _last = (-1, -1);

    public ITimerScheduler Timers { get; set; } = null!;

    public RouterActor(EtcdStore store, TcpRouter router)
    {
        _store = store;
        _router = router;
        Receive<RouterMessages.Refresh>(_ => Start());
        Receive<RouterMessages.Applied>(a =>
        {
            _running = false;
            if ((a.Routes, a.WithTarget) != _last) _log.Info("router: {0} instance port(s), {1} with a primary", a.Routes, a.WithTarget);
            _last = (a.Routes, a.WithTarget);
            Next();
        });
        Receive<RouterMessages.Failed>(f =>
        {
            _running = false;
            _log.Warning("router refresh failed: {0}", f.Error.Message);
            Next();
        });
    }

    protected override void PreStart() => Self.Tell(new RouterMessages.Refresh());

    private void Next()
    {
        if (_again) Start();
        else Timers.StartSingleTimer("resync", new RouterMessages.Refresh(), ResyncInterval);
    }

    private void Start()
    {
        if (_running)
        {
            _again = true;
            return;
        }
        _running = true;
        _again = false;
        RefreshAsync(_stopping.Token).PipeTo(Self, success: r => r, failure: e => new RouterMessages.Failed(e));
    }

    private async Task<RouterMessages.Applied> RefreshAsync(CancellationToken ct)
    {
        var keys = _store.Keys;
        var ports = await _store.ListAsync<PortRecord>(keys.Ports, ct).ConfigureAwait(false);
        var leaders = await _store.ListAsync<LeaderRecord>(keys.Clusters, ct).ConfigureAwait(false);
        var byInstance = leaders
            .Where(l => l.Key.EndsWith("/leader", StringComparison.Ordinal))
            .ToDictionary(l => l.Key[keys.Clusters.Length..^"/leader".Length], l => l.Value);
        var routes = RouteTable.Compute(
            ports.Select(p => (int.Parse(p.Key[keys.Ports.Length..], System.Globalization.CultureInfo.InvariantCulture), p.Value)),
            byInstance);
        await _router.ApplyAsync(routes, ct).ConfigureAwait(false);
        return new RouterMessages.Applied(routes.Count, routes.Count(r => r.Target is not null));
    }

    protected override void PostStop()
    {
        _stopping.Cancel();
        _stopping.Dispose();
    }

    public static Props Props(EtcdStore store, TcpRouter router) => Akka.Actor.Props.Create(() => new RouterActor(store, router));
}
