using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using System.Text.Json;
using Dingo.Model;
using Microsoft.Extensions.Logging;

namespace Dingo.Backups;

/// <summary>backup.json: written after every file of a base backup is stored, so its presence proves the backup complete.</summary>
public sealed record BaseBackupManifest
{
    public required string Label { get; init; }
    public required string InstanceId { get; init; }
    public required ulong SystemId { get; init; }
    public required uint Timeline { get; init; }
    public required string StartLsn { get; init; }
    public required string EndLsn { get; init; }
    public required DateTimeOffset StartedAt { get; init; }
    /// <summary>The backup is consistent at EndLsn, which was written no later than this.</summary>
    public required DateTimeOffset FinishedAt { get; init; }
    public required string Source { get; init; }
    public required IReadOnlyList<BackupFile> Files { get; init; }
    public long Bytes => Files.Sum(f => f.Size);
}

public sealed record BackupFile(string Name, long Size, string Sha256);

/// <summary>Base backups of one instance: take one (pg_basebackup from a replica or the leader), list them, keep the newest N.</summary>
public sealed class BaseBackups(IObjectStore store, ILogger logger)
{
    public const string ManifestName = "backup.json";

    /// <summary>Every complete base backup of the instance, all systems, oldest first.</summary>
    public async Task<IReadOnlyList<BaseBackupManifest>> ListAsync(string instanceId, CancellationToken ct)
    {
        var objects = await store.ListAsync(ArchiveLayout.Systems(instanceId), ct).ConfigureAwait(false);
        var list = new List<BaseBackupManifest>();
        foreach (var o in objects.Where(o => o.Key.EndsWith("/" + ManifestName, StringComparison.Ordinal) && o.Key.Contains("/base/", StringComparison.Ordinal)))
        {
            using var ms = new MemoryStream();
            try { await store.GetAsync(o.Key, ms, ct).ConfigureAwait(false); }
            catch (ObjectNotFoundException) { continue; } // deleted by retention meanwhile
            list.Add(JsonSerializer.Deserialize<BaseBackupManifest>(ms.ToArray(), Json.Options) ?? throw new InvalidDataException($"{o.Key} is empty"));
        }
        return list.OrderBy(b => b.FinishedAt).ToList();
    }

