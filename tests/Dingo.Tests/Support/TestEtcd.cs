using System.Diagnostics;
using Dingo.Store;

namespace Dingo.Tests.Support;

/// <summary>
/// One real etcd (Debian's /usr/bin/etcd) for the whole test run, on free loopback ports with its data in a
/// temporary folder. Every test works under its own key prefix. Killed by PID when the test process exits.
/// </summary>
public static class TestEtcd
{
    private static readonly Lazy<string> Endpoint = new(Start, LazyThreadSafetyMode.ExecutionAndPublication);
    private static Process? _process;
    private static string? _dataDir;

    public static string ClientUrl => Endpoint.Value;

    public static EtcdStore NewStore(out string prefix)
    {
        prefix = $"/t-{Guid.NewGuid():N}";
        return new EtcdStore([ClientUrl], prefix);
    }

    private static string Start()
    {
        var external = Environment.GetEnvironmentVariable("DINGO_TEST_ETCD");
        if (!string.IsNullOrEmpty(external)) return external;
        var client = FreePorts.One();
        var peer = FreePorts.One();
        _dataDir = Path.Combine(Path.GetTempPath(), $"dingo-test-etcd-{Guid.NewGuid():N}");
        var psi = new ProcessStartInfo("/usr/bin/etcd") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[]
                 {
                     "--name", "test", "--data-dir", _dataDir,
                     "--listen-client-urls", $"http://127.0.0.1:{client}", "--advertise-client-urls", $"http://127.0.0.1:{client}",
                     "--listen-peer-urls", $"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", $"http://127.0.0.1:{peer}",
                     "--initial-cluster", $"test=http://127.0.0.1:{peer}", "--log-level", "error",
                 }) psi.ArgumentList.Add(a);
        _process = Process.Start(psi) ?? throw new InvalidOperationException("could not start etcd");
        _process.OutputDataReceived += (_, _) => { };
        _process.ErrorDataReceived += (_, _) => { };
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
        AppDomain.CurrentDomain.ProcessExit += (_, _) => Stop();
        var url = $"http://127.0.0.1:{client}";
        var store = new EtcdStore([url], "/probe");
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (true)
        {
            try
            {
                store.GetStringAsync("/probe/x", CancellationToken.None).GetAwaiter().GetResult();
                return url;
            }
            catch (Grpc.Core.RpcException) when (DateTime.UtcNow < deadline)
            {
                Thread.Sleep(100);
            }
        }
    }

    private static void Stop()
    {
        try
        {
            if (_process is { HasExited: false })
            {
                _process.Kill();
                _process.WaitForExit(5000);
            }
        }
        catch (InvalidOperationException) { }
        if (_dataDir is not null && Directory.Exists(_dataDir)) Directory.Delete(_dataDir, recursive: true);
    }
}
