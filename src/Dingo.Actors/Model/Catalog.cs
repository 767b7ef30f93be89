namespace Dingo.Model;

/// <summary>The service and plans the broker offers. Ids are fixed for life: Cloud Foundry stores them.</summary>
public static class Catalog
{
    // The original product's service id, kept so a platform migrating from it recognises the service.
    public const string ServiceId = "beb5973c-e1b2-11e5-a736-c7c0b526363d";
    public const string ServiceName = "dingo-postgresql";

    // The original's `solo` and `cluster` plan ids, kept; `cluster-ha` is new.
    public const string SoloPlanId = "b96d0936-e423-11e5-accb-93d374e93368";
    public const string ClusterPlanId = "1545e30e-6dc3-11e5-826a-6c4008a663f0";
    public const string ClusterHaPlanId = "6e0b4f8a-3c1d-4b7e-9a52-d1f0c2e8b7a4";

    public static readonly IReadOnlyList<Plan> Plans =
    [
        new Plan(SoloPlanId, "solo", "A single PostgreSQL 15 node: no replica, continuously reachable at one address.", NodeCount: 1, Synchronous: false, MinNodes: 1)
        {
            Limits = new NodeLimits(MemoryBytes: 256L * 1024 * 1024, Cpus: 0.5),
        },
        new Plan(ClusterPlanId, "cluster", "Two PostgreSQL 15 nodes in different zones with asynchronous streaming replication and failover in seconds.", NodeCount: 2, Synchronous: false, MinNodes: 2)
        {
            Limits = new NodeLimits(MemoryBytes: 512L * 1024 * 1024, Cpus: 1),
        },
        new Plan(ClusterHaPlanId, "cluster-ha", "Three PostgreSQL 15 nodes in different zones with synchronous replication: an acknowledged commit survives any single failure.", NodeCount: 3, Synchronous: true, MinNodes: 3)
        {
            Limits = new NodeLimits(MemoryBytes: 1024L * 1024 * 1024, Cpus: 1),
        },
    ];

    public const int MaxNodes = 7;

    public static Plan? FindPlan(string? planId) => Plans.FirstOrDefault(p => p.Id == planId);
}

public sealed record Plan(string Id, string Name, string Description, int NodeCount, bool Synchronous, int MinNodes)
{
    /// <summary>What one node of this plan may use (enforced by the Docker runtime as cgroup limits).</summary>
    public NodeLimits Limits { get; init; } = NodeLimits.Default;
}

/// <summary>
/// A node's memory and CPU ceiling. Ceilings, not reservations: a cell of a 24 GiB, 2-core machine holds dozens of
/// idle nodes, while a busy one cannot starve its neighbours. shared_buffers follows the memory ceiling.
/// </summary>
public sealed record NodeLimits(long MemoryBytes, double Cpus)
{
    public static readonly NodeLimits Default = new(256L * 1024 * 1024, 0.5);

    /// <summary>A quarter of the memory ceiling, at least 32 MB (PostgreSQL's own guidance for a dedicated server).</summary>
    public long SharedBuffersBytes => Math.Max(32L * 1024 * 1024, MemoryBytes / 4);
}
