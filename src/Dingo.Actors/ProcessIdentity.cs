using System.Globalization;

namespace Dingo;

/// <summary>A process as /proc knows it: its PID and its start time, so a PID reused by another process is never signalled.</summary>
public readonly record struct ProcessIdentity(int Pid, long StartTime)
{
    /// <summary>The identity of a live (not zombie) process, or null.</summary>
    public static ProcessIdentity? Of(int pid) =>
        ProcStat.Read(pid) is { Zombie: false } stat ? new ProcessIdentity(pid, stat.StartTime) : null;

    /// <summary>Still the same process, alive and not a zombie.</summary>
    public bool Alive => ProcStat.Read(Pid) is { Zombie: false } stat && stat.StartTime == StartTime;
}

/// <summary>The fields of /proc/PID/stat the fencing guard and <see cref="ProcessTree"/> need.</summary>
public readonly record struct ProcStat(int Pid, int ParentPid, bool Zombie, long StartTime)
{
    public static ProcStat? Read(int pid)
    {
        string text;
        try { text = File.ReadAllText($"/proc/{pid}/stat"); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return null; }
        // The command name in parentheses may itself hold ") ", so the fields start after the last ')'.
        var close = text.LastIndexOf(')');
        if (close < 0) return null;
        var fields = text[(close + 2)..].Split(' ');
        // fields[0] is the state (field 3 of stat), fields[1] the parent PID (4), fields[19] the start time (22).
        if (fields.Length < 20) return null;
        if (!int.TryParse(fields[1], NumberStyles.None, CultureInfo.InvariantCulture, out var ppid)) return null;
        if (!long.TryParse(fields[19], NumberStyles.None, CultureInfo.InvariantCulture, out var start)) return null;
        return new ProcStat(pid, ppid, fields[0] is "Z" or "X" or "x", start);
    }

    /// <summary>The process and all its descendants, as /proc lists them now (<paramref name="liveOnly"/>: zombies left out).</summary>
    public static IReadOnlyList<int> Tree(int root, bool liveOnly = false)
    {
        var children = new Dictionary<int, List<int>>();
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), NumberStyles.None, CultureInfo.InvariantCulture, out var pid)) continue;
            if (Read(pid) is not { } stat || liveOnly && stat.Zombie) continue;
            if (!children.TryGetValue(stat.ParentPid, out var list)) children[stat.ParentPid] = list = [];
            list.Add(pid);
        }
        var tree = new List<int> { root };
        for (var i = 0; i < tree.Count; i++)
            if (children.TryGetValue(tree[i], out var kids)) tree.AddRange(kids);
        return tree;
    }
}
