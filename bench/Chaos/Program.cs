using System.Globalization;
using System.Runtime.InteropServices;
using Dingo.Tests.Support;

namespace Dingo.Bench.Chaos;

/// <summary>
/// Random faults under writers: one instance per plan, a writer on each committing a fresh value every 20 ms
/// through the router, a sampler asking every node straight whether it is writable every 100 ms, and faults one
/// after another, each followed until the platform has healed. stdout carries only the bench's lines; the platform
/// logs to stderr and to the cell and broker logs kept in $TMPDIR/dingo-bench-logs.
/// </summary>
public static class Program
{
    private const string Usage =
        "usage: dotnet run -c Release --project bench/Chaos -- [--hosts 1|3] [--faults N] [--plans cluster-ha,cluster] [--kinds kill-pg,...] [--seed S] [--gap SECONDS]";
    private static readonly TimeSpan HealTarget = TimeSpan.FromSeconds(30);
    private static readonly TimeSpan HealGiveUp = TimeSpan.FromSeconds(180);

    private sealed record Options(int Hosts, int Faults, IReadOnlyList<string> Plans, IReadOnlyList<FaultKind> Kinds, int Seed, TimeSpan Gap);

    /// <param name="CheckFailed">the fault's own check failed (link-cut: the old primary never seen fenced from inside)</param>
    private sealed record Outcome(int N, FaultKind Kind, string Plan, double StallSeconds, int Split, double? HealedSeconds, bool ProvisionClean, bool CheckFailed)
    {
        public bool Unhealed => HealedSeconds is not { } h || h > HealTarget.TotalSeconds;
        public bool StallMissed => Kind.StallTargetSeconds is { } t && StallSeconds > t;
    }

