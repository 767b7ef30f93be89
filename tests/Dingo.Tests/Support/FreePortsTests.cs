using System.Net;
using System.Net.Sockets;

namespace Dingo.Tests.Support;

[Trait(Tier.Name, Tier.Fast)]
public sealed class FreePortsTests
{
    [Fact]
    public void A_block_a_running_platform_holds_or_with_a_port_bound_is_not_handed_out_again()
    {
        var held = FreePorts.Block();
        FreePorts.Hold(held.PublicFirst);
        var bound = FreePorts.Block();
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, bound.NodeFirst + 7));
        listener.Listen();
        try
        {
            Assert.Equal(held.PublicFirst + 49, held.PublicLast);
            Assert.Equal(held.NodeFirst + 49, held.NodeLast);
            // Three times the 20 blocks: a block given out in turn would come back twice.
            for (var i = 0; i < 60; i++)
            {
                var block = FreePorts.Block();
                Assert.NotEqual(held.PublicFirst, block.PublicFirst);
                Assert.NotEqual(bound.PublicFirst, block.PublicFirst);
            }
        }
        finally
        {
            FreePorts.Release(held.PublicFirst);
        }
    }
}
