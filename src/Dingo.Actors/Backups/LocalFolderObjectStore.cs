namespace Dingo.Backups;

/// <summary>
/// A folder on this host (a mounted volume, or the default &lt;data-dir&gt;/backups). Keys map to relative paths;
/// an object is written to a temporary file and renamed into place, so a reader never sees half an object.
/// </summary>
public sealed class LocalFolderObjectStore : IObjectStore
{
    private const string TempDir = ".dingo-tmp";
    private readonly string _root;

    public LocalFolderObjectStore(string folder)
    {
        if (string.IsNullOrWhiteSpace(folder)) throw new ArgumentException("a folder is required", nameof(folder));
        _root = Path.GetFullPath(folder);
    }

    public string Folder => _root;

    /// <summary>
    /// Creates each missing folder from the store's root down with mode 0700 (the mode overload applies it to the last
    /// one only); returns the folders whose entries changed (the parents of those made), to be flushed.
    /// </summary>
    private List<string> CreateFolder(string path)
    {
        var changed = new List<string>();
        if (Directory.Exists(path)) return changed;
        if (OperatingSystem.IsWindows()) { Directory.CreateDirectory(path); return changed; }
        var relative = Path.GetRelativePath(_root, path);
        var current = _root;
        foreach (var segment in relative.Split(Path.DirectorySeparatorChar))
        {
            var parent = current;
            current = Path.Combine(current, segment);
            // Another put may make it in between (mkdir then says it exists), and a delete may remove it again: either
            // way, make it until it is there.
            for (var attempt = 1; !Directory.Exists(current); attempt++)
            {
                try
                {
                    Directory.CreateDirectory(current, Dingo.Security.SecretFile.FolderMode);
                    changed.Add(parent);
                }
                catch (IOException) when (attempt < 100) { }
            }
        }
        return changed;
    }

    public string Describe() => $"local folder '{_root}'";

    private string PathOf(string key)
    {
        ObjectKeys.Validate(key);
        if (Path.IsPathRooted(key) || key.Contains('\\') || key.Contains('\0'))
            throw new ArgumentException($"object key '{key}' must be a relative path with '/' separators", nameof(key));
        var segments = key.Split('/');
        if (segments.Any(s => s is "" or "." or ".."))
            throw new ArgumentException($"object key '{key}' must not contain '..', '.' or empty path segments", nameof(key));
        if (segments[0] == TempDir) throw new ArgumentException($"object key '{key}' uses the reserved folder '{TempDir}'", nameof(key));
        var full = Path.GetFullPath(Path.Combine(_root, Path.Combine(segments)));
        if (!full.StartsWith(_root + Path.DirectorySeparatorChar, StringComparison.Ordinal))
            throw new ArgumentException($"object key '{key}' points outside the store", nameof(key));
        return full;
    }

    public async Task PutAsync(string key, Stream content, CancellationToken cancellationToken = default)
    {
        var path = PathOf(key);
        var tempDir = Path.Combine(_root, TempDir);
        CreateFolder(tempDir);
        var temp = Path.Combine(tempDir, Guid.NewGuid().ToString("N"));
        try
        {
            // Objects hold cluster data (sealed passwords) and WAL: mode 0600 from creation, in folders only the owner enters.
            var options = Dingo.Security.SecretFile.CreateNewOptions();
            options.BufferSize = 1 << 16;
            await using (var file = new FileStream(temp, options))
            {
                await content.CopyToAsync(file, cancellationToken).ConfigureAwait(false);
                await file.FlushAsync(cancellationToken).ConfigureAwait(false);
                file.Flush(flushToDisk: true);
            }
            // A delete of the folder's last object removes the emptied folder (RemoveEmptyParents): it may do so between
            // making the folder and moving into it. Then the folder is made again; each round needs that race lost again.
            for (var attempt = 1; ; attempt++)
            {
                try
                {
                    var changed = CreateFolder(Path.GetDirectoryName(path)!);
                    File.Move(temp, path, overwrite: true);
                    // Stored means stored (a store-synchronous commit is acknowledged on it): the rename, and any folder
                    // made for it, flushed too — the data alone was flushed above.
                    if (OperatingSystem.IsLinux())
                    {
                        changed.Add(Path.GetDirectoryName(path)!);
                        foreach (var dir in changed.Distinct()) Dingo.AtomicFile.FlushFolder(dir);
                    }
                    break;
                }
                catch (Exception e) when (e is DirectoryNotFoundException or FileNotFoundException && attempt < 100 && File.Exists(temp)) { }
            }
        }
        catch
        {
            File.Delete(temp);
            throw;
        }
    }

