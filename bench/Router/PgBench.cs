using System.Globalization;
using System.Text.RegularExpressions;

namespace Dingo.Bench.Router;

internal enum Workload { Select, Tpcb }

/// <summary>One pgbench run's figures: throughput and per-transaction latency percentiles.</summary>
internal sealed record Sample(double Tps, double P50Ms, double P99Ms, long Transactions);

/// <summary>
/// Runs `pgbench -n -T secs -c N -j 2 --log` against one port and reads "tps = …" from its report and each
/// transaction's latency (µs, third column) from its per-transaction logs.
/// </summary>
internal static partial class PgBench
{
    [GeneratedRegex(@"^tps = ([0-9]+(?:\.[0-9]+)?)", RegexOptions.Multiline)]
    private static partial Regex TpsLine();

    public static string Name(Workload w) => w == Workload.Select ? "select" : "tpcb";

    public static async Task<Sample> RunAsync(int port, Workload workload, int clients, int seconds, CancellationToken ct)
    {
        var logDir = Directory.CreateTempSubdirectory("dingo-rbench-log-").FullName;
        try
        {
            List<string> args =
            [
                "-n", "-T", seconds.ToString(CultureInfo.InvariantCulture),
                "-c", clients.ToString(CultureInfo.InvariantCulture), "-j", "2",
                "--log", "--log-prefix=" + Path.Combine(logDir, "tx"),
            ];
            if (workload == Workload.Select) args.Add("-S");
            args.AddRange(["-h", "127.0.0.1", "-p", port.ToString(CultureInfo.InvariantCulture), "-U", "postgres", "postgres"]);

            var stdout = await Processes.RunCheckedAsync(Path.Combine(Processes.PgBin, "pgbench"), args,
                TimeSpan.FromSeconds(seconds + 120), ct);
            var tps = TpsLine().Match(stdout) is { Success: true } m
                ? double.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture)
                : throw new InvalidOperationException($"pgbench printed no \"tps = …\" line: {Processes.Tail(stdout)}");

            var latencies = new List<long>();
            foreach (var file in Directory.EnumerateFiles(logDir))
                ReadLatencies(file, latencies);
            if (latencies.Count == 0) throw new InvalidOperationException("pgbench logged no transactions");
            latencies.Sort();
            return new Sample(tps, Percentile(latencies, 0.50) / 1000.0, Percentile(latencies, 0.99) / 1000.0, latencies.Count);
        }
        finally
        {
            Directory.Delete(logDir, recursive: true);
        }
    }

    /// <summary>Lines are `client_id transaction_no time script_no time_epoch time_us`; time is µs, or a word for a failed/skipped one.</summary>
    private static void ReadLatencies(string file, List<long> into)
    {
        foreach (var line in File.ReadLines(file))
        {
            var span = line.AsSpan();
            var field = 0;
            foreach (var range in span.Split(' '))
            {
                if (field++ != 2) continue;
                if (long.TryParse(span[range], NumberStyles.None, CultureInfo.InvariantCulture, out var us)) into.Add(us);
                break;
            }
        }
    }

    /// <summary>Nearest-rank percentile of sorted values.</summary>
    private static double Percentile(List<long> sorted, double p)
    {
        var rank = (int)Math.Ceiling(p * sorted.Count);
        return sorted[Math.Clamp(rank - 1, 0, sorted.Count - 1)];
    }
}
