using System.Diagnostics;
using Akka.Actor;
using Dingo.Cli;
using Dingo.Membership;
using Dingo.Model;
using Dingo.Tests.Support;
using Xunit.Abstractions;

namespace Dingo.Tests.Broker;

/// <summary>
/// The operator console asks the Akka cluster from outside it: its own actor system (remoting only) sends through a
/// ClusterClient to the brokers' receptionist, and a broker's `console` actor answers with its view of the members.
/// Real brokers and cells, in this process and as OS processes; the answers cross real remoting.
/// </summary>
[SuiteCost(56)]
public sealed class ConsoleClientTests(ITestOutputHelper output)
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);

    [Fact]
    public async Task The_console_sees_the_broker_and_the_cell_up_with_their_roles()
    {
        await using var platform = await TestPlatform.StartAsync(cells: 1);
        var view = await ViewUntilAsync([platform.Seed], v => v.Members.Count(m => m.Status == "Up") == 2, "the broker and the cell are Up");

        Assert.Equal(platform.Seed, view.Broker);
        // Akka's leader is the first Up member by address, a broker or a cell.
        Assert.Contains(view.Members, m => m.Address == view.Leader);
        var broker = Assert.Single(view.Members, m => m.Address == platform.Seed);
        Assert.Equal(["broker"], broker.Roles);
        Assert.True(broker.Reachable);
        var cell = Assert.Single(view.Members, m => m.Address != platform.Seed);
        Assert.Equal(["cell"], cell.Roles);
        Assert.Equal("Up", cell.Status);
        Assert.True(cell.Reachable);
        Assert.Null(cell.Shards);

        var table = new StringWriter();
        ClusterConsole.Write(view, table);
        output.WriteLine(table.ToString());
        var lines = table.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal($"answered by {ClusterConsole.HostPort(platform.Seed)}; leader {ClusterConsole.HostPort(view.Leader!)}", lines[0]);
        Assert.StartsWith("MEMBER", lines[1]);
        Assert.Contains(lines, l => l.StartsWith(ClusterConsole.HostPort(platform.Seed), StringComparison.Ordinal) && l.Contains("broker") && l.Contains("Up") && l.Contains("yes"));
        Assert.Contains(lines, l => l.StartsWith(ClusterConsole.HostPort(cell.Address), StringComparison.Ordinal) && l.Contains("cell") && l.Contains("Up"));
    }

    [Fact]
    public async Task A_second_broker_process_is_listed_and_its_console_actor_answers_across_processes()
    {
        await using var platform = await TestPlatform.StartAsync(cells: 0, TestPlatform.NewSettings(), ownsData: true);
        await platform.StartCellProcessesAsync(1);
        platform.StartBrokerProcess(2);
        var view = await ViewUntilAsync([platform.Seed],
            v => v.Members.Count(m => m.Status == "Up" && m.Roles.Contains("broker")) == 2 && v.Members.Any(m => m.Status == "Up" && m.Roles.Contains("cell")),
            "both brokers and the cell process are Up", TimeSpan.FromSeconds(90));
        Assert.Equal(3, view.Members.Count);
        Assert.All(view.Members, m => Assert.True(m.Reachable, $"{m.Address} unreachable"));
        var second = Assert.Single(view.Members, m => m.Roles.Contains("broker") && m.Address != platform.Seed).Address;

        // Given the second broker alone as a contact, the client still gets an answer (the receptionist hands it
        // every broker as a contact, and it talks to whichever answers first).
        var viaSecond = await ViewUntilAsync([second], v => v.Members.Count(m => m.Status == "Up") == 3, "an answer through the second broker's receptionist");
        Assert.Contains(viaSecond.Broker, new[] { platform.Seed, second });

        // The second broker's own console actor, in the other OS process, answers over remoting (its JSON crosses
        // processes): asked directly, since the client picks its broker itself.
        var system = ActorSystem.Create(ClusterConsole.SystemName, ClusterConsole.ConsoleConfig("127.0.0.1"));
        try
        {
            var console = system.ActorSelection(second + ConsoleGateway.Path);
            var request = new ClusterViewRequest { Username = TestPlatform.AdminUsername, Password = TestPlatform.AdminPassword };
            var fromSecond = await console.Ask<ClusterView>(request, Timeout);
            // Its gossip may lag the first broker's by a moment.
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
            while (fromSecond.Members.Any(m => m.Status != "Up") && DateTime.UtcNow < deadline)
            {
                await Task.Delay(500);
                fromSecond = await console.Ask<ClusterView>(request, Timeout);
            }
            Assert.Equal(second, fromSecond.Broker);
            Assert.Equal(view.Leader, fromSecond.Leader);
            Assert.Equal(view.Members.Select(m => (m.Address, string.Join(",", m.Roles), m.Status)), fromSecond.Members.Select(m => (m.Address, string.Join(",", m.Roles), m.Status)));
            var table = new StringWriter();
            ClusterConsole.Write(fromSecond, table);
            output.WriteLine(table.ToString());
        }
        finally
        {
            await system.Terminate();
        }
    }

    [Fact]
    public async Task Brokers_are_found_in_etcd_beside_a_seed_that_is_down()
    {
        await using var platform = await TestPlatform.StartAsync(cells: 0);
        var closed = FreePorts.One();
        // No seeds configured: the console tries this host's default broker port (nothing listens there) and the
        // brokers registered in etcd; a cell's registration is not a contact.
        var settings = platform.Settings with
        {
            Akka = platform.Settings.Akka with { SeedNodes = [] },
            Broker = platform.Settings.Broker with { AkkaPort = closed },
        };
        var keys = platform.Store.Keys;
        await platform.Store.PutAsync(keys.AkkaMember(ClusterConsole.HostPort(platform.Seed)),
            new AkkaMemberRecord { Address = platform.Seed, Roles = ["broker"], Since = DateTimeOffset.UtcNow }, CancellationToken.None);
        await platform.Store.PutAsync(keys.AkkaMember("127.0.0.1:1"),
            new AkkaMemberRecord { Address = "akka.tcp://dingo@127.0.0.1:1", Roles = ["cell"], Since = DateTimeOffset.UtcNow }, CancellationToken.None);

        var brokers = await ClusterConsole.BrokerAddressesAsync(settings, platform.Store, CancellationToken.None);
        Assert.Equal([$"akka.tcp://dingo@127.0.0.1:{closed}", platform.Seed], brokers);

        var view = await ClusterConsole.QueryAsync(settings, platform.Store, Timeout, CancellationToken.None);
        Assert.Equal(platform.Seed, view.Broker);
        Assert.Contains(view.Members, m => m.Address == platform.Seed && m.Status == "Up");
    }

    [Fact]
    public async Task With_no_broker_reachable_the_console_fails_in_time_naming_the_contacts()
    {
        var closed = $"akka.tcp://dingo@127.0.0.1:{FreePorts.One()}";
        var watch = Stopwatch.StartNew();
        var error = await Assert.ThrowsAsync<ClusterConsoleException>(() => ClusterConsole.QueryAsync(TestPlatform.ConsoleAccess, [closed], TimeSpan.FromSeconds(3), CancellationToken.None));
        watch.Stop();
        output.WriteLine($"{watch.Elapsed.TotalSeconds:0.0}s: {error.Message}");
        Assert.Contains(closed + "/system/receptionist", error.Message);
        Assert.Contains("no broker answered within 3s", error.Message);
        Assert.True(watch.Elapsed >= TimeSpan.FromSeconds(3), $"gave up after {watch.Elapsed}");
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(10), $"took {watch.Elapsed}");
    }

    [Fact]
    public async Task Members_and_status_commands_print_the_view_and_status_survives_without_a_broker()
    {
        await using var platform = await TestPlatform.StartAsync(cells: 1);
        var settings = platform.Settings with { Akka = platform.Settings.Akka with { SeedNodes = [platform.Seed] } };
        await ViewUntilAsync([platform.Seed], v => v.Members.Count(m => m.Status == "Up") == 2, "the broker and the cell are Up");

        var (code, stdout, stderr) = await RunAsync((o, e) => MembersCommand.RunAsync(settings, o, e, CancellationToken.None));
        output.WriteLine(stdout);
        Assert.Equal(0, code);
        Assert.Equal("", stderr);
        Assert.Contains($"answered by {ClusterConsole.HostPort(platform.Seed)}", stdout);

        var status = new StringWriter();
        Assert.Equal(0, await StatusCommand.RunAsync(settings, status, CancellationToken.None));
        output.WriteLine(status.ToString());
        var akka = status.ToString()[status.ToString().IndexOf("AKKA MEMBERS", StringComparison.Ordinal)..];
        Assert.Contains("MEMBER", akka);
        Assert.Contains(ClusterConsole.HostPort(platform.Seed), akka);

        // No broker the console can reach: `members` fails clearly, `status` still answers from etcd. (A key prefix
        // of its own, empty, so that no broker registered in etcd is found either.)
        var closed = $"akka.tcp://dingo@127.0.0.1:{FreePorts.One()}";
        var unreachable = settings with { EtcdPrefix = settings.EtcdPrefix + "-no-broker", Akka = settings.Akka with { SeedNodes = [closed] } };
        (code, stdout, stderr) = await RunAsync((o, e) => MembersCommand.RunAsync(unreachable, o, e, CancellationToken.None));
        output.WriteLine(stderr);
        Assert.Equal(1, code);
        Assert.Equal("", stdout);
        Assert.StartsWith("dingo: no broker answered within 10s; tried " + closed + "/system/receptionist", stderr);

        status = new StringWriter();
        Assert.Equal(0, await StatusCommand.RunAsync(unreachable, status, CancellationToken.None));
        output.WriteLine(status.ToString());
        Assert.Contains("CELLS", status.ToString());
        var section = status.ToString()[status.ToString().IndexOf("AKKA MEMBERS", StringComparison.Ordinal)..].Trim().Split('\n');
        Assert.Equal(2, section.Length);
        Assert.StartsWith("(no Akka view: no broker answered within 5s", section[1]);
    }

    private static async Task<(int Code, string Stdout, string Stderr)> RunAsync(Func<TextWriter, TextWriter, Task<int>> command)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        var code = await command(stdout, stderr);
        return (code, stdout.ToString(), stderr.ToString());
    }

    /// <summary>Asks through the console until the view satisfies <paramref name="done"/> (members take a moment to join).</summary>
    private async Task<ClusterView> ViewUntilAsync(IReadOnlyList<string> brokers, Func<ClusterView, bool> done, string what, TimeSpan? within = null)
    {
        ClusterView? last = null;
        var deadline = DateTime.UtcNow + (within ?? TimeSpan.FromSeconds(60));
        while (true)
        {
            try
            {
                last = await ClusterConsole.QueryAsync(TestPlatform.ConsoleAccess, brokers, Timeout, CancellationToken.None);
                if (done(last)) return last;
            }
            catch (ClusterConsoleException ex) when (DateTime.UtcNow < deadline)
            {
                output.WriteLine(ex.Message);
            }
            if (DateTime.UtcNow > deadline)
                throw new TimeoutException($"not within the deadline: {what}; last view: {(last is null ? "none" : string.Join("; ", last.Members.Select(m => $"{m.Address} {string.Join(",", m.Roles)} {m.Status} reachable={m.Reachable}")))}");
            await Task.Delay(500);
        }
    }
}