    public async Task GetAsync(string key, Stream destination, CancellationToken cancellationToken = default)
    {
        var path = PathOf(key);
        FileStream file;
        try
        {
            file = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read | FileShare.Delete, 1 << 16, useAsync: true);
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            throw new ObjectNotFoundException(key, Describe(), e);
        }
        await using (file) await file.CopyToAsync(destination, cancellationToken).ConfigureAwait(false);
    }

    public Task<bool> ExistsAsync(string key, CancellationToken cancellationToken = default) => Task.FromResult(File.Exists(PathOf(key)));

    public Task<IReadOnlyList<ObjectInfo>> ListAsync(string prefix, CancellationToken cancellationToken = default)
    {
        var result = new List<ObjectInfo>();
        if (Directory.Exists(_root))
        {
            foreach (var file in Directory.EnumerateFiles(_root, "*", new EnumerationOptions { RecurseSubdirectories = true, AttributesToSkip = 0 }))
            {
                var key = Path.GetRelativePath(_root, file).Replace(Path.DirectorySeparatorChar, '/');
                if (key.StartsWith(TempDir + "/", StringComparison.Ordinal) || !key.StartsWith(prefix, StringComparison.Ordinal)) continue;
                var info = new FileInfo(file);
                long length;
                try
                {
                    length = info.Length; // reads the file's status once; the time below comes from the same read
                }
                catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
                {
                    // Deleted between the folder's listing and this look (the archiver drops a segment's pieces once the
                    // whole segment is stored): a listing is of what is there, as an S3 or Azure listing would be.
                    continue;
                }
                result.Add(new ObjectInfo(key, length, new DateTimeOffset(info.LastWriteTimeUtc, TimeSpan.Zero)));
            }
        }
        result.Sort((a, b) => string.CompareOrdinal(a.Key, b.Key));
        return Task.FromResult<IReadOnlyList<ObjectInfo>>(result);
    }

    public Task DeleteAsync(string key, CancellationToken cancellationToken = default)
    {
        var path = PathOf(key);
        try
        {
            File.Delete(path); // no error when the file is missing
        }
        catch (DirectoryNotFoundException)
        {
            return Task.CompletedTask; // nor when its folder is
        }
        RemoveEmptyParents(Path.GetDirectoryName(path)!);
        return Task.CompletedTask;
    }

    public async Task<int> DeletePrefixAsync(string prefix, CancellationToken cancellationToken = default)
    {
        var objects = await ListAsync(prefix, cancellationToken).ConfigureAwait(false);
        foreach (var o in objects) await DeleteAsync(o.Key, cancellationToken).ConfigureAwait(false);
        return objects.Count;
    }

    private void RemoveEmptyParents(string dir)
    {
        try
        {
            while (dir.Length > _root.Length && dir.StartsWith(_root, StringComparison.Ordinal) && Directory.Exists(dir) && !Directory.EnumerateFileSystemEntries(dir).Any())
            {
                Directory.Delete(dir);
                dir = Path.GetDirectoryName(dir)!;
            }
        }
        catch (IOException) { } // a concurrent put filled it again
    }

    public async Task<StoreCheck> CheckAsync(CancellationToken cancellationToken = default)
    {
        if (!Directory.Exists(_root)) return StoreCheck.Failed($"folder '{_root}' not found");
        var probe = ObjectKeys.ProbeKey();
        var stage = "write a probe file";
        try
        {
            var bytes = Guid.NewGuid().ToByteArray();
            await PutAsync(probe, new MemoryStream(bytes), cancellationToken).ConfigureAwait(false);
            stage = "read the probe file back";
            var back = new MemoryStream();
            await GetAsync(probe, back, cancellationToken).ConfigureAwait(false);
            if (!back.ToArray().AsSpan().SequenceEqual(bytes))
                return StoreCheck.Failed($"{Describe()}: the probe file '{probe}' came back different from what was written");
            stage = "delete the probe file";
            await DeleteAsync(probe, cancellationToken).ConfigureAwait(false);
            return StoreCheck.Passed($"{Describe()}: present, probe file written, read back and deleted");
        }
        catch (UnauthorizedAccessException e)
        {
            return StoreCheck.Failed($"{Describe()}: permission denied when trying to {stage}: {e.Message}");
        }
        catch (IOException e)
        {
            return StoreCheck.Failed($"{Describe()}: could not {stage}: {e.Message}");
        }
    }
}
