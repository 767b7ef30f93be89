using System.CommandLine;
using System.CommandLine.Help;
using System.Text.Json.Nodes;
using Dingo.Cli;
using Dingo.Model;
using Dingo.Store;
using Dingo.Tests.Support;
using Microsoft.Extensions.Logging.Abstractions;

namespace Dingo.Tests.Cli;

/// <summary>The console's command line as System.CommandLine parses it: help everywhere, errors before anything runs.</summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class CommandLineTests
{
    private static readonly RootCommand Root = Dingo.Cli.Program.BuildCommands();

    public static TheoryData<string> Commands() => new(Root.Subcommands.Select(c => c.Name));

    [Theory]
    [MemberData(nameof(Commands))]
    public void Every_command_has_a_description_and_help_that_runs_nothing_else(string command)
    {
        Assert.False(string.IsNullOrWhiteSpace(Root.Subcommands.Single(c => c.Name == command).Description));
        foreach (var help in new[] { "--help", "-h" })
        {
            var parsed = Root.Parse([command, help]);
            Assert.Empty(parsed.Errors);
            Assert.IsType<HelpAction>(parsed.Action);
        }
    }

    [Theory]
    [InlineData("drain --help", "")]
    [InlineData("switchover", "Required argument 'instance' missing")]
    [InlineData("logs i-1 --tail 0", "--tail must be a whole number of at least 1: got '0'")]
    [InlineData("events i-1 --limit many", "--limit must be a whole number of at least 1: got 'many'")]
    [InlineData("status --bogus", "--bogus")]
    [InlineData("drain cell-1 cell-2", "cell-2")]
    [InlineData("nonsense", "nonsense")]
    [InlineData("drain cell-1 --wait --timeout 0", "--timeout must be a whole number of at least 1: got '0'")]
    [InlineData("watch --every 0.1", "--every must be between 0.2 and 3600 seconds")]
    [InlineData("backups i-1 --wait", "--wait")]
    public void A_command_line_that_does_not_parse_names_its_fault(string line, string says)
    {
        var parsed = Root.Parse(line.Split(' '));
        if (says.Length == 0)
        {
            // `drain --help` drained a cell named "--help" before: now it is help, and nothing else.
            Assert.Empty(parsed.Errors);
            Assert.IsType<HelpAction>(parsed.Action);
            return;
        }
        Assert.NotEmpty(parsed.Errors);
        Assert.Contains(parsed.Errors, e => e.Message.Contains(says, StringComparison.Ordinal));
    }

    [Theory]
    [InlineData("switchover"), InlineData("drain"), InlineData("undrain"), InlineData("drill"), InlineData("recreate"), InlineData("rebuild")]
    public void Every_operation_can_wait_until_it_is_done(string command)
    {
        var options = Root.Subcommands.Single(c => c.Name == command).Options.Select(o => o.Name).ToList();
        Assert.Contains("--wait", options);
        Assert.Contains("--timeout", options);
    }

    [Theory]
    [InlineData("status"), InlineData("members"), InlineData("backups"), InlineData("events"), InlineData("store-check")]
    public void Every_read_command_speaks_json(string command) =>
        Assert.Contains("--json", Root.Subcommands.Single(c => c.Name == command).Options.Select(o => o.Name));

    [Fact]
    public void Config_files_may_follow_any_command_and_repeat()
    {
        var parsed = Root.Parse(["events", "i-1", "--config", "a.conf", "--json", "--config", "b.conf"]);
        Assert.Empty(parsed.Errors);
        var config = Root.Options.OfType<Option<string[]>>().Single(o => o.Name == "--config");
        Assert.Equal(["a.conf", "b.conf"], parsed.GetValue(config)!);
    }

    [Fact]
    public void An_instance_is_named_by_its_id_or_its_cloud_foundry_name()
    {
        static InstanceRecord Instance(string id, string? name) => new()
        {
            Id = id, ServiceId = Catalog.ServiceId, PlanId = Catalog.SoloPlanId, OrganizationGuid = "o", SpaceGuid = "s",
            ContextJson = name is null ? "{}" : new JsonObject { ["instance_name"] = name }.ToJsonString(), Port = 1, NodeCount = 1,
            Superuser = new Credentials("dingo", "pw"), CreatedAt = DateTimeOffset.UtcNow,
        };
        InstanceRecord[] all = [Instance("i-1", "orders"), Instance("i-2", "billing"), Instance("i-3", "billing"), Instance("orders-id", null)];
        Assert.Equal(("i-1", (string?)null), InstanceNames.Resolve("orders", all));
        Assert.Equal(("i-2", (string?)null), InstanceNames.Resolve("i-2", all));
        Assert.Equal(("unknown", (string?)null), InstanceNames.Resolve("unknown", all));
        var (id, problem) = InstanceNames.Resolve("billing", all);
        Assert.Null(id);
        Assert.Contains("i-2, i-3", problem, StringComparison.Ordinal);
        // An id wins over a name: another instance named after it does not hide it.
        Assert.Equal(("orders-id", (string?)null), InstanceNames.Resolve("orders-id", [.. all, Instance("i-4", "orders-id")]));
    }
}

