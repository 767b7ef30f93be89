using System.Text.Json.Nodes;
using Dingo.Model;

namespace Dingo.Ha;

/// <summary>
/// What a leader's commits wait for, written into synchronous_standby_names (docs/ha.md, "What a commit waits for").
/// A pure function: the plan, the instance's `store-sync` parameter and the standbys streaming now give the setting,
/// the standbys etcd must list (the only failover candidates of a synchronous cluster) and the sentence an operator reads.
/// <list type="bullet">
/// <item>asynchronous, no store-sync: nothing ('').</item>
/// <item>cluster-ha: any one streaming standby (<c>ANY 1 ("a", "b")</c>); none streaming: nothing, as before.</item>
/// <item>store-sync: always the WAL archiver, which reports a position flushed only once the object store holds it,
/// and — with replicas — one streaming standby too (<c>FIRST 2 ("dingo_archiver", "a")</c>), so a failover to it loses no
/// acknowledged commit either. PostgreSQL 15 cannot say "the archiver and any one of these", so one standby is named:
/// the one already named while it streams, else the first by name. No standby streaming: the archiver alone.
/// The archiver is never dropped: a store that is down or slow makes commits wait, never acknowledges them early.</item>
/// </list>
/// </summary>
public static class SynchronousCommit
{
    /// <summary>The WAL archiver's application_name (WalArchiver, on the cell).</summary>
    public const string Archiver = "dingo_archiver";

    /// <summary>The provision/update parameter that turns store-synchronous commit on (a JSON boolean).</summary>
    public const string Parameter = "store-sync";

    /// <param name="Setting">synchronous_standby_names, exactly as written and as SHOW reads it back</param>
    /// <param name="Standbys">the nodes PostgreSQL may wait for (never the archiver): what etcd's sync key must contain</param>
    public sealed record Plan(string Setting, IReadOnlyList<string> Standbys, bool WaitsForStore, string Sentence);

    /// <summary>The instance asked for store-synchronous commit (parameter `store-sync`: true).</summary>
    public static bool StoreSync(InstanceRecord record)
    {
        try
        {
            return JsonNode.Parse(record.ParametersJson) is JsonObject p && p[Parameter] is JsonValue v && v.TryGetValue<bool>(out var on) && on;
        }
        catch (System.Text.Json.JsonException)
        {
            return false;
        }
    }

    /// <summary>
    /// Whether failover treats the cluster as synchronous (only a listed standby may take over): the plan says so, or
    /// store-sync names a standby beside the archiver.
    /// </summary>
    public static bool Synchronous(bool synchronousPlan, bool storeSync, int nodeCount) => synchronousPlan || storeSync && nodeCount > 1;

    /// <param name="synchronousPlan">the plan replicates synchronously (cluster-ha)</param>
    /// <param name="storeSync">the instance asked for store-synchronous commit</param>
    /// <param name="streaming">the other members streaming from this leader now</param>
    /// <param name="named">the standbys the current setting names (to keep naming the same one while it streams)</param>
    public static Plan Decide(bool synchronousPlan, bool storeSync, IReadOnlyCollection<string> streaming, IReadOnlyCollection<string> named)
    {
        var sorted = streaming.Order(StringComparer.Ordinal).ToList();
        if (!storeSync)
        {
            if (!synchronousPlan || sorted.Count == 0)
                return new Plan("", [], false, synchronousPlan ? "commits wait for no standby: none streams" : "asynchronous: commits wait for nothing");
            return new Plan($"ANY 1 ({Quoted(sorted)})", sorted, false, $"commits wait for any one of {string.Join(", ", sorted)}");
        }
        if (sorted.Count == 0)
            return new Plan($"FIRST 1 ({Quoted([Archiver])})", [], true, "commits wait for the object store (no standby streams)");
        var standby = sorted.FirstOrDefault(named.Contains) ?? sorted[0];
        return new Plan($"FIRST 2 ({Quoted([Archiver, standby])})", [standby], true, $"commits wait for the object store and for {standby}");
    }

    private static string Quoted(IEnumerable<string> names) => string.Join(", ", names.Select(n => $"\"{n}\""));

    /// <summary>The names a synchronous_standby_names value lists (without the archiver), sorted.</summary>
    public static IReadOnlyList<string> NamedStandbys(string setting)
    {
        var open = setting.IndexOf('(', StringComparison.Ordinal);
        var inner = open >= 0 ? setting[(open + 1)..setting.LastIndexOf(')')] : setting;
        return inner.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(n => n.Trim('"')).Where(n => n.Length > 0 && n != Archiver).Order(StringComparer.Ordinal).ToList();
    }
}
