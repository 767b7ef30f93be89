using Dingo.Cells;
using Dingo.Config;
using Dingo.Postgres;
using Dingo.Tests.Support;

namespace Dingo.Tests.Security;

/// <summary>The rule book for who may log in as the platform's roles (pg_hba.conf as Dingo writes it).</summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class PlatformAccessTests
{
    [Fact]
    public void Platform_roles_get_scram_from_listed_networks_and_a_reject_everywhere_else_before_the_clients_line()
    {
        var hba = PlatformAccess.From(["10.0.0.5", "10.0.0.6"], []).Hba("dingo_admin");
        var lines = hba.Split('\n', StringSplitOptions.RemoveEmptyEntries).Where(l => !l.StartsWith('#')).ToList();
        Assert.Contains("host all \"dingo_admin\",\"dingo_replicator\" 10.0.0.5/32 scram-sha-256", lines);
        Assert.Contains("host replication \"dingo_admin\",\"dingo_replicator\" 10.0.0.6/32 scram-sha-256", lines);
        var reject = lines.IndexOf("host all \"dingo_admin\",\"dingo_replicator\" 0.0.0.0/0 reject");
        var clients = lines.IndexOf("host all all 0.0.0.0/0 scram-sha-256");
        Assert.True(reject >= 0 && clients > reject, hba);
        Assert.Contains("host all \"dingo_admin\",\"dingo_replicator\" ::/0 reject", lines);
        // Replication connections only for the platform's roles, and nobody is trusted.
        Assert.DoesNotContain(lines, l => l.StartsWith("host replication all", StringComparison.Ordinal));
        Assert.DoesNotContain(lines, l => l.EndsWith(" trust", StringComparison.Ordinal));
    }

    [Fact]
    public void With_require_tls_every_accepting_tcp_line_is_hostssl_and_the_rejects_still_match_without_tls()
    {
        var hba = PlatformAccess.From(["10.0.0.5"], [], requireTls: true).Hba("dingo_admin", "10.0.0.7");
        var lines = hba.Split('\n', StringSplitOptions.RemoveEmptyEntries).Where(l => !l.StartsWith('#')).ToList();
        Assert.Contains("hostssl all \"dingo_admin\",\"dingo_replicator\" 10.0.0.5/32 scram-sha-256", lines);
        Assert.Contains("hostssl replication \"dingo_admin\",\"dingo_replicator\" 10.0.0.7/32 scram-sha-256", lines);
        Assert.Contains("hostssl all all 0.0.0.0/0 scram-sha-256", lines);
        Assert.Contains("hostssl all all ::/0 scram-sha-256", lines);
        Assert.Contains("host all \"dingo_admin\",\"dingo_replicator\" 0.0.0.0/0 reject", lines);
        // No line lets a TCP login in without TLS; local sockets are not TCP.
        Assert.DoesNotContain(lines, l => l.StartsWith("host ", StringComparison.Ordinal) && !l.EndsWith(" reject", StringComparison.Ordinal));
        Assert.Contains("local all all scram-sha-256", lines);
        Assert.DoesNotContain("hostssl", PlatformAccess.From(["10.0.0.5"], []).Hba("dingo_admin"), StringComparison.Ordinal);
        // No CA known yet: nodes serve no TLS, so no client certificate can be asked for.
        Assert.DoesNotContain("clientcert", hba, StringComparison.Ordinal);
    }

    [Fact]
    public void With_require_tls_and_a_ca_the_platform_roles_also_need_a_client_certificate_and_applications_do_not()
    {
        using var ca = Dingo.Security.PlatformCa.Create("test", DateTimeOffset.UtcNow, TimeSpan.FromDays(30));
        var tls = new Dingo.Postgres.NodeTls(ca, ["127.0.0.1"], TimeSpan.FromDays(30));
        var lines = PlatformAccess.From(["10.0.0.5"], [], requireTls: true, tls: tls).Hba("dingo_admin", "10.0.0.7")
            .Split('\n', StringSplitOptions.RemoveEmptyEntries).Where(l => !l.StartsWith('#')).ToList();
        Assert.Contains("hostssl all \"dingo_admin\",\"dingo_replicator\" 10.0.0.5/32 scram-sha-256 clientcert=verify-ca", lines);
        Assert.Contains("hostssl replication \"dingo_admin\",\"dingo_replicator\" 10.0.0.7/32 scram-sha-256 clientcert=verify-ca", lines);
        Assert.Contains("hostssl all all 0.0.0.0/0 scram-sha-256", lines);
        Assert.DoesNotContain(lines, l => l.Contains("clientcert", StringComparison.Ordinal) && !l.Contains("dingo_admin", StringComparison.Ordinal));
        // TLS offered, not required: as before, the address decides.
        Assert.DoesNotContain("clientcert", PlatformAccess.From(["10.0.0.5"], [], requireTls: false, tls: tls).Hba("dingo_admin"), StringComparison.Ordinal);
    }

    [Fact]
    public void A_loopback_host_stands_for_the_loopback_network_and_admin_networks_are_normalised()
    {
        var access = PlatformAccess.From(["127.0.0.1", "127.0.0.2", "::1", "cell-3.example", "192.0.2.9"], ["10.1.2.3/24", "198.51.100.4"]);
        Assert.Equal(["10.1.2.0/24", "127.0.0.0/8", "192.0.2.9/32", "198.51.100.4/32", "::1/128"], access.Networks);
        // Before its cell has read etcd once, a node lets the platform's roles in from its own host only.
        Assert.Contains("host all \"dingo_admin\",\"dingo_replicator\" 10.0.0.5/32 scram-sha-256", PlatformAccess.LocalOnly.Hba("dingo_admin", "10.0.0.5"), StringComparison.Ordinal);
        Assert.DoesNotContain(PlatformAccess.LocalOnly.Hba("dingo_admin").Split('\n'), l => l.StartsWith("host", StringComparison.Ordinal) && l.EndsWith("scram-sha-256", StringComparison.Ordinal) && l.Contains("dingo_admin", StringComparison.Ordinal));
    }

    [Theory]
    [InlineData("10.0.0.0/33")]
    [InlineData("not-an-address")]
    [InlineData("10.0.0.0/x")]
    public void A_bad_admin_network_is_refused_with_its_text(string network)
    {
        var ex = Assert.Throws<ArgumentException>(() => IpNetworks.Parse(network));
        Assert.Contains(network, ex.Message, StringComparison.Ordinal);
        var settings = Assert.Throws<ArgumentException>(() => TestPlatform.NewSettings(extra: $"dingo.cell.admin-networks = [\"{network}\"]"));
        Assert.Contains("dingo.cell.admin-networks", settings.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_role_name_that_cannot_be_written_into_pg_hba_is_refused() =>
        Assert.Throws<ArgumentException>(() => PlatformAccess.LocalOnly.Hba("bad\"name"));

    [Theory]
    [InlineData("akka.tcp://dingo@10.0.0.5:4053", "10.0.0.5")]
    [InlineData("akka.tcp://dingo@broker-1.example:4053", "broker-1.example")]
    [InlineData("akka.tcp://dingo@[fd00::5]:4053", "fd00::5")]
    [InlineData("nonsense", null)]
    public void A_brokers_host_is_read_from_its_akka_address(string address, string? host) =>
        Assert.Equal(host, PlatformHosts.HostOf(address));

    [Fact]
    public void The_default_settings_list_no_admin_network()
    {
        var settings = DingoSettings.Load([Path.Combine(TestPlatform.RepoRoot(), "hocon", "dingo.conf")], new Dictionary<string, string?>());
        Assert.Empty(settings.Cell.AdminNetworks);
    }
}
