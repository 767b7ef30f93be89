using Dingo.Backups;
using Dingo.Tests.Support;

namespace Dingo.Tests.Backups;

/// <summary>When a leader's duty takes a base backup or runs a drill (<see cref="BackupSchedule"/>), case by case.</summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class BackupScheduleRulesTests
{
    private static readonly DateTimeOffset Now = new(2026, 12, 5, 12, 0, 0, TimeSpan.Zero);
    private static readonly TimeSpan Day = TimeSpan.FromDays(1);

    [Theory]
    // requested, gap, last system (0: none), last finished hours ago, system now → due, sentence contains
    [InlineData(false, false, 0UL, 0, 7UL, true, "no base backup")]
    [InlineData(false, false, 7UL, 1, 7UL, false, "next is due")]
    [InlineData(false, false, 7UL, 23.9, 7UL, false, "next is due")]
    [InlineData(false, false, 7UL, 24, 7UL, true, "24 h old")]
    [InlineData(false, false, 6UL, 1, 7UL, true, "system 6")]                 // re-initialised: the old system's backups restore nothing of it
    [InlineData(true, false, 7UL, 1, 7UL, true, "asked for")]                // after a restore
    [InlineData(false, true, 7UL, 1, 7UL, true, "gap")]                      // the archive lost WAL
    [InlineData(true, true, 0UL, 0, 7UL, true, "gap")]                       // the gap is named first
    public void Base_backups(bool requested, bool gap, ulong lastSystem, double hoursAgo, ulong systemNow, bool due, string says)
    {
        var v = BackupSchedule.BaseBackup(requested, gap, lastSystem == 0 ? null : lastSystem, lastSystem == 0 ? null : Now - TimeSpan.FromHours(hoursAgo), systemNow, Day, Now);
        Assert.Equal(due, v.Due);
        Assert.Contains(says, v.Why, StringComparison.Ordinal);
    }

    [Theory]
    // first (only "no base backup yet"), commits wait (cluster-ha, store-sync), settle s, cell quiet, waited s → waits, sentence contains
    [InlineData(true, false, 5, false, 0, true, "still making or starting nodes")]
    [InlineData(true, false, 5, false, 59, true, "still making or starting nodes")]
    [InlineData(true, false, 5, false, 60, false, "at most 60 s")]               // never more than a minute without one
    [InlineData(true, false, 5, true, 3, false, "no node for 5 s")]
    [InlineData(true, true, 5, false, 0, false, "commits wait")]                // store-sync: its provision waits for this backup
    [InlineData(true, false, 0, false, 0, false, "do not wait")]                // first-backup-settle = 0
    [InlineData(false, false, 5, false, 0, false, "not the first")]            // asked for, a gap, an old or other system's backup
    public void The_first_base_backup_waits_for_a_settled_cell(bool first, bool commitsWait, double settleSeconds, bool cellQuiet, double waitedSeconds, bool waits, string says)
    {
        var v = BackupSchedule.FirstBackupWaits(first, commitsWait, TimeSpan.FromSeconds(settleSeconds), cellQuiet, TimeSpan.FromSeconds(waitedSeconds), BackupSchedule.FirstBackupMostWait);
        Assert.Equal(waits, v.Due);
        Assert.Contains(says, v.Why, StringComparison.Ordinal);
    }

    [Theory]
    // requested, last drill days ago (-1: never), newest backup days ago, interval days → due, sentence contains
    [InlineData(true, 1, 1, 7, true, "asked for")]
    [InlineData(true, 1, 1, 0, true, "asked for")]                            // on request even with the schedule off
    [InlineData(false, 30, 30, 0, false, "on request only")]
    [InlineData(false, -1, 3, 7, false, "next drill")]                       // never drilled: the clock starts at the backup
    [InlineData(false, -1, 7, 7, true, "no drill yet")]
    [InlineData(false, 6.9, 30, 7, false, "next drill")]
    [InlineData(false, 7, 30, 7, true, "last drill is 7 days old")]
    public void Drills(bool requested, double drilledDaysAgo, double backupDaysAgo, double intervalDays, bool due, string says)
    {
        var v = BackupSchedule.Drill(requested, drilledDaysAgo < 0 ? null : Now - TimeSpan.FromDays(drilledDaysAgo), Now - TimeSpan.FromDays(backupDaysAgo), TimeSpan.FromDays(intervalDays), Now);
        Assert.Equal(due, v.Due);
        Assert.Contains(says, v.Why, StringComparison.Ordinal);
    }
}
