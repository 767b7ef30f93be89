using System.Buffers.Binary;
using System.Globalization;

namespace Dingo.Backups;

/// <summary>What the archiver last said it had stored (etcd's BackupState, or a live archiver's progress).</summary>
public sealed record ArchiveClaim(ulong SystemId, uint Timeline, ulong ArchivedLsn, string By, DateTimeOffset? At);

/// <summary>
/// What a restore must reach, read from the archive when the restore was prepared: the newest timeline the archive
/// knows, how far WAL on it is stored without a hole (<see cref="End"/>), and anything that already makes "latest"
/// impossible (<see cref="Problem"/>: a missing segment, a timeline with no WAL yet, less stored than the archiver
/// said it stored).
/// </summary>
public sealed record RestoreGoal(string InstanceId, uint Timeline, ulong End, DateTimeOffset? TargetTime, string? Problem)
{
    public string Describe() => TargetTime is { } t
        ? string.Create(CultureInfo.InvariantCulture, $"the commits before {t:O} (archive end {Lsn.Format(End)} on timeline {Timeline})")
        : string.Create(CultureInfo.InvariantCulture, $"WAL up to {Lsn.Format(End)} on timeline {Timeline}");
}

/// <summary>
/// Where recovery ended, as PostgreSQL records it in the history file of the timeline it created on promotion:
/// the timeline it replayed last, the end of the last record replayed, and why it stopped.
/// </summary>
public sealed record RecoveryEnd(uint Timeline, ulong Lsn, uint NewTimeline, string Reason)
{
    /// <summary>PostgreSQL writes "before …"/"after …" (a time target) when it stopped at its target.</summary>
    public bool StoppedAtTarget => Reason.StartsWith("before ", StringComparison.Ordinal) || Reason.StartsWith("after ", StringComparison.Ordinal);

    /// <summary>The last line of the new timeline's history file: "parentTLI switchpoint reason".</summary>
    public static RecoveryEnd? Parse(uint newTimeline, string history)
    {
        var line = history.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).LastOrDefault(l => !l.StartsWith('#'));
        if (line is null) return null;
        var fields = line.Split('\t', 3);
        if (fields.Length < 2 || !uint.TryParse(fields[0], NumberStyles.None, CultureInfo.InvariantCulture, out var tli)) return null;
        try { return new RecoveryEnd(tli, Dingo.Backups.Lsn.Parse(fields[1].Trim()), newTimeline, fields.Length > 2 ? fields[2].Trim() : ""); }
        catch (FormatException) { return null; }
    }

    /// <summary>The newest history file in a pg_wal folder, parsed; null when there is none (recovery did not promote).</summary>
    public static RecoveryEnd? ReadFromPgWal(string pgWal)
    {
        var newest = Directory.Exists(pgWal)
            ? Directory.EnumerateFiles(pgWal, "*.history").Select(Path.GetFileName).Where(n => n!.Length == 16).Order(StringComparer.Ordinal).LastOrDefault()
            : null;
        if (newest is null || !uint.TryParse(newest.AsSpan(0, 8), NumberStyles.HexNumber, CultureInfo.InvariantCulture, out var tli)) return null;
        return Parse(tli, File.ReadAllText(Path.Combine(pgWal, newest)));
    }
}

public sealed record RestoreVerdict(bool Ok, string Sentence);

/// <summary>
/// Decides whether a restore reached what was asked of it. "Latest" has no target PostgreSQL could check, so
/// recovery must end on the archive's newest timeline at the archive's end there; a time target is reached when
/// PostgreSQL says it stopped at it (PostgreSQL 13+ refuses to promote when WAL ends first).
/// </summary>
public static class RestoreVerification
{
    public const ulong WalPageSize = 8192;
    private const ulong ShortPageHeader = 24;
    private const ulong LongPageHeader = 40;

    /// <param name="tailRecordEnd">where the record that starts at the recovery's end would end, as the archive holds
    /// it (null: no record starts there)</param>
    public static RestoreVerdict Decide(RestoreGoal goal, RecoveryEnd? end, ulong? tailRecordEnd)
    {
        var asked = goal.Describe();
        if (end is null)
            return new(false, $"restore of {goal.InstanceId}: PostgreSQL promoted without recording where recovery ended (no new timeline history); asked for {asked}");
        var reached = string.Create(CultureInfo.InvariantCulture, $"recovery ended at {Lsn.Format(end.Lsn)} on timeline {end.Timeline}");
        if (goal.TargetTime is not null && end.StoppedAtTarget)
            return new(true, $"{reached}, stopped at its target ({end.Reason})");
        if (goal.Problem is not null)
            return new(false, $"restore of {goal.InstanceId}: {reached}, short of {asked}: {goal.Problem}");
        if (end.Timeline != goal.Timeline)
            return new(false, $"restore of {goal.InstanceId}: {reached}, but the archive's newest timeline is {goal.Timeline} (WAL up to {Lsn.Format(goal.End)}): " +
                              "the rows written on it are missing");
        if (end.Lsn >= goal.End)
            return new(true, $"{reached}: the end of the archive");
        if (tailRecordEnd is { } tail && tail > goal.End)
            return new(true, string.Create(CultureInfo.InvariantCulture,
                $"{reached}: the end of the archive (its last {goal.End - end.Lsn} B are the start of a record still being written)"));
        return new(false, string.Create(CultureInfo.InvariantCulture,
            $"restore of {goal.InstanceId}: {reached}, {goal.End - end.Lsn} B short of {asked}: the archived WAL after that point could not be replayed (damaged or missing)"));
    }

