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
[SuiteCost(6)]
public sealed class ConsoleProcessTests
{
    private static Task<(int Code, string Output)> RunAsync(string home, params string[] args) =>
        ProgramRun.RunAsync("dotnet", [ProgramRun.ConsoleDll, .. args], new Dictionary<string, string> { ["DINGO_HOME"] = home });

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
        var id = "i-" + Guid.NewGuid().ToString("N")[..8];
        await store.PutAsync(store.Keys.Instance(id), new InstanceRecord
        {
            Id = id, ServiceId = Catalog.ServiceId, PlanId = Catalog.SoloPlanId, OrganizationGuid = "o", SpaceGuid = "s",
            ContextJson = new JsonObject { ["platform"] = "cloudfoundry", ["instance_name"] = "orders-db" }.ToJsonString(), Port = 1, NodeCount = 1,
            Superuser = new Credentials("dingo", "pw"), CreatedAt = DateTimeOffset.UtcNow,
        }, CancellationToken.None);
        await using (var log = new EventJournal(store, new Dingo.Config.EventSettings { Retention = TimeSpan.FromHours(1), PerInstance = 10 }, "cell-1", NullLogger.Instance))
        {
            log.Record(id, "n-1", "promote", "promoting: I hold the leader key");
            await log.FlushAndStopAsync(TimeSpan.FromSeconds(10));
        }
        var home = Directory.CreateTempSubdirectory("dingo-cli-home-").FullName;
        try
        {
            Directory.CreateDirectory(Path.Combine(home, "hocon"));
            File.Copy(Path.Combine(TestPlatform.RepoRoot(), "hocon", "dingo.conf"), Path.Combine(home, "hocon", "dingo.conf"));
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
}
