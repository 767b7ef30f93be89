using System.Diagnostics;
using Dingo.Backups;
using Dingo.Bench.Shared;

namespace Dingo.Bench.Rpo;

/// <summary>
/// s3rver (an S3 emulator, tools/node_modules/.bin, installed by `./dingo test`) on a free 127.0.0.1 port with its
/// data in a temporary folder, and a store on its bucket. Disposal stops it by PID and deletes the folder.
/// </summary>
internal sealed class S3rver : IAsyncDisposable
{
    private const string Bucket = "dingo-bench";
    private readonly Process _process;
    private readonly string _dir;

    private S3rver(Process process, string dir, S3ObjectStore store)
    {
        _process = process;
        _dir = dir;
        Store = store;
    }

    public S3ObjectStore Store { get; }

    public static async Task<S3rver> StartAsync(CancellationToken ct)
    {
        var bin = FindBin() ?? throw new InvalidOperationException(
            "tools/node_modules/.bin/s3rver is missing: run `./dingo test` once or `cd tools && npm install --no-audit --no-fund`, or use --store local");
        var port = BenchNodes.FreePort();
        var dir = Path.Combine(Path.GetTempPath(), "dingo-rpo-s3rver-" + Guid.NewGuid().ToString("N")[..10]);
        Directory.CreateDirectory(dir);
        var process = ChildProcesses.StartService(bin,
            ["-d", dir, "-a", "127.0.0.1", "-p", port.ToString(System.Globalization.CultureInfo.InvariantCulture), "--no-vhost-buckets", "--silent", "--configure-bucket", Bucket],
            new Dictionary<string, string> { ["NODE_OPTIONS"] = "--openssl-legacy-provider" }, "s3rver");
        var store = new S3ObjectStore($"http://127.0.0.1:{port}", "us-east-1", Bucket, "S3RVER", "S3RVER", maxErrorRetry: 1);
        var s3 = new S3rver(process, dir, store);
        try
        {
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
            while (true)
            {
                if (process.HasExited) throw new InvalidOperationException($"s3rver exited at start with code {process.ExitCode}");
                var check = await store.CheckAsync(ct);
                if (check.Ok) return s3;
                if (DateTime.UtcNow > deadline) throw new TimeoutException($"s3rver on port {port} not ready within 30 s: {check.Detail}");
                await Task.Delay(200, ct);
            }
        }
        catch
        {
            await s3.DisposeAsync();
            throw;
        }
    }

    private static string? FindBin()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            var bin = Path.Combine(dir.FullName, "tools", "node_modules", ".bin", "s3rver");
            if (File.Exists(bin)) return bin;
        }
        return null;
    }

    public async ValueTask DisposeAsync()
    {
        Store.Dispose();
        await ChildProcesses.StopAsync(_process, TimeSpan.FromSeconds(10));
        _process.Dispose();
        try { Directory.Delete(_dir, recursive: true); }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            Console.Error.WriteLine($"bench: could not delete {_dir}: {ex.Message}");
        }
    }
}