/// <summary>The built console as an operator runs it: help and errors touch nothing; an instance's name works like its id.</summary>
[SuiteCost(10)]
public sealed class ConsoleProcessTests
{
    private static Task<(int Code, string Output)> RunAsync(string home, params string[] args) =>
        ProgramRun.RunAsync("dotnet", [ProgramRun.ConsoleDll, .. args], new Dictionary<string, string> { ["DINGO_HOME"] = home });

    /// <summary>An instance record in etcd as the broker writes one, named by Cloud Foundry; its id.</summary>
    private static async Task<string> PutInstanceAsync(EtcdStore store, string name, string planId, int nodeCount, int port = 1)
    {
        var id = "i-" + Guid.NewGuid().ToString("N")[..8];
        await store.PutAsync(store.Keys.Instance(id), new InstanceRecord
        {
            Id = id, ServiceId = Catalog.ServiceId, PlanId = planId, OrganizationGuid = "o", SpaceGuid = "s",
            ContextJson = new JsonObject { ["platform"] = "cloudfoundry", ["instance_name"] = name }.ToJsonString(), Port = port, NodeCount = nodeCount,
            Superuser = new Credentials("dingo", "pw"), CreatedAt = DateTimeOffset.UtcNow,
        }, CancellationToken.None);
        return id;
    }

    /// <summary>A DINGO_HOME with the repository's hocon/dingo.conf, as a deployment has.</summary>
    private static string NewHome()
    {
        var home = Directory.CreateTempSubdirectory("dingo-cli-home-").FullName;
        Directory.CreateDirectory(Path.Combine(home, "hocon"));
        File.Copy(Path.Combine(TestPlatform.RepoRoot(), "hocon", "dingo.conf"), Path.Combine(home, "hocon", "dingo.conf"));
        return home;
    }

    [Fact]
    public async Task Help_and_a_bad_command_line_read_no_setting_and_make_nothing()
    {
        // A DINGO_HOME with no hocon/dingo.conf: any command that got as far as its settings would fail on it, and `up`
        // would make a seal key under it.
        var home = Directory.CreateTempSubdirectory("dingo-cli-home-").FullName;
        try
        {
            var (code, text) = await RunAsync(home, "drain", "--help");
            Assert.True(code == 0, text);
            Assert.Contains("<cell>", text, StringComparison.Ordinal);
            (code, text) = await RunAsync(home, "up", "--help");
            Assert.True(code == 0, text);
            (code, text) = await RunAsync(home, "switchover");
            Assert.Equal(2, code);
            Assert.Contains("see: dingo switchover --help", text, StringComparison.Ordinal);
            (code, text) = await RunAsync(home);
            Assert.Equal(2, code);
            Assert.Contains("switchover", text, StringComparison.Ordinal);
            (code, text) = await RunAsync(home, "--version");
            Assert.True(code == 0, text);
            Assert.StartsWith($"dingo {Product.Version}", text, StringComparison.Ordinal);
            Assert.Empty(Directory.EnumerateFileSystemEntries(home));
        }
        finally { Directory.Delete(home, recursive: true); }
    }

    [Fact]
    public async Task Events_of_an_instance_named_by_cloud_foundry_are_found_by_that_name()
    {
        var settings = TestPlatform.NewSettings();
        await using var store = new EtcdStore(settings.EtcdEndpoints, settings.EtcdPrefix);
        var id = await PutInstanceAsync(store, "orders-db", Catalog.SoloPlanId, 1);
        await using (var log = new EventJournal(store, new Dingo.Config.EventSettings { Retention = TimeSpan.FromHours(1), PerInstance = 10 }, "cell-1", NullLogger.Instance))
        {
            log.Record(id, "n-1", "promote", "promoting: I hold the leader key");
            await log.FlushAndStopAsync(TimeSpan.FromSeconds(10));
        }
        var home = NewHome();
        try
        {
            var (code, text) = await RunAsync(home, "events", "orders-db", "--json", "--config", Path.Combine(settings.DataDir, "test.conf"));
            Assert.True(code == 0, text);
            Assert.Contains("promoting: I hold the leader key", text, StringComparison.Ordinal);
        }
        finally
        {
            Directory.Delete(home, recursive: true);
            await TestPlatform.DestroyDataAsync(settings);
        }
    }

