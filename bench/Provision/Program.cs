using System.Diagnostics;
using System.Globalization;
using Dingo.Model;
using Dingo.Tests.Support;
using Npgsql;

namespace Dingo.Bench.Provision;

/// <summary>
/// Time from the provision request to a bindable instance (last_operation succeeded, a binding made, and a query
/// answered through the binding's URI), for `solo` and `cluster` on the process and the Docker runtime: one at a
/// time, then 20 at once; then solo instances up to 300 on the process runtime, with the memory and idle CPU each node
/// takes. stdout carries only the bench's lines; everything the platform logs goes to stderr.
/// </summary>
public static class Program
{
    private sealed record Options(IReadOnlyList<string> Runtimes, int Sequential, int Burst, int SoloMax, int ScaleBatch, int WarmPool, double FirstBackupSettle, double CloneSettle, double SaturatedCpuPressure);

    private sealed record Sample(string Runtime, string Phase, string Plan, string Id, double Seconds);

    /// <summary>
    /// How often each provision of the burst asks last_operation: at 100 ms, twenty pollers were 200 requests a second into
    /// the broker and twice as many etcd reads, load no platform makes (Cloud Foundry asks every minute by default), on the
    /// machine whose CPU the burst is short of. Each figure may be up to this much late.
    /// </summary>
    private static readonly TimeSpan BurstPoll = TimeSpan.FromMilliseconds(500);

