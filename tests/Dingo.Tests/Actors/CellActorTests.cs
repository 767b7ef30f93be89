using System.Collections.Concurrent;
using Akka.Actor;
using Akka.Configuration;
using Akka.TestKit.Xunit2;
using Dingo.Cells;
using Dingo.Membership;
using Dingo.Model;
using Dingo.Tests.Support;

namespace Dingo.Tests.Actors;

/// <summary>
/// The cell actor as an actor, with its passes and node loops in memory: one node actor per node assigned to the cell,
/// added and stopped as the assignments change; every node releases its leadership when the cell stops cleanly.
/// </summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class CellActorTests() : TestKit(ConfigurationFactory.ParseString(AkkaDefaults.Hocon))
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(5);
    private readonly FakeCellPasses _passes = new();
    private readonly ConcurrentDictionary<string, ConcurrentBag<FakeNodeLoop>> _loops = new();

    private IActorRef StartCell()
    {
        FakeNodeLoop Loop(NodeSpec spec)
        {
            var loop = new FakeNodeLoop(spec);
            _loops.GetOrAdd(spec.NodeId, _ => []).Add(loop);
            return loop;
        }
        // Passes every 50 ms, so a change of assignment is seen without a request too.
        return Sys.ActorOf(CellActor.Props(_passes, Loop, TimeSpan.FromMilliseconds(50), TimeSpan.FromSeconds(30)), "cell");
    }

    private FakeNodeLoop Only(string nodeId) => Assert.Single(_loops[nodeId]);

    private Task UntilBusyIsAsync(params string[] nodeIds) =>
        AwaitConditionAsync(() => Task.FromResult(_passes.Busy.LastOrDefault() is { } busy && busy.SetEquals(nodeIds)), Wait);

    [Fact]
    public async Task Node_actors_follow_the_cells_assignments()
    {
        _passes.Assign("n-1", "n-2");
        StartCell();
        // Each assigned node gets its loop, which runs its first pass at once; the next cell pass knows both are busy.
        await UntilBusyIsAsync("n-1", "n-2");
        await AwaitConditionAsync(() => Task.FromResult(Only("n-1").Passes >= 1 && Only("n-2").Passes >= 1), Wait);

        _passes.Assign("n-2", "n-3");
        await UntilBusyIsAsync("n-2", "n-3");
        var removed = Only("n-1");
        // A node no longer assigned: its actor stopped, which stopped watching PostgreSQL and its backups.
        await AwaitConditionAsync(() => Task.FromResult(removed.WatchStopped == 1 && removed.BackupsStopped == 1), Wait);
        Assert.Equal(0, removed.Released); // no longer assigned is not a clean stop: the key stays until the data goes
        await AwaitConditionAsync(() => Task.FromResult(Only("n-3").Passes >= 1), Wait);
        // n-2 kept its one loop throughout: a pass that still wants it does not start it again.
        Assert.Single(_loops["n-2"]);

        // Assigned again later: a new loop, the old one stays stopped.
        _passes.Assign("n-1", "n-2", "n-3");
        await UntilBusyIsAsync("n-1", "n-2", "n-3");
        Assert.Equal(2, _loops["n-1"].Count);
    }

    [Fact]
    public async Task A_clean_stop_releases_every_node()
    {
        _passes.Assign("n-1", "n-2", "n-3");
        var cell = StartCell();
        await UntilBusyIsAsync("n-1", "n-2", "n-3");
        // One node's pass hangs: the release does not wait for it.
        Only("n-2").Hold();
        cell.Tell(new CellMessages.WakeInstance("i-n-2"));
        await AwaitConditionAsync(() => Task.FromResult(Only("n-2").Running == 1), Wait);

        var done = await cell.Ask<NodeActor.Done>(new CellMessages.ReleaseAll(), Wait);
        Assert.NotNull(done);
        Assert.All(new[] { "n-1", "n-2", "n-3" }, id => Assert.Equal(1, Only(id).Released));
        Only("n-2").Let();
    }

    [Fact]
    public async Task Waking_an_instance_wakes_only_its_nodes()
    {
        _passes.Assign("n-1", "n-2");
        var cell = StartCell();
        await AwaitConditionAsync(() => Task.FromResult(_loops.ContainsKey("n-1") && _loops.ContainsKey("n-2") && Only("n-1").Passes == 1 && Only("n-2").Passes == 1), Wait);
        cell.Tell(new CellMessages.WakeInstance("i-n-1"));
        await AwaitConditionAsync(() => Task.FromResult(Only("n-1").Passes == 2), Wait);
        // The other node's next pass is 30 s away (its loop-wait): nothing ran it.
        await Task.Delay(200);
        Assert.Equal(1, Only("n-2").Passes);
    }
}
