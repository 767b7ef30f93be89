using System.Diagnostics;
using System.Globalization;
using Dingo.Ha;

namespace Dingo.Tests.Support;

/// <summary>
/// <see cref="ProcessTree.Kill(Process)"/> against real shells: every process of the tree ends, and none is ever left
/// stopped (state T), which is what Process.Kill(entireProcessTree: true) leaves behind when it loses a race.
/// </summary>
public sealed class ProcessTreeTests
{
    [Fact]
    public async Task Every_process_of_a_nested_tree_is_killed_and_none_left_stopped()
    {
        var tag = UniqueSleep();
        using var root = Start($"bash -c 'sleep {tag} & sleep {tag} & wait' & sleep {tag} & wait");
        try
        {
            var tree = await TreeOfAtLeastAsync(root.Id, 5);
            var identities = tree.Select(ProcessIdentity.Of).OfType<ProcessIdentity>().ToList();
            Assert.Equal(tree.Count, identities.Count);

            ProcessTree.Kill(root);

            Assert.True(root.WaitForExit(5000), "the root still runs");
            await Eventually.UntilAsync(() => Task.FromResult(identities.All(i => !i.Alive)), TimeSpan.FromSeconds(5), "every process of the tree gone");
            Assert.Empty(Tagged(tag));
        }
        finally
        {
            Cleanup(root, tag);
        }
    }

    [Fact]
    public async Task A_tree_that_keeps_forking_is_killed_and_leaves_nothing_stopped()
    {
        var tag = UniqueSleep();
        using var root = Start($"while :; do sleep {tag} & sleep 0.01; done");
        try
        {
            await TreeOfAtLeastAsync(root.Id, 10);

            ProcessTree.Kill(root);

            Assert.True(root.WaitForExit(5000), "the forking shell still runs");
            // A child forked in the instant between listing and killing its parent can outlive it (a running orphan that
            // ends by itself); none may be stopped.
            Assert.DoesNotContain(Tagged(tag), p => p.State == "T");
        }
        finally
        {
            Cleanup(root, tag);
        }
    }

    [Fact]
    public void A_process_that_has_exited_is_left_alone()
    {
        using var done = Start("true");
        Assert.True(done.WaitForExit(5000));
        ProcessTree.Kill(done); // no exception, no signal to a PID that may since have been reused
        ProcessTree.Kill(int.MaxValue);
    }

    /// <summary>A sleep duration unique to the test, so its processes are found by their command line.</summary>
    private static string UniqueSleep() =>
        "300." + Random.Shared.Next(100_000, 999_999).ToString(CultureInfo.InvariantCulture);

    /// <summary>
    /// The script with its shells' stderr closed to the test run: a shell whose children are SIGKILLed reports each
    /// ("bash: line 1: 14535 Killed sleep 300.59"), and the forking test's hundred such lines filled the tail of the
    /// CI log that the failures above it needed (stop 37).
    /// </summary>
    private static Process Start(string script) =>
        Process.Start(new ProcessStartInfo("bash", ["-c", "exec 2>/dev/null; " + script]) { UseShellExecute = false })
        ?? throw new InvalidOperationException("bash did not start");

    private static async Task<IReadOnlyList<int>> TreeOfAtLeastAsync(int root, int count)
    {
        IReadOnlyList<int> tree = [];
        await Eventually.UntilAsync(() => Task.FromResult((tree = ProcessTree.LiveTree(root)).Count >= count), TimeSpan.FromSeconds(10),
            $"a tree of {count} processes");
        return tree;
    }

    /// <summary>Processes whose command line holds the tag, with their state letter.</summary>
    private static List<(int Pid, string State)> Tagged(string tag)
    {
        var found = new List<(int, string)>();
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), out var pid)) continue;
            try
            {
                if (!File.ReadAllText(Path.Combine(dir, "cmdline")).Contains(tag, StringComparison.Ordinal)) continue;
                var stat = File.ReadAllText(Path.Combine(dir, "stat"));
                var state = stat[(stat.LastIndexOf(')') + 2)..].Split(' ')[0];
                if (state is not ("Z" or "X")) found.Add((pid, state));
            }
            catch (IOException) { }
        }
        return found;
    }

    /// <summary>Whatever the test left: continued and killed, so nothing of it outlives a failure.</summary>
    private static void Cleanup(Process root, string tag)
    {
        try { if (!root.HasExited) root.Kill(); } catch (InvalidOperationException) { }
        foreach (var (pid, _) in Tagged(tag))
        {
            _ = FenceGuardDirectory.Native.kill(pid, 18);
            _ = FenceGuardDirectory.Native.kill(pid, FenceGuardDirectory.Native.SigKill);
        }
    }
}
