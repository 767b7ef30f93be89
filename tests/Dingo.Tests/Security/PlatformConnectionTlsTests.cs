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
public sealed class PlatformConnectionTlsTests(ITestOutputHelper output) : IAsyncLifetime
{
    private readonly string _root = Path.Combine("/tmp", "dingo-pctls-" + Guid.NewGuid().ToString("N")[..12]);
    private readonly Credentials _superuser = new(DatabaseAdmin.SuperuserName, "Pw" + Guid.NewGuid().ToString("N"));
    private readonly int _port = FreePorts.One();
    private LocalProcessRuntime _runtime = null!;

    public Task InitializeAsync()
    {
        _runtime = new LocalProcessRuntime(new LocalProcessRuntimeOptions(_root), new TestOutputLogger<LocalProcessRuntime>(output));
        return Task.CompletedTask;
    }

    public async Task DisposeAsync()
    {
        foreach (var node in await _runtime.ListAsync(CancellationToken.None))
        {
            try { await _runtime.RemoveAsync(node.NodeId, CancellationToken.None); }
            catch (Exception ex) { output.WriteLine($"cleanup: {node.NodeId}: {ex.Message}"); }
        }
        try { Directory.Delete(_root, recursive: true); }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException) { output.WriteLine($"cleanup: {ex.Message}"); }
    }

    [Fact]
    public async Task Required_refuses_a_node_without_tls_and_gets_tls_with_channel_binding_once_the_node_serves_it()
    {
        var spec = new NodeLaunchSpec("n-pctls", "pctls", "127.0.0.1", _port, _superuser);
        await _runtime.CreateAsync(spec, NodeSql.Ct());
        await _runtime.StartAsync(spec, null, NodeSql.Ct());
        await NodeSql.WaitServingAsync(spec, _superuser);

        // No TLS served yet: offered connects in clear, required is refused before any password is sent.
        Assert.False(await SslAsync(required: false));
        var refused = await Assert.ThrowsAnyAsync<Exception>(() => SslAsync(required: true));
        output.WriteLine($"required, node without TLS: {refused.GetType().Name}: {refused.Message}");

        // The cell hands the node its certificate of the platform CA (a reload, no restart).
        using var ca = PlatformCa.Create("test platform CA", DateTimeOffset.UtcNow, TimeSpan.FromDays(30));
        await _runtime.ApplyPlatformAccessAsync(PlatformAccess.From(["127.0.0.1"], [], requireTls: false, tls: new NodeTls(ca, ["127.0.0.1"], TimeSpan.FromDays(30))), NodeSql.Ct());
        await Eventually.UntilAsync(async () => await SslAsync(required: false), TimeSpan.FromSeconds(30), "the node serving TLS after the reload");

        // Npgsql refuses to finish a login with ChannelBinding=Require unless SCRAM-SHA-256-PLUS was negotiated: this
        // connection succeeding is the channel binding working against PostgreSQL's TLS.
        Assert.True(await SslAsync(required: true));
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

    private NpgsqlConnectionStringBuilder Builder(bool required) =>
        PlatformConnectionTls.Apply(DatabaseAdmin.ConnectionString("127.0.0.1", _port, _superuser, "postgres"), required);

    /// <summary>Connects as the platform does and says whether the session is over TLS (pg_stat_ssl).</summary>
    private async Task<bool> SslAsync(bool required)
    {
        await using var conn = new NpgsqlConnection(Builder(required).ConnectionString);
        await conn.OpenAsync(NodeSql.Ct());
        await using var cmd = new NpgsqlCommand("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", conn);
        return (bool)(await cmd.ExecuteScalarAsync(NodeSql.Ct()))!;
    }
}
