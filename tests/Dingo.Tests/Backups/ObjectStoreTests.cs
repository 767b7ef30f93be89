using Dingo.Backups;
using Dingo.Config;
using Dingo.Tests.Support;

namespace Dingo.Tests.Backups;

/// <summary>The same contract against every store kind: real s3rver, real azurite, a real folder.</summary>
public abstract class ObjectStoreContract : IDisposable
{
    protected readonly string Prefix = $"t-{Guid.NewGuid():N}/";

    /// <summary>A store on the shared bucket/container (or a fresh folder) with the given listing page size.</summary>
    protected abstract IObjectStore NewStore(int listPageSize = 1000);
    protected abstract IObjectStore StoreWithMissingBucket();
    protected abstract IObjectStore? StoreWithWrongCredentials();
    protected abstract IObjectStore? UnreachableStore();

    private IObjectStore? _store;
    protected IObjectStore Store => _store ??= NewStore();

    /// <summary>How many put/delete/check rounds the concurrency test runs (the local folder's race needs many).</summary>
    protected virtual int ConcurrentRounds => 200;

    /// <summary>
    /// Run as a [Fact] by the local folder and Azure stores. Not against s3rver: its file backend dies on concurrent
    /// deletes in one prefix (every S3 test after it then finds no server), a limit of the stand-in, not of S3.
    /// </summary>
    protected async Task ConcurrentPutsDeletesAndChecksNeverFailEachOther()
    {
        // What the broker's store check and the archiver's puts and retention's deletes do at once: a delete that empties
        // a folder must never break a put, or a check, that is about to write into it.
        var store = Store;
        var failures = new System.Collections.Concurrent.ConcurrentBag<string>();
        await Parallel.ForEachAsync(Enumerable.Range(0, ConcurrentRounds), new ParallelOptions { MaxDegreeOfParallelism = 8 }, async (i, ct) =>
        {
            try
            {
                if (i % 4 == 3)
                {
                    var check = await store.CheckAsync(ct);
                    if (!check.Ok) failures.Add($"check {i}: {check.Detail}");
                    return;
                }
                var key = $"{Prefix}race/{i % 8}/{i}";
                await store.PutAsync(key, new MemoryStream([1, 2, 3]), ct);
                await store.DeleteAsync(key, ct);
            }
            catch (Exception e) { failures.Add($"round {i}: {e.GetType().Name}: {e.Message}"); }
        });
        Assert.True(failures.IsEmpty, $"{failures.Count} of {ConcurrentRounds} rounds failed, e.g. {string.Join("; ", failures.Take(3))}");
        Assert.Empty(await store.ListAsync($"{Prefix}race/"));
    }

    private static byte[] RandomBytes(int n)
    {
        var b = new byte[n];
        Random.Shared.NextBytes(b);
        return b;
    }

    private static async Task<byte[]> Read(IObjectStore store, string key)
    {
        var ms = new MemoryStream();
        await store.GetAsync(key, ms);
        return ms.ToArray();
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(100_000)]
    [InlineData(20 * 1024 * 1024)] // above S3ObjectStore.MultipartThreshold: a multipart upload on S3
    public async Task Put_then_get_returns_the_same_bytes(int size)
    {
        var data = RandomBytes(size);
        var key = Prefix + $"obj-{size}";
        await Store.PutAsync(key, new MemoryStream(data));
        Assert.Equal(data, await Read(Store, key));
        var listed = Assert.Single(await Store.ListAsync(key));
        Assert.Equal(key, listed.Key);
        Assert.Equal(size, listed.Size);
        Assert.True(listed.LastModified > DateTimeOffset.UtcNow.AddMinutes(-5));
    }

    [Fact]
    public async Task Put_from_a_non_seekable_stream_and_overwrite()
    {
        var key = Prefix + "a/b/c.bin";
        await Store.PutAsync(key, new NonSeekable(RandomBytes(1000)));
        var second = RandomBytes(333);
        await Store.PutAsync(key, new NonSeekable(second));
        Assert.Equal(second, await Read(Store, key));
    }

