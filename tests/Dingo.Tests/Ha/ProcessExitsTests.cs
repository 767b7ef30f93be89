using System.Diagnostics;
using System.Globalization;
using Dingo.Ha;
using Dingo.Tests.Support;

namespace Dingo.Tests.Ha;

/// <summary>
/// <see cref="ProcessExits"/> on real processes that are not this process's children, as a postmaster started by
/// pg_ctl is not: the end of one is told at once, a forgotten one never, a process already gone cannot be watched.
/// </summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class ProcessExitsTests
{
    /// <summary>A `sleep` orphaned by its shell (so another parent reaps it), and its PID.</summary>
    private static int StartOrphan()
    {
        using var shell = Process.Start(new ProcessStartInfo("/bin/sh", ["-c", "sleep 60 >/dev/null 2>&1 & echo $!"]) { RedirectStandardOutput = true })!;
        var pid = int.Parse(shell.StandardOutput.ReadLine()!, CultureInfo.InvariantCulture);
        shell.WaitForExit();
        return pid;
    }

    [Fact]
    public async Task The_end_of_a_process_that_is_not_a_child_is_told_at_once()
    {
        using var exits = new ProcessExits();
        var pid = StartOrphan();
        var ended = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var watching = exits.Watch(pid, () => ended.TrySetResult());
        Assert.NotNull(watching);
        await Task.Delay(200);
        Assert.False(ended.Task.IsCompleted, "told of an end before the process ended");
        Assert.False(watching.Ended);

        var killed = Stopwatch.StartNew();
        Process.GetProcessById(pid).Kill();
        await ended.Task.WaitAsync(TimeSpan.FromSeconds(5));
        Assert.True(watching.Ended);
        Assert.True(killed.Elapsed < TimeSpan.FromSeconds(1), $"told {killed.Elapsed.TotalMilliseconds:0} ms after the kill");
    }

    [Fact]
    public async Task A_forgotten_process_is_not_told_and_the_others_still_are()
    {
        using var exits = new ProcessExits();
        int first = StartOrphan(), second = StartOrphan();
        var firstTold = 0;
        var secondEnded = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var forgotten = exits.Watch(first, () => Interlocked.Increment(ref firstTold));
        using var kept = exits.Watch(second, () => secondEnded.TrySetResult());
        Assert.NotNull(forgotten);
        forgotten.Dispose();
        Process.GetProcessById(first).Kill();
        Process.GetProcessById(second).Kill();
        await secondEnded.Task.WaitAsync(TimeSpan.FromSeconds(5));
        await Task.Delay(200);
        Assert.Equal(0, Volatile.Read(ref firstTold));
    }

    [Fact]
    public async Task A_process_already_gone_cannot_be_watched()
    {
        using var exits = new ProcessExits();
        using var child = Process.Start("/bin/true")!;
        await child.WaitForExitAsync(); // and reaped: its PID names nothing now
        Assert.Null(exits.Watch(child.Id, () => { }));
    }
}
