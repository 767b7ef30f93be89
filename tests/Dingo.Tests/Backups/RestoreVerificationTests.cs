using Dingo.Tests.Support;
using Dingo.Backups;

namespace Dingo.Tests.Backups;

/// <summary>
/// The rule book of "did this restore reach what was asked": what the archive must hold for a restore to its latest
/// state (<see cref="RestoreVerification.Goal"/>) and whether recovery's end meets it (<see cref="RestoreVerification.Decide"/>).
/// </summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class RestoreVerificationTests
{
    private const ulong Seg = WalSegment.DefaultSize;
    private static readonly DateTimeOffset Target = new(2026, 12, 2, 19, 0, 0, TimeSpan.Zero);

    private static RestoreGoal Latest(uint timeline, string end, string? problem = null) => new("src", timeline, Lsn.Parse(end), null, problem);

    public static TheoryData<string, RestoreGoal, RecoveryEnd?, string?, bool, string> Cases() => new()
    {
        { "latest: ended at the archive's end on its newest timeline", Latest(2, "0/5004000"), new(2, Lsn.Parse("0/5004000"), 3, "no recovery target specified"), null, true, "the end of the archive" },
        { "latest: ended on the old timeline (the new one was not followed)", Latest(2, "0/5004000"), new(1, Lsn.Parse("0/5001000"), 2, "no recovery target specified"), null, false, "newest timeline is 2" },
        { "latest: ended short, nothing starts there", Latest(2, "0/5004000"), new(2, Lsn.Parse("0/5002000"), 3, "no recovery target specified"), null, false, "8192 B short" },
        { "latest: ended short, the rest is a record still being written", Latest(2, "0/5004000"), new(2, Lsn.Parse("0/5003F00"), 3, "no recovery target specified"), "0/5004100", true, "still being written" },
        { "latest: ended short, a whole record after it was not replayed", Latest(2, "0/5004000"), new(2, Lsn.Parse("0/5002000"), 3, "no recovery target specified"), "0/5002100", false, "could not be replayed" },
        { "latest: the archive already had a hole", Latest(2, "0/7000000", "WAL segment 000000020000000000000006 is missing"), new(2, Lsn.Parse("0/6000000"), 3, "no recovery target specified"), null, false, "000000020000000000000006 is missing" },
        { "latest: promoted without a new timeline history", Latest(2, "0/5004000"), null, null, false, "without recording where recovery ended" },
        { "point in time: stopped at its target", new RestoreGoal("src", 2, Lsn.Parse("0/9000000"), Target, null), new(2, Lsn.Parse("0/5000100"), 3, "before 2026-12-02 19:00:00+00"), null, true, "stopped at its target" },
        { "point in time: target after every commit, replayed to the end", new RestoreGoal("src", 1, Lsn.Parse("0/3000200"), Target, null), new(1, Lsn.Parse("0/3000200"), 2, "no recovery target specified"), null, true, "the end of the archive" },
        { "point in time: replayed to the end but stopped short of it", new RestoreGoal("src", 1, Lsn.Parse("0/3000200"), Target, null), new(1, Lsn.Parse("0/2000000"), 2, "no recovery target specified"), null, false, "short of the commits before" },
        { "point in time: the archive's hole kept it from its target", new RestoreGoal("src", 1, Lsn.Parse("0/9000000"), Target, "WAL segment 000000010000000000000004 is missing"), new(1, Lsn.Parse("0/4000000"), 2, "no recovery target specified"), null, false, "000000010000000000000004 is missing" },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void A_restore_succeeds_only_when_it_reached_what_was_asked(string story, RestoreGoal goal, RecoveryEnd? end, string? tailRecordEnd, bool ok, string sentence)
    {
        var verdict = RestoreVerification.Decide(goal, end, tailRecordEnd is null ? null : Lsn.Parse(tailRecordEnd));
        Assert.True(verdict.Ok == ok, $"{story}: {verdict.Sentence}");
        Assert.Contains(sentence, verdict.Sentence, StringComparison.Ordinal);
        if (!ok) Assert.Contains("src", verdict.Sentence, StringComparison.Ordinal);
    }

    private static BaseBackupManifest Backup(uint timeline = 1) => new()
    {
        Label = "b1", InstanceId = "src", SystemId = 7, Timeline = timeline, StartLsn = "0/2000028", EndLsn = "0/2000100",
        StartedAt = Target, FinishedAt = Target, Source = "n-1", Files = [],
    };

    /// <summary>A catalog from object names: whole segments, and parts as "segment:from-to" (offsets in the segment, hex).</summary>
    private static ArchiveCatalog Catalog(string[] segments, string[] parts, uint[] histories)
    {
        var whole = segments.ToDictionary(n => n, n => WalSegment.TryParse(n, Seg, out var s) ? s : throw new ArgumentException(n));
        var pieces = parts.Select(p =>
        {
            var (name, range) = (p[..24], p[25..].Split('-'));
            WalSegment.TryParse(name, Seg, out var s);
            return (name, From: s.Start + Convert.ToUInt64(range[0], 16), To: s.Start + Convert.ToUInt64(range[1], 16));
        }).GroupBy(p => p.name).ToDictionary(g => g.Key, g => (IReadOnlyList<(ulong, ulong, string)>)g.OrderBy(x => x.From).Select(x => (x.From, x.To, $"parts/{x.name}/{x.From:X16}-{x.To:X16}")).ToList());
        return new ArchiveCatalog { SystemId = 7, SegmentSize = Seg, Segments = whole, Parts = pieces, Histories = histories.ToHashSet() };
    }

    [Fact]
    public async Task A_piece_shorter_than_its_name_says_is_not_counted()
    {
        var dir = Path.Combine(Path.GetTempPath(), "dingo-catalog-" + Guid.NewGuid().ToString("N")[..10]);
        try
        {
            var store = new LocalFolderObjectStore(dir);
            var segment = new WalSegment(1, 3, Seg);
            async Task PutAsync(ulong from, ulong to, int bytes)
            {
                using var content = new MemoryStream(new byte[bytes]);
                await store.PutAsync(ArchiveLayout.Part("src", 7, segment, segment.Start + from, segment.Start + to), content);
            }
            await PutAsync(0, 0x100, 0x100);
            await PutAsync(0x100, 0x200, 0x100);
            await PutAsync(0x200, 0x2B0, 0x40); // cut short: 64 of its 176 bytes
            var catalog = await ArchiveCatalog.ReadAsync(store, "src", 7, Seg, CancellationToken.None);
            Assert.Equal(2, catalog.Parts[segment.Name].Count);
            Assert.Equal(segment.Start + 0x200, catalog.ArchivedEnd(1));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    private static readonly Dictionary<uint, ulong> SwitchedInSegment5 = new() { [1] = Lsn.Parse("0/5000100") };

    [Fact]
    public void After_a_failover_the_goal_is_the_end_of_the_new_timeline()
    {
        var catalog = Catalog(["000000010000000000000002", "000000010000000000000003", "000000010000000000000004"],
            ["000000010000000000000005:0-100", "000000020000000000000005:0-3000", "000000020000000000000005:3000-4000"], [2]);
        var goal = RestoreVerification.Goal("src", catalog, Backup(), SwitchedInSegment5, null, null);
        Assert.Null(goal.Problem);
        Assert.Equal(2u, goal.Timeline);
        Assert.Equal(Lsn.Parse("0/5004000"), goal.End);
    }

    [Fact]
    public void A_missing_segment_before_the_end_is_a_hole_named_in_the_goal()
    {
        var catalog = Catalog(["000000010000000000000002", "000000010000000000000004"], ["000000020000000000000005:0-4000"], [2]);
        var goal = RestoreVerification.Goal("src", catalog, Backup(), SwitchedInSegment5, null, null);
        Assert.Contains("000000010000000000000003 is missing", goal.Problem, StringComparison.Ordinal);
    }

    [Fact]
    public void The_new_timelines_history_without_its_WAL_is_not_yet_restorable_to_latest()
    {
        var catalog = Catalog(["000000010000000000000002", "000000010000000000000003", "000000010000000000000004"], ["000000010000000000000005:0-100"], [2]);
        var goal = RestoreVerification.Goal("src", catalog, Backup(), SwitchedInSegment5, null, null);
        Assert.Contains("none of its WAL is archived yet", goal.Problem, StringComparison.Ordinal);
    }

    [Fact]
    public void WAL_of_a_timeline_without_its_history_cannot_be_followed()
    {
        var catalog = Catalog(["000000010000000000000002", "000000010000000000000003", "000000010000000000000004"], ["000000020000000000000005:0-4000"], []);
        var goal = RestoreVerification.Goal("src", catalog, Backup(), new Dictionary<uint, ulong>(), null, null);
        Assert.Contains("not its history file", goal.Problem, StringComparison.Ordinal);
    }

    [Fact]
    public void Parts_after_a_hole_in_the_last_segment_are_a_hole()
    {
        var catalog = Catalog(["000000010000000000000002"], ["000000010000000000000003:0-2000", "000000010000000000000003:3000-4000"], []);
        var goal = RestoreVerification.Goal("src", catalog, Backup(), new Dictionary<uint, ulong>(), null, null);
        Assert.Contains("has a hole at 0/3002000", goal.Problem, StringComparison.Ordinal);
    }

    [Fact]
    public void Less_stored_than_the_archiver_reported_is_a_problem_and_a_claim_on_an_older_timeline_is_not()
    {
        var catalog = Catalog(["000000010000000000000002"], ["000000010000000000000003:0-2000"], []);
        var claimed = new ArchiveClaim(7, 1, Lsn.Parse("0/3005000"), "n-1", null);
        var goal = RestoreVerification.Goal("src", catalog, Backup(), new Dictionary<uint, ulong>(), claimed, null);
        Assert.Contains("reports WAL archived up to 0/3005000 on timeline 1, but the archive holds it only up to 0/3002000", goal.Problem, StringComparison.Ordinal);
        Assert.Null(RestoreVerification.Goal("src", catalog, Backup(), new Dictionary<uint, ulong>(), claimed with { ArchivedLsn = Lsn.Parse("0/3002000") }, null).Problem);
        Assert.Null(RestoreVerification.Goal("src", catalog, Backup(), new Dictionary<uint, ulong>(), claimed with { SystemId = 8 }, null).Problem);
        var newer = Catalog(["000000010000000000000002", "000000010000000000000003", "000000010000000000000004"], ["000000020000000000000005:0-4000"], [2]);
        Assert.Null(RestoreVerification.Goal("src", newer, Backup(), SwitchedInSegment5, claimed with { ArchivedLsn = Lsn.Parse("0/5001000") }, null).Problem);
    }

    [Fact]
    public void Recovery_end_is_read_from_the_new_timelines_history()
    {
        var end = RecoveryEnd.Parse(3, "1\t0/5000100\tno recovery target specified\n\n2\t0/6001234\tbefore 2026-12-02 19:00:00+00\n");
        Assert.Equal(new RecoveryEnd(2, Lsn.Parse("0/6001234"), 3, "before 2026-12-02 19:00:00+00"), end);
        Assert.True(end!.StoppedAtTarget);
        Assert.False(RecoveryEnd.Parse(2, "1\t0/5000100\tno recovery target specified\n")!.StoppedAtTarget);
        Assert.Null(RecoveryEnd.Parse(2, ""));
    }

    [Fact]
    public void Only_a_record_that_follows_the_last_one_replayed_counts_as_still_being_written()
    {
        var dir = Path.Combine(Path.GetTempPath(), "dingo-verify-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(dir);
        try
        {
            var segment = new byte[2 * RestoreVerification.WalPageSize];
            var at = Lsn.Parse("0/3000100");
            BitConverter.TryWriteBytes(segment.AsSpan(0x100), 100u);
            BitConverter.TryWriteBytes(segment.AsSpan(0x108), Lsn.Parse("0/3000080"));
            File.WriteAllBytes(Path.Combine(dir, "000000010000000000000003"), segment);
            Assert.Equal(at + 100, RestoreVerification.RecordEndAt(dir, 1, at, Lsn.Parse("0/3000080"), Seg));
            Assert.Null(RestoreVerification.RecordEndAt(dir, 1, at, Lsn.Parse("0/3000040"), Seg)); // another branch's bytes
            Assert.Null(RestoreVerification.RecordEndAt(dir, 1, at, null, Seg));
            Assert.Null(RestoreVerification.RecordEndAt(dir, 1, at + 0x200, Lsn.Parse("0/3000080"), Seg)); // zeros
            Assert.Null(RestoreVerification.RecordEndAt(dir, 2, at, Lsn.Parse("0/3000080"), Seg)); // no such file
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
        Assert.Equal(Lsn.Parse("0/5000F28"), RestoreVerification.RedoDoneAt("LOG:  redo starts at 0/2000028\nLOG:  redo done at 0/5000F28 system usage: CPU: user: 0.00 s\n"));
        Assert.Null(RestoreVerification.RedoDoneAt("LOG:  redo is not required\n"));
    }

    [Fact]
    public void A_record_crossing_a_page_ends_after_the_next_pages_header()
    {
        Assert.Equal(8150ul + 40, RestoreVerification.Spread(8150, 40, Seg));
        Assert.Equal(8192ul + 24 + 58, RestoreVerification.Spread(8150, 100, Seg));
        Assert.Equal(Seg + 40 + 10, RestoreVerification.Spread(Seg - 10, 20, Seg));
    }
}