    /// <summary>
    /// Runs pg_basebackup against <paramref name="source"/> into <paramref name="workDir"/> (tar format, WAL streamed
    /// alongside) and stores the files, then the manifest. The local copy is deleted whatever happens.
    /// </summary>
    /// <param name="caFingerprint">the platform CA's (SHA-256 of its certificate): whose client certificate goes along</param>
    public async Task<BaseBackupManifest> TakeAsync(string instanceId, ulong systemId, string sourceName, string host, int port, Credentials credentials,
        string postgresBin, string workDir, string? caFingerprint, CancellationToken ct)
    {
        var started = DateTimeOffset.UtcNow;
        var label = started.ToString("yyyyMMdd'T'HHmmssfff'Z'", CultureInfo.InvariantCulture);
        var dir = Path.Combine(workDir, $"{instanceId}-{label}");
        if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
        Directory.CreateDirectory(workDir);
        var passfile = Path.Combine(workDir, $".pgpass-{Guid.NewGuid():N}");
        // Nodes with require-tls ask the platform's roles for a client certificate of the platform CA: this process's
        // identity goes along whenever it has one (files 0600 from creation, deleted with the passfile). Where this
        // process requires TLS, the node's certificate is also checked for its host (verify-full), as replication does.
        var required = Dingo.Postgres.PlatformConnectionTls.Required;
        var tls = Dingo.Postgres.PlatformConnectionTls.Libpq(caFingerprint);
        if (required && tls is null)
            throw new InvalidOperationException("TLS is required and this cell has not read the platform CA yet: no client certificate to take a base backup with");
        var tlsFiles = tls is null ? [] : new[] { ".root", ".crt", ".key" }.Select(e => Path.Combine(workDir, $".tls-{Guid.NewGuid():N}{e}")).ToArray();
        await Dingo.Security.SecretFile.WriteAsync(passfile, $"*:*:*:{credentials.Username}:{credentials.Password}\n", ct).ConfigureAwait(false);
        try
        {
            if (tls is not null)
            {
                await Dingo.Security.SecretFile.WriteAsync(tlsFiles[0], tls.CasPem, ct).ConfigureAwait(false);
                await Dingo.Security.SecretFile.WriteAsync(tlsFiles[1], tls.CertificatePem, ct).ConfigureAwait(false);
                await Dingo.Security.SecretFile.WriteAsync(tlsFiles[2], tls.KeyPem, ct).ConfigureAwait(false);
            }
            var psi = new ProcessStartInfo(Path.Combine(postgresBin, "pg_basebackup"))
            {
                UseShellExecute = false,
                RedirectStandardError = true,
                RedirectStandardOutput = true,
            };
            foreach (var a in new[] { "-h", host, "-p", port.ToString(CultureInfo.InvariantCulture), "-U", credentials.Username, "-D", dir,
                         "-F", "t", "-X", "stream", "-c", "fast", "-w", "--no-sync", "-l", $"dingo {label}" })
                psi.ArgumentList.Add(a);
            foreach (var name in new[] { "PGDATA", "PGPORT", "PGHOST", "PGUSER", "PGPASSWORD", "PGOPTIONS", "PGSSLMODE", "PGSSLROOTCERT", "PGSSLCERT", "PGSSLKEY" })
                psi.Environment.Remove(name);
            psi.Environment["PGPASSFILE"] = passfile;
            if (tls is not null)
            {
                psi.Environment["PGSSLMODE"] = required ? "verify-full" : "prefer";
                // libpq checks the chain whenever a root file is given: only where TLS is required, as before otherwise.
                if (required) psi.Environment["PGSSLROOTCERT"] = tlsFiles[0];
                psi.Environment["PGSSLCERT"] = tlsFiles[1];
                psi.Environment["PGSSLKEY"] = tlsFiles[2];
            }
            using var process = Process.Start(psi) ?? throw new InvalidOperationException("could not start pg_basebackup");
            var stderr = process.StandardError.ReadToEndAsync(ct);
            var stdout = process.StandardOutput.ReadToEndAsync(ct);
            try { await process.WaitForExitAsync(ct).ConfigureAwait(false); }
            catch (OperationCanceledException) { ProcessTree.Kill(process); throw; }
            await stdout.ConfigureAwait(false);
            if (process.ExitCode != 0)
                throw new InvalidOperationException($"pg_basebackup from {sourceName} failed (exit {process.ExitCode}): {(await stderr.ConfigureAwait(false)).Trim()}");

            var (tli, startLsn, endLsn) = ReadWalRange(Path.Combine(dir, "backup_manifest"));
            var prefix = ArchiveLayout.BaseBackup(instanceId, systemId, label);
            var files = new List<BackupFile>();
            foreach (var file in Directory.EnumerateFiles(dir).Order(StringComparer.Ordinal))
            {
                var name = Path.GetFileName(file);
                string sha;
                await using (var fs = File.OpenRead(file)) sha = Convert.ToHexStringLower(await SHA256.HashDataAsync(fs, ct).ConfigureAwait(false));
                await using (var fs = File.OpenRead(file)) await store.PutAsync(prefix + name, fs, ct).ConfigureAwait(false);
                files.Add(new BackupFile(name, new FileInfo(file).Length, sha));
            }
            var manifest = new BaseBackupManifest
            {
                Label = label, InstanceId = instanceId, SystemId = systemId, Timeline = tli,
                StartLsn = Lsn.Format(startLsn), EndLsn = Lsn.Format(endLsn),
                StartedAt = started, FinishedAt = DateTimeOffset.UtcNow, Source = sourceName, Files = files,
            };
            using (var ms = new MemoryStream(JsonSerializer.SerializeToUtf8Bytes(manifest, Json.Options)))
                await store.PutAsync(prefix + ManifestName, ms, ct).ConfigureAwait(false);
            logger.LogInformation("base backup {Label} of {Instance} from {Source}: {MiB:0.0} MiB, WAL {Start}..{End} on timeline {Timeline}",
                label, instanceId, sourceName, manifest.Bytes / 1048576.0, manifest.StartLsn, manifest.EndLsn, tli);
            return manifest;
        }
        finally
        {
            File.Delete(passfile);
            foreach (var file in tlsFiles) File.Delete(file);
            if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>The backup's WAL range from PostgreSQL's backup_manifest ("WAL-Ranges").</summary>
    internal static (uint Timeline, ulong Start, ulong End) ReadWalRange(string manifestPath)
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(manifestPath));
        var ranges = doc.RootElement.GetProperty("WAL-Ranges").EnumerateArray().ToList();
        if (ranges.Count == 0) throw new InvalidDataException("backup_manifest has no WAL range");
        var start = ranges.Min(r => Lsn.Parse(r.GetProperty("Start-LSN").GetString()!));
        var last = ranges.MaxBy(r => Lsn.Parse(r.GetProperty("End-LSN").GetString()!));
        return ((uint)last.GetProperty("Timeline").GetInt32(), start, Lsn.Parse(last.GetProperty("End-LSN").GetString()!));
    }