    [Fact]
    public async Task List_returns_every_page_and_only_the_prefix()
    {
        var store = NewStore(listPageSize: 7);
        var written = new Dictionary<string, byte[]>();
        await Parallel.ForEachAsync(Enumerable.Range(0, 30), new ParallelOptions { MaxDegreeOfParallelism = 4 }, async (i, ct) =>
        {
            var key = $"{Prefix}wal/{i:D3}";
            var data = RandomBytes(100 + i);
            lock (written) written[key] = data;
            await store.PutAsync(key, new MemoryStream(data), ct);
        });
        await store.PutAsync($"{Prefix}base/x", new MemoryStream([1, 2, 3]));
        await store.PutAsync($"{Prefix}walrus", new MemoryStream([4]));

        var listed = await store.ListAsync($"{Prefix}wal/");
        Assert.Equal(written.Keys.Order(StringComparer.Ordinal), listed.Select(o => o.Key));
        foreach (var o in listed)
        {
            Assert.Equal(written[o.Key].Length, o.Size);
            Assert.Equal(written[o.Key], await Read(store, o.Key));
        }
        Assert.Equal(32, (await store.ListAsync(Prefix)).Count);
        Assert.Empty(await store.ListAsync($"{Prefix}nothing/"));
    }

    [Fact]
    public async Task Exists_and_delete_is_idempotent()
    {
        var key = Prefix + "gone";
        Assert.False(await Store.ExistsAsync(key));
        await Store.PutAsync(key, new MemoryStream([9]));
        Assert.True(await Store.ExistsAsync(key));
        await Store.DeleteAsync(key);
        Assert.False(await Store.ExistsAsync(key));
        await Store.DeleteAsync(key);
        await Store.DeleteAsync(Prefix + "never-existed/deep");
    }

    [Fact]
    public async Task Delete_prefix_removes_only_that_prefix()
    {
        foreach (var k in new[] { "b1/x", "b1/y/z", "b10/keep", "b2/keep" }) await Store.PutAsync(Prefix + k, new MemoryStream([1]));
        Assert.Equal(2, await Store.DeletePrefixAsync(Prefix + "b1/"));
        Assert.Equal([Prefix + "b10/keep", Prefix + "b2/keep"], (await Store.ListAsync(Prefix)).Select(o => o.Key));
        Assert.Equal(0, await Store.DeletePrefixAsync(Prefix + "b1/"));
    }

    [Fact]
    public async Task Get_of_a_missing_object_throws_ObjectNotFound_naming_key_and_store()
    {
        var key = Prefix + "missing";
        var e = await Assert.ThrowsAsync<ObjectNotFoundException>(() => Store.GetAsync(key, new MemoryStream()));
        Assert.Equal(key, e.Key);
        Assert.Contains(key, e.Message);
        Assert.Contains(Store.Describe(), e.Message);
    }

    [Fact]
    public async Task Check_passes_and_leaves_nothing_behind()
    {
        var check = await Store.CheckAsync();
        Assert.True(check.Ok, check.Detail);
        Assert.Empty((await Store.ListAsync(".dingo-check/")));
    }

    [Fact]
    public async Task Check_reports_a_missing_bucket()
    {
        var check = await StoreWithMissingBucket().CheckAsync();
        Assert.False(check.Ok);
        Assert.Contains("not found", check.Detail);
    }

    [Fact]
    public async Task Check_reports_rejected_credentials_without_printing_them()
    {
        var store = StoreWithWrongCredentials();
        if (store is null) return; // a local folder has no credentials
        var check = await store.CheckAsync();
        Assert.False(check.Ok);
        Assert.Contains("credentials rejected", check.Detail);
        AssertNoSecret(check.Detail);
        AssertNoSecret(store.Describe());
    }

    [Fact]
    public async Task Check_reports_an_unreachable_endpoint()
    {
        var store = UnreachableStore();
        if (store is null) return; // a local folder has no endpoint
        var check = await store.CheckAsync();
        Assert.False(check.Ok);
        Assert.Contains("cannot reach", check.Detail);
    }

    private static void AssertNoSecret(string text)
    {
        Assert.DoesNotContain(TestObjectStores.AzureKey, text);
        Assert.DoesNotContain("wrong-secret", text);
        Assert.DoesNotContain("AccountKey", text);
    }

    public virtual void Dispose()
    {
        try
        {
            Store.DeletePrefixAsync(Prefix).GetAwaiter().GetResult();
        }
        catch (Exception) { }
        GC.SuppressFinalize(this);
    }

    private sealed class NonSeekable(byte[] data) : Stream
    {
        private readonly MemoryStream _inner = new(data);
        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override int Read(byte[] buffer, int offset, int count) => _inner.Read(buffer, offset, Math.Min(count, 97));
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }
}

public sealed class S3ObjectStoreTests : ObjectStoreContract
{
    protected override IObjectStore NewStore(int listPageSize = 1000) => TestObjectStores.NewS3Store(listPageSize: listPageSize);
    protected override IObjectStore StoreWithMissingBucket() => TestObjectStores.NewS3Store(bucket: $"missing-{Guid.NewGuid():N}");

