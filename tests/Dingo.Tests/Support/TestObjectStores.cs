using System.Net.Sockets;
using Amazon.Runtime;
using Amazon.S3;
using Azure.Storage.Blobs;
using Dingo.Backups;

namespace Dingo.Tests.Support;

/// <summary>
/// One s3rver (S3) and one azurite-blob (Azure Blob) for the whole test run, started from tools/node_modules/.bin
/// (installed by `./dingo test`) on free loopback ports with their data in temporary folders. Each test works in a
/// bucket/container shared by the run, under a key prefix of its own. They end with the test process (<see cref="RunProcesses"/>).
/// </summary>
public static class TestObjectStores
{
    public const string S3AccessKey = "S3RVER";   // s3rver's built-in account
    public const string S3SecretKey = "S3RVER";
    public const string AzureAccount = "devstoreaccount1"; // azurite's well-known development account
    public const string AzureKey = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
    public const string Bucket = "dingo-test";
    public const string Container = "dingo-test";

    private static readonly Lazy<string> S3 = new(StartS3, LazyThreadSafetyMode.ExecutionAndPublication);
    private static readonly Lazy<string> Azure = new(StartAzure, LazyThreadSafetyMode.ExecutionAndPublication);

    public static string S3Url => S3.Value;
    public static string AzureBlobUrl => Azure.Value;

    public static string AzureConnectionString(string? key = null) =>
        $"DefaultEndpointsProtocol=http;AccountName={AzureAccount};AccountKey={key ?? AzureKey};BlobEndpoint={AzureBlobUrl}/{AzureAccount};";

    public static S3ObjectStore NewS3Store(string? bucket = null, string accessKey = S3AccessKey, string secretKey = S3SecretKey, int listPageSize = 1000) =>
        new(S3Url, "us-east-1", bucket ?? Bucket, accessKey, secretKey, listPageSize, maxErrorRetry: 1);

    public static AzureBlobObjectStore NewAzureStore(string? container = null, string? key = null, int listPageSize = 5000) =>
        AzureBlobObjectStore.FromConnectionString(AzureConnectionString(key), container ?? Container, listPageSize, maxRetries: 1);

    private static string Bin(string name)
    {
        var path = Path.Combine(TestPlatform.RepoRoot(), "tools", "node_modules", ".bin", name);
        if (!File.Exists(path))
            throw new InvalidOperationException(
                $"{path} is missing: the object-store tests need s3rver and azurite from tools/package.json. Run `./dingo test` once (it installs them), " +
                "or `cd tools && npm install --no-audit --no-fund`.");
        return path;
    }

    private static string StartS3()
    {
        var bin = Bin("s3rver");
        var port = FreePorts.One();
        var dir = TempDir("s3rver");
        var env = new Dictionary<string, string> { ["NODE_OPTIONS"] = "--openssl-legacy-provider" };
        RunProcesses.Start(bin, ["-d", dir, "-a", "127.0.0.1", "-p", port.ToString(), "--no-vhost-buckets", "--silent", "--configure-bucket", Bucket], dir, env);
        var url = $"http://127.0.0.1:{port}";
        WaitForPort(port, "s3rver");
        using var client = new AmazonS3Client(new BasicAWSCredentials(S3AccessKey, S3SecretKey),
            new AmazonS3Config { ServiceURL = url, ForcePathStyle = true, AuthenticationRegion = "us-east-1" });
        Retry(() => client.ListObjectsV2Async(new Amazon.S3.Model.ListObjectsV2Request { BucketName = Bucket, MaxKeys = 1 }).GetAwaiter().GetResult(), "s3rver");
        return url;
    }

    private static string StartAzure()
    {
        var bin = Bin("azurite-blob");
        var port = FreePorts.One();
        var dir = TempDir("azurite");
        RunProcesses.Start(bin, ["--blobHost", "127.0.0.1", "--blobPort", port.ToString(), "-l", dir, "--skipApiVersionCheck", "--disableTelemetry", "--silent"], dir);
        var url = $"http://127.0.0.1:{port}";
        WaitForPort(port, "azurite");
        var service = new BlobServiceClient($"DefaultEndpointsProtocol=http;AccountName={AzureAccount};AccountKey={AzureKey};BlobEndpoint={url}/{AzureAccount};");
        Retry(() => service.GetBlobContainerClient(Container).CreateIfNotExists(), "azurite");
        return url;
    }

    private static string TempDir(string name)
    {
        var dir = Path.Combine(Path.GetTempPath(), $"dingo-test-{name}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        return dir;
    }

    private static void WaitForPort(int port, string what)
    {
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (true)
        {
            try
            {
                using var tcp = new TcpClient();
                tcp.Connect("127.0.0.1", port);
                return;
            }
            catch (SocketException) when (DateTime.UtcNow < deadline)
            {
                Thread.Sleep(100);
            }
            catch (SocketException e)
            {
                throw new InvalidOperationException($"{what} did not listen on 127.0.0.1:{port} within 30 s", e);
            }
        }
    }

    private static void Retry(Action action, string what)
    {
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (true)
        {
            try
            {
                action();
                return;
            }
            catch (Exception) when (DateTime.UtcNow < deadline)
            {
                Thread.Sleep(200);
            }
        }
    }
}
