using System.Diagnostics;
using Dingo.Cells;
using Dingo.Tests.Support;

namespace Dingo.Tests.Cells;

/// <summary>When a warm pool fill may run: only behind the cell's own node work, and never kept waiting for ever.</summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class WarmPoolLoopTests
{
    private static long Ago(TimeSpan span) => Stopwatch.GetTimestamp() - (long)(span.TotalSeconds * Stopwatch.Frequency);

    [Fact]
    public void A_cell_with_no_node_work_yet_may_fill_at_once()
    {
        Assert.True(WarmPoolLoop.MayFill(new NodeWork(), lastFill: Stopwatch.GetTimestamp()));
    }

    [Fact]
    public void No_fill_while_a_node_is_being_started_nor_within_the_quiet_time_after()
    {
        var work = new NodeWork();
        var start = work.Begin();
        Assert.False(WarmPoolLoop.MayFill(work, Stopwatch.GetTimestamp()));
        Assert.False(work.QuietFor(TimeSpan.Zero)); // running, however long ago it began
        start.Dispose();
        Assert.False(WarmPoolLoop.MayFill(work, Stopwatch.GetTimestamp()));
        start.Dispose(); // a second dispose does not count the work as ended twice
        using (work.Begin())
            Assert.False(work.QuietFor(TimeSpan.Zero));
        Assert.True(work.QuietFor(TimeSpan.Zero));
    }

    [Fact]
    public void A_clone_and_a_replica_start_are_node_work_but_not_work_an_application_waits_for()
    {
        var work = new NodeWork();
        using (var clone = work.Begin(serving: false))
        {
            Assert.False(work.QuietFor(TimeSpan.Zero));
            Assert.True(work.ServingQuietFor(TimeSpan.Zero));
            Assert.True(work.ServingQuietFor(TimeSpan.FromHours(1))); // nothing an application waits for was ever begun
        }
        Assert.False(work.QuietFor(WarmPoolLoop.Quiet)); // a fill still waits behind the clone
        using (work.Begin())
        {
            Assert.False(work.ServingQuietFor(TimeSpan.Zero));
            Assert.False(work.QuietFor(TimeSpan.Zero));
        }
        Assert.False(work.ServingQuietFor(TimeSpan.FromSeconds(5)));
        Assert.True(work.ServingQuietFor(TimeSpan.Zero));
        work.Touch(serving: false);
        Assert.True(work.ServingQuietFor(TimeSpan.Zero));
        work.Touch(); // a claim
        Assert.False(work.ServingQuietFor(TimeSpan.FromSeconds(5)));
    }

    [Fact]
    public void A_claim_counts_as_node_work_for_the_quiet_time()
    {
        var work = new NodeWork();
        work.Touch();
        Assert.False(WarmPoolLoop.MayFill(work, Stopwatch.GetTimestamp()));
        Assert.False(work.QuietFor(WarmPoolLoop.Quiet));
    }

    [Fact]
    public async Task Once_the_quiet_time_has_passed_a_fill_may_run()
    {
        var work = new NodeWork();
        using (work.Begin()) { }
        var span = TimeSpan.FromMilliseconds(50);
        Assert.False(work.QuietFor(TimeSpan.FromHours(1)));
        await Task.Delay(span * 2);
        Assert.True(work.QuietFor(span));
    }

    [Fact]
    public void A_pool_kept_waiting_long_enough_is_filled_even_behind_work_that_never_ends()
    {
        var work = new NodeWork();
        using var endless = work.Begin();
        Assert.False(WarmPoolLoop.MayFill(work, Ago(WarmPoolLoop.MostDeferred - TimeSpan.FromSeconds(5))));
        Assert.True(WarmPoolLoop.MayFill(work, Ago(WarmPoolLoop.MostDeferred + TimeSpan.FromSeconds(1))));
    }
}
