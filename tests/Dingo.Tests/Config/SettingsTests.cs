using Dingo.Config;
using Dingo.Tests.Support;

namespace Dingo.Tests.Config;

[Trait(Tier.Name, Tier.Fast)]
public sealed class SettingsTests
{
    private static readonly string DefaultFile = Path.Combine(TestPlatform.RepoRoot(), "hocon", "dingo.conf");

    [Fact]
    public void The_shipped_defaults_load()
    {
        var s = DingoSettings.Load([DefaultFile], new Dictionary<string, string?>());
        Assert.Equal("http://127.0.0.1:8080", s.Broker.Url);
        Assert.Equal(10, s.Broker.InstanceQuota);
        Assert.Equal(["http://127.0.0.1:2379"], s.EtcdEndpoints);
        Assert.Equal("/dingo", s.EtcdPrefix);
        var b = s.Backups!;
        Assert.True(b.Enabled);
        Assert.Equal((TimeSpan.FromMilliseconds(100), TimeSpan.FromDays(1), 4, TimeSpan.FromDays(7), TimeSpan.FromDays(7), TimeSpan.FromSeconds(5)),
            (b.FlushDelay, b.BaseBackupInterval, b.Keep, b.DeletedRetention, b.DrillInterval, b.CommitWaitAlarm));
        Assert.Equal(256L * 1024 * 1024, b.BacklogAlarmBytes);
        Assert.Equal(TimeSpan.FromSeconds(5), b.FirstBackupSettle);
        // A new asynchronous replica clones once its cell has started no primary for 5 s (docs/ha.md).
        Assert.Equal(TimeSpan.FromSeconds(5), s.Cell.CloneSettle);
        Assert.Equal(50, s.Cell.SaturatedCpuPressure);
        Assert.Equal((TimeSpan.FromSeconds(4), TimeSpan.FromSeconds(2)), (s.Ha.Ttl, s.Ha.ReleaseDeadLeaderAfter));
        // A quiet node passes every 10 s (Patroni's loop_wait) under a lease of three of those.
        Assert.Equal((TimeSpan.FromSeconds(10), TimeSpan.FromSeconds(30)), (s.Ha.IdleLoopWait, s.Ha.AloneTtl));
        // A Docker node starts at a full core for 10 s, then runs at its plan's ceiling (docs/docker.md).
        Assert.Equal((1.0, TimeSpan.FromSeconds(10)), (s.Cell.Docker.StartCpus, s.Cell.Docker.StartCpusFor));
    }

    [Fact]
    public void Environment_variables_override_the_files()
    {
        var env = new Dictionary<string, string?>
        {
            ["DINGO_BROKER_USERNAME"] = "alice", ["DINGO_BROKER_PASSWORD"] = "secret", ["DINGO_BROKER_URL"] = "http://127.0.0.1:9090",
            ["DINGO_ETCD_ENDPOINTS"] = "http://127.0.0.1:1,http://127.0.0.1:2",
        };
        var s = DingoSettings.Load([DefaultFile], env);
        Assert.Equal(("alice", "secret", "http://127.0.0.1:9090"), (s.Broker.Username, s.Broker.Password, s.Broker.Url));
        Assert.Equal(2, s.EtcdEndpoints.Count);
        Assert.DoesNotContain("secret", s.Broker.ToString());
    }

