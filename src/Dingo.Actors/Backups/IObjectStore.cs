namespace Dingo.Backups;

/// <summary>
/// Where WAL archives and base backups live: an S3 bucket, an Azure Blob container or a local folder.
/// Keys use '/' as separator ("instance-1/wal/000000010000000000000001").
/// </summary>
public interface IObjectStore
{
    /// <summary>Stores <paramref name="content"/> under <paramref name="key"/>, replacing an object already there.</summary>
    Task PutAsync(string key, Stream content, CancellationToken cancellationToken = default);

    /// <summary>Copies the object into <paramref name="destination"/>. Throws <see cref="ObjectNotFoundException"/> when it does not exist.</summary>
    Task GetAsync(string key, Stream destination, CancellationToken cancellationToken = default);

    Task<bool> ExistsAsync(string key, CancellationToken cancellationToken = default);

    /// <summary>Every object whose key starts with <paramref name="prefix"/> (all pages), ordered by key.</summary>
    Task<IReadOnlyList<ObjectInfo>> ListAsync(string prefix, CancellationToken cancellationToken = default);

    /// <summary>Deletes the object; deleting a missing object is not an error.</summary>
    Task DeleteAsync(string key, CancellationToken cancellationToken = default);

    /// <summary>Deletes every object whose key starts with <paramref name="prefix"/>; returns how many.</summary>
    Task<int> DeletePrefixAsync(string prefix, CancellationToken cancellationToken = default);

    /// <summary>
    /// The original's "fog-check": endpoint reachable, credentials accepted, bucket/container present, and a probe
    /// object can be written, read back and deleted. Never throws for a store problem; never names a secret.
    /// </summary>
    Task<StoreCheck> CheckAsync(CancellationToken cancellationToken = default);

    /// <summary>Kind, endpoint and bucket/container/folder, for logs. No credentials.</summary>
    string Describe();
}

public sealed record ObjectInfo(string Key, long Size, DateTimeOffset LastModified);

public sealed record StoreCheck(bool Ok, string Detail)
{
    public static StoreCheck Passed(string detail) => new(true, detail);
    public static StoreCheck Failed(string detail) => new(false, detail);
}

public sealed class ObjectNotFoundException : Exception
{
    public ObjectNotFoundException(string key, string store, Exception? inner = null)
        : base($"object '{key}' not found in {store}", inner)
    {
        Key = key;
        Store = store;
    }

    public string Key { get; }
    public string Store { get; }
}

internal static class ObjectKeys
{
    /// <summary>A probe key for CheckAsync, under a prefix of its own.</summary>
    public static string ProbeKey() => $".dingo-check/{Guid.NewGuid():N}";

    public static void Validate(string key, string paramName = "key")
    {
        if (string.IsNullOrEmpty(key)) throw new ArgumentException("an object key must not be empty", paramName);
        if (key.StartsWith('/')) throw new ArgumentException($"object key '{key}' must not start with '/'", paramName);
    }

    /// <summary>Reads until <paramref name="buffer"/> is full or the stream ends; returns the bytes read.</summary>
    public static async Task<int> FillAsync(Stream stream, byte[] buffer, CancellationToken ct)
    {
        var total = 0;
        while (total < buffer.Length)
        {
            var n = await stream.ReadAsync(buffer.AsMemory(total), ct).ConfigureAwait(false);
            if (n == 0) break;
            total += n;
        }
        return total;
    }

    /// <summary>True when <paramref name="e"/> or an inner exception is a network failure (refused, unresolvable, timed out).</summary>
    public static bool IsUnreachable(Exception e)
    {
        for (var x = e; x is not null; x = x.InnerException)
            if (x is HttpRequestException or System.Net.Sockets.SocketException or TaskCanceledException or TimeoutException) return true;
        return false;
    }
}
