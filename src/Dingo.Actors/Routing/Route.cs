using System.Net;

namespace Dingo.Routing;

/// <summary>One public port and where its connections go now. Target null: no primary is known.</summary>
public sealed record Route(int Port, string InstanceId, IPEndPoint? Target)
{
    /// <summary>Read-only ports: healthy replicas new connections are balanced over (empty: use Target).</summary>
    public IReadOnlyList<IPEndPoint> Pool { get; init; } = [];

    /// <summary>Most connections open at once on this port (0: no limit).</summary>
    public int MaxConnections { get; init; }

    /// <summary>
    /// Set by the kernel data path on ports it forwards itself: a connection reaching user space there was let
    /// through by the kernel only because the port is over its limit, so it is refused with the limit's message.
    /// </summary>
    public bool OverflowOnly { get; init; }

    public bool SameTargets(Route other) =>
        Equals(Target, other.Target) && Pool.Count == other.Pool.Count && Pool.All(other.Pool.Contains);
}
