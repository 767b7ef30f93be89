using System.Globalization;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;

namespace Dingo.Bench.Router;

/// <summary>
/// Throughput and latency of pgbench through Dingo's router data paths, against a direct connection and HAProxy
/// (TCP mode), all to one PostgreSQL 15 of the bench's own on 127.0.0.1. stdout carries only the bench's lines;
/// progress and the children's output go to stderr.
/// </summary>
public static class Program
{
    private static readonly Workload[] Workloads = [Workload.Select, Workload.Tpcb];
    private static readonly int[] ClientCounts = [1, 8, 32];

    public static async Task<int> Main(string[] args)
    {
        var output = new StreamWriter(Console.OpenStandardOutput()) { AutoFlush = true };
        Console.SetOut(Console.Error);

        var seconds = 8;
        var rounds = 2;
        for (var i = 0; i < args.Length; i++)
        {
            if (args[i] == "--seconds" && i + 1 < args.Length && int.TryParse(args[i + 1], CultureInfo.InvariantCulture, out seconds) && seconds >= 1) { i++; continue; }
            if (args[i] == "--rounds" && i + 1 < args.Length && int.TryParse(args[i + 1], CultureInfo.InvariantCulture, out rounds) && rounds >= 1) { i++; continue; }
            Console.Error.WriteLine("usage: dotnet run -c Release --project bench/Router -- [--seconds S] [--rounds R]   (default 8 s per run, 2 rounds)");
            return 2;
        }
#if DEBUG
        Console.Error.WriteLine("bench: this is a Debug build; figures worth comparing need -c Release");
#endif

        using var interrupted = new CancellationTokenSource();
        void OnSignal(PosixSignalContext context) { context.Cancel = true; interrupted.Cancel(); }
        using var sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal);
        using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal);
        var ct = interrupted.Token;

        Postgres? postgres = null;
        Haproxy? haproxy = null;
        var dingo = new DataPaths();
        try
        {
            postgres = await Postgres.StartAsync(ct);
            Console.Error.WriteLine($"bench: PostgreSQL 15 on 127.0.0.1:{postgres.Port}; pgbench -i -s 10");
            await Processes.RunCheckedAsync(Path.Combine(Processes.PgBin, "pgbench"),
                ["-i", "-s", "10", "-q", "-h", "127.0.0.1", "-p", postgres.Port.ToString(CultureInfo.InvariantCulture), "-U", "postgres", "postgres"],
                TimeSpan.FromMinutes(10), ct);

            await dingo.CreateAsync(postgres.Port, new StderrLogger(), ct);
            haproxy = await Haproxy.StartAsync(postgres.Port, ct);

            List<BenchPath> paths = [new("direct", postgres.Port, IsDingo: false), .. dingo.Paths, new("haproxy", haproxy.Port, IsDingo: false)];
            output.WriteLine($"config seconds={seconds} rounds={rounds} scale=10 shared_buffers=256MB "
                             + $"paths={string.Join(',', paths.Select(p => $"{p.Name}:{p.Port}"))}");
            foreach (var (name, reason) in dingo.Skipped)
                output.WriteLine($"skipped path={name} reason=\"{reason.Replace('"', '\'')}\"");

            var samples = await MeasureAsync(postgres, paths, seconds, rounds, ct);
            Report(output, paths, samples);
            return 0;
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
            Console.Error.WriteLine("bench: interrupted; cleaning up");
            return 130;
        }
        catch (Exception ex)
        {
            Console.Error.WriteLine($"bench: {ex.GetType().Name}: {ex.Message}");
            return 1;
        }
        finally
        {
            await dingo.DisposeAsync();
            if (haproxy is not null) await haproxy.DisposeAsync();
            if (postgres is not null) await postgres.DisposeAsync();
        }
    }

    /// <summary>
    /// Every (workload, clients) cell runs each path once per round, the paths alternating, in an order rotated by
    /// one each round so no path always runs first or right after another.
    /// </summary>
    private static async Task<Dictionary<(Workload, int, string), List<Sample>>> MeasureAsync(
        Postgres postgres, List<BenchPath> paths, int seconds, int rounds, CancellationToken ct)
    {
        var samples = new Dictionary<(Workload, int, string), List<Sample>>();
        for (var round = 0; round < rounds; round++)
        {
            var order = paths.Skip(round % paths.Count).Concat(paths.Take(round % paths.Count)).ToList();
            foreach (var workload in Workloads)
            foreach (var clients in ClientCounts)
            foreach (var path in order)
            {
                // Each TPC-B run starts without the previous runs' dirty pages, so no path pays for another's checkpoint.
                if (workload == Workload.Tpcb) await postgres.SqlAsync("checkpoint", ct);
                var sample = await PgBench.RunAsync(path.Port, workload, clients, seconds, ct);
                Console.Error.WriteLine($"bench: round {round + 1}/{rounds} {PgBench.Name(workload)} c={clients} {path.Name}: "
                                        + $"tps={F1(sample.Tps)} p50_ms={F3(sample.P50Ms)} p99_ms={F3(sample.P99Ms)} tx={sample.Transactions}");
                var key = (workload, clients, path.Name);
                if (!samples.TryGetValue(key, out var list)) samples[key] = list = [];
                list.Add(sample);
            }
        }
        return samples;
    }

    private sealed record Row(Workload Workload, int Clients, string Path, bool IsDingo, double Tps, double P50Ms, double P99Ms);

    private static void Report(StreamWriter output, List<BenchPath> paths, Dictionary<(Workload, int, string), List<Sample>> samples)
    {
        var best = new List<(Row Row, double VsHaproxy, double VsDirect)>();
        foreach (var workload in Workloads)
        foreach (var clients in ClientCounts)
        {
            // The median of the rounds, each figure on its own.
            var rows = paths.Select(p =>
            {
                var s = samples[(workload, clients, p.Name)];
                return new Row(workload, clients, p.Name, p.IsDingo, Median(s.Select(x => x.Tps)), Median(s.Select(x => x.P50Ms)), Median(s.Select(x => x.P99Ms)));
            }).ToList();
            var direct = rows.Single(r => r.Path == "direct");
            var haproxy = rows.Single(r => r.Path == "haproxy");
            foreach (var r in rows)
                output.WriteLine($"row workload={PgBench.Name(workload)} clients={clients} path={r.Path} tps={F1(r.Tps)} "
                                 + $"p50_ms={F3(r.P50Ms)} p99_ms={F3(r.P99Ms)} added_p50_ms={F3(r.P50Ms - direct.P50Ms)} "
                                 + $"added_p99_ms={F3(r.P99Ms - direct.P99Ms)} ratio_vs_haproxy={F3(r.Tps / haproxy.Tps)} "
                                 + $"ratio_vs_direct={F3(r.Tps / direct.Tps)}");
            var top = rows.Where(r => r.IsDingo).MaxBy(r => r.Tps)!;
            best.Add((top, top.Tps / haproxy.Tps, top.Tps / direct.Tps));
        }

        foreach (var (row, _, _) in best)
            output.WriteLine($"best workload={PgBench.Name(row.Workload)} clients={row.Clients} path={row.Path}");
        var used = best.GroupBy(b => b.Row.Path).Select(g => $"{g.Key}({g.Count()}/{best.Count} rows)");
        output.WriteLine($"result_paths {string.Join(' ', used)}");
        output.WriteLine($"RESULT router min_ratio_vs_haproxy={F3(best.Min(b => b.VsHaproxy))} min_ratio_vs_direct={F3(best.Min(b => b.VsDirect))}");
    }

    private static double Median(IEnumerable<double> values)
    {
        var sorted = values.Order().ToList();
        var mid = sorted.Count / 2;
        return sorted.Count % 2 == 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
    }

    private static string F1(double v) => v.ToString("0.0", CultureInfo.InvariantCulture);
    private static string F3(double v) => v.ToString("0.000", CultureInfo.InvariantCulture);

    /// <summary>The data paths' warnings and errors, on stderr.</summary>
    private sealed class StderrLogger : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
        public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Warning;
        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            if (!IsEnabled(logLevel)) return;
            Console.Error.WriteLine($"router {logLevel}: {formatter(state, exception)}{(exception is null ? "" : " — " + exception.Message)}");
        }
    }
}