    /// <summary>
    /// Keeps the newest <paramref name="keep"/> base backups and the WAL they need; deletes older backups, WAL from
    /// before the oldest kept one, and systems left with nothing. Returns what it deleted, for the log.
    /// </summary>
    public async Task<int> ApplyRetentionAsync(string instanceId, int keep, CancellationToken ct)
    {
        var backups = await ListAsync(instanceId, ct).ConfigureAwait(false);
        if (backups.Count <= keep || keep < 1) return 0;
        var kept = backups.TakeLast(keep).ToList();
        var deleted = 0;
        foreach (var old in backups.SkipLast(keep))
        {
            // The manifest goes first: a half-deleted backup must never look complete.
            var prefix = ArchiveLayout.BaseBackup(instanceId, old.SystemId, old.Label);
            await store.DeleteAsync(prefix + ManifestName, ct).ConfigureAwait(false);
            deleted += await store.DeletePrefixAsync(prefix, ct).ConfigureAwait(false) + 1;
        }
        var oldest = kept[0];
        var keptSystems = kept.Select(k => k.SystemId).ToHashSet();
        // A system whose every backup is now gone goes with them; one that never had a backup (just initialised) stays.
        var hadBackups = backups.Select(b => b.SystemId).ToHashSet();
        var objects = await store.ListAsync(ArchiveLayout.Systems(instanceId), ct).ConfigureAwait(false);
        const ulong size = WalSegment.DefaultSize;
        var firstNeeded = WalSegment.Containing(oldest.Timeline, Lsn.Parse(oldest.StartLsn), size).Number;
        foreach (var o in objects)
        {
            var rest = o.Key[ArchiveLayout.Systems(instanceId).Length..];
            var sysText = rest[..rest.IndexOf('/', StringComparison.Ordinal)];
            if (!ulong.TryParse(sysText, NumberStyles.None, CultureInfo.InvariantCulture, out var sys)) continue;
            var drop = false;
            if (hadBackups.Contains(sys) && !keptSystems.Contains(sys)) drop = true;
            else if (sys == oldest.SystemId)
            {
                var name = o.Key[(o.Key.LastIndexOf('/') + 1)..];
                if (WalSegment.TryParse(name, size, out var seg) && o.Key.Contains("/wal/", StringComparison.Ordinal)) drop = seg.Number < firstNeeded;
                else if (ArchiveLayout.TryParsePart(o.Key, size, out var pseg, out _, out _)) drop = pseg.Number < firstNeeded;
            }
            if (!drop) continue;
            await store.DeleteAsync(o.Key, ct).ConfigureAwait(false);
            deleted++;
        }
        logger.LogInformation("retention for {Instance}: kept {Kept} base backups, deleted {Deleted} objects", instanceId, kept.Count, deleted);
        return deleted;
    }
}