    public static async Task<int> Main(string[] args)
    {
        var output = new StreamWriter(Console.OpenStandardOutput()) { AutoFlush = true };
        Console.SetOut(Console.Error);
        if (Parse(args) is not { } options)
        {
            Console.Error.WriteLine("usage: dotnet run -c Release --project bench/Provision -- [--runtimes process,docker] [--sequential N] [--burst N] [--solo-max N] [--scale-batch N] [--warm-pool N] [--first-backup-settle SECONDS] [--clone-settle SECONDS] [--saturated-cpu-pressure PERCENT]");
            Console.Error.WriteLine("  defaults: both runtimes, 5 of each plan one at a time, a burst of 20 (half solo, half cluster), solo up to 300 (0: skip), 10 at a time,");
            Console.Error.WriteLine("  a warm pool of 2 a cell (the product's default)");
            return 2;
        }

        using var interrupted = new CancellationTokenSource();
        // SIGINT and SIGTERM alike: the run is cancelled and unwinds, so what it started (its platform, the bare PostgreSQL
        // peer) is stopped; a SIGTERM that killed the process outright left the peer running.
        void OnSignal(System.Runtime.InteropServices.PosixSignalContext context) { context.Cancel = true; interrupted.Cancel(); }
        using var sigint = System.Runtime.InteropServices.PosixSignalRegistration.Create(System.Runtime.InteropServices.PosixSignal.SIGINT, OnSignal);
        using var sigterm = System.Runtime.InteropServices.PosixSignalRegistration.Create(System.Runtime.InteropServices.PosixSignal.SIGTERM, OnSignal);
        var ct = interrupted.Token;

        // The peer, in the same run: PostgreSQL alone (initdb, start, first query; its idle memory), median of 3.
        var bare = new List<(double Seconds, double PssMib)>();
        try
        {
            for (var i = 0; i < 3; i++) bare.Add(await BarePostgres.MeasureAsync("/usr/lib/postgresql/15/bin", 30990, ct));
            output.WriteLine($"peer bare_postgres runs={bare.Count} bindable_s={F(Median(bare.Select(b => b.Seconds)))} idle_pss_mib={Median(bare.Select(b => b.PssMib)).ToString("0.0", CultureInfo.InvariantCulture)}");
        }
        catch (Exception ex) when (ex is InvalidOperationException or NpgsqlException or IOException)
        {
            Console.Error.WriteLine($"bench: the bare PostgreSQL peer failed: {ex.Message}");
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
            Console.Error.WriteLine("bench: interrupted");
            return 130;
        }

        var samples = new List<Sample>();
        var soloInstances = 0;
        double? mibPerIdleNode = null, cellsPer100 = null, scaleP95 = null;
        var failed = false;
        var index = 0;
        var burstAll = new Dictionary<string, double>();
        var speedAtStart = Shared.CoreSpeed.ProbeMs();
        var memoryAtStart = Shared.CoreSpeed.MemoryProbeMs();
        try
        {
            foreach (var runtime in options.Runtimes)
            {
                await using var bench = await BenchPlatform.StartAsync(runtime, index++, options.WarmPool, options.FirstBackupSettle, options.CloneSettle, options.SaturatedCpuPressure, ct);
                // Not counted: the first provision a cell serves pays for JIT and connection set-up in that cell's process.
                // One per cell (placement spreads them), then a cluster, so that no measured provision is a cell's first.
                for (var w = 1; w <= 3; w++) await bench.ProvisionBindableAsync($"warm-{runtime}-{w}", Catalog.SoloPlanId, ct);
                await bench.ProvisionBindableAsync($"warm-{runtime}-cluster", Catalog.ClusterPlanId, ct);
                await bench.SettleAsync($"warm-{runtime}-cluster", ct);
                await bench.DeprovisionAllAsync(ct);
                await bench.WaitWarmAsync(ct);

                foreach (var plan in new[] { Catalog.SoloPlanId, Catalog.ClusterPlanId })
                {
                    var name = Catalog.FindPlan(plan)!.Name;
                    for (var n = 1; n <= options.Sequential; n++)
                    {
                        var id = $"seq-{name}-{n}";
                        var seconds = await bench.ProvisionBindableAsync(id, plan, ct);
                        samples.Add(new Sample(runtime, "sequential", name, id, seconds));
                        output.WriteLine($"run runtime={runtime} phase=sequential plan={name} n={n} bindable_s={F(seconds)}");
                        await bench.SettleAsync(id, ct);
                        // The peer again, beside each measured provision (the platform as idle as it was for it): the VM's
                        // speed moves within a run as well as between runs (bare 1.13-1.42 s in runs minutes apart), and
                        // three runs before the platform started set every ratio alone.
                        if (bare.Count > 0)
                        {
                            try
                            {
                                var again = await BarePostgres.MeasureAsync("/usr/lib/postgresql/15/bin", 30990, ct);
                                bare.Add(again);
                                output.WriteLine($"run peer bare_postgres beside={id} bindable_s={F(again.Seconds)}");
                            }
                            catch (Exception ex) when (ex is InvalidOperationException or NpgsqlException or IOException)
                            {
                                Console.Error.WriteLine($"bench: the bare PostgreSQL peer failed beside {id}: {ex.Message}");
                            }
                        }
                    }
                    await bench.DeprovisionAllAsync(ct);
                }

                if (options.Burst > 0)
                {
                    await bench.WaitWarmAsync(ct);
                    var speedBefore = Shared.CoreSpeed.ProbeMs();
                    var memoryBefore = Shared.CoreSpeed.MemoryProbeMs();
                    var plans = Enumerable.Range(0, options.Burst).Select(i => i % 2 == 0 ? Catalog.SoloPlanId : Catalog.ClusterPlanId).ToList();
                    var cpuBefore = bench.ReadMachineCpu();
                    var started = Stopwatch.StartNew();
                    // A provision of the burst that fails (a bind answered 503 while its primary changed hands) is reported
                    // as such, and the burst's figures are still printed: the machine's state in a burst is what this phase shows.
                    var outcomes = await Task.WhenAll(plans.Select(async (plan, i) =>
                    {
                        var id = $"burst-{i + 1}";
                        try
                        {
                            return (Sample: new Sample(runtime, "burst", Catalog.FindPlan(plan)!.Name, id, await bench.ProvisionBindableAsync(id, plan, ct, BurstPoll)), Error: (string?)null);
                        }
                        catch (Exception ex) when (ex is InvalidOperationException or TimeoutException or NpgsqlException)
                        {
                            return (Sample: (Sample?)null, Error: $"{id}: {ex.Message}");
                        }
                    }));
                    var burstDone = started.Elapsed.TotalSeconds;
                    var burst = outcomes.Select(o => o.Sample).OfType<Sample>().ToList();
                    foreach (var error in outcomes.Select(o => o.Error).OfType<string>())
                        output.WriteLine($"run runtime={runtime} phase=burst failed: {error}");
                    samples.AddRange(burst);
                    foreach (var group in burst.GroupBy(s => s.Plan))
                        output.WriteLine($"summary runtime={runtime} phase=burst plan={group.Key} instances={group.Count()} p50_s={F(Percentile(group, 50))} p95_s={F(Percentile(group, 95))} max_s={F(group.Max(s => s.Seconds))}");
                    var burstFailed = outcomes.Count(o => o.Error is not null);
                    output.WriteLine($"summary runtime={runtime} phase=burst failed={burstFailed} all_bindable_after_s={(burstFailed == 0 ? F(burstDone) : "na")}");
                    if (burstFailed == 0) burstAll[runtime] = burstDone;
                    else failed = true;
                    // Where two cores went while the burst ran: by the processes that serve it, the rest inside containers and tools.
                    var cpuAfter = bench.ReadMachineCpu();
                    output.WriteLine($"summary runtime={runtime} phase=burst machine_busy_pct={Shared.MachineCpu.BusyPercent(cpuBefore, cpuAfter):0} "
                                     + string.Join(" ", Shared.MachineCpu.CoreSeconds(cpuBefore, cpuAfter).OrderBy(g => g.Key, StringComparer.Ordinal)
                                         .Select(g => string.Create(CultureInfo.InvariantCulture, $"{g.Key}_core_s={g.Value:0.0}"))));
                    // Whether the machine itself was slower this time: one core's speed just before, what the hypervisor took
                    // (steal, inside "rest" above) and the pages read back from disk while the burst ran.
                    var (steal, majorFaults) = Shared.MachineCpu.Lost(cpuBefore, cpuAfter);
                    output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"summary runtime={runtime} phase=burst core_probe_ms={speedBefore:0.0} core_probe_at_start_ms={speedAtStart:0.0} memory_probe_ms={memoryBefore:0.0} memory_probe_at_start_ms={memoryAtStart:0.0} steal_core_s={steal:0.0} major_faults={majorFaults}"));
                    await bench.DeprovisionAllAsync(ct);
                }

                foreach (var group in samples.Where(s => s.Runtime == runtime && s.Phase == "sequential").GroupBy(s => s.Plan))
                    output.WriteLine($"summary runtime={runtime} phase=sequential plan={group.Key} runs={group.Count()} p50_s={F(Percentile(group, 50))} p95_s={F(Percentile(group, 95))} max_s={F(group.Max(s => s.Seconds))}");

                if (runtime == "process" && options.SoloMax > 0)
                {
                    var scaled = await ScaleAsync(bench, options.SoloMax, options.ScaleBatch, output, samples, ct);
                    (soloInstances, mibPerIdleNode, cellsPer100, scaleP95) = (scaled.Instances, scaled.MibPerNode, scaled.CellsPer100, scaled.P95);
                    await bench.DeprovisionAllAsync(ct);
                }
            }
        }
        catch (Exception) when (ct.IsCancellationRequested)
        {
            // Cancelled (SIGINT, SIGTERM): whatever the call in flight threw for it (etcd's client says RpcException).
            Console.Error.WriteLine("bench: interrupted");
            return 130;
        }
        catch (Exception ex)
        {
            Console.Error.WriteLine($"bench: {ex.GetType().Name}: {ex.Message}");
            failed = true;
        }

        var ratios = "";
        if (bare.Count > 0)
        {
            // Every run of the peer: the three before the platform and one beside each measured provision.
            var bareSeconds = Median(bare.Select(b => b.Seconds));
            output.WriteLine($"summary peer bare_postgres runs={bare.Count} bindable_s={F(bareSeconds)} first_three_s={F(Median(bare.Take(3).Select(b => b.Seconds)))}");
            string Ratio(string runtime, string plan) =>
                samples.Where(s => s.Runtime == runtime && s.Plan == plan && s.Phase == "sequential").ToList() is { Count: > 0 } l ? (Percentile(l, 50) / bareSeconds).ToString("0.00", CultureInfo.InvariantCulture) : "na";
            ratios = $" bare_s={F(bareSeconds)} solo_process_vs_bare={Ratio("process", "solo")} cluster_process_vs_bare={Ratio("process", "cluster")} "
                     + $"solo_docker_vs_bare={Ratio("docker", "solo")} cluster_docker_vs_bare={Ratio("docker", "cluster")}";
            output.WriteLine($"summary peer solo_process_vs_bare={Ratio("process", "solo")} cluster_process_vs_bare={Ratio("process", "cluster")} "
                             + $"solo_docker_vs_bare={Ratio("docker", "solo")} cluster_docker_vs_bare={Ratio("docker", "cluster")} "
                             + $"idle_node_mib_vs_bare={(mibPerIdleNode is { } m2 ? (m2 / Median(bare.Select(b => b.PssMib))).ToString("0.00", CultureInfo.InvariantCulture) : "na")}");
        }
        string P50(string runtime) =>
            samples.Where(s => s.Runtime == runtime && s.Plan == "cluster" && s.Phase == "sequential").ToList() is { Count: > 0 } l ? F(Percentile(l, 50)) : "na";
        output.WriteLine($"RESULT provision cluster_process_p50_s={P50("process")} cluster_docker_p50_s={P50("docker")} "
                         + $"solo_instances={soloInstances} scale_p95_s={(scaleP95 is { } p95 ? F(p95) : "na")} mib_per_idle_node={(mibPerIdleNode is { } m ? m.ToString("0.0", CultureInfo.InvariantCulture) : "na")} "
                         + $"cells_pct_per_100_idle_nodes={(cellsPer100 is { } c ? c.ToString("0.0", CultureInfo.InvariantCulture) : "na")}"
                         + $" burst_process_all_s={(burstAll.TryGetValue("process", out var bp) ? F(bp) : "na")} burst_docker_all_s={(burstAll.TryGetValue("docker", out var bd) ? F(bd) : "na")}"
                         + $" warm_pool={options.WarmPool} first_backup_settle_s={options.FirstBackupSettle.ToString(CultureInfo.InvariantCulture)} clone_settle_s={options.CloneSettle.ToString(CultureInfo.InvariantCulture)} saturated_cpu_pressure={options.SaturatedCpuPressure.ToString(CultureInfo.InvariantCulture)}{ratios}");
        return failed ? 1 : 0;
    }

    /// <summary>Solo instances <paramref name="batch"/> at a time until <paramref name="max"/> are bindable; then the memory and idle CPU of the nodes.</summary>
    private static async Task<(int Instances, double MibPerNode, double? CellsPer100, double P95)> ScaleAsync(BenchPlatform bench, int max, int batch, StreamWriter output, List<Sample> samples, CancellationToken ct)
    {
        var made = 0;
        var scale = new List<Sample>();
        while (made < max)
        {
            var ids = Enumerable.Range(made + 1, Math.Min(batch, max - made)).ToList();
            var results = await Task.WhenAll(ids.Select(async i =>
            {
                var id = $"scale-{i}";
                return new Sample("process", "scale", "solo", id, await bench.ProvisionBindableAsync(id, Catalog.SoloPlanId, ct));
            }));
            scale.AddRange(results);
            made += ids.Count;
            output.WriteLine($"run runtime=process phase=scale batch={batch} instances={made} batch_p50_s={F(Percentile(results, 50))} batch_max_s={F(results.Max(s => s.Seconds))}");
        }
        samples.AddRange(scale);

        // Idle: no client connected, the nodes' own start-up work (the first base backups, then checkpoints) over.
        await bench.WaitFirstBackupsAsync(ct);
        await Task.Delay(TimeSpan.FromSeconds(30), ct);
        var (nodes, mib) = await bench.NodeMemoryMibAsync(ct);
        var perNode = mib / Math.Max(1, nodes);
        // What the idle nodes cost their cells (the agents' HA passes, backup duties, routers) beside what their own
        // PostgreSQL processes cost (the peer in this run), over 30 s with nothing asked of them.
        var (cellsPct, guardsPct, postgresPct) = await bench.CpuPercentAsync(TimeSpan.FromSeconds(30), ct);
        var per100 = nodes > 0 ? cellsPct / nodes * 100 : (double?)null;
        output.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"summary runtime=process phase=idle nodes={nodes} seconds=30 cells_pct={cellsPct:0.0} guards_pct={guardsPct:0.0} postgres_pct={postgresPct:0.0} cells_pct_per_100_nodes={per100:0.0} cells_vs_postgres={(postgresPct > 0 ? cellsPct / postgresPct : 0):0.00}"));
        output.WriteLine($"summary runtime=process phase=scale batch={batch} instances={made} p50_s={F(Percentile(scale, 50))} p95_s={F(Percentile(scale, 95))} "
                         + $"nodes={nodes} node_pss_mib={mib.ToString("0", CultureInfo.InvariantCulture)} cell_rss_mib={bench.CellRssMib().ToString("0", CultureInfo.InvariantCulture)}");
        // A working query on every instance after the climb: they all still serve.
        var serving = await bench.CountServingAsync(ct);
        output.WriteLine($"summary runtime=process phase=scale serving={serving}/{made}");
        return (serving, perNode, per100, Percentile(scale, 95));
    }

    private static Options? Parse(string[] args)
    {
        var runtimes = new List<string> { "process", "docker" };
        int sequential = 5, burst = 20, soloMax = 300, scaleBatch = 10, warmPool = 2;
        double firstBackupSettle = 5, cloneSettle = 5, saturatedCpuPressure = 50;
        for (var i = 0; i < args.Length; i++)
        {
            var value = i + 1 < args.Length ? args[i + 1] : null;
            switch (args[i])
            {
                case "--runtimes" when value is not null:
                    runtimes = value.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).ToList();
                    if (runtimes.Count == 0 || runtimes.Any(r => r is not ("process" or "docker"))) return null;
                    break;
                case "--sequential" when int.TryParse(value, CultureInfo.InvariantCulture, out sequential) && sequential >= 1: break;
                case "--burst" when int.TryParse(value, CultureInfo.InvariantCulture, out burst) && burst >= 0: break;
                case "--solo-max" when int.TryParse(value, CultureInfo.InvariantCulture, out soloMax) && soloMax >= 0: break;
                case "--scale-batch" when int.TryParse(value, CultureInfo.InvariantCulture, out scaleBatch) && scaleBatch >= 1: break;
                case "--warm-pool" when int.TryParse(value, CultureInfo.InvariantCulture, out warmPool) && warmPool is >= 0 and <= 50: break;
                case "--first-backup-settle" when double.TryParse(value, CultureInfo.InvariantCulture, out firstBackupSettle) && firstBackupSettle is >= 0 and <= 30: break;
                case "--clone-settle" when double.TryParse(value, CultureInfo.InvariantCulture, out cloneSettle) && cloneSettle is >= 0 and <= 30: break;
                case "--saturated-cpu-pressure" when double.TryParse(value, CultureInfo.InvariantCulture, out saturatedCpuPressure) && saturatedCpuPressure is >= 0 and <= 100: break;
                default: return null;
            }
            i++;
        }
        return new Options(runtimes, sequential, burst, soloMax, scaleBatch, warmPool, firstBackupSettle, cloneSettle, saturatedCpuPressure);
    }

    private static double Percentile(IEnumerable<Sample> samples, int p)
    {
        var sorted = samples.Select(s => s.Seconds).OrderBy(s => s).ToList();
        // Nearest rank.
        var rank = (int)Math.Ceiling(p / 100.0 * sorted.Count);
        return sorted[Math.Clamp(rank - 1, 0, sorted.Count - 1)];
    }

    private static double Median(IEnumerable<double> values)
    {
        var sorted = values.Order().ToList();
        return sorted.Count % 2 == 1 ? sorted[sorted.Count / 2] : (sorted[sorted.Count / 2 - 1] + sorted[sorted.Count / 2]) / 2;
    }

    private static string F(double seconds) => seconds.ToString("0.00", CultureInfo.InvariantCulture);
}
