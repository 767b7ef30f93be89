namespace Dingo.Backups;

/// <summary>
/// When a leader's backup duty takes a base backup, and when it runs a restore drill (docs/backups.md). Pure functions:
/// what the duty knows, the answer, and the sentence it logs. BackupScheduleRulesTests is their table.
/// </summary>
public static class BackupSchedule
{
    public sealed record Verdict(bool Due, string Why);

    /// <summary>The longest a new cluster's first base backup waits for its cell to settle.</summary>
    public static readonly TimeSpan FirstBackupMostWait = TimeSpan.FromMinutes(1);

    /// <param name="requested">a base backup was asked for (a restore just finished, or a gap was found in the archive)</param>
    /// <param name="gap">the archiver lost WAL before storing it: restores need a backup from after the gap</param>
    /// <param name="lastSystemId">the system of the newest base backup in the store (null: none)</param>
    /// <param name="lastFinished">when it finished</param>
    /// <param name="systemId">the system the leader runs now</param>
    public static Verdict BaseBackup(bool requested, bool gap, ulong? lastSystemId, DateTimeOffset? lastFinished, ulong systemId, TimeSpan interval, DateTimeOffset now)
    {
        if (gap) return new(true, "the WAL archive has a gap: restores need a base backup from after it");
        if (requested) return new(true, "asked for (the cluster was just restored or created from a backup)");
        if (lastSystemId is null || lastFinished is null) return new(true, "the store holds no base backup of this instance yet");
        if (lastSystemId != systemId) return new(true, $"the newest base backup is of system {lastSystemId}, the cluster now runs system {systemId}");
        if (lastFinished.Value + interval <= now) return new(true, $"the newest base backup is {(now - lastFinished.Value).TotalHours:0.#} h old (interval {interval.TotalHours:0.#} h)");
        return new(false, $"the newest base backup is {(now - lastFinished.Value).TotalHours:0.#} h old; the next is due at {lastFinished.Value + interval:O}");
    }

    /// <summary>
    /// Whether a new cluster's first base backup waits for its cell to settle (docs/backups.md, "The first base backup").
    /// It copies the whole data directory beside the provision it follows: on a cell still making or starting nodes
    /// (a burst of provisions, or the same provision's bind and first sessions) it took the CPU, the disk and the new
    /// primary's own CPU ceiling from the work the applications wait for. It waits until the cell has been quiet for
    /// `dingo.backups.first-backup-settle`, and never longer than <paramref name="most"/>; never where commits wait for
    /// it or for a standby, or once a backup is needed for another reason.
    /// </summary>
    /// <param name="first">due only because the store holds no base backup of the instance (not asked for, no gap)</param>
    /// <param name="commitsWait">the instance's commits wait for a standby or for the store (cluster-ha, store-sync)</param>
    /// <param name="settle">dingo.backups.first-backup-settle (zero: it never waits)</param>
    /// <param name="cellQuiet">the cell has created, started, cloned or restored no node within <paramref name="settle"/>, and its host's CPUs are not saturated</param>
    /// <param name="waited">how long this duty has put it off so far</param>
    public static Verdict FirstBackupWaits(bool first, bool commitsWait, TimeSpan settle, bool cellQuiet, TimeSpan waited, TimeSpan most)
    {
        if (!first) return new(false, "not the first base backup");
        if (settle <= TimeSpan.Zero) return new(false, "first base backups do not wait (dingo.backups.first-backup-settle = 0)");
        if (commitsWait) return new(false, "its commits wait for a standby or the store: the first base backup does not wait");
        if (cellQuiet) return new(false, $"the cell has made or started no node for {settle.TotalSeconds:0.#} s");
        if (waited >= most) return new(false, $"put off for {waited.TotalSeconds:0} s while the cell made or started nodes (at most {most.TotalSeconds:0} s)");
        return new(true, "the cell is still making or starting nodes, or its host's CPUs are saturated");
    }

    /// <param name="requested">a drill was asked for (`dingo drill`, the admin API)</param>
    /// <param name="lastDrill">when the last drill ran (null: never)</param>
    /// <param name="oldestBackup">when the duty's newest known base backup finished (the clock before any drill)</param>
    /// <param name="interval">dingo.backups.drill-interval (zero or less: on request only)</param>
    public static Verdict Drill(bool requested, DateTimeOffset? lastDrill, DateTimeOffset oldestBackup, TimeSpan interval, DateTimeOffset now)
    {
        if (requested) return new(true, "asked for");
        if (interval <= TimeSpan.Zero) return new(false, "drills run on request only (dingo.backups.drill-interval = 0)");
        var since = lastDrill ?? oldestBackup;
        return since + interval <= now
            ? new(true, lastDrill is null ? $"no drill yet, and the base backup is {(now - since).TotalDays:0.#} days old" : $"the last drill is {(now - since).TotalDays:0.#} days old")
            : new(false, $"the next drill is due at {since + interval:O}");
    }
}
