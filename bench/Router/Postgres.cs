using System.Diagnostics;
using System.Globalization;

namespace Dingo.Bench.Router;

/// <summary>
/// The bench's own PostgreSQL 15: a temporary data directory, trust authentication, listening on 127.0.0.1 only.
/// As root it runs as the `postgres` OS user (PostgreSQL refuses root). Disposal stops it by PID (SIGINT: fast
/// shutdown, SIGKILL after 20 s) and deletes the directory.
/// </summary>
internal sealed class Postgres : IAsyncDisposable
{
    private readonly string _dir;
    private Process? _process;

    public int Port { get; }

    private Postgres(string dir, int port)
    {
        _dir = dir;
        Port = port;
    }

    public static async Task<Postgres> StartAsync(CancellationToken ct)
    {
        var dir = Directory.CreateTempSubdirectory("dingo-rbench-").FullName;
        var pg = new Postgres(dir, Processes.FreePort());
        try
        {
            await pg.InitAndStartAsync(ct);
            return pg;
        }
        catch
        {
            await pg.DisposeAsync();
            throw;
        }
    }

    private async Task InitAndStartAsync(CancellationToken ct)
    {
        var data = Path.Combine(_dir, "data");
        if (Environment.IsPrivilegedProcess)
            await Processes.RunCheckedAsync("chown", ["postgres:postgres", _dir], TimeSpan.FromSeconds(10), ct);

        var init = AsPostgres("initdb");
        await Processes.RunCheckedAsync(init[0], [.. init[1..],
            "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"],
            TimeSpan.FromMinutes(2), ct);

        var start = AsPostgres("postgres");
        _process = Processes.StartService(start[0], [.. start[1..],
            "-D", data,
            "-p", Port.ToString(CultureInfo.InvariantCulture),
            "-c", "listen_addresses=127.0.0.1",
            "-c", "unix_socket_directories=" + _dir,
            "-c", "shared_buffers=256MB",
            "-c", "max_connections=200"], "postgres");

        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while (true)
        {
            if (_process.HasExited)
                throw new InvalidOperationException($"PostgreSQL exited at start with code {_process.ExitCode} (its log is above)");
            var (code, _, _) = await Processes.RunAsync(Path.Combine(Processes.PgBin, "pg_isready"),
                ["-h", "127.0.0.1", "-p", Port.ToString(CultureInfo.InvariantCulture), "-U", "postgres", "-d", "postgres"],
                TimeSpan.FromSeconds(10), ct);
            if (code == 0) break;
            if (DateTime.UtcNow > deadline) throw new TimeoutException("PostgreSQL did not accept connections within 60 s");
            await Task.Delay(200, ct);
        }
    }

    /// <summary>The command line running a PostgreSQL program as the `postgres` user when we are root.</summary>
    private static string[] AsPostgres(string program)
    {
        var path = Path.Combine(Processes.PgBin, program);
        return Environment.IsPrivilegedProcess
            ? ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", path]
            : [path];
    }

    /// <summary>Runs SQL on the instance directly (not through a routed path).</summary>
    public Task<string> SqlAsync(string sql, CancellationToken ct) =>
        Processes.RunCheckedAsync(Path.Combine(Processes.PgBin, "psql"),
            ["-h", "127.0.0.1", "-p", Port.ToString(CultureInfo.InvariantCulture), "-U", "postgres", "-d", "postgres",
             "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql],
            TimeSpan.FromMinutes(5), ct);

    public async ValueTask DisposeAsync()
    {
        if (_process is not null)
        {
            // SIGINT: fast shutdown (active sessions rolled back, clean stop), so no orphaned backends remain.
            await Processes.StopAsync(_process, Processes.SigInt, TimeSpan.FromSeconds(20));
            _process.Dispose();
            _process = null;
        }
        try { Directory.Delete(_dir, recursive: true); }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            Console.Error.WriteLine($"bench: could not delete {_dir}: {ex.Message}");
        }
    }
}
