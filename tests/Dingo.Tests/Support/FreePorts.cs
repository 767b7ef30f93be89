using System.Net;
using System.Net.Sockets;

namespace Dingo.Tests.Support;

public static class FreePorts
{
    private const int SingleFirst = 30000;
    private const int SinglePerProcess = 690; // four processes' shares fit below the kernel's ephemeral range (32768+)
    private static int _single = -1;

    /// <summary>
    /// A port free now, for a server a test starts later. Not one the kernel picked (port 0): those come from the ephemeral
    /// range, which every outgoing connection of the machine draws from too, so a port picked that way was seen taken by
    /// the time a test's PostgreSQL started on it (LocalProcessRuntimeTests on a fresh clone: "Address already in use").
    /// Here ports come in turn from a share of 30000–32759 of this process's own, each checked free when handed out.
    /// </summary>
    public static int One()
    {
        var share = SingleFirst + Environment.ProcessId % 4 * SinglePerProcess;
        for (var tries = 0; tries < SinglePerProcess; tries++)
        {
            var port = share + Interlocked.Increment(ref _single) % SinglePerProcess;
            using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            try
            {
                socket.Bind(new IPEndPoint(IPAddress.Loopback, port));
                return port;
            }
            catch (SocketException) { } // in use by someone else: the next one
        }
        throw new InvalidOperationException($"no free port in {share}-{share + SinglePerProcess - 1}");
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
