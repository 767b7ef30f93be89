using System.Collections.Concurrent;
using System.Text.Json;
using Akka.Actor;
using Akka.Event;
using LogLevel = Microsoft.Extensions.Logging.LogLevel;
using Dingo.Broker;
using Dingo.Config;
using Dingo.Tests.Support;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Xunit.Abstractions;

namespace Dingo.Tests.Broker;

/// <summary>
/// The console log (dingo.logging): a real broker process with DINGO_LOG_FORMAT=json writes nothing but JSON objects,
/// one per line; Akka's own log reaches the host's logger; a wrong format is refused naming the setting.
/// </summary>
[SuiteCost(20)]
public sealed class LoggingTests(ITestOutputHelper output)
{
    [Fact]
    public async Task A_broker_with_json_logs_writes_one_json_object_per_line()
    {
        await using var platform = await TestPlatform.StartAsync(cells: 0);
        var url = platform.StartBrokerProcess(2, new Dictionary<string, string> { ["DINGO_LOG_FORMAT"] = "json" });
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(5) };
        await Eventually.UntilAsync(async () =>
        {
            try { return (await http.GetAsync(new Uri(url, "/readyz"))).IsSuccessStatusCode; }
            catch (HttpRequestException) { return false; }
        }, TimeSpan.FromSeconds(60), "the second broker's /readyz 200");
        platform.KillBroker(2);

        // Killed: a line it was writing at that moment may be cut short; every whole line counts.
        var text = await File.ReadAllTextAsync(Path.Combine(platform.Settings.DataDir, "broker-2.log"));
        var lines = text.Split('\n').SkipLast(1).Where(l => l.Length > 0).ToList();
        output.WriteLine($"{lines.Count} lines; the first: {lines.FirstOrDefault()}");
        Assert.NotEmpty(lines);
        foreach (var line in lines)
        {
            using var entry = JsonDocument.Parse(line);
            var root = entry.RootElement;
            foreach (var field in new[] { "Timestamp", "LogLevel", "Category", "Message" })
                Assert.True(root.TryGetProperty(field, out _), $"no {field} in: {line}");
            // UTC, to the millisecond.
            Assert.EndsWith("Z", root.GetProperty("Timestamp").GetString(), StringComparison.Ordinal);
        }
        Assert.Contains(lines, l => l.Contains("\"Category\":\"Dingo.", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Akka_log_goes_to_the_hosts_logger()
    {
        var settings = TestPlatform.NewSettings();
        var captured = new ConcurrentQueue<(string Category, LogLevel Level, string Message)>();
        var broker = BrokerApp.Build(settings, akkaPort: 0, logging: l => l.AddProvider(new CaptureProvider(captured)).SetMinimumLevel(LogLevel.Warning));
        await broker.StartAsync();
        try
        {
            var system = broker.Services.GetRequiredService<ActorSystem>();
            var token = Guid.NewGuid().ToString("N");
            system.Log.Warning("logging test {0}", token);
            await Eventually.UntilAsync(() => Task.FromResult(captured.Any(c => c.Message.Contains(token, StringComparison.Ordinal))), TimeSpan.FromSeconds(10),
                "Akka's warning in the host's logger");
            var entry = captured.First(c => c.Message.Contains(token, StringComparison.Ordinal));
            output.WriteLine($"{entry.Category} {entry.Level}: {entry.Message}");
            Assert.Equal(LogLevel.Warning, entry.Level);
        }
        finally
        {
            await broker.StopAsync();
            await broker.DisposeAsync();
            await TestPlatform.DestroyDataAsync(settings);
        }
    }

    [Fact]
    [Trait(Tier.Name, Tier.Fast)]
    public void A_log_format_other_than_text_or_json_is_refused_naming_the_setting()
    {
        var conf = Path.Combine(TestPlatform.RepoRoot(), "hocon", "dingo.conf");
        Assert.Equal(LogSettings.Text, DingoSettings.Load([conf], new Dictionary<string, string?>()).Logging.Format);
        Assert.Equal(LogSettings.Json, DingoSettings.Load([conf], new Dictionary<string, string?> { ["DINGO_LOG_FORMAT"] = "JSON" }).Logging.Format);
        Assert.Equal(LogSettings.Json, DingoSettings.Load([conf], new Dictionary<string, string?>(), "dingo.logging.format = json").Logging.Format);
        var bad = Assert.Throws<ArgumentException>(() => DingoSettings.Load([conf], new Dictionary<string, string?> { ["DINGO_LOG_FORMAT"] = "xml" }));
        Assert.Contains("dingo.logging.format", bad.Message, StringComparison.Ordinal);
    }

    private sealed class CaptureProvider(ConcurrentQueue<(string, LogLevel, string)> captured) : ILoggerProvider
    {
        public ILogger CreateLogger(string categoryName) => new Capture(categoryName, captured);
        public void Dispose() { }

        private sealed class Capture(string category, ConcurrentQueue<(string, LogLevel, string)> captured) : ILogger
        {
            public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
            public bool IsEnabled(LogLevel logLevel) => true;
            public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
                captured.Enqueue((category, logLevel, formatter(state, exception)));
        }
    }
}
