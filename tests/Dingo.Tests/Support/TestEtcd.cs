using Dingo.Store;

namespace Dingo.Tests.Support;

/// <summary>
/// One real etcd (Debian's /usr/bin/etcd) for the whole test run, on free loopback ports with its data in a
/// temporary folder. Every test works under its own key prefix. It ends with the test process (<see cref="RunProcesses"/>).
/// </summary>
public static class TestEtcd
{
    private static readonly Lazy<string> Endpoint = new(Start, LazyThreadSafetyMode.ExecutionAndPublication);

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
        var dataDir = Path.Combine(EtcdForTests.DataRoot, $"dingo-test-etcd-{Guid.NewGuid():N}");
        var (etcdFile, etcdArgs) = EtcdForTests.Command(
        [
            "--name", "test", "--data-dir", dataDir,
            "--listen-client-urls", $"http://127.0.0.1:{client}", "--advertise-client-urls", $"http://127.0.0.1:{client}",
            "--listen-peer-urls", $"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", $"http://127.0.0.1:{peer}",
            "--initial-cluster", $"test=http://127.0.0.1:{peer}", "--log-level", "error",
            // Compacted as the platform's own etcd is: no test may lean on history a platform would not keep.
            .. Dingo.Cli.Platform.EtcdHistoryArgs(),
        ]);
        RunProcesses.Start(etcdFile, etcdArgs, dataDir);
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
}
