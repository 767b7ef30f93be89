using System.Globalization;

namespace Dingo.Bench.Shared;

/// <summary>
/// Signals to every process of one PostgreSQL at once: a host vanishing (SIGKILL, with no shutdown, no checkpoint
/// and no last words to a replication client), or a host frozen (SIGSTOP, later SIGCONT).
/// </summary>
internal static class PostgresSignals
{
    public const int SigStop = 19;
    public const int SigCont = 18;

    /// <summary>
    /// SIGKILL to the postmaster and every process it forked. Each PostgreSQL child calls setsid(), so there is no
    /// process group to kill at once: the postmaster is first stopped (SIGSTOP: it forks nothing more), its children
    /// listed (while it lives they are still its children), then all of them killed.
    /// </summary>
    /// <returns>The processes killed, the postmaster last.</returns>
    public static IReadOnlyList<int> KillPostgres(int postmaster)
    {
        if (Stat(postmaster) is null)
            throw new InvalidOperationException($"postmaster {postmaster} is not running");
        if (!ChildProcesses.Signal(postmaster, SigStop))
            throw new InvalidOperationException($"kill({postmaster}, SIGSTOP) failed");
        var children = ChildrenOf(postmaster);
        foreach (var child in children) ChildProcesses.Signal(child, ChildProcesses.SigKill);
        ChildProcesses.Signal(postmaster, ChildProcesses.SigKill);
        return [.. children, postmaster];
    }

    /// <summary>
    /// SIGSTOP to the postmaster (first, so it forks nothing more) and every process it forked: the whole server
    /// stops answering, its sockets stay open.
    /// </summary>
    /// <returns>The processes stopped, the postmaster first; give them to <see cref="Continue"/>.</returns>
    public static IReadOnlyList<int> StopPostgres(int postmaster)
    {
        if (Stat(postmaster) is null)
            throw new InvalidOperationException($"postmaster {postmaster} is not running");
        if (!ChildProcesses.Signal(postmaster, SigStop))
            throw new InvalidOperationException($"kill({postmaster}, SIGSTOP) failed");
        var children = ChildrenOf(postmaster);
        foreach (var child in children) ChildProcesses.Signal(child, SigStop);
        return [postmaster, .. children];
    }

    /// <summary>SIGCONT to processes <see cref="StopPostgres"/> stopped, the postmaster last; gone ones are skipped.</summary>
    public static void Continue(IReadOnlyList<int> stopped)
    {
        foreach (var pid in stopped.Reverse()) ChildProcesses.Signal(pid, SigCont);
    }

    /// <summary>Waits until every one of the processes is gone (or an unreaped zombie).</summary>
    public static async Task WaitGoneAsync(IReadOnlyList<int> pids, CancellationToken ct)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (pids.FirstOrDefault(pid => Stat(pid) is { State: not ('Z' or 'X') }) is var alive and not 0)
        {
            if (DateTime.UtcNow > deadline) throw new InvalidOperationException($"PostgreSQL process {alive} survived SIGKILL");
            await Task.Delay(10, ct);
        }
    }

    private static List<int> ChildrenOf(int parent)
    {
        var children = new List<int>();
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
            if (int.TryParse(Path.GetFileName(dir), NumberStyles.None, CultureInfo.InvariantCulture, out var pid) && Stat(pid)?.Parent == parent)
                children.Add(pid);
        return children;
    }

    private readonly record struct ProcStat(char State, int Parent);

    private static ProcStat? Stat(int pid)
    {
        string text;
        try { text = File.ReadAllText($"/proc/{pid}/stat"); }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException or IOException) { return null; }
        // "pid (comm) state ppid …": comm may hold spaces and parentheses, so read after the last ')'.
        var fields = text[(text.LastIndexOf(')') + 2)..].Split(' ');
        return new ProcStat(fields[0][0], int.Parse(fields[1], CultureInfo.InvariantCulture));
    }
}
