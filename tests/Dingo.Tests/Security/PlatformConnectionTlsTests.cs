using Dingo.Cells;
using Dingo.Model;
using Dingo.Postgres;
using Dingo.Security;
using Dingo.Tests.Support;
using Npgsql;
using Xunit.Abstractions;

namespace Dingo.Tests.Security;

/// <summary>
/// The platform's own connections to a node (PlatformConnectionTls) on a real PostgreSQL 15: with require-tls they refuse
/// a node that does not serve TLS instead of logging the superuser in in clear, and on one that does they get TLS with
/// SCRAM channel binding. Offered (the default), they take TLS when served and plain otherwise.
/// </summary>
[SuiteCost(13)]
public sealed class PlatformConnectionTlsTests(ITestOutputHelper output)
{
    [Fact]
    public async Task Required_refuses_a_node_without_tls_and_gets_tls_with_channel_binding_once_the_node_serves_it()
    {
        await using var node = await SingleNode.StartAsync(output, "pctls");

        // No TLS served yet: offered connects in clear, required is refused before any password is sent.
        Assert.False(await SslAsync(node, required: false));
        var refused = await Assert.ThrowsAnyAsync<Exception>(() => SslAsync(node, required: true));
        output.WriteLine($"required, node without TLS: {refused.GetType().Name}: {refused.Message}");

        // The cell hands the node its certificate of the platform CA (a reload, no restart).
        using var ca = PlatformCa.Create("test platform CA", DateTimeOffset.UtcNow, TimeSpan.FromDays(30));
        await node.Runtime.ApplyPlatformAccessAsync(PlatformAccess.From(["127.0.0.1"], [], requireTls: false, tls: new NodeTls(ca, ["127.0.0.1"], TimeSpan.FromDays(30))), NodeSql.Ct());
        await Eventually.UntilAsync(async () => await SslAsync(node, required: false), TimeSpan.FromSeconds(30), "the node serving TLS after the reload");

        // Npgsql refuses to finish a login with ChannelBinding=Require unless SCRAM-SHA-256-PLUS was negotiated: this
        // connection succeeding is the channel binding working against PostgreSQL's TLS.
        Assert.True(await SslAsync(node, required: true));
    }

