using System.Collections.Concurrent;
using System.Net;
using Dingo.Config;
using Dingo.Store;

namespace Dingo.Tests.Support;

/// <summary>
/// One real etcd over TLS for the run, as `./dingo up --hosts 3` and deploy/ run theirs: a server certificate from a test
/// CA naming 127.0.0.1 (and the DNS name <see cref="ServerName"/>, not "localhost"), --client-cert-auth with the same CA.
/// Also a second CA, <see cref="Foreign"/>, whose certificates etcd must refuse and our client must not trust. The
/// process ends with the test process (<see cref="RunProcesses"/>); its data lives in memory (<see cref="EtcdForTests"/>).
/// </summary>
public static class TestEtcdTls
{
    public const string ServerName = "etcd.dingo.test";
    private static readonly Lazy<Server> Started = new(Start, LazyThreadSafetyMode.ExecutionAndPublication);

    public sealed record Server(string ClientUrl, int Port, TestCertificates Ca, TestCertificates Foreign,
        EtcdTlsSettings Client, EtcdTlsSettings ForeignClient, ConcurrentQueue<string> Log);

    public static Server Instance => Started.Value;

    /// <summary>A store over TLS with the platform's client certificate, under a prefix of its own.</summary>
    public static EtcdStore NewStore(out string prefix)
    {
        prefix = $"/t-{Guid.NewGuid():N}";
        return new EtcdStore([Instance.ClientUrl], prefix, tls: EtcdClientTls.Load(Instance.Client));
    }

    /// <summary>
    /// An etcd of the test's own, like <see cref="Instance"/> (same CAs' kind, new ones), for a test that changes the
    /// server (turns users on). The caller kills the process.
    /// </summary>
    public static (Server Server, System.Diagnostics.Process Process) StartOwn() => Launch();

    private static Server Start() => Launch().Server;

    private static (Server Server, System.Diagnostics.Process Process) Launch()
    {
        var ca = TestCertificates.NewAuthority("etcd");
        var foreign = TestCertificates.NewAuthority("foreign");
        var (serverCert, serverKey) = ca.IssueServer("etcd-server", [IPAddress.Loopback], [ServerName]);
        var (clientCert, clientKey) = ca.IssueClient("dingo");
        var (foreignCert, foreignKey) = foreign.IssueClient("dingo");
        var client = FreePorts.One();
        var peer = FreePorts.One();
        var url = $"https://127.0.0.1:{client}";
        var dataDir = Path.Combine(EtcdForTests.DataRoot, $"dingo-test-etcd-tls-{Guid.NewGuid():N}");
        var (file, args) = EtcdForTests.Command(
        [
            "--name", "tls", "--data-dir", dataDir,
            "--listen-client-urls", url, "--advertise-client-urls", url,
            "--cert-file", serverCert, "--key-file", serverKey, "--trusted-ca-file", ca.CaFile, "--client-cert-auth",
            "--listen-peer-urls", $"https://127.0.0.1:{peer}", "--initial-advertise-peer-urls", $"https://127.0.0.1:{peer}",
            "--initial-cluster", $"tls=https://127.0.0.1:{peer}",
            "--peer-cert-file", serverCert, "--peer-key-file", serverKey, "--peer-trusted-ca-file", ca.CaFile, "--peer-client-cert-auth",
            // info: etcd names each connection it rejects ("rejected connection from …"), which the tests read.
            "--log-level", "info",
        ]);
        AppDomain.CurrentDomain.ProcessExit += (_, _) => { ca.Dispose(); foreign.Dispose(); };
        var log = new ConcurrentQueue<string>();
        var process = RunProcesses.Start(file, args, dataDir, onOutput: log.Enqueue);
        var settings = new EtcdTlsSettings { CaFile = ca.CaFile, CertFile = clientCert, KeyFile = clientKey };
        var store = new EtcdStore([url], "/probe", tls: EtcdClientTls.Load(settings));
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (true)
        {
            try
            {
                store.GetStringAsync("/probe/x", CancellationToken.None).GetAwaiter().GetResult();
                break;
            }
            catch (Grpc.Core.RpcException) when (DateTime.UtcNow < deadline)
            {
                Thread.Sleep(100);
            }
        }
        return (new Server(url, client, ca, foreign, settings,
            new EtcdTlsSettings { CaFile = ca.CaFile, CertFile = foreignCert, KeyFile = foreignKey }, log), process);
    }
}
