using System.Diagnostics;
using System.Globalization;

namespace Dingo.Bench.Router;

/// <summary>
/// HAProxy in TCP mode in front of the bench's PostgreSQL, on its own 127.0.0.1 port, from a generated config.
/// Runs in the foreground (-db) as our child; disposal stops it by PID (SIGTERM, SIGKILL after 5 s).
/// </summary>
internal sealed class Haproxy : IAsyncDisposable
{
    public const string Binary = "/usr/sbin/haproxy";

    private readonly string _configPath;
    private Process? _process;

    public int Port { get; }

    private Haproxy(string configPath, int port)
    {
        _configPath = configPath;
        Port = port;
    }

    public static async Task<Haproxy> StartAsync(int backendPort, CancellationToken ct)
    {
        if (!File.Exists(Binary))
            throw new InvalidOperationException($"{Binary} is missing: install the Debian package haproxy (./dingo test installs it)");
        var port = Processes.FreePort();
        var config = Path.Combine(Path.GetTempPath(), $"dingo-rbench-haproxy-{Environment.ProcessId}.cfg");
        var haproxy = new Haproxy(config, port);
        try
        {
            await File.WriteAllTextAsync(config, Config(port, backendPort), ct);
            await Processes.RunCheckedAsync(Binary, ["-c", "-q", "-f", config], TimeSpan.FromSeconds(20), ct);
            haproxy._process = Processes.StartService(Binary, ["-db", "-f", config], "haproxy");
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
            while (await Processes.ProbeAsync(port, ct) is { } failure)
            {
                if (haproxy._process.HasExited)
                    throw new InvalidOperationException($"HAProxy exited at start with code {haproxy._process.ExitCode} (its output is above)");
                if (DateTime.UtcNow > deadline) throw new TimeoutException($"HAProxy did not pass traffic within 20 s: {failure}");
                await Task.Delay(200, ct);
            }
            return haproxy;
        }
        catch
        {
            await haproxy.DisposeAsync();
            throw;
        }
    }

    private static string Config(int port, int backendPort)
    {
        var p = port.ToString(CultureInfo.InvariantCulture);
        var b = backendPort.ToString(CultureInfo.InvariantCulture);
        return $"""
            global
                maxconn 10000
                nbthread 2
                # maxconn 10000 wants ~20017 descriptors; where the hard limit is lower (20000 on the bench
                # machines) HAProxy would refuse to start. The bench holds at most 32 connections.
                no strict-limits

            defaults
                mode tcp
                timeout connect 5s
                timeout client 1h
                timeout server 1h

            frontend pg
                bind 127.0.0.1:{p}
                maxconn 10000
                default_backend pg

            backend pg
                server pg0 127.0.0.1:{b}

            """;
    }

    public async ValueTask DisposeAsync()
    {
        if (_process is not null)
        {
            await Processes.StopAsync(_process, Processes.SigTerm, TimeSpan.FromSeconds(5));
            _process.Dispose();
            _process = null;
        }
        File.Delete(_configPath);
    }
}
