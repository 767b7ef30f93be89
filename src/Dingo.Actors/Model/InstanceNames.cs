using System.Text.Json;
using System.Text.Json.Nodes;

namespace Dingo.Model;

/// <summary>The name Cloud Foundry gave an instance (`context.instance_name`), which operators type more readily than its id.</summary>
public static class InstanceNames
{
    /// <summary>The instance's name as Cloud Foundry sent it; null when there is none (or the context is not JSON).</summary>
    public static string? Of(InstanceRecord record)
    {
        ArgumentNullException.ThrowIfNull(record);
        try { return (JsonNode.Parse(record.ContextJson) as JsonObject)?["instance_name"]?.GetValue<string>(); }
        catch (Exception ex) when (ex is JsonException or InvalidOperationException) { return null; }
    }

    /// <summary>
    /// The instance an operator means by <paramref name="given"/>: an id as it is; otherwise the one instance whose name it
    /// is. Null with a reason when several instances carry that name (ids listed). A name nobody carries comes back as
    /// given, so the command reports "no such instance" as it would for an id.
    /// </summary>
    public static (string? Id, string? Problem) Resolve(string given, IEnumerable<InstanceRecord> instances)
    {
        ArgumentNullException.ThrowIfNull(given);
        var all = instances.ToList();
        if (all.Any(i => i.Id == given)) return (given, null);
        var named = all.Where(i => Of(i) == given).Select(i => i.Id).Order(StringComparer.Ordinal).ToList();
        return named.Count switch
        {
            0 => (given, null),
            1 => (named[0], null),
            _ => (null, $"{named.Count} instances are named '{given}' ({string.Join(", ", named)}): give the id"),
        };
    }
}
