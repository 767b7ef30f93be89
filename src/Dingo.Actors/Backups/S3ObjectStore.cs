using System.Buffers;
using System.Net;
using Amazon.Runtime;
using Amazon.S3;
using Amazon.S3.Model;

namespace Dingo.Backups;

/// <summary>
/// An S3 bucket (AWS or any S3-compatible endpoint), path-style addressing. Every PutObject/UploadPart is sent with
/// UseChunkEncoding = false: several S3-compatible servers store `aws-chunked` bodies verbatim (corrupt objects).
/// Content larger than <see cref="MultipartThreshold"/> goes up as a multipart upload.
/// </summary>
public sealed class S3ObjectStore : IObjectStore, IDisposable
{
    public const int MultipartThreshold = 16 * 1024 * 1024;
    private readonly AmazonS3Client _client;
    private readonly string _bucket;
    private readonly string _endpoint;
    private readonly int _pageSize;
    private readonly int _partSize;

    public S3ObjectStore(string serviceUrl, string region, string bucket, string accessKey, string secretKey,
        int listPageSize = 1000, int partSize = MultipartThreshold, int maxErrorRetry = 3)
    {
        if (string.IsNullOrWhiteSpace(bucket)) throw new ArgumentException("an S3 bucket name is required", nameof(bucket));
        if (listPageSize is < 1 or > 1000) throw new ArgumentOutOfRangeException(nameof(listPageSize), listPageSize, "must be 1-1000");
        if (partSize < 5 * 1024 * 1024) throw new ArgumentOutOfRangeException(nameof(partSize), partSize, "S3 parts are at least 5 MiB");
        _bucket = bucket;
        _pageSize = listPageSize;
        _partSize = partSize;
        var config = new AmazonS3Config
        {
            ForcePathStyle = true,
            MaxErrorRetry = maxErrorRetry,
            Timeout = TimeSpan.FromMinutes(5),
        };
        if (!string.IsNullOrWhiteSpace(serviceUrl))
        {
            config.ServiceURL = serviceUrl;
            config.AuthenticationRegion = string.IsNullOrWhiteSpace(region) ? "us-east-1" : region;
            _endpoint = serviceUrl;
        }
        else
        {
            config.RegionEndpoint = Amazon.RegionEndpoint.GetBySystemName(string.IsNullOrWhiteSpace(region) ? "us-east-1" : region);
            _endpoint = $"s3.{config.RegionEndpoint.SystemName}.amazonaws.com";
        }
        _client = new AmazonS3Client(new BasicAWSCredentials(accessKey, secretKey), config);
    }

    public string Describe() => $"s3 {_endpoint} bucket '{_bucket}'";

