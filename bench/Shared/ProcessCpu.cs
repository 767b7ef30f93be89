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

/// <summary>
/// Where a machine's CPU went over a stretch of time (bench/Provision's burst): the whole machine's busy time from
/// /proc/stat, and the core-seconds of named long-lived processes with what they reaped (utime + stime + cutime + cstime:
/// podman's service reaps the runc it starts); the rest is what ran inside containers and tools, and everything else.
/// </summary>
internal sealed class MachineCpu
{
    private readonly long _busy, _total, _steal, _majorFaults;
    private readonly Dictionary<int, (string Group, long Ticks)> _processes;

    private MachineCpu(long busy, long total, long steal, long majorFaults, Dictionary<int, (string, long)> processes) =>
        (_busy, _total, _steal, _majorFaults, _processes) = (busy, total, steal, majorFaults, processes);

    /// <param name="groups">a process's group from its pid and command name (null: not counted by name)</param>
    public static MachineCpu Read(Func<int, string, string?> groups)
    {
        var cpu = File.ReadLines("/proc/stat").First().Split(' ', StringSplitOptions.RemoveEmptyEntries).Skip(1).Take(8)
            .Select(v => long.Parse(v, CultureInfo.InvariantCulture)).ToArray();
        var idle = cpu[3] + cpu[4];
        var processes = new Dictionary<int, (string, long)>();
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), CultureInfo.InvariantCulture, out var pid)) continue;
            try
            {
                var stat = File.ReadAllText(Path.Combine(dir, "stat"));
                var open = stat.IndexOf('(', StringComparison.Ordinal);
                var close = stat.LastIndexOf(')');
                if (groups(pid, stat[(open + 1)..close]) is not { } group) continue;
                var fields = stat[(close + 2)..].Split(' ');
                processes[pid] = (group, fields.Skip(11).Take(4).Sum(f => long.Parse(f, CultureInfo.InvariantCulture)));
            }
            catch (IOException) { }
        }
        var majorFaults = File.ReadLines("/proc/vmstat").Where(l => l.StartsWith("pgmajfault ", StringComparison.Ordinal))
            .Select(l => long.Parse(l["pgmajfault ".Length..], CultureInfo.InvariantCulture)).FirstOrDefault();
        return new MachineCpu(cpu.Sum() - idle, cpu.Sum(), cpu[7], majorFaults, processes);
    }

    /// <summary>Percent of the machine busy between two readings (100: every core, all the time).</summary>
    public static double BusyPercent(MachineCpu before, MachineCpu after) =>
        after._total == before._total ? 0 : 100.0 * (after._busy - before._busy) / (after._total - before._total);

    /// <summary>
    /// Core-seconds the hypervisor gave to others while this machine wanted them (steal; counted as busy above, in
    /// "rest"), and the page faults that had to read from disk (a file's pages dropped from memory and read again).
    /// </summary>
    public static (double StealCoreSeconds, long MajorFaults) Lost(MachineCpu before, MachineCpu after) =>
        ((after._steal - before._steal) / 100.0, after._majorFaults - before._majorFaults);

    /// <summary>Core-seconds each group used between two readings (clock ticks of 1/100 s), and "rest" for the remainder of the busy time.</summary>
    public static Dictionary<string, double> CoreSeconds(MachineCpu before, MachineCpu after)
    {
        var result = after._processes.GroupBy(p => p.Value.Group).ToDictionary(g => g.Key,
            g => g.Sum(p => p.Value.Ticks - (before._processes.TryGetValue(p.Key, out var b) ? b.Ticks : 0)) / 100.0);
        result["rest"] = (after._busy - before._busy) / 100.0 - result.Values.Sum();
        return result;
    }
}

/// <summary>
/// How fast one core computes now: the best of five SHA-256 passes over 16 MiB, in milliseconds. Printed beside a
/// phase's figures, it tells a machine that got slower (the hypervisor, another tenant) from a platform that did more.
/// </summary>
internal static class CoreSpeed
{
    private static readonly byte[] Data = CreateData();

    public static double ProbeMs()
    {
        var best = double.MaxValue;
        for (var i = 0; i < 5; i++)
        {
            var started = System.Diagnostics.Stopwatch.GetTimestamp();
            _ = System.Security.Cryptography.SHA256.HashData(Data);
            best = Math.Min(best, System.Diagnostics.Stopwatch.GetElapsedTime(started).TotalMilliseconds);
        }
        return best;
    }

    /// <summary>
    /// How fast memory moves now: the best of five copies of 64 MiB (more than any cache here), in milliseconds. A
    /// neighbour on the same host can take memory bandwidth without taking a core, which the hash above does not see.
    /// </summary>
    public static double MemoryProbeMs()
    {
        var from = new byte[64 << 20];
        var to = new byte[64 << 20];
        from.AsSpan().Fill(7);
        var best = double.MaxValue;
        for (var i = 0; i < 5; i++)
        {
            var started = System.Diagnostics.Stopwatch.GetTimestamp();
            from.AsSpan().CopyTo(to);
            best = Math.Min(best, System.Diagnostics.Stopwatch.GetElapsedTime(started).TotalMilliseconds);
        }
        return best;
    }

    private static byte[] CreateData()
    {
        var data = new byte[16 << 20];
        new Random(42).NextBytes(data);
        return data;
    }
}
