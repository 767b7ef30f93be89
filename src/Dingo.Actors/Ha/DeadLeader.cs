namespace Dingo.Ha;

/// <summary>
/// The rule of a cell's fencing guard for a leader whose whole cell died (docs/ha.md, rule 4, "a dead cell"): its
/// PostgreSQL and its cell agent are both gone, so nothing can renew the leader key and nothing of that node can
/// write; waiting for the lease to expire only keeps the cluster without a primary. The guard, which outlives both,
/// sees it and gives the key up early (it revokes the lease behind it). A pure function: what the guard saw, the
/// answer, and the sentence it reports.
/// </summary>
public static class DeadLeader
{
    /// <param name="OwnerGone">the cell process that owns the guard is no longer running (a restarted one owns it anew)</param>
    /// <param name="PostmasterAlive">the armed postmaster still runs (same PID and start time)</param>
    /// <param name="KeyKnown">the arming names the instance and the lease behind the leader key (written by every agent
    /// since they carried them; an older arming lacks them and is left to the lease)</param>
    /// <param name="Synchronous">the node leads a synchronous cluster (cluster-ha): a listed standby holds every
    /// acknowledged commit</param>
    /// <param name="DeadFor">how long the guard has seen both gone, without the arming changing</param>
    public sealed record Seen(bool OwnerGone, bool PostmasterAlive, bool KeyKnown, bool Synchronous, TimeSpan DeadFor);

    /// <summary>What to do now, and why (null sentence: nothing worth saying, the node is alive or guarded as usual).</summary>
    public sealed record Verdict(bool Release, string? Sentence);

    /// <param name="asynchronousAfter">how long an asynchronous cluster's dead leader keeps its key first
    /// (`dingo.ha.release-dead-leader-after`): time for a restarted cell to recover it in place without losing the
    /// commits that had not reached a replica</param>
    public static Verdict Decide(Seen s, TimeSpan asynchronousAfter)
    {
        if (!s.OwnerGone || s.PostmasterAlive) return new Verdict(false, null);
        if (!s.KeyKnown) return new Verdict(false, "PostgreSQL and its cell agent are gone, but the arming does not name the leader key: it is left to expire");
        if (s.Synchronous)
            return new Verdict(true, "released the leader key: PostgreSQL and its cell agent are gone, and a synchronous standby holds every acknowledged commit");
        if (s.DeadFor < asynchronousAfter)
            return new Verdict(false, $"PostgreSQL and its cell agent are gone: the key stays {asynchronousAfter.TotalSeconds:0.0#}s for the cell to come back (asynchronous replication)");
        return new Verdict(true, $"released the leader key: PostgreSQL and its cell agent have been gone for {s.DeadFor.TotalSeconds:0.0#}s (asynchronous replication: commits not yet streamed may be lost, as on any failover of the plan)");
    }
}