    /// <summary>
    /// With require-tls the node asks the platform's roles for a client certificate of the platform CA: a router forwards
    /// clients from a platform host, so the superuser's password alone must not be enough. The platform's connections
    /// (Npgsql, the archiver's replication protocol, libpq's tools) present one; nobody else holds one.
    /// </summary>
    [Fact]
    public async Task Required_the_platform_roles_need_a_client_certificate_of_the_platform_ca_and_the_node_one_of_a_trusted_ca()
    {
        await using var node = await SingleNode.StartAsync(output, "pccert");
        using var ca = PlatformCa.Create($"client-cert test CA {Guid.NewGuid():N}", DateTimeOffset.UtcNow, TimeSpan.FromDays(30));
        await node.Runtime.ApplyPlatformAccessAsync(PlatformAccess.From(["127.0.0.1"], [], requireTls: true, tls: new NodeTls(ca, ["127.0.0.1"], TimeSpan.FromDays(30))), NodeSql.Ct());

        // The superuser with its password and TLS, but no certificate: refused by pg_hba, saying why.
        string refusal = "";
        await Eventually.UntilAsync(async () =>
        {
            try
            {
                await using var bare = new NpgsqlConnection(Builder(node, required: true).ConnectionString);
                await bare.OpenAsync(NodeSql.Ct());
                return false;
            }
            catch (PostgresException ex) when (ex.SqlState == "28000")
            {
                refusal = ex.MessageText;
                return true;
            }
            catch (NpgsqlException) { return false; } // still without TLS before the reload
        }, TimeSpan.FromSeconds(30), "the node refusing the superuser without a client certificate");
        output.WriteLine($"no client certificate: {refusal}");
        Assert.Contains("certificate", refusal, StringComparison.Ordinal);

        // As the platform connects, once it trusts the CA: TLS, and the node saw the process's certificate.
        PlatformConnectionTls.Trust(ca);
        Assert.True(PlatformConnectionTls.Trusts(ca.Fingerprint));
        await using (var conn = PlatformConnectionTls.Connection(Builder(node, required: true)))
        {
            await conn.OpenAsync(NodeSql.Ct());
            await using var cmd = new NpgsqlCommand("SELECT client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()", conn);
            var dn = (string)(await cmd.ExecuteScalarAsync(NodeSql.Ct()))!;
            output.WriteLine($"platform connection: client_dn {dn}");
            Assert.Contains("dingo-platform", dn, StringComparison.Ordinal);
        }

        // The archiver's replication connection presents it too.
        await using (var replication = PlatformConnectionTls.ReplicationConnection(Builder(node, required: true)))
        {
            await replication.Open(NodeSql.Ct());
            var system = await replication.IdentifySystem(NodeSql.Ct());
            output.WriteLine($"replication connection: system {system.SystemId}, timeline {system.Timeline}");
        }

        // libpq (replicas, pg_basebackup, pg_rewind) with the files a cell writes beside a node: the same, and without them refused.
        var folder = Path.Combine(Path.GetTempPath(), $"dingo-pccert-{Guid.NewGuid():N}");
        SecretFile.CreatePrivateFolder(folder);
        try
        {
            var client = ca.IssueClient("dingo-cell", DateTimeOffset.UtcNow, TimeSpan.FromDays(1));
            await SecretFile.WriteAsync(Path.Combine(folder, NodeTlsFiles.ClientKeyFile), client.KeyPem, NodeSql.Ct());
            await File.WriteAllTextAsync(Path.Combine(folder, NodeTlsFiles.ClientCertFile), client.CertificatePem, NodeSql.Ct());
            await File.WriteAllTextAsync(Path.Combine(folder, NodeTlsFiles.CaFile), ca.CertificatePem, NodeSql.Ct());
            var with = await PsqlAsync(node, NodeTlsFiles.ClientConninfo(folder));
            Assert.True(with.Exit == 0 && with.Out == "t", $"psql with the cell's files: {with.Out} / {with.Err}");
            var without = await PsqlAsync(node, $"sslmode=verify-full sslrootcert={Path.Combine(folder, NodeTlsFiles.CaFile)} sslcert=/nonexistent sslkey=/nonexistent");
            Assert.True(without.Exit != 0 && without.Err.Contains("certificate", StringComparison.Ordinal), $"psql without a client certificate: {without.Out} / {without.Err}");
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }

        // The node now serves a certificate of a CA this process does not trust: refused before any password is sent.
        using var other = PlatformCa.Create($"untrusted CA {Guid.NewGuid():N}", DateTimeOffset.UtcNow, TimeSpan.FromDays(30));
        await node.Runtime.ApplyPlatformAccessAsync(PlatformAccess.From(["127.0.0.1"], [], requireTls: true, tls: new NodeTls(other, ["127.0.0.1"], TimeSpan.FromDays(30))), NodeSql.Ct());
        Exception? rejected = null;
        await Eventually.UntilAsync(async () =>
        {
            try
            {
                await using var conn = PlatformConnectionTls.Connection(Builder(node, required: true));
                await conn.OpenAsync(NodeSql.Ct());
                return false;
            }
            catch (NpgsqlException ex) when (ex.InnerException is System.Security.Authentication.AuthenticationException)
            {
                rejected = ex;
                return true;
            }
        }, TimeSpan.FromSeconds(30), "a node of an untrusted CA refused");
        output.WriteLine($"node of an untrusted CA: {rejected!.InnerException!.Message}");
    }

