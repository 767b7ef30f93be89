using System.Net;
using Dingo.Cell;
using Dingo.Cells;
using Dingo.Config;
using Dingo.Logging;
using Dingo.Model;
using Dingo.Tests.Support;
using Microsoft.Extensions.Logging.Abstractions;
using Xunit.Abstractions;

namespace Dingo.Tests.Logging;

/// <summary>
/// Logs shipped over syslog (RFC 5424 over TCP and TLS) to a real rsyslog: a broker process's own log, a PostgreSQL
/// node's log with its node and instance, a receiver whose certificate the platform does not trust getting nothing;
/// and a node's PostgreSQL log rotated past its limit while PostgreSQL goes on writing to it.
/// </summary>
[SuiteCost(25)]
public sealed class SyslogTests(ITestOutputHelper output)
{
    [Fact]
    public async Task A_broker_ships_its_log_over_tls_to_a_receiver_it_trusts()
    {
        using var ca = TestCertificates.NewAuthority("syslog");
        var (cert, key) = ca.IssueServer("rsyslog", [IPAddress.Loopback], ["localhost"]);
        await using var rsyslog = await TestRsyslog.StartAsync((cert, key, ca.CaFile));
        await using var platform = await TestPlatform.StartAsync(cells: 0);
        var url = platform.StartBrokerProcess(2, new Dictionary<string, string>
        {
            ["DINGO_SYSLOG_ADDRESS"] = $"127.0.0.1:{rsyslog.Port}",
            ["DINGO_SYSLOG_TRANSPORT"] = "tls",
            ["DINGO_SYSLOG_CA_FILE"] = ca.CaFile,
        });
        try
        {
            await Eventually.UntilAsync(() => Task.FromResult(rsyslog.Messages().Any(m => m.App == "dingo-broker")), TimeSpan.FromSeconds(60),
                () => $"the broker's log at the receiver (rsyslog: {rsyslog.Output()})");
        }
        finally { platform.KillBroker(2); }
        var messages = rsyslog.Messages().Where(m => m.App == "dingo-broker").ToList();
        output.WriteLine($"{messages.Count} messages; the first: {messages[0]}");
        // local0 (16): PRI 16 x 8 + severity; PROCID the broker's process id; the category leads the message.
        Assert.All(messages, m => Assert.InRange(m.Pri, 16 * 8 + 2, 16 * 8 + 7));
        Assert.All(messages, m => Assert.True(int.TryParse(m.ProcId, out _), $"PROCID {m.ProcId}"));
        Assert.Contains(messages, m => m.Msg.StartsWith("Dingo.", StringComparison.Ordinal));
        Assert.DoesNotContain(messages, m => m.Msg.Contains(TestPlatform.Password, StringComparison.Ordinal));
    }

    [Fact]
    public async Task A_receiver_whose_certificate_does_not_chain_to_the_configured_ca_gets_nothing()
    {
        using var ca = TestCertificates.NewAuthority("syslog-real");
        using var other = TestCertificates.NewAuthority("syslog-other");
        var (cert, key) = ca.IssueServer("rsyslog", [IPAddress.Loopback]);
        await using var rsyslog = await TestRsyslog.StartAsync((cert, key, ca.CaFile));
        var problems = new List<string>();
        await using (var sink = new SyslogSink(new SyslogSettings { Host = "127.0.0.1", Port = rsyslog.Port, Transport = SyslogSettings.Tls, CaFile = other.CaFile },
                         p => { lock (problems) problems.Add(p); }))
        {
            sink.Write(SyslogSeverity.Warning, "dingo-test", "1", "-", "must not arrive");
            await Eventually.UntilAsync(() => Task.FromResult(problems.Count > 0), TimeSpan.FromSeconds(15), "the sink saying it cannot deliver");
            Assert.Equal(0, sink.Sent);
        }
        output.WriteLine(problems[0]);
        Assert.Contains("127.0.0.1", problems[0], StringComparison.Ordinal);
        Assert.Empty(rsyslog.Messages());
    }

