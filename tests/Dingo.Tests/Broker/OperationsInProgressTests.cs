using System.Diagnostics;
using Dingo.Broker;
using Dingo.Tests.Support;

namespace Dingo.Tests.Broker;

/// <summary>What a broker counts as in progress: its own accepted operations and the sweep's list, never dropping one marked after the list was read.</summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class OperationsInProgressTests
{
    [Fact]
    public void A_sweep_keeps_what_it_lists_and_what_began_after_it_read()
    {
        var ops = new OperationsInProgress();
        ops.Mark("accepted-before");
        var readAt = Stopwatch.GetTimestamp();
        ops.Mark("accepted-after"); // accepted while the sweep's list was being read: not in it yet
        ops.Are(["listed"], readAt);
        Assert.True(ops.Contains("listed"));
        Assert.True(ops.Contains("accepted-after"));
        Assert.False(ops.Contains("accepted-before")); // ended: the list read after it does not hold it
        Assert.Equal(2, ops.Count);

        // The next sweep's list no longer holds either: both ended.
        ops.Are([], Stopwatch.GetTimestamp());
        Assert.Equal(0, ops.Count);
    }
}
