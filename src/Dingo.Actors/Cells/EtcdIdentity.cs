using System.Globalization;
using System.Text.Json;
using Dingo.Model;

namespace Dingo.Cells;

/// <summary>
/// Which etcd a cell placed its data from, remembered in its data folder (`etcd-identity.json`): the etcd cluster id,
/// the key prefix, and the platform id stored under that prefix. The cluster id alone does not tell an empty etcd from
/// the old one (etcd derives it from its configuration, so a wiped etcd started with the same flags has the same id);
/// the platform id, created once in etcd, does.
/// </summary>
public sealed record EtcdIdentity
{
    public const string FileName = "etcd-identity.json";

    /// <summary>etcd's cluster id, 16 hex digits.</summary>
    public required string ClusterId { get; init; }
    public required string Prefix { get; init; }
    public required string PlatformId { get; init; }
    public DateTimeOffset RecordedAt { get; init; }

    /// <summary>The platform id from the raw value of its key (a JSON string; anything else is taken as it is).</summary>
    public static string? PlatformIdOf(string? raw)
    {
        if (raw is null) return null;
        try { return JsonSerializer.Deserialize<string>(raw, Json.Options) ?? raw; }
        catch (JsonException) { return raw; }
    }

    public static string Hex(ulong clusterId) => clusterId.ToString("x16", CultureInfo.InvariantCulture);

    /// <summary>
    /// Null when the etcd seen now is the one recorded; else the sentence an operator reads in `dingo status`.
    /// </summary>
    /// <param name="platformId">the platform id in the etcd seen now; null when that etcd has none (empty or wiped)</param>
    /// <param name="file">where the record is, so the sentence can say how to accept a new etcd</param>
    public static string? Mismatch(EtcdIdentity recorded, string clusterId, string prefix, string? platformId, string file)
    {
        if (recorded.ClusterId == clusterId && recorded.Prefix == prefix && recorded.PlatformId == platformId) return null;
        var differences = new List<string>();
        if (recorded.ClusterId != clusterId) differences.Add($"etcd cluster {clusterId}, not {recorded.ClusterId}");
        if (recorded.Prefix != prefix) differences.Add($"key prefix {prefix}, not {recorded.Prefix}");
        if (platformId is null) differences.Add($"no platform id under {prefix} (an empty or wiped etcd), not {recorded.PlatformId}");
        else if (recorded.PlatformId != platformId) differences.Add($"platform id {platformId}, not {recorded.PlatformId}");
        return $"etcd is not the one this cell placed its data from ({string.Join("; ", differences)}): deleting nothing and taking no new node. " +
               $"If this etcd is the right one (restored from a snapshot, say), remove {file} on this host and the cell records it";
    }

    /// <summary>The recorded identity; null when none is recorded. A file that cannot be read throws with its path.</summary>
    public static EtcdIdentity? Load(string file)
    {
        if (!File.Exists(file)) return null;
        try
        {
            return JsonSerializer.Deserialize<EtcdIdentity>(File.ReadAllText(file), Json.Options)
                   ?? throw new InvalidDataException("it holds null");
        }
        catch (Exception ex) when (ex is JsonException or InvalidDataException or IOException or UnauthorizedAccessException)
        {
            throw new InvalidDataException($"cannot read {file} (which etcd this cell placed its data from): {ex.Message}; deleting nothing", ex);
        }
    }

    [System.Runtime.Versioning.SupportedOSPlatform("linux")]
    public Task SaveAsync(string file, CancellationToken ct) => AtomicFile.WriteAsync(file, JsonSerializer.Serialize(this, Json.Options) + "\n", ct);
}
