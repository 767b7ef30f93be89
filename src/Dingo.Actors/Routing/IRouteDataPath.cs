namespace Dingo.Routing;

/// <summary>
/// Where routed bytes flow: the user-space proxy (TcpRouter, on the cell) or a kernel fast path (KernelRouter). The router actor
/// hands it the full set of routes; it makes listeners and forwarding match, and closes what no longer applies.
/// </summary>
public interface IRouteDataPath : IAsyncDisposable
{
    Task ApplyAsync(IReadOnlyCollection<Route> routes, CancellationToken ct);

    /// <summary>
    /// The routes of the last <see cref="ApplyAsync"/> that completed without error: where this router sends new
    /// connections now (empty before the first). Routers converge on a leader change one by one; this says where one is.
    /// </summary>
    IReadOnlyCollection<Route> Applied { get; }
}

/// <summary>A data path whose connections the kernel forwards (not through user space), counted per port.</summary>
public interface IForwardedConnections
{
    /// <exception cref="InvalidOperationException">the count could not be read (conntrack failed)</exception>
    /// <exception cref="TimeoutException">the count did not come in time</exception>
    Task<IReadOnlyDictionary<int, int>> ForwardedConnectionsAsync(CancellationToken ct);
}

/// <summary>What the router actor tells the cell's metrics after each pass.</summary>
public interface IRouterMetrics
{
    /// <param name="leaderlessSince">per instance without a leader: since when</param>
    /// <param name="kernelForwarded">connections the kernel path forwards now, per port (null in user-space mode)</param>
    void Publish(IReadOnlyList<Route> routes, IReadOnlyDictionary<string, DateTime> leaderlessSince, IReadOnlyDictionary<int, int>? kernelForwarded = null);
}