    [Fact]
    [Trait(Tier.Name, Tier.Fast)]
    public void A_client_certificate_is_chosen_by_the_ca_the_node_names()
    {
        using var a = PlatformCa.Create($"CA a {Guid.NewGuid():N}", DateTimeOffset.UtcNow, TimeSpan.FromDays(30));
        using var b = PlatformCa.Create($"CA b {Guid.NewGuid():N}", DateTimeOffset.UtcNow, TimeSpan.FromDays(30));
        PlatformConnectionTls.Trust(a);
        PlatformConnectionTls.Trust(b);
        var identities = PlatformConnectionTls.Identities;
        var forB = PlatformConnectionTls.Select(identities, [b.Subject.Name], remote: null);
        Assert.NotNull(forB);
        Assert.True(b.Verifies(forB!, DateTimeOffset.UtcNow));
        Assert.False(a.Verifies(forB!, DateTimeOffset.UtcNow));
        // Several trusted, none named: none presented rather than a wrong one.
        using var c = PlatformCa.Create($"CA c {Guid.NewGuid():N}", DateTimeOffset.UtcNow, TimeSpan.FromDays(30));
        Assert.Null(PlatformConnectionTls.Select(identities, [c.Subject.Name], remote: null));
        // A libpq tool presents the client certificate of the CA asked for, not the one trusted last (fresh208: a test
        // process's base backup presented another platform's and the node answered "unknown ca").
        using (var forA = System.Security.Cryptography.X509Certificates.X509Certificate2.CreateFromPem(PlatformConnectionTls.Libpq(a.Fingerprint)!.CertificatePem))
        {
            Assert.True(a.Verifies(forA, DateTimeOffset.UtcNow));
            Assert.False(b.Verifies(forA, DateTimeOffset.UtcNow));
        }
        Assert.Null(PlatformConnectionTls.Libpq(c.Fingerprint));
        // Trusting again is free until the certificate is due.
        PlatformConnectionTls.Trust(b);
        Assert.Same(identities[b.Fingerprint].Client, PlatformConnectionTls.Identities[b.Fingerprint].Client);
        // Client authentication only, no host names: it opens no server's door.
        var client = b.IssueClient("dingo-platform", DateTimeOffset.UtcNow, TimeSpan.FromDays(1));
        using var cert = System.Security.Cryptography.X509Certificates.X509Certificate2.CreateFromPem(client.CertificatePem);
        var usages = cert.Extensions.OfType<System.Security.Cryptography.X509Certificates.X509EnhancedKeyUsageExtension>().Single().EnhancedKeyUsages;
        Assert.Equal(["1.3.6.1.5.5.7.3.2"], usages.Cast<System.Security.Cryptography.Oid>().Select(o => o.Value));
        Assert.Empty(cert.Extensions.OfType<System.Security.Cryptography.X509Certificates.X509SubjectAlternativeNameExtension>());
    }

    [Fact]
    [Trait(Tier.Name, Tier.Fast)]
    public void Offered_is_the_default_and_required_asks_tls_and_channel_binding()
    {
        var offered = PlatformConnectionTls.Apply(new NpgsqlConnectionStringBuilder(), required: false);
        Assert.Equal((SslMode.Prefer, ChannelBinding.Prefer), (offered.SslMode, offered.ChannelBinding));
        var required = PlatformConnectionTls.Apply(new NpgsqlConnectionStringBuilder(), required: true);
        Assert.Equal((SslMode.Require, ChannelBinding.Require), (required.SslMode, required.ChannelBinding));
        // The test host's own policy was never configured: in-process platforms keep the default.
        Assert.False(PlatformConnectionTls.Required);
    }

    private static NpgsqlConnectionStringBuilder Builder(SingleNode node, bool required) =>
        PlatformConnectionTls.Apply(DatabaseAdmin.ConnectionString("127.0.0.1", node.Port, node.Superuser, "postgres"), required);

    private static async Task<(int Exit, string Out, string Err)> PsqlAsync(SingleNode node, string tls)
    {
        var psi = new System.Diagnostics.ProcessStartInfo(Path.Combine(new LocalProcessRuntimeOptions("/unused").PostgresBin, "psql"))
        {
            RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
        };
        var conninfo = $"host=127.0.0.1 port={node.Port} dbname=postgres user={node.Superuser.Username} connect_timeout=5 {tls}";
        foreach (var arg in new[] { "-X", "-q", "-At", "-d", conninfo, "-c", "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()" }) psi.ArgumentList.Add(arg);
        psi.Environment["PGPASSWORD"] = node.Superuser.Password;
        using var process = System.Diagnostics.Process.Start(psi)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync(NodeSql.Ct());
        return (process.ExitCode, (await stdout).Trim(), (await stderr).Trim());
    }

    /// <summary>Connects as the platform does and says whether the session is over TLS (pg_stat_ssl).</summary>
    private static async Task<bool> SslAsync(SingleNode node, bool required)
    {
        await using var conn = new NpgsqlConnection(Builder(node, required).ConnectionString);
        await conn.OpenAsync(NodeSql.Ct());
        await using var cmd = new NpgsqlCommand("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", conn);
        return (bool)(await cmd.ExecuteScalarAsync(NodeSql.Ct()))!;
    }
}
