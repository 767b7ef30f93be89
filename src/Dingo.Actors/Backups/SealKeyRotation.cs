using System.Text;
using Dingo.Security;
using Dingo.Store;

namespace Dingo.Backups;

/// <summary>
/// `dingo rotate-key`: every sealed record in etcd and every cluster-data object in the backups sealed again with the
/// current key (<see cref="Resealing"/> decides what each value needs).
/// </summary>
public static class SealKeyRotation
{
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
            report.Count(Resealing.Census(value));
            for (var attempt = 0; ; attempt++)
            {
                string? resealed;
                try { resealed = Resealing.Reseal(value, ring); }
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
            report.Count(Resealing.Census(value));
            string? resealed;
            try { resealed = Resealing.Reseal(value, ring); }
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