    public async Task PutAsync(string key, Stream content, CancellationToken cancellationToken = default)
    {
        ObjectKeys.Validate(key);
        // Read one part ahead: content that fits in it goes up in one PutObject.
        var first = ArrayPool<byte>.Shared.Rent(_partSize);
        try
        {
            var n = await ReadPartAsync(content, first, cancellationToken).ConfigureAwait(false);
            if (n < _partSize)
            {
                using var body = new MemoryStream(first, 0, n, writable: false);
                await _client.PutObjectAsync(new PutObjectRequest
                {
                    BucketName = _bucket, Key = key, InputStream = body, AutoCloseStream = false, UseChunkEncoding = false,
                }, cancellationToken).ConfigureAwait(false);
                return;
            }
            await MultipartAsync(key, content, first, n, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(first);
        }
    }

    private async Task<int> ReadPartAsync(Stream content, byte[] buffer, CancellationToken ct)
    {
        var total = 0;
        while (total < _partSize)
        {
            var r = await content.ReadAsync(buffer.AsMemory(total, _partSize - total), ct).ConfigureAwait(false);
            if (r == 0) break;
            total += r;
        }
        return total;
    }

    private async Task MultipartAsync(string key, Stream content, byte[] buffer, int firstLength, CancellationToken ct)
    {
        var upload = await _client.InitiateMultipartUploadAsync(new InitiateMultipartUploadRequest { BucketName = _bucket, Key = key }, ct)
            .ConfigureAwait(false);
        var parts = new List<PartETag>();
        try
        {
            var length = firstLength;
            var number = 1;
            while (length > 0)
            {
                using (var body = new MemoryStream(buffer, 0, length, writable: false))
                {
                    var part = await _client.UploadPartAsync(new UploadPartRequest
                    {
                        BucketName = _bucket, Key = key, UploadId = upload.UploadId, PartNumber = number,
                        InputStream = body, PartSize = length, UseChunkEncoding = false,
                    }, ct).ConfigureAwait(false);
                    parts.Add(new PartETag { PartNumber = number, ETag = part.ETag, ChecksumCRC32 = part.ChecksumCRC32 });
                }
                if (length < _partSize) break;
                number++;
                length = await ReadPartAsync(content, buffer, ct).ConfigureAwait(false);
            }
            await _client.CompleteMultipartUploadAsync(new CompleteMultipartUploadRequest
            {
                BucketName = _bucket, Key = key, UploadId = upload.UploadId, PartETags = parts,
            }, ct).ConfigureAwait(false);
        }
        catch
        {
            try
            {
                await _client.AbortMultipartUploadAsync(new AbortMultipartUploadRequest { BucketName = _bucket, Key = key, UploadId = upload.UploadId },
                    CancellationToken.None).ConfigureAwait(false);
            }
            catch (AmazonServiceException) { }
            catch (HttpRequestException) { }
            throw;
        }
    }

    public async Task GetAsync(string key, Stream destination, CancellationToken cancellationToken = default)
    {
        ObjectKeys.Validate(key);
        try
        {
            using var response = await _client.GetObjectAsync(new GetObjectRequest { BucketName = _bucket, Key = key }, cancellationToken)
                .ConfigureAwait(false);
            await response.ResponseStream.CopyToAsync(destination, cancellationToken).ConfigureAwait(false);
        }
        catch (AmazonS3Exception e) when (e.ErrorCode == "NoSuchKey" || (e.StatusCode == HttpStatusCode.NotFound && e.ErrorCode != "NoSuchBucket"))
        {
            throw new ObjectNotFoundException(key, Describe(), e);
        }
    }

    public async Task<bool> ExistsAsync(string key, CancellationToken cancellationToken = default)
    {
        ObjectKeys.Validate(key);
        try
        {
            await _client.GetObjectMetadataAsync(new GetObjectMetadataRequest { BucketName = _bucket, Key = key }, cancellationToken).ConfigureAwait(false);
            return true;
        }
        catch (AmazonS3Exception e) when (e.StatusCode == HttpStatusCode.NotFound)
        {
            return false;
        }
    }

    public async Task<IReadOnlyList<ObjectInfo>> ListAsync(string prefix, CancellationToken cancellationToken = default)
    {
        var result = new List<ObjectInfo>();
        string? token = null;
        do
        {
            var page = await _client.ListObjectsV2Async(new ListObjectsV2Request
            {
                BucketName = _bucket, Prefix = prefix, MaxKeys = _pageSize, ContinuationToken = token,
            }, cancellationToken).ConfigureAwait(false);
            foreach (var o in page.S3Objects ?? [])
                result.Add(new ObjectInfo(o.Key, o.Size ?? 0, o.LastModified is { } m ? new DateTimeOffset(m.ToUniversalTime(), TimeSpan.Zero) : default));
            token = page.IsTruncated == true ? page.NextContinuationToken : null;
        } while (token is not null);
        result.Sort((a, b) => string.CompareOrdinal(a.Key, b.Key));
        return result;
    }

    public async Task DeleteAsync(string key, CancellationToken cancellationToken = default)
    {
        ObjectKeys.Validate(key);
        try
        {
            await _client.DeleteObjectAsync(new DeleteObjectRequest { BucketName = _bucket, Key = key }, cancellationToken).ConfigureAwait(false);
        }
        catch (AmazonS3Exception e) when (e.StatusCode == HttpStatusCode.NotFound && e.ErrorCode != "NoSuchBucket")
        {
        }
    }

    public async Task<int> DeletePrefixAsync(string prefix, CancellationToken cancellationToken = default)
    {
        var objects = await ListAsync(prefix, cancellationToken).ConfigureAwait(false);
        foreach (var batch in objects.Chunk(1000))
        {
            var response = await _client.DeleteObjectsAsync(new DeleteObjectsRequest
            {
                BucketName = _bucket, Objects = batch.Select(o => new KeyVersion { Key = o.Key }).ToList(), Quiet = true,
            }, cancellationToken).ConfigureAwait(false);
            if (response.DeleteErrors is { Count: > 0 } errors)
                throw new IOException($"{Describe()}: could not delete {errors.Count} object(s), first '{errors[0].Key}': {errors[0].Code}");
        }
        return objects.Count;
    }

    public async Task<StoreCheck> CheckAsync(CancellationToken cancellationToken = default)
    {
        var stage = "list the bucket";
        try
        {
            await _client.ListObjectsV2Async(new ListObjectsV2Request { BucketName = _bucket, MaxKeys = 1 }, cancellationToken).ConfigureAwait(false);
            var probe = ObjectKeys.ProbeKey();
            var bytes = Guid.NewGuid().ToByteArray();
            stage = "write a probe object";
            await PutAsync(probe, new MemoryStream(bytes), cancellationToken).ConfigureAwait(false);
            stage = "read the probe object back";
            var back = new MemoryStream();
            await GetAsync(probe, back, cancellationToken).ConfigureAwait(false);
            if (!back.ToArray().AsSpan().SequenceEqual(bytes))
                return StoreCheck.Failed($"{Describe()}: the probe object '{probe}' came back different from what was written ({back.Length} bytes instead of {bytes.Length})");
            stage = "delete the probe object";
            await DeleteAsync(probe, cancellationToken).ConfigureAwait(false);
            return StoreCheck.Passed($"{Describe()}: reachable, credentials accepted, bucket present, probe object written, read back and deleted");
        }
        catch (AmazonS3Exception e) when (e.ErrorCode == "NoSuchBucket" || (stage == "list the bucket" && e.StatusCode == HttpStatusCode.NotFound))
        {
            return StoreCheck.Failed($"bucket '{_bucket}' not found at {_endpoint}");
        }
        catch (AmazonS3Exception e) when (e.ErrorCode is "InvalidAccessKeyId" or "SignatureDoesNotMatch" or "InvalidToken" or "ExpiredToken"
                                              or "AuthorizationHeaderMalformed" || e.StatusCode == HttpStatusCode.Unauthorized)
        {
            return StoreCheck.Failed($"credentials rejected by {_endpoint} ({e.ErrorCode}) for bucket '{_bucket}'");
        }
        catch (AmazonS3Exception e) when (e.StatusCode == HttpStatusCode.Forbidden)
        {
            return StoreCheck.Failed($"access denied by {_endpoint} to bucket '{_bucket}' when trying to {stage} ({e.ErrorCode}): check the credentials and the bucket policy");
        }
        catch (Exception e) when (e is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
        {
            if (ObjectKeys.IsUnreachable(e)) return StoreCheck.Failed($"cannot reach {_endpoint}: {Root(e).Message}");
            var code = e is AmazonS3Exception s3 ? $" ({(int)s3.StatusCode} {s3.ErrorCode})" : "";
            return StoreCheck.Failed($"{Describe()}: could not {stage}{code}: {e.GetType().Name}");
        }
    }

    private static Exception Root(Exception e)
    {
        while (e.InnerException is not null) e = e.InnerException;
        return e;
    }

    public void Dispose() => _client.Dispose();
}
