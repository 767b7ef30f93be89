using Azure;
using Azure.Storage;
using Azure.Storage.Blobs;
using Azure.Storage.Blobs.Models;

namespace Dingo.Backups;

/// <summary>An Azure Blob Storage container (or azurite), reached by connection string or by account URL + shared key.</summary>
public sealed class AzureBlobObjectStore : IObjectStore
{
    private readonly BlobContainerClient _container;
    private readonly string _endpoint;
    private readonly int _pageSize;

    private AzureBlobObjectStore(BlobServiceClient service, string container, int listPageSize)
    {
        if (string.IsNullOrWhiteSpace(container)) throw new ArgumentException("an Azure Blob container name is required", nameof(container));
        if (listPageSize is < 1 or > 5000) throw new ArgumentOutOfRangeException(nameof(listPageSize), listPageSize, "must be 1-5000");
        _container = service.GetBlobContainerClient(container);
        // Never the query: a SAS token would be a secret.
        _endpoint = service.Uri.GetLeftPart(UriPartial.Path).TrimEnd('/');
        _pageSize = listPageSize;
    }

    public static AzureBlobObjectStore FromConnectionString(string connectionString, string container, int listPageSize = 5000, int maxRetries = 3)
    {
        if (string.IsNullOrWhiteSpace(connectionString)) throw new ArgumentException("an Azure Storage connection string is required", nameof(connectionString));
        BlobServiceClient service;
        try
        {
            service = new BlobServiceClient(connectionString, Options(maxRetries));
        }
        catch (FormatException)
        {
            // The exception text may quote the connection string; do not pass it on.
            throw new ArgumentException("the Azure Storage connection string is malformed", nameof(connectionString));
        }
        return new AzureBlobObjectStore(service, container, listPageSize);
    }

    public static AzureBlobObjectStore FromAccountKey(string accountUrl, string accountName, string accountKey, string container, int listPageSize = 5000, int maxRetries = 3)
    {
        if (!Uri.TryCreate(accountUrl, UriKind.Absolute, out var uri)) throw new ArgumentException($"Azure account URL '{accountUrl}' is not an absolute URL", nameof(accountUrl));
        if (string.IsNullOrWhiteSpace(accountName)) throw new ArgumentException("an Azure Storage account name is required", nameof(accountName));
        StorageSharedKeyCredential credential;
        try
        {
            credential = new StorageSharedKeyCredential(accountName, accountKey);
        }
        catch (FormatException)
        {
            throw new ArgumentException("the Azure Storage account key is not valid base64", nameof(accountKey));
        }
        return new AzureBlobObjectStore(new BlobServiceClient(uri, credential, Options(maxRetries)), container, listPageSize);
    }

    private static BlobClientOptions Options(int maxRetries)
    {
        // Pinned: azurite answers only the service versions it knows; this one it does (3.37).
        var options = new BlobClientOptions(BlobClientOptions.ServiceVersion.V2026_06_06);
        options.Retry.MaxRetries = maxRetries;
        options.Retry.Delay = TimeSpan.FromMilliseconds(200);
        options.Retry.NetworkTimeout = TimeSpan.FromMinutes(2);
        return options;
    }

    public string Describe() => $"azure {_endpoint} container '{_container.Name}'";

    public async Task PutAsync(string key, Stream content, CancellationToken cancellationToken = default)
    {
        ObjectKeys.Validate(key);
        await _container.GetBlobClient(key).UploadAsync(content, new BlobUploadOptions(), cancellationToken).ConfigureAwait(false);
    }

    public async Task GetAsync(string key, Stream destination, CancellationToken cancellationToken = default)
    {
        ObjectKeys.Validate(key);
        try
        {
            await _container.GetBlobClient(key).DownloadToAsync(destination, cancellationToken).ConfigureAwait(false);
        }
        catch (RequestFailedException e) when (e.ErrorCode == BlobErrorCode.BlobNotFound)
        {
            throw new ObjectNotFoundException(key, Describe(), e);
        }
    }

    public async Task<bool> ExistsAsync(string key, CancellationToken cancellationToken = default)
    {
        ObjectKeys.Validate(key);
        return (await _container.GetBlobClient(key).ExistsAsync(cancellationToken).ConfigureAwait(false)).Value;
    }

