using Microsoft.Extensions.Logging;

namespace Dingo.Bench.Shared;

/// <summary>Dingo's own log lines (runtime, archiver, backups) on stderr, so stdout carries only the bench's results.</summary>
internal class StderrLogger(string category, LogLevel minimum) : ILogger
{
    public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

    public bool IsEnabled(LogLevel logLevel) => logLevel >= minimum;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        if (!IsEnabled(logLevel)) return;
        Console.Error.WriteLine($"{DateTime.UtcNow:HH:mm:ss.fff} {category} {logLevel}: {formatter(state, exception)}"
                                + (exception is null ? "" : " — " + exception.Message));
    }
}

internal sealed class StderrLogger<T>(LogLevel minimum) : StderrLogger(typeof(T).Name, minimum), ILogger<T>;