    [Theory]
    [InlineData("dingo.router { port-range-first = 30000, port-range-last = 20000 }", "dingo.router.port-range")]
    [InlineData("dingo { node-port-range-first = 20500, node-port-range-last = 20600 }", "overlap")]
    [InlineData("dingo.etcd.prefix = \"dingo\"", "must start with '/'")]
    [InlineData("dingo.broker.instance-quota = -1", "instance-quota")]
    [InlineData("dingo.broker.provision-failure-grace = 10m", "dingo.broker.provision-failure-grace")]
    [InlineData("dingo.broker.provision-failure-grace = 0s", "dingo.broker.provision-failure-grace")]
    [InlineData("dingo.broker.url = \"not a url\"", "not an absolute URL")]
    [InlineData("dingo.router.mode = fast", "dingo.router.mode must be")]
    [InlineData("dingo.ha.release-dead-leader-after = 3s", "dingo.ha.release-dead-leader-after")]
    [InlineData("dingo.ha { ttl = 2s, loop-wait = 500ms, release-dead-leader-after = 1500ms }", "half of dingo.ha.ttl")]
    [InlineData("dingo.ha.idle-loop-wait = 100ms", "dingo.ha.idle-loop-wait")]
    [InlineData("dingo.ha.idle-loop-wait = 2m", "dingo.ha.idle-loop-wait")]
    [InlineData("dingo.backups.keep = 0", "dingo.backups.keep")]
    [InlineData("dingo.backups.flush-delay = 10s", "dingo.backups.flush-delay")]
    [InlineData("dingo.backups.base-backup-interval = 5s", "dingo.backups.base-backup-interval")]
    [InlineData("dingo.backups.first-backup-settle = 31s", "dingo.backups.first-backup-settle")]
    [InlineData("dingo.cell.clone-settle = 31s", "dingo.cell.clone-settle")]
    [InlineData("dingo.cell.saturated-cpu-pressure = 101", "dingo.cell.saturated-cpu-pressure")]
    [InlineData("dingo.cell.saturated-cpu-pressure = -5", "dingo.cell.saturated-cpu-pressure")]
    [InlineData("dingo.etcd.endpoints = [\"https://10.0.0.1:2379\"]", "dingo.etcd.tls.ca-file")]
    [InlineData("dingo.etcd.endpoints = [\"https://10.0.0.1:2379\", \"http://10.0.0.2:2379\"]\ndingo.etcd.tls.ca-file = \"/ca.pem\"", "mixes https:// and plain")]
    [InlineData("dingo.etcd.tls.ca-file = \"/ca.pem\"", "dingo.etcd.tls is set but dingo.etcd.endpoints are not https://")]
    [InlineData("dingo.etcd.endpoints = [\"https://10.0.0.1:2379\"]\ndingo.etcd.tls { ca-file = \"/ca.pem\", cert-file = \"/c.pem\" }", "go together")]
    [InlineData("dingo.broker.tls { cert-file = \"/b.pem\", key-file = \"/k.pem\" }", "dingo.broker.url must be https://")]
    [InlineData("dingo.broker.tls.cert-file = \"/b.pem\"", "go together")]
    [InlineData("dingo.broker.url = \"ftp://127.0.0.1:8080\"", "http:// or https://")]
    [InlineData("dingo.cell { runtime = docker, docker.start-cpus = -1 }", "dingo.cell.docker.start-cpus")]
    [InlineData("dingo.cell { runtime = docker, docker.start-cpus-for = 0s }", "dingo.cell.docker.start-cpus-for")]
    [InlineData("dingo.cell { runtime = docker, docker.start-cpus-for = 11m }", "dingo.cell.docker.start-cpus-for")]
    public void Bad_settings_are_refused_with_the_key_named(string hocon, string expected)
    {
        var ex = Assert.Throws<ArgumentException>(() => DingoSettings.Load([DefaultFile], new Dictionary<string, string?>(), hocon));
        Assert.Contains(expected, ex.Message);
    }

    [Fact]
    public void Https_etcd_with_tls_files_loads_and_the_split_brain_lease_gets_the_same_files_whatever_their_names()
    {
        var env = new Dictionary<string, string?>
        {
            ["DINGO_ETCD_ENDPOINTS"] = "https://10.0.0.1:2379,https://10.0.0.2:2379",
            // Characters a HOCON string must escape: the lease reads exactly these paths back.
            ["DINGO_ETCD_CA_FILE"] = "/etc/dingo/tls/ca \"quoted\" \\ é+.pem",
            ["DINGO_ETCD_CERT_FILE"] = "/etc/dingo/tls/client.pem",
            ["DINGO_ETCD_KEY_FILE"] = "/etc/dingo/tls/client-key.pem",
        };
        var s = DingoSettings.Load([DefaultFile], env);
        Assert.Equal(("/etc/dingo/tls/ca \"quoted\" \\ é+.pem", "/etc/dingo/tls/client.pem", "/etc/dingo/tls/client-key.pem"),
            (s.EtcdTls.CaFile, s.EtcdTls.CertFile, s.EtcdTls.KeyFile));
        var lease = Akka.Configuration.ConfigurationFactory.ParseString(Dingo.Membership.AkkaDefaults.For(s)).GetConfig("dingo.akka-lease");
        Assert.Equal(s.EtcdTls.CaFile, lease.GetString("tls.ca-file"));
        Assert.Equal(s.EtcdTls.CertFile, lease.GetString("tls.cert-file"));
        Assert.Equal(s.EtcdTls.KeyFile, lease.GetString("tls.key-file"));
        Assert.Equal(s.EtcdEndpoints, lease.GetStringList("endpoints"));
        // Akka loads the split-brain lease by this name: a type moved without the name following would only fail at a split.
        Assert.Equal(typeof(Dingo.Membership.EtcdLease), Type.GetType(lease.GetString("lease-class"), throwOnError: true));
    }

    [Fact]
    public async Task Dingo_up_refuses_https_etcd_endpoints_before_changing_anything()
    {
        var env = new Dictionary<string, string?> { ["DINGO_ETCD_ENDPOINTS"] = "https://127.0.0.1:2379", ["DINGO_ETCD_CA_FILE"] = "/nonexistent/ca.pem" };
        var data = Path.Combine(Path.GetTempPath(), "dingo-up-https-" + Guid.NewGuid().ToString("N")[..8]);
        var settings = DingoSettings.Load([DefaultFile], env) with { DataDir = data };
        Assert.Equal(2, await Dingo.Cli.Platform.UpAsync(TestPlatform.RepoRoot(), [DefaultFile], settings));
        Assert.False(Directory.Exists(data), "dingo up made its data folder before refusing");
        // The loopback default passes the same check.
        Assert.Null(Dingo.Cli.Platform.LoopbackProblem(DingoSettings.Load([DefaultFile], new Dictionary<string, string?>())));
    }

    [Fact]
    public void A_missing_file_is_named()
    {
        var ex = Assert.Throws<FileNotFoundException>(() => DingoSettings.Load(["/nonexistent/dingo.conf"], new Dictionary<string, string?>()));
        Assert.Contains("/nonexistent/dingo.conf", ex.Message);
    }
}
