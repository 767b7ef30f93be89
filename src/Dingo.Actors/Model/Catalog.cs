namespace Dingo.Model;

/// <summary>The service and plans the broker offers. Ids are fixed for life: Cloud Foundry stores them.</summary>
public static class Catalog
{
    // The original product's service id, kept so a platform migrating from it recognises the service.
    public const string ServiceId = "beb5973c-e1b2-11e5-a736-c7c0b526363d";
    public const string ServiceName = "dingo-postgresql";

    // The original's `solo` plan id; the HA plans join with their own fixed ids when HA lands.
    public const string SoloPlanId = "b96d0936-e423-11e5-accb-93d374e93368";

    public static readonly IReadOnlyList<Plan> Plans =
    [
        new Plan(SoloPlanId, "solo", "A single PostgreSQL 15 node: no replica, continuously reachable at one address.", NodeCount: 1),
    ];

    public static Plan? FindPlan(string? planId) => Plans.FirstOrDefault(p => p.Id == planId);
}

public sealed record Plan(string Id, string Name, string Description, int NodeCount);
