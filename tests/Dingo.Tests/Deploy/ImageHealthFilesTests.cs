using Dingo.Tests.Support;

namespace Dingo.Tests.Deploy;

/// <summary>
/// What supervisors are told about health, read from the files they read: the images' HEALTHCHECK runs the program's
/// own probe, the systemd units wait for READY=1 and keep a watchdog, and the build context leaves secrets out.
/// (HealthEndpointTests runs the probe, the notify protocol and /readyz on real processes.)
/// </summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class ImageHealthFilesTests
{
    private static readonly string Repo = TestPlatform.RepoRoot();

    [Theory]
    [InlineData("broker", "Dingo.Broker.dll")]
    [InlineData("cell", "Dingo.Cell.dll")]
    public void Each_image_checks_its_health_with_the_programs_own_probe(string image, string dll)
    {
        var lines = File.ReadAllText(Path.Combine(Repo, "deploy", "images", image, "Dockerfile")).Replace("\\\n", " ", StringComparison.Ordinal).Split('\n');
        var check = Assert.Single(lines, l => l.StartsWith("HEALTHCHECK ", StringComparison.Ordinal));
        Assert.Contains($"\"/opt/dingo/{image}/{dll}\", \"probe\"", check, StringComparison.Ordinal);
        // The probe reads the same configuration files as the entry point.
        var entry = Assert.Single(lines, l => l.StartsWith("ENTRYPOINT ", StringComparison.Ordinal));
        foreach (var config in entry.Split('"').Where(p => p.StartsWith("/opt/dingo/hocon/", StringComparison.Ordinal)))
            Assert.Contains(config, check, StringComparison.Ordinal);
    }

    [Fact]
    public void The_node_image_checks_that_postgres_accepts_connections_on_the_port_the_cell_gives_it()
    {
        var lines = File.ReadAllText(Path.Combine(Repo, "deploy", "images", "postgres", "Dockerfile")).Replace("\\\n", " ", StringComparison.Ordinal).Split('\n');
        var check = Assert.Single(lines, l => l.StartsWith("HEALTHCHECK ", StringComparison.Ordinal));
        Assert.Contains("pg_isready -q -h /var/run/postgresql -p \\\"${PGPORT:-5432}\\\"", check, StringComparison.Ordinal);
        // The cell's own check on every node container asks the same (DockerRuntimeTests runs it on a real container).
        var cells = Dingo.Cells.DockerRuntime.NodeHealthcheck(6543);
        Assert.Equal(["CMD", "/usr/lib/postgresql/15/bin/pg_isready", "-q", "-h", "/var/run/postgresql", "-p", "6543", "-t", "3"], cells.Test);
        Assert.Contains("--interval=10s --timeout=5s --retries=3", check, StringComparison.Ordinal);
        Assert.Equal((TimeSpan.FromSeconds(10), TimeSpan.FromSeconds(5), 3L), (cells.Interval, cells.Timeout, cells.Retries));
    }

    [Fact]
    public void The_build_context_leaves_out_platform_data_seal_keys_and_build_output()
    {
        var ignored = File.ReadAllLines(Path.Combine(Repo, ".dockerignore")).Select(l => l.Trim()).Where(l => l.Length > 0 && !l.StartsWith('#')).ToList();
        foreach (var entry in new[] { ".dingo/", ".secrets/", "**/bin/", "**/obj/", "tools/node_modules/", ".git/" })
            Assert.Contains(entry, ignored);
    }

    [Theory]
    [InlineData("dingo-broker.service")]
    [InlineData("dingo-cell.service")]
    public void The_units_wait_for_readiness_and_keep_a_watchdog(string unit)
    {
        var service = File.ReadAllLines(Path.Combine(Repo, "deploy", "systemd", unit)).Select(l => l.Trim()).ToList();
        Assert.Contains("Type=notify", service);
        Assert.Contains("NotifyAccess=main", service);
        Assert.Contains(service, l => l.StartsWith("WatchdogSec=", StringComparison.Ordinal));
        Assert.Contains(service, l => l.StartsWith("TimeoutStartSec=", StringComparison.Ordinal));
    }
}
