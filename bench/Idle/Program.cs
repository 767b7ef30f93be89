using System.Globalization;
using Dingo.Bench.Shared;
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
    // The cells as shipped (test platforms pass them every 500 ms with a 6 s lease, for the suite's time).
    private const string HaSettings = "dingo.ha { ttl = 4s, loop-wait = 500ms, rewind-after = 4s, lost-cell-grace = 300s }\n"
                                      + "dingo.cell { reconcile-interval = 1s, lease-ttl = 10s }";
    private static readonly TimeSpan Settle = TimeSpan.FromSeconds(15);

    private sealed record Sample(double Cells, double Guards, double Postgres);

    public static async Task<int> Main(string[] args)
    {
        var output = new StreamWriter(Console.OpenStandardOutput()) { AutoFlush = true };
        Console.SetOut(Console.Error);
        int instances = 3, seconds = 30;
        var plan = Catalog.ClusterHaPlanId;
        var peer = true;
        for (var i = 0; i < args.Length; i++)
        {
            if (args[i] == "--skip-peer") { peer = false; continue; }
            if (args[i] == "--plan" && i + 1 < args.Length && Catalog.Plans.FirstOrDefault(p => p.Name == args[i + 1]) is { } named) { plan = named.Id; i++; continue; }
            if (args[i] == "--instances" && i + 1 < args.Length && int.TryParse(args[i + 1], CultureInfo.InvariantCulture, out instances) && instances >= 1) { i++; continue; }
            if (args[i] == "--seconds" && i + 1 < args.Length && int.TryParse(args[i + 1], CultureInfo.InvariantCulture, out seconds) && seconds >= 5) { i++; continue; }
            Console.Error.WriteLine("usage: dotnet run -c Release --project bench/Idle -- [--instances N] [--seconds S] [--plan solo|cluster|cluster-ha] [--skip-peer]   (N >= 1, default 3; S >= 5, default 30; plan cluster-ha)");
            return 2;
        }
        using var interrupted = new CancellationTokenSource();
        // SIGINT and SIGTERM alike: the run is cancelled and unwinds, so what it started (its platform, the bare PostgreSQL
        // peer) is stopped; a SIGTERM that killed the process outright left the peer running.
        void OnSignal(System.Runtime.InteropServices.PosixSignalContext context) { context.Cancel = true; interrupted.Cancel(); }
        using var sigint = System.Runtime.InteropServices.PosixSignalRegistration.Create(System.Runtime.InteropServices.PosixSignal.SIGINT, OnSignal);
        using var sigterm = System.Runtime.InteropServices.PosixSignalRegistration.Create(System.Runtime.InteropServices.PosixSignal.SIGTERM, OnSignal);
        try
        {
            // The runtime's default spin (70) is what Directory.Build.props turns off; the environment overrides the
            // runtimeconfig for the peer's cells and, through them, their guards.
            // --skip-peer (to profile a cell, say): our figures alone, and no RESULT line.
            var other = peer ? await MeasureAsync("runtime-default-spin", new Dictionary<string, string> { ["DOTNET_ThreadPool_UnfairSemaphoreSpinLimit"] = "70" }, instances, plan, seconds, 0, interrupted.Token) : null;
            if (other is not null) output.WriteLine(Line("runtime-default-spin", other, instances, seconds));
            var dingo = await MeasureAsync("dingo", new Dictionary<string, string>(), instances, plan, seconds, 1, interrupted.Token);
            output.WriteLine(Line("dingo", dingo, instances, seconds));
            if (other is not null)
                output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"RESULT idle plan={Catalog.FindPlan(plan)!.Name} instances={instances} cells_pct={dingo.Cells:0.0} peer_cells_pct={other.Cells:0.0} cells_ratio={dingo.Cells / other.Cells:0.00} guards_ratio={dingo.Guards / other.Guards:0.00} dotnet_ratio={(dingo.Cells + dingo.Guards) / (other.Cells + other.Guards):0.00}"));
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

    private static async Task<Sample> MeasureAsync(string config, IReadOnlyDictionary<string, string> environment, int instances, string plan, int seconds, int index, CancellationToken ct)
    {
        var settings = TestPlatform.NewSettings(quota: 1000, extra: HaSettings + "\n" + Ports(index));
        TestPlatform? platform = null;
        try
        {
            platform = await TestPlatform.StartAsync(cells: 0, settings, ct);
            for (var i = 1; i <= 3; i++) platform.StartCellProcess(i, environment);
            var ids = new List<string>();
            for (var n = 0; n < instances; n++)
                ids.Add(await platform.ProvisionReadyAsync($"idle-{index}-{n}-" + Guid.NewGuid().ToString("N")[..6], plan));
            await FirstBackups.WaitAsync(platform.Store, ids, TimeSpan.FromMinutes(10), ct);
            Console.Error.WriteLine($"bench: {config}: {instances} {Catalog.FindPlan(plan)!.Name} instance(s) ready; settling {Settle.TotalSeconds:0} s");
            await Task.Delay(Settle, ct);
            var cells = platform.CellProcessIds();
            var before = ProcessCpu.Ticks(cells, settings.DataDir);
            var started = DateTime.UtcNow;
            await Task.Delay(TimeSpan.FromSeconds(seconds), ct);
            var after = ProcessCpu.Ticks(cells, settings.DataDir);
            var elapsed = (DateTime.UtcNow - started).TotalSeconds;
            double Pct(string kind) => ProcessCpu.Percent(before, after, kind, elapsed);
            return new Sample(Pct("cell"), Pct("guard"), Pct("postgres"));
        }
        finally
        {
            if (platform is not null) await platform.DisposeAsync();
            await TestPlatform.DestroyDataAsync(settings);
        }
    }
}