    /// <summary>
    /// The goal from one listing of the archive: the newest timeline (by history files and WAL) and its ancestry,
    /// every segment a replay from the base backup needs, and the claim of the archiver (when known).
    /// </summary>
    /// <param name="history">the newest timeline's history: ancestor timeline → where the next one branched off</param>
    public static RestoreGoal Goal(string instanceId, ArchiveCatalog catalog, BaseBackupManifest backup, IReadOnlyDictionary<uint, ulong> history,
        ArchiveClaim? claim, DateTimeOffset? target)
    {
        var size = catalog.SegmentSize;
        var newest = catalog.Histories.Concat(catalog.Timelines()).Append(backup.Timeline).Max();
        var first = Lsn.Parse(backup.StartLsn) / size;
        var backupLast = Lsn.Parse(backup.EndLsn) / size;
        // The newest timeline's ancestry, oldest first: each timeline owns the segments from where it began (its
        // parent's switch point) to before its child began; PostgreSQL reads the child's copy of the switch segment.
        var chain = history.Where(h => h.Key < newest).OrderBy(h => h.Key).Select(h => h.Key).Append(newest).ToList();
        ulong BeginSegment(int i) => i == 0 ? 0 : history[chain[i - 1]] / size;
        var onNewest = catalog.Segments.Values.Where(s => s.Timeline == newest).Select(s => (long)s.Number)
            .Concat(catalog.Parts.Keys.Select(n => WalSegment.TryParse(n, size, out var s) && s.Timeline == newest ? (long)s.Number : -1))
            .Where(n => n >= 0).DefaultIfEmpty(-1).Max();
        string? problem = null;
        ulong end = 0;
        if (newest != backup.Timeline && onNewest >= 0 && !catalog.Histories.Contains(newest))
            problem = $"WAL of timeline {newest} is archived but not its history file, so a replay cannot follow it";
        else if (!chain.Contains(backup.Timeline))
            problem = $"base backup {backup.Label} is on timeline {backup.Timeline}, which is not in the history of the archive's newest timeline {newest}";
        else if (onNewest < 0)
            problem = newest == backup.Timeline
                ? $"the archive holds no WAL of timeline {newest} from base backup {backup.Label} on"
                : catalog.Histories.Contains(newest)
                    ? string.Create(CultureInfo.InvariantCulture, $"timeline {newest} began at {Lsn.Format(history.GetValueOrDefault(chain[^2]))} (its history file is archived) but none of its WAL is archived yet")
                    : $"the archive lacks the history file of timeline {newest}";
        else
        {
            var lastSegment = Math.Max((ulong)onNewest, BeginSegment(chain.Count - 1));
            for (var n = first; n <= lastSegment && problem is null; n++)
            {
                var i = chain.Count - 1;
                while (i > 0 && chain[i] > backup.Timeline && BeginSegment(i) > n) i--;
                var segment = new WalSegment(chain[i], n, size);
                var reach = catalog.Segments.ContainsKey(segment.Name) ? segment.End
                    : catalog.Parts.TryGetValue(segment.Name, out var pieces) ? catalog.ContiguousEnd(segment, pieces) : 0;
                if (n < lastSegment)
                {
                    // Segments inside the base backup's own WAL range come with it (pg_wal.tar).
                    if (reach < segment.End && n > backupLast)
                        problem = reach == 0
                            ? $"WAL segment {segment.Name} is missing from the archive, which holds later WAL (up to segment {new WalSegment(newest, lastSegment, size).Name})"
                            : string.Create(CultureInfo.InvariantCulture, $"WAL segment {segment.Name} is archived only up to {Lsn.Format(reach)}, and the archive holds later WAL");
                    continue;
                }
                if (reach == 0 && n > backupLast && catalog.Parts.ContainsKey(segment.Name))
                    problem = $"the start of WAL segment {segment.Name} is missing from the archive, which holds later parts of it";
                else if (catalog.Parts.TryGetValue(segment.Name, out var tail) && !catalog.Segments.ContainsKey(segment.Name) && tail.Any(p => p.From > reach))
                    problem = string.Create(CultureInfo.InvariantCulture, $"WAL segment {segment.Name} has a hole at {Lsn.Format(reach)}: the archive holds later parts of it that cannot be replayed");
                end = Math.Max(reach, segment.Start);
            }
        }
        if (problem is null && claim is not null && claim.SystemId == backup.SystemId)
        {
            var by = $"the archiver on {claim.By}{(claim.At is { } at ? $" ({at:O})" : "")}";
            if (claim.Timeline > newest)
                problem = $"{by} reports WAL of timeline {claim.Timeline}, but the archive holds nothing of that timeline";
            else if (claim.Timeline == newest && claim.ArchivedLsn > end)
                problem = string.Create(CultureInfo.InvariantCulture,
                    $"{by} reports WAL archived up to {Lsn.Format(claim.ArchivedLsn)} on timeline {newest}, but the archive holds it only up to {Lsn.Format(end)}");
        }
        return new RestoreGoal(instanceId, newest, end, target, problem);
    }

