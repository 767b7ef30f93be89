using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Dingo.Security;

/// <summary>
/// Re-sealing stored records with the current key, as they are held (raw JSON): every credentials object
/// (<c>{"username", "password"}</c>) whose password is plain (written before sealing) or sealed with another key is
/// opened and sealed again. Used by `dingo rotate-key` and by the cluster-data backup (a stored record not sealed
/// with the current key is written again).
/// </summary>
public static class Resealing
{
    /// <summary>What a stored value holds: passwords by the key that seals them ("plain" for none).</summary>
    public static IReadOnlyDictionary<string, int> Census(string json)
    {
        var counts = new Dictionary<string, int>(StringComparer.Ordinal);
        if (Parse(json) is { } node)
            foreach (var (_, password) in CredentialObjects(node))
            {
                var id = SealKeyRing.KeyIdOf(password) ?? "plain";
                counts[id] = counts.GetValueOrDefault(id) + 1;
            }
        return counts;
    }

    /// <summary>True when a stored value holds a password that is plain or sealed with a key other than the current one.</summary>
    public static bool NeedsReseal(string json, SealKeyRing ring) =>
        Census(json).Keys.Any(id => id != ring.CurrentId);

    /// <summary>The value with every password sealed with the ring's current key; null when nothing needed it.</summary>
    /// <exception cref="SealException">a password sealed with a key the ring lacks, or altered</exception>
    public static string? Reseal(string json, SealKeyRing ring)
    {
        if (Parse(json) is not { } node) return null;
        var changed = false;
        foreach (var (obj, password) in CredentialObjects(node))
        {
            if (SealKeyRing.KeyIdOf(password) == ring.CurrentId) continue;
            var purpose = CredentialsJsonConverter.Purpose(obj["username"]!.GetValue<string>());
            obj["password"] = ring.Seal(ring.Open(password, purpose), purpose);
            changed = true;
        }
        return changed ? node.ToJsonString() : null;
    }

    private static JsonNode? Parse(string json)
    {
        try { return JsonNode.Parse(json); }
        catch (JsonException) { return null; } // not JSON (a plain string value): holds no credentials
    }

    private static List<(JsonObject Obj, string Password)> CredentialObjects(JsonNode root)
    {
        var found = new List<(JsonObject, string)>();
        var stack = new Stack<JsonNode>([root]);
        while (stack.Count > 0)
        {
            switch (stack.Pop())
            {
                case JsonObject obj:
                    if (obj["username"] is JsonValue u && u.TryGetValue<string>(out _) && obj["password"] is JsonValue p && p.TryGetValue<string>(out var password))
                        found.Add((obj, password));
                    foreach (var (_, child) in obj) if (child is not null) stack.Push(child);
                    break;
                case JsonArray array:
                    foreach (var child in array) if (child is not null) stack.Push(child);
                    break;
            }
        }
        return found;
    }
}
