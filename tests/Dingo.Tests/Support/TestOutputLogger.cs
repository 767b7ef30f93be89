using Microsoft.Extensions.Logging;
using Xunit.Abstractions;

namespace Dingo.Tests.Support;

/// <summary>Log lines into the test's output (shown when it fails). Never throws once the test is over.</summary>
public class TestOutputLogger(ITestOutputHelper output) : ILogger
{
    public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
    public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Information;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        try { output.WriteLine($"{DateTime.UtcNow:HH:mm:ss.fff} {logLevel}: {formatter(state, exception)}"); }
        catch (InvalidOperationException) { }
    }
}

public sealed class TestOutputLogger<T>(ITestOutputHelper output) : TestOutputLogger(output), ILogger<T>;
