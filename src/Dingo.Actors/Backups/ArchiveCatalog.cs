namespace Dingo.Backups;

/// <summary>What one system's WAL archive holds, from one listing of the store.</summary>
public sealed class ArchiveCatalog
{
    public required ulong SystemId { get; init; }
    public required ulong SegmentSize { get; init; }
    /// <summary>Complete segments, by name.</summary>
    public required IReadOnlyDictionary<string, WalSegment> Segments { get; init; }
    /// <summary>Pieces of incomplete segments: segment name → (from, to, key).</summary>
    public required IReadOnlyDictionary<string, IReadOnlyList<(ulong From, ulong To, string Key)>> Parts { get; init; }
    public required IReadOnlySet<uint> Histories { get; init; }
    public DateTimeOffset? LastWrite { get; init; }

    public static async Task<ArchiveCatalog> ReadAsync(IObjectStore store, string instanceId, ulong systemId, ulong segmentSize, CancellationToken ct)
    {
        var objects = await store.ListAsync(ArchiveLayout.System(instanceId, systemId), ct).ConfigureAwait(false);
        var segments = new Dictionary<string, WalSegment>(StringComparer.Ordinal);
        var parts = new Dictionary<string, List<(ulong, ulong, string)>>(StringComparer.Ordinal);
        var histories = new HashSet<uint>();
        DateTimeOffset? last = null;
        var walPrefix = ArchiveLayout.Wal(instanceId, systemId);
        foreach (var o in objects)
        {
            if (o.Key.StartsWith(walPrefix, StringComparison.Ordinal))
            {
                var name = o.Key[walPrefix.Length..];
                if (WalSegment.TryParse(name, segmentSize, out var seg) && (ulong)o.Size == segmentSize) segments[name] = seg;
                else if (ArchiveLayout.TryParseHistory(o.Key, out var tli)) histories.Add(tli);
                else continue;
            }
            else if (ArchiveLayout.TryParsePart(o.Key, segmentSize, out var seg, out var from, out var to))
            {
                // A piece shorter than its name says is an upload cut short (a stand-in store kept the bytes of a PUT
                // whose client died mid-body): never counted, as a segment of the wrong size is not (bench/Rpo on
                // s3rver restored such a piece's zeros and stopped 176 B short of the end it claimed).
                if ((ulong)o.Size != to - from) continue;
                if (!parts.TryGetValue(seg.Name, out var list)) parts[seg.Name] = list = [];
                list.Add((from, to, o.Key));
            }
            else continue;
            if (last is null || o.LastModified > last) last = o.LastModified;
        }
        return new ArchiveCatalog
        {
            SystemId = systemId,
            SegmentSize = segmentSize,
            Segments = segments,
            Parts = parts.ToDictionary(p => p.Key, p => (IReadOnlyList<(ulong, ulong, string)>)p.Value.OrderBy(x => x.Item1).ToList(), StringComparer.Ordinal),
            Histories = histories,
            LastWrite = last,
        };
    }

    /// <summary>The end of what is archived on <paramref name="timeline"/> (0: nothing).</summary>
    public ulong ArchivedEnd(uint timeline)
    {
        ulong end = 0;
        foreach (var s in Segments.Values) if (s.Timeline == timeline && s.End > end) end = s.End;
        foreach (var (name, list) in Parts)
        {
            if (!WalSegment.TryParse(name, SegmentSize, out var seg) || seg.Timeline != timeline) continue;
            // Only what is contiguous from the segment's first archived byte counts.
            var reach = ContiguousEnd(seg, list);
            if (reach > end) end = reach;
        }
        return end;
    }

    /// <summary>How far the pieces of one segment reach without a hole, from the segment's start (or from a full copy).</summary>
    public ulong ContiguousEnd(WalSegment segment, IReadOnlyList<(ulong From, ulong To, string Key)> pieces)
    {
        if (Segments.ContainsKey(segment.Name)) return segment.End;
        ulong reach = 0;
        foreach (var (from, to, _) in pieces.OrderBy(p => p.From))
        {
            if (reach == 0) reach = from == segment.Start ? to : 0;
            else if (from <= reach) reach = Math.Max(reach, to);
            else break;
            if (reach == 0) break;
        }
        return reach;
    }

    public IEnumerable<uint> Timelines() =>
        Segments.Values.Select(s => s.Timeline)
            .Concat(Parts.Keys.Select(n => WalSegment.TryParse(n, SegmentSize, out var s) ? s.Timeline : 0).Where(t => t != 0))
            .Distinct().Order();
}