    public static async Task<int> Main(string[] args)
    {
        var output = new StreamWriter(Console.OpenStandardOutput()) { AutoFlush = true };
        Console.SetOut(Console.Error);
        if (Parse(args, out var error) is not { } options)
        {
            Console.Error.WriteLine(error);
            Console.Error.WriteLine(Usage);
            Console.Error.WriteLine("  kinds on one host (the default): " + string.Join(", ", Faults.KindsOn(1).Select(k => k.Name)));
            Console.Error.WriteLine("  kinds on three hosts (--hosts 3): " + string.Join(", ", Faults.KindsOn(3).Select(k => k.Name)));
            return 2;
        }

        using var interrupted = new CancellationTokenSource();
        void OnSignal(PosixSignalContext context) { context.Cancel = true; interrupted.Cancel(); }
        using var sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal);
        using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal);
        var ct = interrupted.Token;

        // Cells run as `./dingo up` runs them: ReadyToRun-compiled when that build is current (the JIT slows a restarted
        // cell's first seconds, which kill-cell measures); else this bench's own copy, and the line says so.
        var readyToRun = Dingo.Cli.ReadyToRun.Prefer(Path.Combine(TestPlatform.RepoRoot(), "src", "Dingo.Cell", "bin", "Release", "net10.0", "Dingo.Cell.dll"));
        if (Dingo.Cli.ReadyToRun.IsPublished(readyToRun)) TestPlatform.CellDll = readyToRun;
        else Console.Error.WriteLine("bench: cells run JIT-compiled: no ReadyToRun build of this code (./dingo publish makes one; so does ./dingo up)");
        output.WriteLine($"config hosts={options.Hosts} seed={options.Seed} faults={options.Faults} plans={string.Join(',', options.Plans)} kinds={string.Join(',', options.Kinds.Select(k => k.Name))} gap_s={F(options.Gap.TotalSeconds)} cells={(Dingo.Cli.ReadyToRun.IsPublished(TestPlatform.CellDll) ? "ready-to-run" : "jit")}");
        var random = new Random(options.Seed);
        var outcomes = new List<Outcome>();
        var lost = 0;
        var lostKnown = true;
        var split = 0;
        var splitSeenInside = 0;
        var failed = false;
        ChaosPlatform? platform = null;
        SplitSampler? sampler = null;
        try
        {
            platform = options.Hosts == 3
                ? await ThreeHostPlatform.StartAsync(options.Plans, ct)
                : await OneHostPlatform.StartAsync(options.Plans, options.Kinds.Any(k => k.Name is "kill-broker" or "kill-cell"), ct);
            sampler = new SplitSampler(platform.Store, platform.Instances.ToDictionary(i => i.Id, i => i.Superuser));
            var runStart = DateTime.UtcNow;
            await sampler.StartAsync(ct);
            var (ready, _) = await WaitHealedAsync(platform, sampler, DateTime.UtcNow, TimeSpan.FromSeconds(60), ct);
            if (ready is null) throw new TimeoutException("the instances were not healthy (streaming, writes steady) within 60 s of the start");

            var faults = new Faults(platform, random);
            var bag = new Queue<FaultKind>();
            var targets = 0;
            for (var n = 1; n <= options.Faults; n++)
            {
                // Random order, every kind once per round: a short run still covers each kind.
                if (bag.Count == 0) foreach (var k in options.Kinds.OrderBy(_ => random.Next())) bag.Enqueue(k);
                var kind = bag.Dequeue();
                var target = platform.Instances[targets++ % platform.Instances.Count];
                var prepared = await faults.PrepareAsync(kind, target, ct);
                if (prepared is not null)
                {
                    // Not part of the fault: the platform heals from the preparation before the fault starts.
                    var (settled, unsettled) = await WaitHealedAsync(platform, sampler, DateTime.UtcNow, TimeSpan.FromSeconds(60), ct);
                    if (settled is null) throw new TimeoutException($"fault {n} ({kind.Name}): not healed within 60 s of its preparation ({prepared}): {unsettled}");
                }
                var start = DateTime.UtcNow;
                var applied = await faults.ApplyAsync(kind, target, ct);
                var (healed, wrong) = await WaitHealedAsync(platform, sampler, applied.Done, HealGiveUp - (DateTime.UtcNow - start), ct);
                var end = healed ?? DateTime.UtcNow;
                (string Fields, bool Clean)? followUp = applied.FollowUp is null ? null : await applied.FollowUp;

                var stalls = platform.Instances.ToDictionary(i => i.Plan, i => i.Writer.LongestStall(start, end).TotalSeconds);
                var stall = kind.AimsAtInstance ? stalls[target.Plan] : stalls.Values.Max();
                var (seenSplits, unanswered, samples) = sampler.Count(start, end);
                var splits = seenSplits + applied.SplitSeenInside;
                splitSeenInside += applied.SplitSeenInside;
                LogSplits(sampler.Splits(start, end));
                var healedSeconds = healed is { } h ? (h - start).TotalSeconds : (double?)null;
                var outcome = new Outcome(n, kind, kind.AimsAtInstance ? target.Plan : "all", stall, splits, healedSeconds, followUp?.Clean ?? true, applied.CheckFailed);
                outcomes.Add(outcome);
                if (wrong is not null) Console.Error.WriteLine($"bench: fault {n} ({kind.Name}) not healed after {HealGiveUp.TotalSeconds:0} s: {wrong}");
                var missed = outcome.Unhealed || outcome.StallMissed || splits > 0 || !outcome.ProvisionClean || outcome.CheckFailed;
                output.WriteLine($"fault n={n} kind={kind.Name} plan={outcome.Plan} stall_s={F(stall)} split_samples={splits} healed_s={(healedSeconds is { } hs ? F(hs) : "never")} "
                                 + $"unanswered_samples={unanswered}/{samples} stalls={string.Join(',', stalls.Select(s => $"{s.Key}:{F(s.Value)}"))} "
                                 + (prepared is null ? "" : prepared + " ") + applied.Fields
                                 + (followUp is { } f ? " " + f.Fields : "") + (missed ? " target=missed" : ""));
                if (healed is null)
                {
                    output.WriteLine($"stopped: fault n={n} never healed within {HealGiveUp.TotalSeconds:0} s; later faults would measure nothing");
                    failed = true;
                    break;
                }
                await Task.Delay(options.Gap, ct);
            }

            split = sampler.Count(runStart, DateTime.UtcNow).Split + splitSeenInside;
            await sampler.DisposeAsync();
            sampler = null;
            foreach (var instance in platform.Instances)
            {
                await ChaosPlatform.StopWriterAsync(instance);
                var missing = await MissingAsync(instance, ct);
                if (missing is null) lostKnown = false;
                lost += missing ?? 0;
                var w = instance.Writer;
                output.WriteLine($"summary plan={instance.Plan} attempts={Interlocked.Read(ref w.Attempts)} acked={w.Acknowledged.Count} in_doubt={w.InDoubt.Count} "
                                 + $"sync_rep_cancelled={w.SyncRepCancelled.Count} lost={missing?.ToString(CultureInfo.InvariantCulture) ?? "unknown"}");
            }
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
            Console.Error.WriteLine("bench: interrupted");
            return 130;
        }
        catch (Exception ex)
        {
            Console.Error.WriteLine($"bench: {ex.GetType().Name}: {ex.Message}");
            failed = true;
        }
        finally
        {
            if (sampler is not null) await sampler.DisposeAsync();
            // An exception escaping here would end the process without the summary and, uncaught, without the
            // ProcessExit hooks that remove what a teardown left behind (network namespaces on three hosts).
            try { if (platform is not null) await platform.DisposeAsync(); }
            catch (Exception ex)
            {
                Console.Error.WriteLine($"bench: taking the platform down failed: {ex.GetType().Name}: {ex.Message}");
                failed = true;
            }
        }

        foreach (var group in outcomes.GroupBy(o => o.Kind.Name))
        {
            var stalls = group.Select(o => o.StallSeconds).ToList();
            output.WriteLine($"summary kind={group.Key} faults={group.Count()} p50_stall_s={F(Median(stalls))} max_stall_s={F(stalls.Max())} "
                             + $"max_healed_s={F(group.Max(o => o.HealedSeconds ?? double.PositiveInfinity))} split_samples={group.Sum(o => o.Split)} "
                             + $"stall_target_s={(group.First().Kind.StallTargetSeconds is { } t ? F(t) : "none")} stall_missed={group.Count(o => o.StallMissed)} unclean_provisions={group.Count(o => !o.ProvisionClean)} "
                             + $"checks_failed={group.Count(o => o.CheckFailed)}");
        }
        var all = outcomes.Select(o => o.StallSeconds).ToList();
        var unhealed = outcomes.Count(o => o.Unhealed);
        output.WriteLine($"RESULT chaos faults={outcomes.Count} lost={(lostKnown ? lost.ToString(CultureInfo.InvariantCulture) : "unknown")} split_samples={split} "
                         + $"max_stall_s={(all.Count > 0 ? F(all.Max()) : "na")} p50_stall_s={(all.Count > 0 ? F(Median(all)) : "na")} unhealed={unhealed}");
        var missedTarget = failed || outcomes.Count < options.Faults || !lostKnown || lost > 0 || split > 0 || unhealed > 0
                           || outcomes.Any(o => o.StallMissed || !o.ProvisionClean || o.CheckFailed);
        return missedTarget ? 1 : 0;
    }

    /// <summary>Split samples on stderr, consecutive ones with the same writable nodes as one line.</summary>
    private static void LogSplits(IReadOnlyList<Sample> splits)
    {
        foreach (var run in splits.GroupBy(s => s.InstanceId))
        {
            Sample? first = null, last = null;
            var count = 0;
            string? nodes = null;
            foreach (var s in run.Append(null))
            {
                var writable = s is null ? null : string.Join(", ", s.Nodes.Where(a => a.Writable).Select(a => $"{a.NodeId} (port {a.Port})"));
                if (first is not null && (writable != nodes || s is null))
                {
                    Console.Error.WriteLine($"bench: split on {first.InstanceId} from {first.At:HH:mm:ss.fff} to {last!.At:HH:mm:ss.fff} ({count} samples): writable {nodes}");
                    first = null;
                }
                if (s is null) break;
                if (first is null) { first = s; nodes = writable; count = 0; }
                last = s;
                count++;
            }
        }
    }

    /// <summary>
    /// Until <see cref="Healing"/> finds nothing wrong, looking only at what happened after <paramref name="since"/>
    /// (the fault's last step); returns when, or null and what was still wrong when <paramref name="limit"/> ran out.
    /// </summary>
    private static async Task<(DateTime? Healed, string? Wrong)> WaitHealedAsync(ChaosPlatform platform, SplitSampler sampler, DateTime since, TimeSpan limit, CancellationToken ct)
    {
        var deadline = DateTime.UtcNow + limit;
        string? wrong = "not looked at yet";
        while (DateTime.UtcNow < deadline)
        {
            wrong = await Healing.WhatIsWrongAsync(platform, sampler, since, ct);
            if (wrong is null) return (DateTime.UtcNow, null);
            await Task.Delay(100, ct);
        }
        return (null, wrong);
    }

    /// <summary>Acknowledged commits missing from the table, read through the router (a few tries); null when unreadable.</summary>
    private static async Task<int?> MissingAsync(ChaosInstance instance, CancellationToken ct)
    {
        for (var attempt = 1; attempt <= 5; attempt++)
        {
            try
            {
                var missing = await instance.Writer.MissingAsync();
                if (missing.Count > 0) Console.Error.WriteLine($"bench: {instance.Id}: acknowledged but missing: {string.Join(", ", missing.Take(50))}");
                return missing.Count;
            }
            catch (Exception ex) when (ex is not OperationCanceledException)
            {
                Console.Error.WriteLine($"bench: reading {instance.Id}'s counter table failed ({ex.GetType().Name}: {ex.Message}), try {attempt}/5");
                await Task.Delay(2000, ct);
            }
        }
        return null;
    }

    private static Options? Parse(string[] args, out string error)
    {
        error = "";
        var faults = 100;
        var plans = new List<string> { "cluster-ha", "cluster" };
        var hosts = 1;
        List<string>? kindNames = null;
        var seed = Random.Shared.Next();
        var gap = TimeSpan.FromSeconds(5);
        for (var i = 0; i < args.Length; i++)
        {
            var value = i + 1 < args.Length ? args[i + 1] : null;
            switch (args[i])
            {
                case "--hosts" when int.TryParse(value, CultureInfo.InvariantCulture, out hosts) && hosts is 1 or 3: break;
                case "--hosts":
                    error = $"--hosts {value}: 1 (one host, the default) or 3 (three hosts in network namespaces)";
                    return null;
                case "--faults" when int.TryParse(value, CultureInfo.InvariantCulture, out faults) && faults >= 1: break;
                case "--seed" when int.TryParse(value, CultureInfo.InvariantCulture, out seed): break;
                case "--gap" when double.TryParse(value, CultureInfo.InvariantCulture, out var g) && g >= 0 && g <= 600: gap = TimeSpan.FromSeconds(g); break;
                case "--plans" when value is not null:
                    plans = value.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Distinct().ToList();
                    if (plans.Count == 0 || plans.Any(p => p is not ("cluster" or "cluster-ha")))
                    {
                        error = $"--plans {value}: cluster-ha and/or cluster (solo has no replica to fail over to)";
                        return null;
                    }
                    break;
                case "--kinds" when value is not null:
                    kindNames = value.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Distinct().ToList();
                    if (kindNames.FirstOrDefault(n => Faults.Kinds.All(k => k.Name != n)) is { } unknown)
                    {
                        error = $"--kinds: unknown fault kind {unknown}";
                        return null;
                    }
                    if (kindNames.Count == 0) { error = "--kinds: name at least one"; return null; }
                    break;
                default:
                    error = $"bad argument {args[i]}{(value is null ? "" : " " + value)}";
                    return null;
            }
            i++;
        }
        // Checked once every argument is read: --hosts may come after --kinds.
        var offered = Faults.KindsOn(hosts);
        var kinds = kindNames?.Select(n => Faults.Kinds.Single(k => k.Name == n)).ToList() ?? offered.ToList();
        if (kinds.FirstOrDefault(k => !offered.Contains(k)) is { } elsewhere)
        {
            error = hosts == 1
                ? $"--kinds {elsewhere.Name}: runs on three hosts only; add --hosts 3"
                : $"--kinds {elsewhere.Name}: not offered with --hosts 3 (there: {string.Join(", ", offered.Select(k => k.Name))}); it needs the one-host platform (drop --hosts 3)";
            return null;
        }
        return new Options(hosts, faults, plans, kinds, seed, gap);
    }

    private static double Median(IReadOnlyList<double> values)
    {
        var sorted = values.Order().ToList();
        var mid = sorted.Count / 2;
        return sorted.Count % 2 == 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
    }

    private static string F(double seconds) => double.IsPositiveInfinity(seconds) ? "inf" : seconds.ToString("0.00", CultureInfo.InvariantCulture);
}