    /// <summary>
    /// `dingo logs NAME -f` on a process cell: the tail, then each line as it is written, across a rotation in place
    /// (copied away, then truncated: PostgreSQL goes on writing at the start), until stopped: SIGTERM ends it with 143
    /// (Ctrl-C with 130), 128 + the signal, as a shell reports it.
    /// </summary>
    [Fact]
    public async Task Logs_follow_prints_new_lines_across_a_rotation_until_interrupted()
    {
        var settings = TestPlatform.NewSettings();
        await using var store = new EtcdStore(settings.EtcdEndpoints, settings.EtcdPrefix);
        var id = await PutInstanceAsync(store, "tail-db", Catalog.SoloPlanId, 1);
        await store.PutAsync(store.Keys.Cell("cell-1"), new CellInfo { Id = "cell-1", Zone = "z1", Capacity = 10, Address = "127.0.0.1", Runtime = "process" }, CancellationToken.None);
        await store.PutAsync(store.Keys.Node(id, "n-tail"), new NodeSpec { NodeId = "n-tail", InstanceId = id, CellId = "cell-1", Port = 1 }, CancellationToken.None);
        var log = Path.Combine(settings.DataDir, "cells", "cell-1", "nodes", "n-tail", "postgres.log");
        Directory.CreateDirectory(Path.GetDirectoryName(log)!);
        await File.WriteAllLinesAsync(log, ["old 1", "old 2", "old 3"]);
        var home = NewHome();
        var console = ProgramRun.Start("dotnet", [ProgramRun.ConsoleDll, "logs", "tail-db", "--tail", "2", "-f", "--config", Path.Combine(settings.DataDir, "test.conf")],
            new Dictionary<string, string> { ["DINGO_HOME"] = home });
        try
        {
            Task<bool> Printed(params string[] lines) => Task.FromResult(lines.All(console.Lines.Contains));
            await Eventually.UntilAsync(() => Printed("old 2", "old 3"), TimeSpan.FromSeconds(20), "the last two lines");
            Assert.DoesNotContain("old 1", console.Lines);
            await File.AppendAllLinesAsync(log, ["new 1", "new 2"]);
            await Eventually.UntilAsync(() => Printed("new 1", "new 2"), TimeSpan.FromSeconds(5), "lines written after the tail: " + string.Join(" | ", console.Lines));
            File.Copy(log, log + ".1", overwrite: true);
            await using (var truncate = new FileStream(log, FileMode.Open, FileAccess.Write, FileShare.ReadWrite)) truncate.SetLength(0);
            await File.AppendAllLinesAsync(log, ["after rotation"]);
            await Eventually.UntilAsync(() => Printed("after rotation"), TimeSpan.FromSeconds(5), "a line written after the rotation: " + string.Join(" | ", console.Lines));
            Assert.Single(console.Lines, l => l == "new 1");
            var code = await console.TerminateAsync(TimeSpan.FromSeconds(10));
            Assert.True(code == 143, $"exit {code}: {string.Join(" | ", console.Lines)}");
        }
        finally
        {
            await console.DisposeAsync();
            Directory.Delete(home, recursive: true);
            await TestPlatform.DestroyDataAsync(settings);
        }
    }

