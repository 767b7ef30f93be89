using System.Globalization;

namespace Dingo.Bench.Shared;

/// <summary>CPU time of a platform's processes, by kind, from /proc (bench/Idle, bench/Provision's scale phase).</summary>
internal static class ProcessCpu
{
    /// <summary>
    /// utime + stime (clock ticks, 100 a second here) by kind — "cell", "guard", "postgres", "other" — of the cells and
    /// every process that is one of theirs: under a cell, or with the platform's data folder on its command line (the
    /// guards and postmasters run detached), or under such a process (PostgreSQL's backends).
    /// </summary>
    public static Dictionary<int, (string Kind, long Ticks)> Ticks(IReadOnlyList<int> cells, string dataDir)
    {
        var all = new Dictionary<int, (int Parent, long Ticks, string Command)>();
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), CultureInfo.InvariantCulture, out var pid)) continue;
            try
            {
                var stat = File.ReadAllText(Path.Combine(dir, "stat"));
                var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
                var command = File.ReadAllText(Path.Combine(dir, "cmdline")).Replace('\0', ' ');
                all[pid] = (int.Parse(fields[1], CultureInfo.InvariantCulture),
                    long.Parse(fields[11], CultureInfo.InvariantCulture) + long.Parse(fields[12], CultureInfo.InvariantCulture), command);
            }
            catch (IOException) { } // gone meanwhile
        }
        bool Ours(int pid)
        {
            for (var hops = 0; hops < 64 && all.TryGetValue(pid, out var p); hops++)
            {
                if (cells.Contains(pid) || p.Command.Contains(dataDir, StringComparison.Ordinal)) return true;
                if (p.Parent <= 1) return false;
                pid = p.Parent;
            }
            return false;
        }
        var result = new Dictionary<int, (string, long)>();
        foreach (var (pid, p) in all)
        {
            if (!Ours(pid)) continue;
            var kind = cells.Contains(pid) ? "cell" : p.Command.Contains(" guard ", StringComparison.Ordinal) ? "guard"
                : p.Command.Contains("postgres", StringComparison.Ordinal) ? "postgres" : "other";
            result[pid] = (kind, p.Ticks);
        }
        return result;
    }

    /// <summary>Percent of one core each kind used between two readings <paramref name="seconds"/> apart.</summary>
    public static double Percent(Dictionary<int, (string Kind, long Ticks)> before, Dictionary<int, (string Kind, long Ticks)> after, string kind, double seconds) =>
        after.Where(p => p.Value.Kind == kind).Sum(p => p.Value.Ticks - (before.TryGetValue(p.Key, out var b) ? b.Ticks : 0)) / 100.0 / seconds * 100;
}