    public async Task<IReadOnlyList<ObjectInfo>> ListAsync(string prefix, CancellationToken cancellationToken = default)
    {
        var result = new List<ObjectInfo>();
        var pages = _container.GetBlobsAsync(new GetBlobsOptions { Prefix = string.IsNullOrEmpty(prefix) ? null : prefix }, cancellationToken)
            .AsPages(pageSizeHint: _pageSize);
        await foreach (var page in pages.ConfigureAwait(false))
            foreach (var b in page.Values)
                result.Add(new ObjectInfo(b.Name, b.Properties.ContentLength ?? 0, b.Properties.LastModified ?? default));
        result.Sort((a, b) => string.CompareOrdinal(a.Key, b.Key));
        return result;
    }

    public async Task DeleteAsync(string key, CancellationToken cancellationToken = default)
    {
        ObjectKeys.Validate(key);
        await _container.GetBlobClient(key).DeleteIfExistsAsync(DeleteSnapshotsOption.IncludeSnapshots, cancellationToken: cancellationToken).ConfigureAwait(false);
    }

    public async Task<int> DeletePrefixAsync(string prefix, CancellationToken cancellationToken = default)
    {
        var objects = await ListAsync(prefix, cancellationToken).ConfigureAwait(false);
        foreach (var o in objects) await DeleteAsync(o.Key, cancellationToken).ConfigureAwait(false);
        return objects.Count;
    }

    public async Task<StoreCheck> CheckAsync(CancellationToken cancellationToken = default)
    {
        var stage = "read the container's properties";
        try
        {
            await _container.GetPropertiesAsync(cancellationToken: cancellationToken).ConfigureAwait(false);
            var probe = ObjectKeys.ProbeKey();
            var bytes = Guid.NewGuid().ToByteArray();
            stage = "write a probe blob";
            await PutAsync(probe, new MemoryStream(bytes), cancellationToken).ConfigureAwait(false);
            stage = "read the probe blob back";
            var back = new MemoryStream();
            await GetAsync(probe, back, cancellationToken).ConfigureAwait(false);
            if (!back.ToArray().AsSpan().SequenceEqual(bytes))
                return StoreCheck.Failed($"{Describe()}: the probe blob '{probe}' came back different from what was written ({back.Length} bytes instead of {bytes.Length})");
            stage = "delete the probe blob";
            await DeleteAsync(probe, cancellationToken).ConfigureAwait(false);
            return StoreCheck.Passed($"{Describe()}: reachable, credentials accepted, container present, probe blob written, read back and deleted");
        }
        catch (RequestFailedException e) when (e.ErrorCode == BlobErrorCode.ContainerNotFound || (e.Status == 404 && stage.StartsWith("read the container")))
        {
            return StoreCheck.Failed($"container '{_container.Name}' not found at {_endpoint}");
        }
        catch (RequestFailedException e) when (e.ErrorCode == BlobErrorCode.AuthenticationFailed || e.ErrorCode == "InvalidAuthenticationInfo"
                                               || (e.Status == 403 && stage.StartsWith("read the container")))
        {
            return StoreCheck.Failed($"credentials rejected by {_endpoint} ({Code(e)}) for container '{_container.Name}'");
        }
        catch (RequestFailedException e) when (e.Status == 403)
        {
            return StoreCheck.Failed($"access denied by {_endpoint} to container '{_container.Name}' when trying to {stage} ({Code(e)}): check the credentials' permissions");
        }
        catch (Exception e) when (e is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
        {
            if (e is RequestFailedException { Status: 0 } || (e is not RequestFailedException && ObjectKeys.IsUnreachable(e)) || e is AggregateException)
                return StoreCheck.Failed($"cannot reach {_endpoint}: {Root(e).Message}");
            var code = e is RequestFailedException r ? $" ({r.Status} {Code(r)})" : "";
            return StoreCheck.Failed($"{Describe()}: could not {stage}{code}: {e.GetType().Name}");
        }
    }

    private static string Code(RequestFailedException e) => e.ErrorCode ?? e.Status.ToString();

    private static Exception Root(Exception e)
    {
        while (e.InnerException is not null) e = e.InnerException;
        return e;
    }
}