    [Fact]
    public async Task A_nodes_postgres_log_is_shipped_with_its_node_and_instance_and_rotated_while_postgres_writes_on()
    {
        await using var rsyslog = await TestRsyslog.StartAsync();
        var dataRoot = Path.Combine("/tmp", "dingo-rt-" + Guid.NewGuid().ToString("N")[..12]);
        var runtime = new LocalProcessRuntime(new LocalProcessRuntimeOptions(dataRoot), NullLogger<LocalProcessRuntime>.Instance);
        var spec = new NodeLaunchSpec("n-logs", "i-logs", "127.0.0.1", FreePorts.One(), new Credentials("dingo", "secret-" + Guid.NewGuid().ToString("N")));
        var settings = new LogSettings
        {
            Syslog = new SyslogSettings { Host = "127.0.0.1", Port = rsyslog.Port, Transport = SyslogSettings.Tcp },
            PostgresLogMax = 64 * 1024,
        };
        try
        {
            await using var sink = new SyslogSink(settings.Syslog);
            var logs = new NodeLogs(runtime, settings, sink, NullLogger<NodeLogs>.Instance);
            logs.Pass(); // the first pass starts at each log's end (nothing there yet)
            await runtime.CreateAsync(spec, CancellationToken.None);
            await runtime.StartAsync(spec, null, CancellationToken.None);
            await Eventually.UntilAsync(() =>
            {
                logs.Pass();
                return Task.FromResult(rsyslog.Messages().Any(m => m.App == "postgres" && m.Msg.Contains("ready to accept connections", StringComparison.Ordinal)));
            }, TimeSpan.FromSeconds(30), () => $"PostgreSQL's 'ready' line at the receiver (rsyslog: {rsyslog.Output()})");
            var ready = rsyslog.Messages().First(m => m.App == "postgres" && m.Msg.Contains("ready to accept connections", StringComparison.Ordinal));
            output.WriteLine(ready.ToString());
            Assert.Equal(spec.NodeId, ready.ProcId);
            Assert.StartsWith($"instance {spec.InstanceId}: ", ready.Msg, StringComparison.Ordinal);
            Assert.Equal(16 * 8 + 6, ready.Pri); // LOG: informational

            // Past the limit (filled here; PostgreSQL's own lines go on after): the file is copied to .1 and truncated in place.
            var logFile = Path.Combine(dataRoot, spec.NodeId, "postgres.log");
            await File.AppendAllTextAsync(logFile, string.Concat(Enumerable.Repeat("2026-12-05 00:00:00.000 UTC [1] LOG:  filler line for the rotation test\n", 1200)));
            logs.Pass();
            Assert.True(File.Exists(logFile + ".1"), "no postgres.log.1 after the log passed its limit");
            Assert.Contains("filler line", await File.ReadAllTextAsync(logFile + ".1"), StringComparison.Ordinal);
            Assert.True(new FileInfo(logFile).Length < 1024, $"postgres.log not truncated: {new FileInfo(logFile).Length} bytes");

            // PostgreSQL writes on into the same file, from its start (it opened the file for appending).
            await runtime.StopAsync(spec.NodeId, CancellationToken.None);
            var after = await File.ReadAllTextAsync(logFile);
            Assert.Contains("database system is shut down", after, StringComparison.Ordinal);
            Assert.DoesNotContain("filler line", after, StringComparison.Ordinal);
            Assert.DoesNotContain('\0', after);
            await Eventually.UntilAsync(() =>
            {
                logs.Pass();
                return Task.FromResult(rsyslog.Messages().Any(m => m.ProcId == spec.NodeId && m.Msg.Contains("database system is shut down", StringComparison.Ordinal)));
            }, TimeSpan.FromSeconds(15), "the shutdown line, written after the rotation, at the receiver");
        }
        finally
        {
            await runtime.RemoveAsync(spec.NodeId, CancellationToken.None);
            try { Directory.Delete(dataRoot, recursive: true); }
            catch (DirectoryNotFoundException) { }
        }
    }
}