    /// <summary>
    /// `dingo watch --once` as an operator's script runs it: the instance by its name, its nodes' roles and a replica's
    /// lag, the latest event; a name full of Spectre markup printed as it is, not interpreted.
    /// </summary>
    [Fact]
    public async Task Watch_once_shows_roles_lag_and_the_latest_events_and_prints_names_as_text()
    {
        var settings = TestPlatform.NewSettings();
        await using var store = new EtcdStore(settings.EtcdEndpoints, settings.EtcdPrefix);
        var ct = CancellationToken.None;
        var id = await PutInstanceAsync(store, "[red]orders[/]", Catalog.ClusterPlanId, 2, port: 30123);
        await store.PutAsync(store.Keys.Cell("cell-1"), new CellInfo { Id = "cell-1", Zone = "z1", Capacity = 10, Address = "127.0.0.1", Runtime = "process" }, ct);
        foreach (var (node, lsn, writable) in new[] { ("n-one", 10_000L, true), ("n-two", 10_000L - 3 * 1024, false) })
        {
            await store.PutAsync(store.Keys.Node(id, node), new NodeSpec { NodeId = node, InstanceId = id, CellId = "cell-1", Port = 1 }, ct);
            await store.PutAsync(store.Keys.Status(id, node), new NodeStatus
            {
                NodeId = node, InstanceId = id, CellId = "cell-1", State = NodeState.Running, Detail = "running", Host = "127.0.0.1", Port = 1,
                Role = writable ? NodeRole.Primary : NodeRole.Replica, Writable = writable, Lsn = lsn, Streaming = !writable, UpdatedAt = DateTimeOffset.UtcNow,
            }, ct);
        }
        await store.PutAsync(store.Keys.Leader(id), new LeaderRecord { NodeId = "n-one", Host = "127.0.0.1", Port = 1 }, ct);
        await using (var log = new EventJournal(store, new Dingo.Config.EventSettings { Retention = TimeSpan.FromHours(1), PerInstance = 10 }, "cell-1", NullLogger.Instance))
        {
            log.Record(id, "n-one", "promote", "promoting: I hold the leader key");
            await log.FlushAndStopAsync(TimeSpan.FromSeconds(10));
        }
        var home = NewHome();
        try
        {
            var (code, text) = await RunAsync(home, "watch", "--once", "--config", Path.Combine(settings.DataDir, "test.conf"));
            Assert.True(code == 0, text);
            Assert.Contains($"[red]orders[/] ({id})", text, StringComparison.Ordinal);
            Assert.Matches(@"n-one\s.*primary", text);
            Assert.Matches(@"n-two\s.*replica\s.*running\s.*3 KiB", text);
            Assert.Contains("promoting: I hold the leader key", text, StringComparison.Ordinal);

            // Live, until stopped: the picture drawn, then 143 for SIGTERM (130 for Ctrl-C), as a shell reports it.
            await using (var live = ProgramRun.Start("dotnet", [ProgramRun.ConsoleDll, "watch", "--every", "0.5", "--config", Path.Combine(settings.DataDir, "test.conf")],
                             new Dictionary<string, string> { ["DINGO_HOME"] = home }))
            {
                await Eventually.UntilAsync(() => Task.FromResult(live.Lines.Any(l => l.Contains("promoting: I hold the leader key", StringComparison.Ordinal))),
                    TimeSpan.FromSeconds(20), () => "the live picture: " + string.Join(" | ", live.Lines));
                Assert.Equal(143, await live.TerminateAsync(TimeSpan.FromSeconds(10)));
            }

            (code, text) = await RunAsync(home, "watch", "--every", "0", "--config", Path.Combine(settings.DataDir, "test.conf"));
            Assert.Equal(2, code);
            Assert.Contains("--every must be between 0.2 and 3600 seconds", text, StringComparison.Ordinal);
        }
        finally
        {
            Directory.Delete(home, recursive: true);
            await TestPlatform.DestroyDataAsync(settings);
        }
    }

    /// <summary>The live view's events: an event recorded while it watches appears without re-reading any history.</summary>
    [Fact]
    public async Task Watch_sees_an_event_the_moment_it_is_recorded()
    {
        var settings = TestPlatform.NewSettings();
        await using var store = new EtcdStore(settings.EtcdEndpoints, settings.EtcdPrefix);
        try
        {
            var latest = new WatchCommand.LatestEvents(3);
            await latest.FillAsync(store, CancellationToken.None);
            Assert.Empty(latest.Snapshot());
            using var stop = new CancellationTokenSource();
            var watching = store.WatchPrefixAsync(store.Keys.AllEvents, changes => { latest.Add(changes); return Task.CompletedTask; }, stop.Token);
            await Task.Delay(300); // the watch is set up
            await using (var log = new EventJournal(store, new Dingo.Config.EventSettings { Retention = TimeSpan.FromHours(1), PerInstance = 10 }, "cell-1", NullLogger.Instance))
            {
                for (var i = 1; i <= 5; i++) log.Record("i-watched", "n-1", "rewind", $"rewinding, step {i}");
                await log.FlushAndStopAsync(TimeSpan.FromSeconds(10));
            }
            await Eventually.UntilAsync(() => Task.FromResult(latest.Snapshot().Any(e => e.Sentence == "rewinding, step 5")), TimeSpan.FromSeconds(10), "the event seen through the watch");
            Assert.Equal(["rewinding, step 3", "rewinding, step 4", "rewinding, step 5"], latest.Snapshot().Select(e => e.Sentence));
            await stop.CancelAsync();
            await watching;
        }
        finally
        {
            await TestPlatform.DestroyDataAsync(settings);
        }
    }
}