    // s3rver 3.7.1 knows one account (S3RVER) and rejects any other access key id (InvalidAccessKeyId), but it does not
    // verify SigV4 signatures at all ("Signature version 4 calculation is unimplemented"): a wrong secret with the right
    // key id is accepted. So only the unknown key id is asserted here.
    protected override IObjectStore StoreWithWrongCredentials() => TestObjectStores.NewS3Store(accessKey: "NOBODY", secretKey: "wrong-secret");
    protected override IObjectStore UnreachableStore() => new S3ObjectStore($"http://127.0.0.1:{FreePorts.One()}", "us-east-1", "b", "k", "s", maxErrorRetry: 0);
}

public sealed class AzureBlobObjectStoreTests : ObjectStoreContract
{
    protected override IObjectStore NewStore(int listPageSize = 1000) => TestObjectStores.NewAzureStore(listPageSize: listPageSize);
    protected override IObjectStore StoreWithMissingBucket() => TestObjectStores.NewAzureStore(container: $"missing-{Guid.NewGuid():N}");

    // azurite verifies SharedKey signatures of devstoreaccount1: another (valid base64) key is rejected with 403.
    protected override IObjectStore StoreWithWrongCredentials() =>
        TestObjectStores.NewAzureStore(key: Convert.ToBase64String(Enumerable.Repeat((byte)7, 64).ToArray()));

    protected override IObjectStore UnreachableStore() => AzureBlobObjectStore.FromConnectionString(
        $"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={TestObjectStores.AzureKey};BlobEndpoint=http://127.0.0.1:{FreePorts.One()}/devstoreaccount1;",
        "c", maxRetries: 0);

    [Fact]
    public Task Concurrent_puts_deletes_and_checks_in_one_folder_never_fail_each_other() => ConcurrentPutsDeletesAndChecksNeverFailEachOther();

    [Fact]
    public async Task Account_url_and_key_work_like_the_connection_string()
    {
        var store = AzureBlobObjectStore.FromAccountKey($"{TestObjectStores.AzureBlobUrl}/{TestObjectStores.AzureAccount}", TestObjectStores.AzureAccount,
            TestObjectStores.AzureKey, TestObjectStores.Container, maxRetries: 1);
        var check = await store.CheckAsync();
        Assert.True(check.Ok, check.Detail);
        Assert.DoesNotContain(TestObjectStores.AzureKey, store.Describe());
    }
}

public sealed class LocalFolderObjectStoreTests : ObjectStoreContract
{
    private readonly string _folder = Path.Combine(Path.GetTempPath(), $"dingo-test-local-store-{Guid.NewGuid():N}");

    public LocalFolderObjectStoreTests() => Directory.CreateDirectory(_folder);

    protected override IObjectStore NewStore(int listPageSize = 1000) => new LocalFolderObjectStore(_folder);
    protected override IObjectStore StoreWithMissingBucket() => new LocalFolderObjectStore(Path.Combine(_folder, "does-not-exist"));
    protected override IObjectStore? StoreWithWrongCredentials() => null;
    protected override IObjectStore? UnreachableStore() => null;
    protected override int ConcurrentRounds => 4000;

    [Fact]
    public Task Concurrent_puts_deletes_and_checks_in_one_folder_never_fail_each_other() => ConcurrentPutsDeletesAndChecksNeverFailEachOther();

    [Theory]
    [InlineData("../escape")]
    [InlineData("a/../../escape")]
    [InlineData("/etc/passwd")]
    [InlineData("a//b")]
    [InlineData("a/./b")]
    [InlineData("")]
    public async Task Keys_outside_the_folder_are_rejected(string key)
    {
        await Assert.ThrowsAsync<ArgumentException>(() => Store.PutAsync(key, new MemoryStream([1])));
        await Assert.ThrowsAsync<ArgumentException>(() => Store.GetAsync(key, new MemoryStream()));
    }

