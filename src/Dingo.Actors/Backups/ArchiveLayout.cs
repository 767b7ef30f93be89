using System.Globalization;
using System.Text;

namespace Dingo.Backups;

/// <summary>
/// WAL positions and segment names as PostgreSQL spells them (16 MiB segments unless the server says otherwise).
/// A segment name is TTTTTTTT (timeline) + the segment number split in two 8-digit halves.
/// </summary>
public readonly record struct WalSegment(uint Timeline, ulong Number, ulong Size)
{
    /// <summary>PostgreSQL's default (and Dingo's: nodes are initialised with it); the archiver reads the server's own.</summary>
    public const ulong DefaultSize = 16 * 1024 * 1024;

    public ulong Start => Number * Size;
    public ulong End => Start + Size;
    private ulong PerXLogId => 0x1_0000_0000UL / Size;

    public string Name => string.Create(CultureInfo.InvariantCulture, $"{Timeline:X8}{Number / PerXLogId:X8}{Number % PerXLogId:X8}");

    public static WalSegment Containing(uint timeline, ulong lsn, ulong size) => new(timeline, lsn / size, size);

    /// <summary>Parses a 24-hex-digit segment file name; false for anything else (history files, parts).</summary>
    public static bool TryParse(string name, ulong size, out WalSegment segment)
    {
        segment = default;
        if (name.Length != 24 || !name.All(char.IsAsciiHexDigit)) return false;
        var tli = uint.Parse(name.AsSpan(0, 8), NumberStyles.HexNumber, CultureInfo.InvariantCulture);
        var hi = ulong.Parse(name.AsSpan(8, 8), NumberStyles.HexNumber, CultureInfo.InvariantCulture);
        var lo = ulong.Parse(name.AsSpan(16, 8), NumberStyles.HexNumber, CultureInfo.InvariantCulture);
        var perId = 0x1_0000_0000UL / size;
        if (lo >= perId) return false;
        segment = new WalSegment(tli, hi * perId + lo, size);
        return true;
    }
}

public static class Lsn
{
    public static string Format(ulong lsn) => string.Create(CultureInfo.InvariantCulture, $"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}");

    public static ulong Parse(string text)
    {
        var slash = text.IndexOf('/', StringComparison.Ordinal);
        if (slash <= 0) throw new FormatException($"'{text}' is not a WAL position (X/Y)");
        return (ulong.Parse(text.AsSpan(0, slash), NumberStyles.HexNumber, CultureInfo.InvariantCulture) << 32)
               | ulong.Parse(text.AsSpan(slash + 1), NumberStyles.HexNumber, CultureInfo.InvariantCulture);
    }

    /// <summary>A position as 16 hex digits: sorts like the number it is.</summary>
    public static string Key(ulong lsn) => lsn.ToString("X16", CultureInfo.InvariantCulture);
}

/// <summary>
/// Where everything lives in the object store (docs/backups.md). One folder per instance, and in it one per
/// PostgreSQL system identifier, so a cluster that was initialised afresh never mixes its WAL with an older one's:
/// <code>
/// instances/{id}/systems/{sysid}/wal/{segment}                 complete 16 MiB segments
/// instances/{id}/systems/{sysid}/wal/{TTTTTTTT}.history        timeline history files
/// instances/{id}/systems/{sysid}/parts/{segment}/{from}-{to}   pieces of the segment being written (seconds old)
/// instances/{id}/systems/{sysid}/base/{label}/base.tar         base backups; backup.json is written last
/// cluster-data/instances/{id}.json                              every instance's record, for platform recovery
/// </code>
/// </summary>
public static class ArchiveLayout
{
    /// <summary>A size as PostgreSQL shows it ("16MB", "1GB", "8kB"), in bytes.</summary>
    public static ulong ParseSize(string value)
    {
        // SHOW wal_segment_size answers "16MB".
        var v = value.Trim();
        ulong unit = 1;
        if (v.EndsWith("MB", StringComparison.Ordinal)) { unit = 1024 * 1024; v = v[..^2]; }
        else if (v.EndsWith("GB", StringComparison.Ordinal)) { unit = 1024UL * 1024 * 1024; v = v[..^2]; }
        else if (v.EndsWith("kB", StringComparison.Ordinal)) { unit = 1024; v = v[..^2]; }
        return ulong.Parse(v, CultureInfo.InvariantCulture) * unit;
    }

