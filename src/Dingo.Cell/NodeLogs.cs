using Dingo.Cells;
using Dingo.Config;
using Dingo.Logging;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Dingo.Cell;

/// <summary>
/// The PostgreSQL logs of a process-runtime cell's nodes: shipped line by line to the syslog receiver when one is
/// configured (APP-NAME postgres, PROCID the node id, the instance id in front of the line), and rotated past
/// `dingo.logging.postgres-log-max` (the file copied to postgres.log.1, older copies shifted up to .3, then truncated in
/// place: PostgreSQL writes it opened for appending, so its next line lands at the start). Once a second; what a node
/// wrote before this cell started is not shipped again.
/// </summary>
internal sealed class NodeLogs(LocalProcessRuntime runtime, LogSettings settings, SyslogSink? sink, ILogger<NodeLogs> logger) : BackgroundService
{
    public const int KeptCopies = 3;
    private const int ReadLimit = 1024 * 1024; // per node per pass: a flood waits for the next pass, never fills memory
    private readonly Dictionary<string, long> _offsets = new(StringComparer.Ordinal);
    private bool _first = true;

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        while (!stoppingToken.IsCancellationRequested)
        {
            try { Pass(); }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                logger.LogWarning("PostgreSQL logs: {Error}; trying again next pass", ex.Message);
            }
            try { await Task.Delay(TimeSpan.FromSeconds(1), stoppingToken).ConfigureAwait(false); }
            catch (OperationCanceledException) { return; }
        }
    }

    /// <summary>One pass over every node's log (internal: tests drive it).</summary>
    internal void Pass()
    {
        var files = runtime.LogFiles();
        foreach (var (nodeId, instanceId, logFile) in files)
        {
            if (!File.Exists(logFile)) continue;
            var length = new FileInfo(logFile).Length;
            if (!_offsets.TryGetValue(logFile, out var offset)) offset = _first ? length : 0;
            if (length < offset) offset = 0; // truncated or replaced under us
            if (sink is not null && settings.Syslog?.Postgres == true) offset = Ship(nodeId, instanceId, logFile, offset);
            else offset = length;
            if (new FileInfo(logFile).Length > settings.PostgresLogMax && offset >= settings.PostgresLogMax)
            {
                Rotate(logFile);
                offset = 0;
            }
            _offsets[logFile] = offset;
        }
        foreach (var gone in _offsets.Keys.Except(files.Select(f => f.LogFile)).ToList()) _offsets.Remove(gone);
        _first = false;
    }

    private long Ship(string nodeId, string? instanceId, string logFile, long offset)
    {
        var (lines, next) = LogLines.Since(logFile, offset, ReadLimit);
        foreach (var line in lines) Ship(sink!, nodeId, instanceId, line);
        return next;
    }

    /// <summary>One line of a node's PostgreSQL log to the receiver, as every runtime ships it (a Docker cell's: <see cref="ContainerLogs"/>).</summary>
    internal static void Ship(SyslogSink sink, string nodeId, string? instanceId, string line) =>
        sink.Write(SeverityOf(line), "postgres", nodeId, "-", instanceId is null ? line : $"instance {instanceId}: {line}");

    /// <summary>PostgreSQL's level in a stderr log line ("… [pid] FATAL:  …").</summary>
    internal static SyslogSeverity SeverityOf(string line)
    {
        var at = line.IndexOf("] ", StringComparison.Ordinal);
        var rest = at < 0 ? line : line[(at + 2)..];
        return rest switch
        {
            _ when rest.StartsWith("PANIC:", StringComparison.Ordinal) => SyslogSeverity.Critical,
            _ when rest.StartsWith("FATAL:", StringComparison.Ordinal) || rest.StartsWith("ERROR:", StringComparison.Ordinal) => SyslogSeverity.Error,
            _ when rest.StartsWith("WARNING:", StringComparison.Ordinal) => SyslogSeverity.Warning,
            _ when rest.StartsWith("DEBUG", StringComparison.Ordinal) => SyslogSeverity.Debug,
            _ => SyslogSeverity.Informational,
        };
    }

    private void Rotate(string logFile)
    {
        for (var i = KeptCopies - 1; i >= 1; i--)
        {
            var from = $"{logFile}.{i}";
            if (File.Exists(from)) File.Move(from, $"{logFile}.{i + 1}", overwrite: true);
        }
        File.Copy(logFile, $"{logFile}.1", overwrite: true);
        using (var truncate = new FileStream(logFile, FileMode.Open, FileAccess.Write, FileShare.ReadWrite))
            truncate.SetLength(0);
        logger.LogInformation("PostgreSQL log {File} rotated past {Max} bytes ({Kept} copies kept)", logFile, settings.PostgresLogMax, KeptCopies);
    }
}
