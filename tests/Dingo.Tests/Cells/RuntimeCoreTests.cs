using System.Diagnostics;
using Dingo.Cells;
using Dingo.Model;
using Dingo.Tests.Support;

namespace Dingo.Tests.Cells;

/// <summary>What both runtimes (and the kernel router) share: the node-id rule, the per-node lock, the tool runner.</summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class RuntimeCoreTests
{
    [Theory]
    [InlineData("n-1a2b3c4d", true)]
    [InlineData("a", true)]
    [InlineData("node_1.x", true)]
    [InlineData("", false)]
    [InlineData(".", false)]
    [InlineData("..", false)]
    [InlineData("-n", false)]      // an option to a tool
    [InlineData(".hidden", false)]
    [InlineData("@warm", false)]   // the process runtime's pool folder is never a node
    [InlineData("n/1", false)]
    [InlineData("n 1", false)]
    [InlineData("n-ü", false)]
    public void Node_ids_follow_one_rule(string id, bool valid)
    {
        Assert.Equal(valid, NodeIdRule.IsValid(id));
        if (!valid) Assert.Throws<ArgumentException>(() => NodeIdRule.Check(id));
    }

    [Fact]
    public void Node_ids_are_at_most_100_characters()
    {
        Assert.True(NodeIdRule.IsValid(new string('n', 100)));
        Assert.False(NodeIdRule.IsValid(new string('n', 101)));
    }

    [Fact]
    public async Task A_node_lock_is_held_until_disposed_and_other_nodes_are_free()
    {
        var locks = new NodeLocks();
        var first = await locks.LockAsync("n-1", CancellationToken.None);
        var waiting = locks.LockAsync("n-1", CancellationToken.None);
        (await locks.LockAsync("n-2", CancellationToken.None)).Dispose();
        await Task.Delay(50);
        Assert.False(waiting.IsCompleted);
        first.Dispose();
        first.Dispose(); // twice releases once
        (await waiting.WaitAsync(TimeSpan.FromSeconds(5))).Dispose();
        using var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(50));
        using var held = await locks.LockAsync("n-1", CancellationToken.None);
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => locks.LockAsync("n-1", cts.Token));
    }

    [Fact]
    public async Task A_tool_gets_its_input_and_gives_both_outputs()
    {
        var psi = new ProcessStartInfo("sh");
        psi.ArgumentList.Add("-c");
        psi.ArgumentList.Add("read line; echo \"got $line\"; echo oops >&2; exit 3");
        var result = await ProcessRunner.RunAsync(psi, "secret\n", TimeSpan.FromSeconds(10), CancellationToken.None);
        Assert.Equal((3, "got secret\n", "oops\n"), (result.ExitCode, result.StdOut, result.StdErr));
    }

    [Fact]
    public async Task A_tool_past_its_deadline_is_killed_with_what_it_started_and_named_without_its_arguments()
    {
        var pidFile = Path.Combine(Path.GetTempPath(), "dingo-runner-" + Guid.NewGuid().ToString("N"));
        try
        {
            var psi = new ProcessStartInfo("sh");
            psi.ArgumentList.Add("-c");
            psi.ArgumentList.Add($"sleep 60 & echo $! > {pidFile}; wait # password=hunter2");
            var error = await Assert.ThrowsAsync<TimeoutException>(() => ProcessRunner.RunAsync(psi, null, TimeSpan.FromMilliseconds(500), CancellationToken.None));
            Assert.Equal("sh did not finish within 0.5 s", error.Message);
            var child = int.Parse(File.ReadAllText(pidFile).Trim(), System.Globalization.CultureInfo.InvariantCulture);
            await Eventually.UntilAsync(() => Task.FromResult(Dingo.ProcessIdentity.Of(child) is null), TimeSpan.FromSeconds(5), $"the tool's child {child} is gone");
        }
        finally { File.Delete(pidFile); }
    }

    [Fact]
    public async Task A_cancelled_run_kills_the_tool_and_says_cancelled()
    {
        var psi = new ProcessStartInfo("sleep");
        psi.ArgumentList.Add("60");
        using var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(200));
        var watch = Stopwatch.StartNew();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => ProcessRunner.RunAsync(psi, null, TimeSpan.FromSeconds(30), cts.Token));
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(10), $"took {watch.Elapsed}");
    }
}
