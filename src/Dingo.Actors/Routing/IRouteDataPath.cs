namespace Dingo.Routing;

/// <summary>
/// Where routed bytes flow: the user-space proxy (<see cref="TcpRouter"/>) or a kernel fast path. The router actor
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