    /// <summary>
    /// Where the record starting at <paramref name="at"/> would end, from the WAL file the restore was given (page
    /// headers counted), if a record really starts there: its header must name <paramref name="previous"/> (the start
    /// of the last record replayed, PostgreSQL's "redo done at") as the record before it. Null otherwise (zeros,
    /// bytes of another branch, no file), and when the previous record is not known.
    /// </summary>
    public static ulong? RecordEndAt(string walDir, uint timeline, ulong at, ulong? previous, ulong segmentSize)
    {
        if (previous is null) return null;
        var start = at;
        if (start % WalPageSize == 0) start += start % segmentSize == 0 ? LongPageHeader : ShortPageHeader;
        var header = new byte[16];
        var got = 0;
        var pos = start;
        while (got < header.Length)
        {
            // xl_tot_len (4), xl_xid (4), xl_prev (8): the header may continue on the next page.
            if (pos % WalPageSize == 0) pos += pos % segmentSize == 0 ? LongPageHeader : ShortPageHeader;
            var segment = WalSegment.Containing(timeline, pos, segmentSize);
            var path = Path.Combine(walDir, segment.Name);
            if (!File.Exists(path)) return null;
            var take = (int)Math.Min((ulong)(header.Length - got), WalPageSize - pos % WalPageSize);
            using (var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite))
            {
                fs.Position = (long)(pos - segment.Start);
                if (fs.ReadAtLeast(header.AsSpan(got, take), take, throwOnEndOfStream: false) < take) return null;
            }
            got += take;
            pos += (ulong)take;
        }
        var total = BinaryPrimitives.ReadUInt32LittleEndian(header);
        var prev = BinaryPrimitives.ReadUInt64LittleEndian(header.AsSpan(8));
        if (total < 24 || prev != previous) return null;
        return Spread(start, total, segmentSize);
    }

    /// <summary>The start of the last record replayed, from PostgreSQL's log ("redo done at X/Y"); null when absent.</summary>
    public static ulong? RedoDoneAt(string log)
    {
        const string marker = "redo done at ";
        var i = log.LastIndexOf(marker, StringComparison.Ordinal);
        if (i < 0) return null;
        var text = new string(log.AsSpan(i + marker.Length).ToArray().TakeWhile(c => char.IsAsciiHexDigit(c) || c == '/').ToArray());
        try { return Lsn.Parse(text); }
        catch (FormatException) { return null; }
    }

    /// <summary>The end of <paramref name="length"/> bytes of one record written from <paramref name="start"/>, page headers skipped.</summary>
    internal static ulong Spread(ulong start, ulong length, ulong segmentSize)
    {
        var pos = start;
        var left = length;
        while (true)
        {
            var room = WalPageSize - pos % WalPageSize;
            if (left <= room) return pos + left;
            left -= room;
            pos += room;
            pos += pos % segmentSize == 0 ? LongPageHeader : ShortPageHeader;
        }
    }
}

/// <param name="BackupDir">base.tar (and pg_wal.tar) as pg_basebackup -Ft wrote them</param>
/// <param name="WalDir">archived WAL segments and timeline history files, by their PostgreSQL names</param>
/// <param name="TargetTime">replay commits up to this moment; null: everything archived</param>
public sealed record RestoreInput(string BackupDir, string WalDir, DateTimeOffset? TargetTime)
{
    /// <summary>What recovery must reach (from the archive's listing); the runtime checks it before the node counts as restored.</summary>
    public required RestoreGoal Goal { get; init; }
}
