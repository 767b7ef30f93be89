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

    public static LogSettings FromConfig(Akka.Configuration.Config dingo, IReadOnlyDictionary<string, string?> env)
    {
        ArgumentNullException.ThrowIfNull(dingo);
        ArgumentNullException.ThrowIfNull(env);
        var raw = env.TryGetValue("DINGO_LOG_FORMAT", out var fromEnv) && !string.IsNullOrWhiteSpace(fromEnv) ? fromEnv : dingo.GetString("logging.format", Text);
        var format = raw.Trim().ToLowerInvariant();
        if (format is not (Text or Json))
            throw new ArgumentException($"dingo.logging.format (DINGO_LOG_FORMAT) must be {Text} or {Json}: got '{raw}'");
        return new LogSettings { Format = format };
    }
}

public static class DingoLogging
{
    /// <summary>The console logger of a broker or cell, in the configured format.</summary>
    public static ILoggingBuilder AddDingoConsole(this ILoggingBuilder builder, LogSettings settings)
    {
        ArgumentNullException.ThrowIfNull(settings);
        if (settings.Format == LogSettings.Json)
            return builder.AddJsonConsole(o =>
            {
                o.UseUtcTimestamp = true;
                o.TimestampFormat = "yyyy-MM-ddTHH:mm:ss.fffZ";
                o.JsonWriterOptions = new JsonWriterOptions { Indented = false };
            });
        return builder.AddSimpleConsole(o => { o.SingleLine = true; o.TimestampFormat = "HH:mm:ss.fff "; });
    }

    /// <summary>
    /// HOCON that sends an actor system's log (at its akka.loglevel) to the host's <see cref="ILoggerFactory"/>, given
    /// with <see cref="AkkaLoggerSetup"/>: for a system made without Akka.Hosting (the cell's membership system).
    /// </summary>
    public const string AkkaLoggers = """akka.loggers = ["Akka.Hosting.Logging.LoggerFactoryLogger, Akka.Hosting"]""";

    /// <summary>The setup that <see cref="AkkaLoggers"/> reads its logger factory from.</summary>
    public static Akka.Actor.Setup.Setup AkkaLoggerSetup(ILoggerFactory loggers) => new Akka.Hosting.Logging.LoggerFactorySetup(loggers);
}
