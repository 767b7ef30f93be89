using System.Globalization;
using System.Text.Json;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Console;

namespace Dingo.Config;

/// <summary>
/// `dingo.logging` (DINGO_LOG_FORMAT): how a broker or cell writes its log on stdout. `text` (the default) is one line
/// per entry for a terminal or journald; `json` is one JSON object per line (.NET's own JSON console formatter: UTC
/// timestamp, level, category, message, the message's named values under `State`) for a log service to parse. Akka's
/// own log goes through the same logger either way (<see cref="DingoLogging.AkkaLoggers"/>).
/// </summary>
public sealed record LogSettings
{
    public const string Text = "text";
    public const string Json = "json";

    public string Format { get; init; } = Text;

    /// <summary>Where logs are shipped over syslog (null: nowhere).</summary>
    public SyslogSettings? Syslog { get; init; }

    /// <summary>A node's PostgreSQL log (process runtime) is rotated past this size; three old files are kept.</summary>
    public long PostgresLogMax { get; init; } = 10L * 1024 * 1024;

    public static LogSettings FromConfig(Akka.Configuration.Config dingo, IReadOnlyDictionary<string, string?> env)
    {
        ArgumentNullException.ThrowIfNull(dingo);
        ArgumentNullException.ThrowIfNull(env);
        var raw = Env(env, "DINGO_LOG_FORMAT") ?? dingo.GetString("logging.format", Text);
        var format = raw.Trim().ToLowerInvariant();
        if (format is not (Text or Json))
            throw new ArgumentException($"dingo.logging.format (DINGO_LOG_FORMAT) must be {Text} or {Json}: got '{raw}'");
        var max = dingo.GetByteSize("logging.postgres-log-max") ?? 10L * 1024 * 1024;
        if (max < 64 * 1024) throw new ArgumentException($"dingo.logging.postgres-log-max must be at least 64KiB: got {max} bytes");
        return new LogSettings { Format = format, Syslog = SyslogSettings.FromConfig(dingo, env), PostgresLogMax = max };
    }

    internal static string? Env(IReadOnlyDictionary<string, string?> env, string name) =>
        env.TryGetValue(name, out var value) && !string.IsNullOrWhiteSpace(value) ? value.Trim() : null;
}

/// <summary>
/// `dingo.logging.syslog` (DINGO_SYSLOG_ADDRESS, DINGO_SYSLOG_TRANSPORT, DINGO_SYSLOG_CA_FILE): a receiver of RFC 5424
/// messages (rsyslog, syslog-ng, a log service's syslog input) that brokers and cells ship their own log to, and cells
/// every PostgreSQL node's log. `tls` (RFC 5425) checks the receiver's certificate against `ca-file` (the system's trust
/// when empty) and the host name dialled; `tcp` is plain text, for a receiver on the same host or a trusted network.
/// </summary>
public sealed record SyslogSettings
{
    public const string Tcp = "tcp";
    public const string Tls = "tls";

    public required string Host { get; init; }
    public required int Port { get; init; }
    public string Transport { get; init; } = Tls;
    public string? CaFile { get; init; }
    /// <summary>Ship every PostgreSQL node's log too (cells; default on).</summary>
    public bool Postgres { get; init; } = true;

    public static SyslogSettings? FromConfig(Akka.Configuration.Config dingo, IReadOnlyDictionary<string, string?> env)
    {
        var address = LogSettings.Env(env, "DINGO_SYSLOG_ADDRESS") ?? dingo.GetString("logging.syslog.address", "");
        if (string.IsNullOrWhiteSpace(address)) return null;
        var colon = address.LastIndexOf(':');
        if (colon <= 0 || !int.TryParse(address[(colon + 1)..], NumberStyles.None, CultureInfo.InvariantCulture, out var port) || port is < 1 or > 65535)
            throw new ArgumentException($"dingo.logging.syslog.address (DINGO_SYSLOG_ADDRESS) must be host:port: got '{address}'");
        var host = address[..colon].Trim('[', ']');
        var transport = (LogSettings.Env(env, "DINGO_SYSLOG_TRANSPORT") ?? dingo.GetString("logging.syslog.transport", Tls)).Trim().ToLowerInvariant();
        if (transport is not (Tcp or Tls))
            throw new ArgumentException($"dingo.logging.syslog.transport (DINGO_SYSLOG_TRANSPORT) must be {Tcp} or {Tls}: got '{transport}'");
        var ca = LogSettings.Env(env, "DINGO_SYSLOG_CA_FILE") ?? dingo.GetString("logging.syslog.ca-file", "");
        if (string.IsNullOrWhiteSpace(ca)) ca = null;
        if (ca is not null && transport == Tcp)
            throw new ArgumentException("dingo.logging.syslog.ca-file (DINGO_SYSLOG_CA_FILE) is for transport tls; with tcp nothing is checked");
        if (ca is not null && !File.Exists(ca))
            throw new ArgumentException($"dingo.logging.syslog.ca-file (DINGO_SYSLOG_CA_FILE): no file {ca}");
        return new SyslogSettings { Host = host, Port = port, Transport = transport, CaFile = ca, Postgres = dingo.GetBoolean("logging.syslog.postgres", true) };
    }
}