    /// <summary>Lines "parentTLI switchpoint reason" of a timeline history file.</summary>
    public static IEnumerable<(uint Timeline, ulong End)> ParseHistory(byte[] content)
    {
        foreach (var line in Encoding.ASCII.GetString(content).Split('\n'))
        {
            var fields = line.Split((char[])['\t', ' '], StringSplitOptions.RemoveEmptyEntries);
            if (fields.Length < 2 || fields[0].StartsWith('#')) continue;
            if (!uint.TryParse(fields[0], NumberStyles.None, CultureInfo.InvariantCulture, out var tli)) continue;
            yield return (tli, Lsn.Parse(fields[1]));
        }
    }

    public static string Instance(string instanceId) => $"instances/{instanceId}/";
    public static string Systems(string instanceId) => $"{Instance(instanceId)}systems/";
    public static string System(string instanceId, ulong systemId) => $"{Systems(instanceId)}{systemId.ToString(CultureInfo.InvariantCulture)}/";
    public static string Wal(string instanceId, ulong systemId) => $"{System(instanceId, systemId)}wal/";
    public static string Segment(string instanceId, ulong systemId, WalSegment segment) => $"{Wal(instanceId, systemId)}{segment.Name}";
    public static string History(string instanceId, ulong systemId, uint timeline) =>
        string.Create(CultureInfo.InvariantCulture, $"{Wal(instanceId, systemId)}{timeline:X8}.history");
    public static string Parts(string instanceId, ulong systemId) => $"{System(instanceId, systemId)}parts/";
    public static string SegmentParts(string instanceId, ulong systemId, WalSegment segment) => $"{Parts(instanceId, systemId)}{segment.Name}/";
    public static string Part(string instanceId, ulong systemId, WalSegment segment, ulong from, ulong to) =>
        $"{SegmentParts(instanceId, systemId, segment)}{Lsn.Key(from)}-{Lsn.Key(to)}";
    public static string BaseBackups(string instanceId, ulong systemId) => $"{System(instanceId, systemId)}base/";
    public static string BaseBackup(string instanceId, ulong systemId, string label) => $"{BaseBackups(instanceId, systemId)}{label}/";

    public const string ClusterData = "cluster-data/instances/";
    public static string InstanceRecord(string instanceId) => $"{ClusterData}{instanceId}.json";

    /// <summary>Parses "…/parts/{segment}/{from}-{to}"; false for anything else.</summary>
    public static bool TryParsePart(string key, ulong segmentSize, out WalSegment segment, out ulong from, out ulong to)
    {
        segment = default;
        from = to = 0;
        var parts = key.Split('/');
        if (parts.Length < 3 || parts[^3] != "parts") return false;
        if (!WalSegment.TryParse(parts[^2], segmentSize, out segment)) return false;
        var range = parts[^1].Split('-');
        if (range.Length != 2 || range[0].Length != 16 || range[1].Length != 16) return false;
        if (!ulong.TryParse(range[0], NumberStyles.HexNumber, CultureInfo.InvariantCulture, out from)) return false;
        if (!ulong.TryParse(range[1], NumberStyles.HexNumber, CultureInfo.InvariantCulture, out to)) return false;
        return to > from && from >= segment.Start && to <= segment.End;
    }

    /// <summary>Parses "…/wal/{TTTTTTTT}.history" into the timeline.</summary>
    public static bool TryParseHistory(string key, out uint timeline)
    {
        timeline = 0;
        var name = key[(key.LastIndexOf('/') + 1)..];
        return name.Length == 16 && name.EndsWith(".history", StringComparison.Ordinal)
               && uint.TryParse(name.AsSpan(0, 8), NumberStyles.HexNumber, CultureInfo.InvariantCulture, out timeline);
    }
}
