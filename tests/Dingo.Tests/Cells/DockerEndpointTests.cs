using System.Diagnostics;
using Dingo.Cells;
using Dingo.Config;
using Dingo.Model;
using Dingo.Tests.Support;
using Microsoft.Extensions.Logging.Abstractions;
using Npgsql;

namespace Dingo.Tests.Cells;

/// <summary>`dingo.cell.runtime` and `dingo.cell.docker`: what an operator writes, what is refused, and the endpoint kinds.</summary>
[SuiteCost(10)]
public sealed class DockerEndpointTests
{
    private static readonly string DefaultFile = Path.Combine(TestPlatform.RepoRoot(), "hocon", "dingo.conf");

    private static DingoSettings Load(string overrides, Dictionary<string, string?>? env = null) =>
        DingoSettings.Load([DefaultFile], env ?? new Dictionary<string, string?>(), overrides);

    [Fact]
    public void The_docker_section_loads_with_its_defaults_and_the_environment_wins()
    {
        var s = Load("dingo.cell.runtime = docker");
        Assert.Equal("docker", s.Cell.Runtime);
        Assert.Equal("unix:///var/run/docker.sock", s.Cell.Docker.Endpoint);
        Assert.Equal("localhost/dingo/postgres:15", s.Cell.Docker.Image);
        Assert.Equal("/dingo", s.Cell.Docker.Platform); // the etcd prefix
        Assert.Equal(TimeSpan.FromMinutes(10), s.Cell.OrphanGrace);

        var env = Load("dingo.cell.runtime = docker", new Dictionary<string, string?>
        {
            ["DINGO_DOCKER_ENDPOINT"] = "tcp://10.1.2.3:2376", ["DINGO_DOCKER_IMAGE"] = "registry.example/dingo/postgres:15",
        });
        Assert.Equal(("tcp://10.1.2.3:2376", "registry.example/dingo/postgres:15"), (env.Cell.Docker.Endpoint, env.Cell.Docker.Image));
    }

    [Theory]
    [InlineData("dingo.cell.runtime = kubernetes", "dingo.cell.runtime must be")]
    [InlineData("dingo.cell { runtime = docker, docker.endpoint = \"http://127.0.0.1:2375\" }", "dingo.cell.docker.endpoint must be unix:///path or tcp://host:port")]
    [InlineData("dingo.cell { runtime = docker, docker.pull = always }", "dingo.cell.docker.pull")]
    [InlineData("dingo.cell { runtime = docker, docker.user = \"0:0\" }", "unprivileged")]
    [InlineData("dingo.cell { runtime = docker, docker.endpoint = \"tcp://h:2376\", docker.tls.cert = \"/x/cert.pem\" }", "cert and key go together")]
    [InlineData("dingo.cell { runtime = docker, docker.tls { cert = \"/x/cert.pem\", key = \"/x/key.pem\" } }", "tcp:// endpoints only")]
    [InlineData("dingo.cell { runtime = docker, docker.endpoint = \"tcp://h:2376\", docker.tls { cert = \"/nonexistent/cert.pem\", key = \"/nonexistent/key.pem\" } }", "does not exist")]
    public void Bad_docker_settings_are_refused_with_the_key_named(string overrides, string expected)
    {
        var error = Assert.Throws<ArgumentException>(() => Load(overrides));
        Assert.Contains(expected, error.Message);
    }

    [Fact]
    public async Task A_node_runs_through_a_tcp_endpoint()
    {
        var (endpoint, service) = TestPodman.StartExtraService(tcp: true);
        var platform = "/t-tcp-" + Guid.NewGuid().ToString("N")[..8];
        Assert.StartsWith("tcp://127.0.0.1:", endpoint);
        using var runtime = new DockerRuntime(new DockerRuntimeOptions("cell-1", TestPodman.Settings(platform) with { Endpoint = endpoint }), NullLogger.Instance);
        var spec = new NodeLaunchSpec("n-tcp-" + Guid.NewGuid().ToString("N")[..6], "i-1", "127.0.0.1", FreePorts.One(), new Credentials("dingo_admin", "pw-" + Guid.NewGuid().ToString("N")));
        try
        {
            await runtime.CreateAsync(spec, CancellationToken.None);
            await runtime.StartAsync(spec, null, CancellationToken.None);
            var conn = new NpgsqlConnectionStringBuilder { Host = "127.0.0.1", Port = spec.Port, Username = "dingo_admin", Password = spec.Superuser.Password, Database = "postgres", Pooling = false }.ConnectionString;
            await Eventually.UntilAsync(async () =>
            {
                try
                {
                    await using var c = new NpgsqlConnection(conn);
                    await c.OpenAsync();
                    return true;
                }
                catch (NpgsqlException)
                {
                    return false;
                }
            }, TimeSpan.FromSeconds(30), "the node serving");
            Assert.True(Assert.Single(await runtime.ListAsync(CancellationToken.None)).Running);
        }
        finally
        {
            await runtime.RemoveAsync(spec.NodeId, CancellationToken.None);
            service.Kill();
        }
    }

    [Fact]
    public async Task Tls_client_certificates_are_loaded_and_a_tls_handshake_with_a_plain_engine_fails_clearly()
    {
        var dir = Path.Combine(Path.GetTempPath(), "dingo-tls-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(dir);
        try
        {
            foreach (var args in new[]
                     {
                         $"req -x509 -newkey rsa:2048 -nodes -keyout {dir}/ca-key.pem -out {dir}/ca.pem -days 1 -subj /CN=dingo-test-ca",
                         $"req -newkey rsa:2048 -nodes -keyout {dir}/key.pem -out {dir}/cell.csr -subj /CN=cell-1",
                         $"x509 -req -in {dir}/cell.csr -CA {dir}/ca.pem -CAkey {dir}/ca-key.pem -CAcreateserial -out {dir}/cert.pem -days 1",
                     })
            {
                using var openssl = Process.Start(new ProcessStartInfo("openssl", args) { RedirectStandardError = true, RedirectStandardOutput = true })!;
                await openssl.WaitForExitAsync();
                Assert.True(openssl.ExitCode == 0, $"openssl {args}: {await openssl.StandardError.ReadToEndAsync()}");
            }
            var (endpoint, service) = TestPodman.StartExtraService(tcp: true);
            try
            {
                var settings = TestPodman.Settings("/t-tls") with { Endpoint = endpoint, TlsCa = $"{dir}/ca.pem", TlsCert = $"{dir}/cert.pem", TlsKey = $"{dir}/key.pem" };
                using var runtime = new DockerRuntime(new DockerRuntimeOptions("cell-1", settings), NullLogger.Instance);
                var error = await Assert.ThrowsAsync<ContainerEngineException>(() => runtime.ListAsync(CancellationToken.None));
                Assert.Contains($"container engine at {endpoint} is unreachable", error.Message);
            }
            finally
            {
                service.Kill();
            }
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
