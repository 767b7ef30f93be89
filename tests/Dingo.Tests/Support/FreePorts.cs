using System.Net;
using System.Net.Sockets;

namespace Dingo.Tests.Support;

public static class FreePorts
{
    public static int One()
    {
        using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        socket.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        return ((IPEndPoint)socket.LocalEndPoint!).Port;
    }

    private static int _block = -1;

    /// <summary>
    /// A block of 50 public and 50 node ports for one test platform, distinct from every other platform in
    /// this run (routers listen with SO_REUSEPORT, so two tests must never share a port), below the kernel's
    /// ephemeral range and away from the defaults of a `dingo up` running beside the tests.
    /// </summary>
    public static (int PublicFirst, int PublicLast, int NodeFirst, int NodeLast) Block()
    {
        var i = Interlocked.Increment(ref _block) % 20;
        var process = Environment.ProcessId % 5 * 1000;
        var pub = 25000 + process + i * 50;
        var node = 15000 + process + i * 50;
        return (pub, pub + 49, node, node + 49);
    }
}
