using Microsoft.Extensions.Logging;
using Dingo.Logging;
using Dingo.Config;
using Microsoft.Extensions.Hosting;

namespace Dingo.Cell;

public static class Program
{
    /// <summary>dingo-cell [--config FILE]... [--seed akka.tcp://dingo@HOST:PORT (akka.ssl.tcp:// with dingo.akka.tls)]...</summary>
    public static async Task<int> Main(string[] args)
    {
        if (args is ["guard", "--dir", var guardDir]) return await RunGuardAsync(guardDir);
        var files = new List<string>();
        var seeds = new List<string>();
        // `probe [--config FILE]...`: one GET of this cell's /readyz (a container's HEALTHCHECK), exit 0 or 1.
        var probe = args is ["probe", ..];
        for (var i = probe ? 1 : 0; i < args.Length; i++)
        {
            if (args[i] == "--config" && i + 1 < args.Length) files.Add(args[++i]);
            else if (args[i] == "--seed" && i + 1 < args.Length) seeds.Add(args[++i]);
            else
            {
                Console.Error.WriteLine($"dingo-cell: unknown argument '{args[i]}'. Usage: dingo-cell [probe] [--config FILE]... [--seed AKKA-ADDRESS]...");
                return 2;
            }
        }
        DingoSettings settings;
        try
        {
            settings = DingoSettings.Load(files);
            settings.CheckTlsFiles(broker: false);
        }
        catch (Exception ex) when (ex is ArgumentException or FileNotFoundException or Akka.Configuration.ConfigurationException)
        {
            Console.Error.WriteLine($"dingo-cell: configuration error: {ex.Message}");
            return 2;
        }
        if (probe)
        {
            if (settings.Cell.HealthPort <= 0)
            {
                Console.Error.WriteLine("dingo-cell probe: dingo.cell.health-port is 0 (DINGO_CELL_HEALTH_PORT): this cell serves no /readyz");
                return 2;
            }
            if (!settings.Postgres.RequireTls)
                return await Dingo.Health.HealthProbe.RunAsync(new Uri(CellHttpEndpoint.Url(settings.Cell.Address, settings.Cell.HealthPort) + "/readyz"), Console.Error, TimeSpan.FromSeconds(10));
            // HTTPS under require-tls: the cell's certificate is checked against the platform CA the cell wrote for it.
            var caFile = CellTlsIdentity.CaFile(settings);
            if (!File.Exists(caFile))
            {
                Console.Error.WriteLine($"dingo-cell probe: no platform CA at {caFile} yet: the cell has not read it from etcd (or is not running with this data-dir)");
                return 1;
            }
            using var ca = System.Security.Cryptography.X509Certificates.X509Certificate2.CreateFromPem(File.ReadAllText(caFile));
            return await Dingo.Health.HealthProbe.RunAsync(new Uri(CellHttpEndpoint.Url(settings.Cell.Address, settings.Cell.HealthPort, https: true) + "/readyz"), Console.Error, TimeSpan.FromSeconds(10), ca);
        }
        // The platform's own connections to nodes require TLS with channel binding when clients must use TLS.
        Dingo.Postgres.PlatformConnectionTls.Configure(settings.Postgres.RequireTls);
        // Every record that holds a password is sealed with the platform key: without it, refuse to start.
        try { Dingo.Security.Sealing.Configure(settings.Seal); }
        catch (Dingo.Security.SealException ex)
        {
            Console.Error.WriteLine($"dingo-cell: {ex.Message}");
            return 2;
        }
        if (!Dingo.Security.Sealing.Configured)
        {
            Console.Error.WriteLine($"dingo-cell: no seal key: {Dingo.Security.SealSettings.HowToSet}");
            return 2;
        }
        if (seeds.Count == 0) seeds.AddRange(settings.Akka.SeedNodes);
        if (seeds.Count == 0) seeds.Add(settings.Akka.MemberAddress("127.0.0.1", settings.Broker.AkkaPort));
        // Akka TLS files (dingo.akka.tls) are read before anything starts: a missing or wrong one stops the start, naming the setting.
        try { Dingo.Membership.AkkaTls.Load(settings.Akka.Tls)?.Dispose(); }
        catch (ArgumentException ex)
        {
            Console.Error.WriteLine($"dingo-cell: configuration error: {ex.Message}");
            return 2;
        }
        // The cell is back: its guard no longer gives its dead leaders' keys up (it recovers them itself), then leaders whose
        // agent died keep their lease while this process starts (LeaseBridge); stopped with the process.
        try { new Dingo.Ha.FenceGuardDirectory(CellApp.GuardPath(settings), launch: null).ClaimOwnership(); }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException) { Console.Error.WriteLine($"dingo-cell: cannot write to the guard's folder: {ex.Message}"); }
        using var bridgeStop = new CancellationTokenSource();
        using var bridgeLoggers = LoggerFactory.Create(b => b.AddDingoConsole(settings.Logging));
        var bridge = await LeaseBridge.StartAsync(settings, bridgeLoggers.CreateLogger("Dingo.Ha"), bridgeStop.Token);
        using var host = CellApp.Build(settings, seeds);
        try { await host.RunAsync(); }
        // Records of a newer schema met while starting: the start is cancelled by the stop it asked for (exit code below).
        catch (OperationCanceledException) when (Dingo.Store.SchemaVersion.RefusedInThisProcess) { }
        await bridgeStop.CancelAsync();
        await bridge;
        return Dingo.Store.SchemaVersion.RefusedInThisProcess ? Dingo.Store.SchemaVersion.RefusedExitCode : 0;
    }

    /// <summary>
    /// dingo-cell guard --dir DIR: the cell's fencing guard (started by the cell itself, detached, so it outlives the
    /// agent): stops a leading node's PostgreSQL once its lease deadline passes without renewal. Logs to DIR/guard.log.
    /// </summary>
    private static async Task<int> RunGuardAsync(string dir)
    {
        using var loggers = Microsoft.Extensions.Logging.LoggerFactory.Create(b => b.AddProvider(new GuardLogProvider(Path.Combine(dir, "guard.log"))));
        using var stopping = new CancellationTokenSource();
        using var term = System.Runtime.InteropServices.PosixSignalRegistration.Create(System.Runtime.InteropServices.PosixSignal.SIGTERM, c => { c.Cancel = true; stopping.Cancel(); });
        if (Dingo.Ha.FenceGuardDirectory.RaisePriority(-10) is { } why) loggers.CreateLogger("Dingo.Guard").LogWarning("{Why}", why);
        try
        {
            return await new Dingo.Ha.FenceGuard(new Dingo.Ha.FenceGuardDirectory(dir, launch: null), loggers.CreateLogger("Dingo.Guard")).RunAsync(stopping.Token);
        }
        catch (OperationCanceledException)
        {
            return 0;
        }
    }
}

/// <summary>The guard's log: one line per event, appended to a file in its folder (it has no terminal).</summary>
internal sealed class GuardLogProvider(string path) : Microsoft.Extensions.Logging.ILoggerProvider
{
    private readonly object _gate = new();

    public Microsoft.Extensions.Logging.ILogger CreateLogger(string categoryName) => new Logger(this);

    public void Dispose() { }

    private void Write(string line)
    {
        lock (_gate)
        {
            try { File.AppendAllText(path, line + Environment.NewLine); }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException) { }
        }
    }

    private sealed class Logger(GuardLogProvider provider) : Microsoft.Extensions.Logging.ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
        public bool IsEnabled(Microsoft.Extensions.Logging.LogLevel logLevel) => logLevel >= Microsoft.Extensions.Logging.LogLevel.Information;
        public void Log<TState>(Microsoft.Extensions.Logging.LogLevel logLevel, Microsoft.Extensions.Logging.EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            if (!IsEnabled(logLevel)) return;
            provider.Write(FormattableString.Invariant($"{DateTime.UtcNow:yyyy-MM-dd HH:mm:ss.fff} {logLevel}: {formatter(state, exception)}"));
        }
    }
}
