using Dingo.Broker;
using Dingo.Cells;
using Dingo.Config;
using Dingo.Model;
using Dingo.Postgres;
using Dingo.Security;
using Dingo.Tests.Support;

namespace Dingo.Tests.Security;

/// <summary>When a node gets a new certificate, what a binding hands out, and how require-tls is set.</summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class PostgresTlsRulesTests
{
    [Fact]
    public void A_running_node_is_due_new_files_only_when_its_hosts_or_the_ca_change()
    {
        using var ca = PlatformCa.Create("test", DateTimeOffset.UtcNow, TimeSpan.FromDays(3650));
        var book = new NodeAccess();
        Assert.True(book.Set(PlatformAccess.From(["10.0.0.5"], [], requireTls: true, tls: new NodeTls(ca, ["127.0.0.1", "db.example.org"], TimeSpan.FromDays(90)))));
        var started = book.ForStart("n-1", "dingo_admin", "10.0.0.5");
        Assert.NotNull(started.Tls);
        Assert.Null(book.Due("n-1"));

        // The same again: nothing to write, no reload.
        Assert.False(book.Set(PlatformAccess.From(["10.0.0.5"], [], requireTls: true, tls: new NodeTls(ca, ["db.example.org", "127.0.0.1"], TimeSpan.FromDays(90)))));
        Assert.Null(book.Due("n-1"));

        // A new host (a binding host added, say): a certificate naming it, same CA.
        Assert.True(book.Set(PlatformAccess.From(["10.0.0.5"], [], requireTls: true, tls: new NodeTls(ca, ["127.0.0.1", "db.example.org", "lb.example.org"], TimeSpan.FromDays(90)))));
        var renewed = book.Due("n-1");
        Assert.NotNull(renewed?.Tls);
        Assert.NotEqual(started.Tls!.CertificatePem, renewed!.Tls!.CertificatePem);
        using (var cert = System.Security.Cryptography.X509Certificates.X509Certificate2.CreateFromPem(renewed.Tls.CertificatePem))
        {
            Assert.True(cert.MatchesHostname("lb.example.org"));
            Assert.True(cert.MatchesHostname("10.0.0.5"), "the node's own listen address");
        }
        Assert.True(ca.Verifies(renewed.Tls.CertificatePem, DateTimeOffset.UtcNow));
        // The client certificate the node's tools present (replication, pg_basebackup, pg_rewind): of the same CA, one
        // for the whole runtime.
        Assert.True(ca.Verifies(renewed.Tls.ClientCertificatePem, DateTimeOffset.UtcNow));
        Assert.Equal(started.Tls.ClientCertificatePem, renewed.Tls.ClientCertificatePem);
        book.Applied("n-1", renewed);
        Assert.Null(book.Due("n-1"));

        // Another CA: every node gets one of the new CA.
        using var other = PlatformCa.Create("other", DateTimeOffset.UtcNow, TimeSpan.FromDays(3650));
        Assert.True(book.Set(PlatformAccess.From(["10.0.0.5"], [], requireTls: true, tls: new NodeTls(other, ["127.0.0.1"], TimeSpan.FromDays(90)))));
        Assert.True(other.Verifies(book.Due("n-1")!.Tls!.CertificatePem, DateTimeOffset.UtcNow));
        Assert.True(other.Verifies(book.Due("n-1")!.Tls!.ClientCertificatePem, DateTimeOffset.UtcNow));

        // require-tls turned off: pg_hba changes (a reload), the certificate stays.
        book.Applied("n-1", book.Due("n-1")!);
        Assert.True(book.Set(PlatformAccess.From(["10.0.0.5"], [], requireTls: false, tls: new NodeTls(other, ["127.0.0.1"], TimeSpan.FromDays(90)))));
        var relaxed = book.Due("n-1");
        Assert.NotNull(relaxed);
        Assert.DoesNotContain("hostssl", relaxed!.Hba, StringComparison.Ordinal);
    }

    [Fact]
    public void A_node_certificate_names_the_binding_host_the_routers_and_the_cells_address_but_no_wildcard()
    {
        var settings = DingoSettings.Load([Path.Combine(TestPlatform.RepoRoot(), "hocon", "dingo.conf")], new Dictionary<string, string?>(), """
            dingo.broker.binding-host = "pg.example.org"
            dingo.router.bind-address = "0.0.0.0"
            dingo.cell.address = "10.0.0.7"
            dingo.postgres.certificate-hosts = ["lb.example.org"]
            """);
        var hosts = NodeTls.HostsFor(settings);
        Assert.Equal(["10.0.0.7", "127.0.0.1", "::1", "lb.example.org", "localhost", "pg.example.org"], hosts.Order(StringComparer.Ordinal));
        using var ca = PlatformCa.Create("test", DateTimeOffset.UtcNow, TimeSpan.FromDays(3650));
        Assert.DoesNotContain("*", new NodeTls(ca, hosts, TimeSpan.FromDays(1)).HostsOf("*"));
        Assert.Contains("10.0.0.9", new NodeTls(ca, hosts, TimeSpan.FromDays(1)).HostsOf("10.0.0.9"));
    }

    [Fact]
    public void A_binding_asks_verify_full_in_every_url_and_carries_the_ca()
    {
        var instance = new InstanceRecord
        {
            Id = "i-1", ServiceId = "s", PlanId = "p", OrganizationGuid = "o", SpaceGuid = "sp", Port = 20001, ReadOnlyPort = 20002, Database = "dingo",
            NodeCount = 2, Superuser = new Credentials("dingo_admin", "x"), Desired = DesiredState.Present,
        };
        var binding = new BindingRecord { Id = "b-1", InstanceId = "i-1", ServiceId = "s", PlanId = "p", Role = new Credentials("b_role", "pw"), State = BindingState.Ready };
        var credentials = BindingCredentials.Json("pg.example.org", instance, binding, "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n")["credentials"]!;
        Assert.Equal("postgres://b_role:pw@pg.example.org:20001/dingo?sslmode=verify-full", (string)credentials["uri"]!);
        Assert.Equal("postgres://b_role:pw@pg.example.org:20002/dingo?sslmode=verify-full", (string)credentials["read_only_uri"]!);
        Assert.EndsWith("&sslmode=verify-full", (string)credentials["jdbcUrl"]!, StringComparison.Ordinal);
        Assert.Equal("verify-full", (string)credentials["sslmode"]!);
        Assert.StartsWith("-----BEGIN CERTIFICATE-----", (string)credentials["ca_certificate"]!, StringComparison.Ordinal);
        // A client reading only the URI finds the host, port, database and sslmode where libpq looks for them.
        var uri = new Uri((string)credentials["uri"]!);
        Assert.Equal(("pg.example.org", 20001, "/dingo", "?sslmode=verify-full"), (uri.Host, uri.Port, uri.AbsolutePath, uri.Query));
    }

    [Theory]
    [InlineData("on", true)]
    [InlineData("off", false)]
    [InlineData(null, false)]
    public void Require_tls_comes_from_the_setting_or_the_environment(string? env, bool expected)
    {
        var variables = new Dictionary<string, string?> { ["DINGO_POSTGRES_REQUIRE_TLS"] = env };
        var settings = DingoSettings.Load([Path.Combine(TestPlatform.RepoRoot(), "hocon", "dingo.conf")], variables);
        Assert.Equal(expected, settings.Postgres.RequireTls);
        Assert.True(DingoSettings.Load([Path.Combine(TestPlatform.RepoRoot(), "hocon", "dingo.conf")], new Dictionary<string, string?>(), "dingo.postgres.require-tls = on").Postgres.RequireTls);
        var bad = Assert.Throws<ArgumentException>(() => DingoSettings.Load([Path.Combine(TestPlatform.RepoRoot(), "hocon", "dingo.conf")], new Dictionary<string, string?>(), "dingo.postgres.ca-cert-file = \"/nonexistent/ca.pem\""));
        Assert.Contains("ca-key-file go together", bad.Message, StringComparison.Ordinal);
    }
}
