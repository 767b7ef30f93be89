using System.Globalization;
using Dingo.Model;
using Dingo.Tests.Support;

namespace Dingo.Bench.Idle;

/// <summary>
/// What an idle platform costs in CPU: three cells as OS processes (with their fencing guards and PostgreSQL), N
/// cluster-ha instances provisioned and healthy, then nothing asked of them. Measured twice in the same run, on a fresh
/// platform each time: as shipped, and with the thread pool's idle workers spinning as the .NET runtime does by default
/// (the peer). stdout carries only the bench's lines; the platform logs go to stderr.
/// </summary>
public static class Program
{
    private const string HaSettings = "dingo.ha { ttl = 4s, loop-wait = 500ms, rewind-after = 4s, lost-cell-grace = 300s }";
    private static readonly TimeSpan Settle = TimeSpan.FromSeconds(15);

    private sealed record Sample(double Cells, double Guards, double Postgres);

    public static async Task<int> Main(string[] args)
    {
        var output = new StreamWriter(Console.OpenStandardOutput()) { AutoFlush = true };
        Console.SetOut(Console.Error);
        int instances = 3, seconds = 30;
        for (var i = 0; i < args.Length; i++)
        {
            if (args[i] == "--instances" && i + 1 < args.Length && int.TryParse(args[i + 1], CultureInfo.InvariantCulture, out instances) && instances >= 1) { i++; continue; }
            if (args[i] == "--seconds" && i + 1 < args.Length && int.TryParse(args[i + 1], CultureInfo.InvariantCulture, out seconds) && seconds >= 5) { i++; continue; }
            Console.Error.WriteLine("usage: dotnet run -c Release --project bench/Idle -- [--instances N] [--seconds S]   (N >= 1, default 3; S >= 5, default 30)");
            return 2;
        }
        using var interrupted = new CancellationTokenSource();
        Console.CancelKeyPress += (_, e) => { e.Cancel = true; interrupted.Cancel(); };
        try
        {
            // The runtime's default spin (70) is what Directory.Build.props turns off; the environment overrides the
            // runtimeconfig for the peer's cells and, through them, their guards.
            var peer = await MeasureAsync("runtime-default-spin", new Dictionary<string, string> { ["DOTNET_ThreadPool_UnfairSemaphoreSpinLimit"] = "70" }, instances, seconds, 0, interrupted.Token);
            output.WriteLine(Line("runtime-default-spin", peer, instances, seconds));
            var dingo = await MeasureAsync("dingo", new Dictionary<string, string>(), instances, seconds, 1, interrupted.Token);
            output.WriteLine(Line("dingo", dingo, instances, seconds));
            output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"RESULT idle instances={instances} cells_pct={dingo.Cells:0.0} peer_cells_pct={peer.Cells:0.0} cells_ratio={dingo.Cells / peer.Cells:0.00} guards_ratio={dingo.Guards / peer.Guards:0.00} dotnet_ratio={(dingo.Cells + dingo.Guards) / (peer.Cells + peer.Guards):0.00}"));
            return 0;
        }
        catch (OperationCanceledException) when (interrupted.IsCancellationRequested)
        {
            Console.Error.WriteLine("bench: interrupted");
            return 130;
        }
        catch (Exception ex)
        {
            Console.Error.WriteLine($"bench: {ex.GetType().Name}: {ex.Message}");
            return 1;
        }
    }

    private static string Line(string config, Sample s, int instances, int seconds) => string.Create(CultureInfo.InvariantCulture,
        $"run config={config} instances={instances} seconds={seconds} cells_pct={s.Cells:0.0} guards_pct={s.Guards:0.0} postgres_pct={s.Postgres:0.0}");

    /// <summary>Instance and node ports of a block of our own (as bench/Failover), away from `dingo up` and a test run.</summary>
    /// <remarks>Room for 100 cluster-ha instances per run: an instance takes two public ports, a node two of its own
    /// (PostgreSQL and its health API); 50 each stopped the climb at 8 instances.</remarks>
    private static string Ports(int index)
    {
        var (pub, node) = (12000 + index * 300, 13000 + index * 600);
        return $"dingo.router {{ port-range-first = {pub}, port-range-last = {pub + 299} }}\n"
               + $"dingo.node-port-range-first = {node}\ndingo.node-port-range-last = {node + 599}";
    }

    private static async Task<Sample> MeasureAsync(string config, IReadOnlyDictionary<string, string> environment, int instances, int seconds, int index, CancellationToken ct)
    {
        var settings = TestPlatform.NewSettings(extra: HaSettings + "\n" + Ports(index));
        TestPlatform? platform = null;
        try
        {
            platform = await TestPlatform.StartAsync(cells: 0, settings, ct);
            for (var i = 1; i <= 3; i++) platform.StartCellProcess(i, environment);
            for (var n = 0; n < instances; n++)
                await platform.ProvisionReadyAsync($"idle-{index}-{n}-" + Guid.NewGuid().ToString("N")[..6], Catalog.ClusterHaPlanId);
            Console.Error.WriteLine($"bench: {config}: {instances} cluster-ha instance(s) ready; settling {Settle.TotalSeconds:0} s");
            await Task.Delay(Settle, ct);
            var cells = platform.CellProcessIds();
            var before = CpuTicks(cells, settings.DataDir);
            var started = DateTime.UtcNow;
            await Task.Delay(TimeSpan.FromSeconds(seconds), ct);
            var after = CpuTicks(cells, settings.DataDir);
            var elapsed = (DateTime.UtcNow - started).TotalSeconds;
            double Pct(string kind) => after.Where(p => p.Value.Kind == kind).Sum(p => p.Value.Ticks - (before.TryGetValue(p.Key, out var b) ? b.Ticks : 0))
                                       / 100.0 / elapsed * 100;
            return new Sample(Pct("cell"), Pct("guard"), Pct("postgres"));
        }
        finally
        {
            if (platform is not null) await platform.DisposeAsync();
            await TestPlatform.DestroyDataAsync(settings);
        }
    }

    /// <summary>
    /// utime + stime (clock ticks, 100 a second here) by kind: the cells, and every process that is one of theirs: under
    /// a cell, or with the platform's data folder on its command line (the guards and postmasters run detached), or under
    /// such a process (PostgreSQL's backends).
    /// </summary>
    private static Dictionary<int, (string Kind, long Ticks)> CpuTicks(IReadOnlyList<int> cells, string dataDir)
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
}
