using System.Diagnostics;
using Dingo.Ha;

namespace Dingo;

/// <summary>
/// Kills a process with everything it started, by SIGKILL alone. <c>Process.Kill(entireProcessTree: true)</c> on Linux
/// first sends SIGSTOP to each process and then lists its children: when the killer exits or is killed in between, or a
/// child is missed, the processes it stopped stay stopped for good, holding their files and sockets (seen: a
/// <c>sh</c> forked by <c>pg_ctl</c>, stopped for hours, holding the file lock of the test run that followed). This
/// never stops a process, so the worst a race can leave is a running orphan that ends by itself.
/// </summary>
public static class ProcessTree
{
    private static readonly TimeSpan PassPause = TimeSpan.FromMilliseconds(10);
    private const int MaxPasses = 100;

    /// <summary>Kills <paramref name="process"/> and its descendants; nothing when it has exited.</summary>
    public static void Kill(Process process)
    {
        int pid;
        try
        {
            if (process.HasExited) return;
            pid = process.Id;
        }
        catch (InvalidOperationException) { return; } // never started, or already disposed
        Kill(pid);
    }

    /// <summary>
    /// Kills the process <paramref name="pid"/> and its descendants, leaves last-listed first and the root last (a root
    /// killed first would hand its children to init, where they can no longer be found), in passes until none is left.
    /// The root is identified by its start time too, so a PID reused meanwhile is never signalled.
    /// </summary>
    public static void Kill(int pid)
    {
        if (ProcessIdentity.Of(pid) is not { } root) return;
        for (var pass = 0; pass < MaxPasses && root.Alive; pass++)
        {
            var descendants = LiveTree(pid).Skip(1).ToList();
            if (descendants.Count == 0) break;
            for (var i = descendants.Count - 1; i >= 0; i--) _ = kill(descendants[i], SigKill);
            Thread.Sleep(PassPause);
        }
        if (root.Alive) _ = kill(pid, SigKill);
    }

    /// <summary>The process and its live (not zombie) descendants, parents before their children.</summary>
    internal static IReadOnlyList<int> LiveTree(int root) => ProcStat.Tree(root, liveOnly: true);

    private const int SigKill = 9;

    [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)]
    private static extern int kill(int pid, int sig);
}
