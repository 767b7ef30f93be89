using Dingo.Ha;
using Dingo.Tests.Support;

namespace Dingo.Tests.Ha;

/// <summary>What the observe step makes of the other members' reports before it asks them anything.</summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class NodeObserverTests
{
    [Theory]
    [InlineData("10.0.0.7", 8008, false, "http://10.0.0.7:8008/wal-position")]
    [InlineData("cell-2.example", 8443, true, "https://cell-2.example:8443/wal-position")]
    [InlineData("::1", 8008, false, "http://[::1]:8008/wal-position")]
    public void A_members_wal_position_is_asked_at_its_reported_address(string host, int port, bool tls, string expected)
    {
        Assert.Equal(expected, NodeObserver.WalPositionUri(host, port, tls)?.ToString());
    }

    [Theory]
    [InlineData("bad host", 8008)]
    [InlineData("10.0.0.7/../x", 8008)]
    [InlineData("10.0.0.7", 70000)]
    public void A_damaged_report_is_no_address_so_its_postgresql_is_asked_instead(string host, int port)
    {
        Assert.Null(NodeObserver.WalPositionUri(host, port, tls: false));
    }
}
