using System.Net;
using System.Net.NetworkInformation;
using System.Net.Sockets;
using Akka.Actor;
using Dingo.Membership;
using Dingo.Tests.Support;

namespace Dingo.Tests.Broker;

/// <summary>
/// The address the console's own remoting binds. Brokers answer it over a connection of their own (members use no
/// passive connections), so a console configured on loopback that asks brokers elsewhere binds the address this host
/// reaches them from; a loopback broker (./dingo up) or an explicit address keeps what was configured.
/// </summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class ConsoleAddressRulesTests
{
    [Fact]
    public void A_loopback_console_asking_brokers_elsewhere_binds_the_address_it_reaches_them_from()
    {
        // A broker at one of this machine's own non-loopback addresses: the kernel reaches it from that address.
        var local = NetworkInterface.GetAllNetworkInterfaces().Where(n => n.OperationalStatus == OperationalStatus.Up)
            .SelectMany(n => n.GetIPProperties().UnicastAddresses).Select(a => a.Address)
            .First(a => a.AddressFamily == AddressFamily.InterNetwork && !IPAddress.IsLoopback(a));
        var broker = Address.Parse($"akka.tcp://dingo@{local}:4053");

        Assert.Equal(local.ToString(), ClusterConsole.ReachableHostname("127.0.0.1", [broker]));
        Assert.Equal(local.ToString(), ClusterConsole.ReachableHostname("localhost", [broker]));
        // An address the operator set stays.
        Assert.Equal("10.9.8.7", ClusterConsole.ReachableHostname("10.9.8.7", [broker]));
        // A broker on loopback among them (a platform on one machine): loopback reaches it.
        Assert.Equal("127.0.0.1", ClusterConsole.ReachableHostname("127.0.0.1", [broker, Address.Parse("akka.tcp://dingo@127.0.0.1:4053")]));
        // Brokers named by DNS name only: no lookup here, the configured address.
        Assert.Equal("127.0.0.1", ClusterConsole.ReachableHostname("127.0.0.1", [Address.Parse("akka.tcp://dingo@broker.example:4053")]));
        Assert.Equal("127.0.0.1", ClusterConsole.ReachableHostname("127.0.0.1", []));
    }
}