/// <summary>The RFC 5424 message and its framing, the severities, the settings: no receiver needed.</summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class SyslogFormatTests
{
    [Fact]
    public void Header_fields_are_printable_ascii_bounded_and_never_empty()
    {
        Assert.Equal("-", SyslogSink.Header("", 48));
        Assert.Equal("dingo_cell", SyslogSink.Header("dingo cell", 48));
        Assert.Equal("ab", SyslogSink.Header("abcdef", 2));
        Assert.Equal("n-1_", SyslogSink.Header("n-1é", 48));
    }

    [Fact]
    public void A_frame_is_the_octet_count_a_space_and_the_message()
    {
        var frame = SyslogSink.Frame("<134>1 x é");
        Assert.Equal("11 <134>1 x é", System.Text.Encoding.UTF8.GetString(frame));
    }

    [Theory]
    [InlineData("2026-12-05 07:16:05.734 UTC [24458] FATAL:  lock file exists", SyslogSeverity.Error)]
    [InlineData("2026-12-05 07:16:05.734 UTC [24458] PANIC:  could not write", SyslogSeverity.Critical)]
    [InlineData("2026-12-05 07:16:05.734 UTC [24458] WARNING:  archive_mode", SyslogSeverity.Warning)]
    [InlineData("2026-12-05 07:16:05.734 UTC [24458] LOG:  checkpoint complete", SyslogSeverity.Informational)]
    [InlineData("a line without a level", SyslogSeverity.Informational)]
    public void A_postgres_log_line_keeps_its_level(string line, SyslogSeverity severity) => Assert.Equal(severity, NodeLogs.SeverityOf(line));

    [Theory]
    [InlineData("logs.example:6514", null, null, "logs.example", 6514, "tls")]
    [InlineData("10.0.0.5:514", "tcp", null, "10.0.0.5", 514, "tcp")]
    [InlineData("[fd00::5]:6514", null, null, "fd00::5", 6514, "tls")]
    public void Syslog_settings_come_from_the_environment(string address, string? transport, string? unused, string host, int port, string expected)
    {
        _ = unused;
        var env = new Dictionary<string, string?> { ["DINGO_SYSLOG_ADDRESS"] = address, ["DINGO_SYSLOG_TRANSPORT"] = transport };
        var settings = SyslogSettings.FromConfig(Akka.Configuration.ConfigurationFactory.Empty, env)!;
        Assert.Equal(host, settings.Host);
        Assert.Equal(port, settings.Port);
        Assert.Equal(expected, settings.Transport);
        Assert.Null(SyslogSettings.FromConfig(Akka.Configuration.ConfigurationFactory.Empty, new Dictionary<string, string?>()));
    }

    [Theory]
    [InlineData("logs.example", null, null, "host:port")]
    [InlineData("logs.example:0", null, null, "host:port")]
    [InlineData("logs.example:514", "udp", null, "tcp or tls")]
    [InlineData("logs.example:514", "tcp", "/etc/hostname", "is for transport tls")]
    [InlineData("logs.example:6514", "tls", "/nonexistent/ca.pem", "no file")]
    public void Wrong_syslog_settings_are_refused_naming_the_setting(string address, string? transport, string? ca, string says)
    {
        var env = new Dictionary<string, string?> { ["DINGO_SYSLOG_ADDRESS"] = address, ["DINGO_SYSLOG_TRANSPORT"] = transport, ["DINGO_SYSLOG_CA_FILE"] = ca };
        var error = Assert.Throws<ArgumentException>(() => SyslogSettings.FromConfig(Akka.Configuration.ConfigurationFactory.Empty, env));
        Assert.Contains("dingo.logging.syslog", error.Message, StringComparison.Ordinal);
        Assert.Contains(says, error.Message, StringComparison.Ordinal);
    }
}
