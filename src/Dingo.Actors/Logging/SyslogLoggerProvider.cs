using System.Text;
using Microsoft.Extensions.Logging;

namespace Dingo.Logging;

/// <summary>
/// A logger provider that ships every entry the host's filters let through to a <see cref="SyslogSink"/>: APP-NAME the
/// process kind (dingo-broker, dingo-cell), PROCID its process id, MSGID the category's last part, the message with its
/// exception (type, message, stack) after it. Scopes are not carried (none of the platform's code opens one).
/// </summary>
public sealed class SyslogLoggerProvider(SyslogSink sink, string appName) : ILoggerProvider
{
    private readonly string _procId = Environment.ProcessId.ToString(System.Globalization.CultureInfo.InvariantCulture);

    public ILogger CreateLogger(string categoryName) => new SyslogLogger(sink, appName, _procId, categoryName);

    /// <summary>The sink is the container's to dispose (it may serve more than this provider).</summary>
    public void Dispose() { }

    internal static SyslogSeverity SeverityOf(LogLevel level) => level switch
    {
        LogLevel.Critical => SyslogSeverity.Critical,
        LogLevel.Error => SyslogSeverity.Error,
        LogLevel.Warning => SyslogSeverity.Warning,
        LogLevel.Information => SyslogSeverity.Informational,
        _ => SyslogSeverity.Debug,
    };

    private sealed class SyslogLogger(SyslogSink sink, string appName, string procId, string category) : ILogger
    {
        private readonly string _msgId = category[(category.LastIndexOf('.') + 1)..];

        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => logLevel != LogLevel.None;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            if (!IsEnabled(logLevel)) return;
            var message = new StringBuilder(category).Append(": ").Append(formatter(state, exception));
            if (exception is not null) message.Append(" | ").Append(exception);
            sink.Write(SeverityOf(logLevel), appName, procId, _msgId, message.ToString());
        }
    }
}
