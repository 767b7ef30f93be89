using System.Security.Cryptography;
using Dingo.Cells;
using Microsoft.Extensions.Logging;

namespace Dingo.Backups;

/// <summary>
/// Fetches what a restore needs from the store into local folders: the chosen base backup's files (checked against
/// their SHA-256) and every WAL segment from its start on, incomplete segments assembled from their pieces.
/// </summary>
public sealed class ArchiveRestore(IObjectStore store, ILogger logger)
{
    public sealed record Prepared(RestoreInput Input, BaseBackupManifest Backup, int Segments, DateTimeOffset? ArchiveEnd)
    {
        public RestoreGoal Goal => Input.Goal;
    }

    /// <summary>The newest complete base backup finished no later than <paramref name="target"/> (any, without one).</summary>
    public async Task<BaseBackupManifest> ChooseAsync(string instanceId, DateTimeOffset? target, CancellationToken ct)
    {
        var backups = await new BaseBackups(store, logger).ListAsync(instanceId, ct).ConfigureAwait(false);
        if (backups.Count == 0) throw new RestoreException($"instance {instanceId} has no base backup in {store.Describe()}");
        if (target is null) return backups[^1];
        return backups.LastOrDefault(b => b.FinishedAt <= target)
               ?? throw new RestoreException($"no base backup of instance {instanceId} finished before {target:O}; the oldest finished at {backups[0].FinishedAt:O}");
    }

    /// <summary>
    /// Downloads what the restore needs and says what it must reach (<see cref="RestoreGoal"/>). A restore to the
    /// latest state that the archive already cannot give (a missing segment, less stored than the archiver claimed)
    /// is refused here with the reason; a point-in-time restore is judged by where its recovery stops.
    /// </summary>
    /// <param name="claim">what the archiver last said it stored, read before the listing (so the listing holds all of it)</param>
    public async Task<Prepared> PrepareAsync(string instanceId, DateTimeOffset? target, string dir, CancellationToken ct, ArchiveClaim? claim = null)
    {
        var backup = await ChooseAsync(instanceId, target, ct).ConfigureAwait(false);
        if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
        var baseDir = Path.Combine(dir, "base");
        var walDir = Path.Combine(dir, "wal");
        Directory.CreateDirectory(baseDir);
        Directory.CreateDirectory(walDir);
        var prefix = ArchiveLayout.BaseBackup(instanceId, backup.SystemId, backup.Label);
        foreach (var file in backup.Files)
        {
            var path = Path.Combine(baseDir, Path.GetFileName(file.Name));
            await using (var fs = File.Create(path)) await store.GetAsync(prefix + file.Name, fs, ct).ConfigureAwait(false);
            string sha;
            await using (var fs = File.OpenRead(path)) sha = Convert.ToHexStringLower(await SHA256.HashDataAsync(fs, ct).ConfigureAwait(false));
            if (sha != file.Sha256) throw new RestoreException($"base backup {backup.Label} of {instanceId}: {file.Name} does not match its checksum (the store returned damaged data)");
        }

        const ulong size = WalSegment.DefaultSize;
        var catalog = await ArchiveCatalog.ReadAsync(store, instanceId, backup.SystemId, size, ct).ConfigureAwait(false);
        var first = WalSegment.Containing(backup.Timeline, Lsn.Parse(backup.StartLsn), size).Number;
        var count = 0;
        foreach (var tli in catalog.Histories)
        {
            await using var fs = File.Create(Path.Combine(walDir, $"{tli:X8}.history"));
            await store.GetAsync(ArchiveLayout.History(instanceId, backup.SystemId, tli), fs, ct).ConfigureAwait(false);
        }
        var newest = catalog.Histories.DefaultIfEmpty(0u).Max();
        var history = newest == 0 ? new Dictionary<uint, ulong>()
            : ArchiveLayout.ParseHistory(await File.ReadAllBytesAsync(Path.Combine(walDir, $"{newest:X8}.history"), ct).ConfigureAwait(false))
                .GroupBy(h => h.Timeline).ToDictionary(g => g.Key, g => g.Last().End);
        var goal = RestoreVerification.Goal(instanceId, catalog, backup, history, claim, target);
        if (target is null && goal.Problem is not null)
            throw new RestoreException($"restore of {instanceId} to its latest state refused: {goal.Problem}");
        foreach (var segment in catalog.Segments.Values.Where(s => s.Number >= first))
        {
            await using var fs = File.Create(Path.Combine(walDir, segment.Name));
            await store.GetAsync(ArchiveLayout.Segment(instanceId, backup.SystemId, segment), fs, ct).ConfigureAwait(false);
            count++;
        }
        foreach (var (name, pieces) in catalog.Parts)
        {
            if (catalog.Segments.ContainsKey(name) || !WalSegment.TryParse(name, size, out var segment) || segment.Number < first) continue;
            // An incomplete segment: its pieces at their offsets, zeros after (PostgreSQL reads up to the first empty record).
            var bytes = new byte[size];
            var reach = catalog.ContiguousEnd(segment, pieces);
            foreach (var (from, to, key) in pieces)
            {
                if (from >= reach && reach != 0) break;
                using var ms = new MemoryStream();
                await store.GetAsync(key, ms, ct).ConfigureAwait(false);
                var data = ms.ToArray();
                data.AsSpan(0, (int)Math.Min((ulong)data.Length, to - from)).CopyTo(bytes.AsSpan((int)(from - segment.Start)));
            }
            await File.WriteAllBytesAsync(Path.Combine(walDir, name), bytes, ct).ConfigureAwait(false);
            count++;
        }
        logger.LogInformation("restore of {Instance}: base backup {Label} ({Finished:O}), {Count} WAL segments, target {Target}, must reach {Goal}{Problem}",
            instanceId, backup.Label, backup.FinishedAt, count, target?.ToString("O") ?? "latest", goal.Describe(), goal.Problem is null ? "" : $" (archive problem: {goal.Problem})");
        return new Prepared(new RestoreInput(baseDir, walDir, target) { Goal = goal }, backup, count, catalog.LastWrite);
    }
}

public sealed class RestoreException(string message) : Exception(message);
