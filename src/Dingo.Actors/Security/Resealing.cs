using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Dingo.Backups;
using Dingo.Store;

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

    /// <summary>
    /// Re-seals every value under the store's prefix (compare-and-swap per key: a value changed meanwhile is read again,
    /// never overwritten) and every cluster-data object in <paramref name="objects"/> (when backups are on).
    /// </summary>
    public static async Task<RotationReport> RotateAsync(EtcdStore store, IObjectStore? objects, SealKeyRing ring, CancellationToken ct)
    {
        var report = new RotationReport(ring.CurrentId);
        foreach (var kv in await store.ListRawAsync(store.Keys.Root + "/", ct).ConfigureAwait(false))
        {
            var (key, value, revision, lease) = (kv.Key, kv.Value, kv.ModRevision, kv.Lease);
            report.Count(Census(value));
            for (var attempt = 0; ; attempt++)
            {
                string? resealed;
                try { resealed = Reseal(value, ring); }
                catch (SealException ex) { report.Failures.Add($"etcd {key}: {ex.Message}"); break; }
                if (resealed is null) break;
                if (await store.TransactAsync(new Txn().At(key, revision).PutString(key, resealed, lease), ct).ConfigureAwait(false))
                {
                    report.EtcdResealed++;
                    break;
                }
                // A writer changed the key since it was read: read it again, never overwrite its value.
                if (attempt >= 5) { report.Failures.Add($"etcd {key}: changed on every attempt; run the command again"); break; }
                var fresh = await store.GetRawAsync(key, ct).ConfigureAwait(false);
                if (fresh is null) break;
                (value, revision, lease) = (fresh.Value, fresh.ModRevision, fresh.Lease);
            }
        }
        if (objects is null) return report;
        foreach (var o in await objects.ListAsync(ArchiveLayout.ClusterData, ct).ConfigureAwait(false))
        {
            string value;
            using (var ms = new MemoryStream())
            {
                try { await objects.GetAsync(o.Key, ms, ct).ConfigureAwait(false); }
                catch (ObjectNotFoundException) { continue; }
                value = Encoding.UTF8.GetString(ms.ToArray());
            }
            report.Count(Census(value));
            string? resealed;
            try { resealed = Reseal(value, ring); }
            catch (SealException ex) { report.Failures.Add($"object {o.Key}: {ex.Message}"); continue; }
            if (resealed is null) continue;
            using (var ms = new MemoryStream(Encoding.UTF8.GetBytes(resealed))) await objects.PutAsync(o.Key, ms, ct).ConfigureAwait(false);
            report.ObjectsResealed++;
        }
        return report;
    }
}

/// <summary>What a rotation found (passwords by the key that sealed them before) and did.</summary>
public sealed class RotationReport(string currentKey)
{
    public string CurrentKey { get; } = currentKey;
    public Dictionary<string, int> FoundByKey { get; } = new(StringComparer.Ordinal);
    public int EtcdResealed { get; set; }
    public int ObjectsResealed { get; set; }
    public List<string> Failures { get; } = [];

    internal void Count(IReadOnlyDictionary<string, int> census)
    {
        foreach (var (id, n) in census) FoundByKey[id] = FoundByKey.GetValueOrDefault(id) + n;
    }

    public override string ToString()
    {
        var found = FoundByKey.Count == 0 ? "no password" : string.Join(", ", FoundByKey.OrderBy(f => f.Key, StringComparer.Ordinal).Select(f => $"{f.Value} sealed with {f.Key}".Replace("sealed with plain", "plain", StringComparison.Ordinal)));
        return $"found {found}; re-sealed {EtcdResealed} etcd value(s) and {ObjectsResealed} cluster-data object(s) with {CurrentKey}" +
               (Failures.Count == 0 ? "" : $"; {Failures.Count} could not be: " + string.Join("; ", Failures));
    }
}
