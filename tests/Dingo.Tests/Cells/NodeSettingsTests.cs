using System.Text;
using Dingo.Cells;
using Dingo.Model;
using Dingo.Tests.Support;

namespace Dingo.Tests.Cells;

/// <summary>The standby settings both runtimes write (<see cref="NodeSettings.AppendStandbySettings"/>), written once.</summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class NodeSettingsTests
{
    private static readonly ReplicationSource Leader = new("10.0.0.1", 15001, new Credentials("dingo_replication", "s3cret'pw"));

    private static string[] Lines(StandbyConfig? standby, string? tlsDir = null) =>
        new StringBuilder().AppendStandbySettings(standby, "/etc/dingo/replication.pgpass", tlsDir).ToString()
            .Split('\n', StringSplitOptions.RemoveEmptyEntries);

    [Fact]
    public void A_primary_or_a_standby_without_a_leader_streams_from_nobody()
    {
        Assert.Equal(["primary_conninfo = ''", "primary_slot_name = ''"], Lines(null));
        Assert.Equal(["primary_conninfo = ''", "primary_slot_name = ''"], Lines(new StandbyConfig(null, "n_2", "n-2")));
    }

    [Fact]
    public void A_standby_names_its_leader_slot_and_passfile_never_the_password()
    {
        var lines = Lines(new StandbyConfig(Leader, "n_2", "n-2"));
        Assert.Equal(
            "primary_conninfo = 'host=10.0.0.1 port=15001 user=dingo_replication passfile=/etc/dingo/replication.pgpass application_name=n-2 connect_timeout=3 sslmode=prefer'",
            lines[0]);
        Assert.Equal("primary_slot_name = 'n_2'", lines[1]);
        Assert.Equal(2, lines.Length);
        Assert.DoesNotContain(lines, l => l.Contains("s3cret", StringComparison.Ordinal));
    }

    [Fact]
    public void With_the_platform_ca_the_leader_is_verified_and_a_crashed_leader_restarts_with_syncfs()
    {
        var lines = Lines(new StandbyConfig(Leader, "n_1", "n-1") { LeaderAfterCrash = true }, "/etc/dingo");
        Assert.Contains("sslmode=verify-full sslrootcert=/etc/dingo/", lines[0], StringComparison.Ordinal);
        Assert.Equal("recovery_init_sync_method = syncfs", lines[^1]);
    }

    [Theory]
    [InlineData("plain", "'plain'")]
    [InlineData("it's", "'it''s'")]
    [InlineData("", "''")]
    public void Values_are_quoted_as_postgresql_conf_reads_them(string value, string quoted) =>
        Assert.Equal(quoted, NodeSettings.Quote(value));
}
