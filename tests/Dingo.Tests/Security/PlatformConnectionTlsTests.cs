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
[SuiteCost(8)]
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

    /// <summary>Connects as the platform does and says whether the session is over TLS (pg_stat_ssl).</summary>
    private static async Task<bool> SslAsync(SingleNode node, bool required)
    {
        await using var conn = new NpgsqlConnection(Builder(node, required).ConnectionString);
        await conn.OpenAsync(NodeSql.Ct());
        await using var cmd = new NpgsqlCommand("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", conn);
        return (bool)(await cmd.ExecuteScalarAsync(NodeSql.Ct()))!;
    }
}
