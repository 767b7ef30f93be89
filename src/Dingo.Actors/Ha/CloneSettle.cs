using Dingo.Model;

namespace Dingo.Ha;

/// <summary>
/// When a new replica of an asynchronous cluster takes its copy of the leader (docs/ha.md, "A new replica's clone").
/// A clone is a tool's whole run (on the Docker runtime a container's lifecycle in the engine), a copy of the leader's
/// data directory read by the leader's own PostgreSQL, then a second start; in a burst of provisions it ran beside the
/// primaries the applications were waiting for, on a machine whose cores were already full. Where nothing waits for the
/// replica (`cluster`: a provision succeeds once its primary serves, and no commit waits for a standby), its clone waits
/// until its cell has made, claimed, restored or started no node an application may be waiting for within
/// `dingo.cell.clone-settle` and its host's CPUs are not saturated (`dingo.cell.saturated-cpu-pressure`), and never
/// longer than <see cref="MostWait"/>. A pure rule: CloneSettleRulesTests is its table.
/// </summary>
public static class CloneSettle
{
    /// <summary>The longest a new replica's clone waits for its cell to settle.</summary>
    public static readonly TimeSpan MostWait = TimeSpan.FromSeconds(30);

    public sealed record Verdict(bool Waits, string Why);

    /// <summary>Whether nothing waits for the instance's replicas: an asynchronous plan without store-sync.</summary>
    public static bool NothingWaitsForReplicas(InstanceRecord record) =>
        Catalog.FindPlan(record.PlanId) is { Synchronous: false } && !SynchronousCommit.StoreSync(record);

    /// <param name="asynchronous">nothing waits for the instance's replicas (<see cref="NothingWaitsForReplicas"/>)</param>
    /// <param name="settle">dingo.cell.clone-settle (zero: a clone never waits)</param>
    /// <param name="cellQuiet">the cell's work an application may wait for has been quiet for <paramref name="settle"/>, and its host's CPUs are not saturated</param>
    /// <param name="waited">how long this node has put its clone off so far</param>
    public static Verdict Waits(bool asynchronous, TimeSpan settle, bool cellQuiet, TimeSpan waited)
    {
        if (settle <= TimeSpan.Zero) return new(false, "clones do not wait (dingo.cell.clone-settle = 0)");
        if (!asynchronous) return new(false, "commits or the provision wait for this replica: it clones at once");
        if (cellQuiet) return new(false, $"the cell has started no primary for {settle.TotalSeconds:0.#} s");
        if (waited >= MostWait) return new(false, $"put off for {waited.TotalSeconds:0} s while the cell started primaries (at most {MostWait.TotalSeconds:0} s)");
        return new(true, $"the cell is still making or starting primaries, or its host's CPUs are saturated (asynchronous replication: nothing waits for this replica; at most {MostWait.TotalSeconds:0} s)");
    }
}