    /// <summary>
    /// A listing while objects go (the archiver deletes a segment's pieces once the whole segment is stored, beside a
    /// duty listing the instance's backups) names what is there and never fails: a file gone between the folder's
    /// listing and the look at its size threw FileNotFoundException (a fresh suite run, FirstBackupSettleTests).
    /// </summary>
    [Fact]
    public async Task Listings_while_objects_are_deleted_never_fail()
    {
        var keys = Enumerable.Range(0, 1500).Select(i => $"{Prefix}parts/{i % 30:D2}/{i:D5}").ToList();
        foreach (var key in keys) await Store.PutAsync(key, new MemoryStream([1]));
        var deleting = Task.Run(async () =>
        {
            foreach (var key in keys) await Store.DeleteAsync(key);
        });
        var listings = 0;
        while (!deleting.IsCompleted || listings == 0)
        {
            var listed = await Store.ListAsync(Prefix);
            Assert.All(listed, o => Assert.Contains(o.Key, keys));
            listings++;
        }
        await deleting;
        Assert.Empty(await Store.ListAsync(Prefix));
    }

    [Fact]
    public async Task Put_leaves_no_temporary_files_and_delete_removes_empty_folders()
    {
        await Store.PutAsync("x/y/z", new MemoryStream([1, 2]));
        Assert.Equal(["x/y/z"], (await Store.ListAsync("")).Select(o => o.Key));
        Assert.Empty(Directory.GetFiles(Path.Combine(_folder, ".dingo-tmp")));
        await Store.DeleteAsync("x/y/z");
        Assert.False(Directory.Exists(Path.Combine(_folder, "x")));
    }

    public override void Dispose()
    {
        base.Dispose();
        if (Directory.Exists(_folder)) Directory.Delete(_folder, recursive: true);
    }
}

public sealed class ObjectStoreSettingsTests
{
    private static readonly string DefaultFile = Path.Combine(TestPlatform.RepoRoot(), "hocon", "dingo.conf");

    private static DingoSettings Load(string overrides = "", Dictionary<string, string?>? env = null) =>
        DingoSettings.Load([DefaultFile], env ?? new Dictionary<string, string?>(), overrides);

    [Fact]
    public void Default_is_a_local_folder_under_the_data_dir()
    {
        var s = Load().Backups!.Store;
        Assert.Equal("local", s.Kind);
        Assert.Equal(Path.Combine(".dingo", "backups"), s.Folder);
    }

    [Fact]
    public void S3_credentials_come_from_the_environment_and_never_print()
    {
        var s = Load("dingo.backups.store { kind = s3, s3 { endpoint = \"http://127.0.0.1:9\", bucket = b } }",
            new() { ["DINGO_S3_ACCESS_KEY"] = "AKIDSECRETID", ["DINGO_S3_SECRET_KEY"] = "topsecretvalue" }).Backups!.Store;
        Assert.Equal("AKIDSECRETID", s.S3AccessKey);
        Assert.Equal("topsecretvalue", s.S3SecretKey);
        Assert.DoesNotContain("topsecretvalue", s.ToString());
        Assert.DoesNotContain("AKIDSECRETID", s.ToString());
        using var store = (S3ObjectStore)s.CreateStore();
        Assert.Equal("s3 http://127.0.0.1:9 bucket 'b'", store.Describe());
    }

    [Fact]
    public void Azure_connection_string_comes_from_the_environment_and_never_prints()
    {
        var s = Load("dingo.backups.store { kind = azure, azure.container = c }",
            new() { ["DINGO_AZURE_CONNECTION_STRING"] = "DefaultEndpointsProtocol=http;AccountName=a;AccountKey=c2VjcmV0;BlobEndpoint=http://127.0.0.1:9/a;" }).Backups!.Store;
        Assert.DoesNotContain("c2VjcmV0", s.ToString());
        var store = s.CreateStore();
        Assert.DoesNotContain("c2VjcmV0", store.Describe());
        Assert.Contains("container 'c'", store.Describe());
    }

    [Theory]
    [InlineData("dingo.backups.store.kind = gcs", "dingo.backups.store.kind")]
    [InlineData("dingo.backups.store.kind = s3", "dingo.backups.store.s3.bucket")]
    [InlineData("dingo.backups.store { kind = s3, s3.bucket = b }", "dingo.backups.store.s3.access-key")]
    [InlineData("dingo.backups.store { kind = s3, s3 { bucket = b, endpoint = \"not a url\" } }", "dingo.backups.store.s3.endpoint")]
    [InlineData("dingo.backups.store { kind = azure }", "dingo.backups.store.azure.container")]
    [InlineData("dingo.backups.store { kind = azure, azure.container = c }", "dingo.backups.store.azure")]
    [InlineData("dingo.backups.store.list-page-size = 0", "dingo.backups.store.list-page-size")]
    public void Wrong_settings_name_the_key(string overrides, string key)
    {
        var e = Assert.Throws<ArgumentException>(() => Load(overrides));
        Assert.Contains(key, e.Message);
    }
}
