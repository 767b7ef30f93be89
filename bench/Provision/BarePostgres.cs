using System.Diagnostics;
using System.Globalization;
using Dingo.Bench.Shared;
using Npgsql;

namespace Dingo.Bench.Provision;

/// <summary>
/// The peer: what PostgreSQL alone takes on this machine, in the same run. initdb with the options Dingo uses, pg_ctl
/// start -w, a first `SELECT 1`; then the proportional set size of that idle server (postmaster and children). No
/// etcd, no HA, no router, no backups: the floor Dingo's figures are compared with.
/// </summary>
internal static class BarePostgres
{
    public static async Task<(double Seconds, double PssMib)> MeasureAsync(string postgresBin, int port, CancellationToken ct)
    {
        var root = Path.Combine(Path.GetTempPath(), "dingo-bench-bare-" + Guid.NewGuid().ToString("N")[..8]);
        var data = Path.Combine(root, "pgdata");
        Directory.CreateDirectory(root);
        await RunAsync("chown", ["postgres:postgres", root], ct);
        try
        {
            var started = Stopwatch.StartNew();
            await RunAsPostgresAsync(Path.Combine(postgresBin, "initdb"), ["-D", data, "-U", "bench", "--auth=trust", "--data-checksums", "--no-sync", "-E", "UTF8", "--locale=C.UTF-8"], ct);
            await RunAsync("sync", ["-f", data], ct);
            await RunAsPostgresAsync(Path.Combine(postgresBin, "pg_ctl"),
                ["-D", data, "-w", "-l", Path.Combine(root, "postgres.log"), "-o", $"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={root}", "start"], ct);
            await using (var connection = new NpgsqlConnection($"Host=127.0.0.1;Port={port};Username=bench;Database=postgres;Pooling=false"))
            {
                await connection.OpenAsync(ct);
                await using var command = new NpgsqlCommand("SELECT 1", connection);
                await command.ExecuteScalarAsync(ct);
            }
            var seconds = started.Elapsed.TotalSeconds;
            await Task.Delay(TimeSpan.FromSeconds(10), ct); // idle, as the platform's nodes are when measured
            var pid = int.Parse(File.ReadLines(Path.Combine(data, "postmaster.pid")).First(), CultureInfo.InvariantCulture);
            return (seconds, BenchPlatform.TreePssKib(pid) / 1024);
        }
        finally
        {
            try { await RunAsPostgresAsync(Path.Combine(postgresBin, "pg_ctl"), ["-D", data, "-m", "immediate", "-w", "stop"], CancellationToken.None); }
            catch (InvalidOperationException) { }
            Directory.Delete(root, recursive: true);
        }
    }

    private static readonly TimeSpan ToolTimeout = TimeSpan.FromMinutes(2);

    private static Task RunAsPostgresAsync(string file, IEnumerable<string> args, CancellationToken ct) =>
        RunAsync("setpriv", new[] { "--reuid=postgres", "--regid=postgres", "--init-groups", file }.Concat(args), ct);

    private static Task RunAsync(string file, IEnumerable<string> args, CancellationToken ct) =>
        ChildProcesses.RunCheckedAsync(file, args.ToList(), null, ToolTimeout, ct);
}
