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

    private const int Blocks = 20, BlockSize = 50, PublicBase = 25000, NodeBase = 15000;
    private static readonly object BlockGate = new();
    // When each block was last handed out (a count, 0: never) and how many running platforms use it now.
    private static readonly long[] BlockHandedOut = new long[Blocks];
    private static readonly int[] BlockHolders = new int[Blocks];
    private static long _handouts;
    // This process's share of the block ranges (a developer may run two test processes at once).
    private static readonly int BlockShare = Environment.ProcessId % 5 * 1000;

    /// <summary>
    /// A block of 50 public and 50 node ports for one test platform, distinct from every other platform in
    /// this run (routers listen with SO_REUSEPORT, so two tests must never share a port), below the kernel's
    /// ephemeral range and away from the defaults of a `dingo up` running beside the tests.
    /// <para>
    /// This process has 20 blocks and a run makes many more platforms, so blocks are used again: never one a running
    /// platform holds (<see cref="Hold"/>), nor one with any port bound now (a test's own PostgreSQL or cell process
    /// on it, a connection not yet gone), and otherwise the one handed out longest ago. Taken in turn instead (until
    /// 28f8a94), a block went to a second platform whenever 20 were made while one ran (the 11 tests of
    /// SlowLeaderStepTests take one each): two platforms on the same ports, where the kernel-mode test's nftables rules
    /// catch every local connection to its public port, the other platform's too.
    /// </para>
    /// </summary>
    public static (int PublicFirst, int PublicLast, int NodeFirst, int NodeLast) Block()
    {
        var process = BlockShare;
        lock (BlockGate)
        {
            var idle = Enumerable.Range(0, Blocks).Where(i => BlockHolders[i] == 0).OrderBy(i => BlockHandedOut[i]).ToList();
            if (idle.Count == 0)
                throw new InvalidOperationException($"all {Blocks} port blocks of this process are held by running test platforms");
            // A block with a port still bound waits its turn, unless every idle block has one (then the oldest goes).
            var chosen = idle.FirstOrDefault(i => AllFree(PublicBase + process + i * BlockSize) && AllFree(NodeBase + process + i * BlockSize), idle[0]);
            BlockHandedOut[chosen] = ++_handouts;
            var pub = PublicBase + process + chosen * BlockSize;
            var node = NodeBase + process + chosen * BlockSize;
            return (pub, pub + BlockSize - 1, node, node + BlockSize - 1);
        }
    }

    /// <summary>A platform on the block starting at <paramref name="publicFirst"/> runs: <see cref="Block"/> gives it to no one else until <see cref="Release"/>.</summary>
    public static void Hold(int publicFirst) => Count(publicFirst, +1);

    /// <summary>The platform <see cref="Hold"/> named has stopped.</summary>
    public static void Release(int publicFirst) => Count(publicFirst, -1);

    private static void Count(int publicFirst, int delta)
    {
        var offset = publicFirst - PublicBase - BlockShare;
        if (offset < 0 || offset % BlockSize != 0 || offset / BlockSize >= Blocks)
            return; // settings with ports of their own, not a block of this process
        lock (BlockGate)
            BlockHolders[offset / BlockSize] = Math.Max(0, BlockHolders[offset / BlockSize] + delta);
    }

    private static bool AllFree(int first)
    {
        for (var port = first; port < first + BlockSize; port++)
        {
            using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            try { socket.Bind(new IPEndPoint(IPAddress.Loopback, port)); }
            catch (SocketException) { return false; }
        }
        return true;
    }
}
