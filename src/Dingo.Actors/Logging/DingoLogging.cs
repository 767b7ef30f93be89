using System.Text.Json;
using Dingo.Config;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Dingo.Logging;

/// <summary>How a broker or cell wires its log: the console in the configured format, syslog when configured, Akka's log into both.</summary>
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
    /// The process's log shipped over syslog too, when configured: every entry the host's filters let through, as one
    /// RFC 5424 message (APP-NAME <paramref name="appName"/>, PROCID the process id, MSGID the category's last part).
    /// The host disposes the sink at shutdown, after what is queued had a moment to go out.
    /// </summary>
    public static ILoggingBuilder AddDingoSyslog(this ILoggingBuilder builder, LogSettings settings, string appName)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentNullException.ThrowIfNull(settings);
        if (settings.Syslog is not { } syslog) return builder;
        // Both made by the container, so the host disposes them at shutdown (an instance registered as such it would not).
        builder.Services.AddSingleton(_ => new SyslogSink(syslog));
        builder.Services.AddSingleton<ILoggerProvider>(sp => new SyslogLoggerProvider(sp.GetRequiredService<SyslogSink>(), appName));
        return builder;
    }

    /// <summary>
    /// HOCON that sends an actor system's log (at its akka.loglevel) to the host's <see cref="ILoggerFactory"/>, given
    /// with <see cref="AkkaLoggerSetup"/>: for a system made without Akka.Hosting (the cell's membership system).
    /// </summary>
    public const string AkkaLoggers = """akka.loggers = ["Akka.Hosting.Logging.LoggerFactoryLogger, Akka.Hosting"]""";

    /// <summary>The setup that <see cref="AkkaLoggers"/> reads its logger factory from.</summary>
    public static Akka.Actor.Setup.Setup AkkaLoggerSetup(ILoggerFactory loggers) => new Akka.Hosting.Logging.LoggerFactorySetup(loggers);
}
