using System.Net;
using Akka.Actor;
using Akka.Configuration;
using Akka.TestKit.Xunit2;
using Dingo.Cells;
using Dingo.Membership;
using Dingo.Model;
using Dingo.Tests.Support;

namespace Dingo.Tests.Actors;

/// <summary>
/// The node actor as an actor, with its HA loop in memory: one pass at a time however many wake-ups arrive, and a pass
/// that hangs (a PostgreSQL or etcd call that never answers) blocks neither the health API nor the release of the
/// leader key on a clean stop. Stopping the actor cancels the hung pass.
/// </summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class NodeActorTests() : TestKit(ConfigurationFactory.ParseString(AkkaDefaults.Hocon))
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(5);

    private static FakeNodeLoop Loop(int apiPort = 0, Func<int, TimeSpan>? cadence = null) =>
        new(new NodeSpec { NodeId = "n-1", InstanceId = "i-1", CellId = "cell-1", Port = 5432, ApiPort = apiPort }) { Cadence = cadence };

    private IActorRef Start(FakeNodeLoop loop) => Sys.ActorOf(NodeActor.Props(loop, TimeSpan.FromSeconds(30), IPAddress.Loopback));

    [Fact]
    public async Task One_pass_at_a_time_and_wake_ups_during_it_make_one_more()
    {
        var loop = Loop();
        loop.Hold();
        var node = Start(loop);
        await AwaitConditionAsync(() => Task.FromResult(loop.Running == 1), Wait);
        for (var i = 0; i < 5; i++) node.Tell(new NodeMessages.Wake());
        loop.PostgresExited!(); // a PostgreSQL that ended wakes a pass too
        await Task.Delay(200);
        Assert.Equal((1, 1), (loop.Passes, loop.MaxRunning));

        loop.Let();
        await AwaitConditionAsync(() => Task.FromResult(loop.Passes == 2 && loop.Running == 0), Wait);
        await Task.Delay(200);
        // Six requests during one pass: one pass after it, then the loop's own wait (30 s).
        Assert.Equal((2, 1), (loop.Passes, loop.MaxRunning));
    }

    [Fact]
    public async Task A_hung_pass_blocks_neither_the_health_api_nor_the_release()
    {
        var port = FreePorts.One();
        var loop = Loop(port);
        loop.Hold();
        var node = Start(loop);
        await AwaitConditionAsync(() => Task.FromResult(loop.Running == 1), Wait);

        using var http = new HttpClient { Timeout = Wait };
        HttpResponseMessage? answer = null;
        await AwaitConditionAsync(async () =>
        {
            try { answer = await http.GetAsync(new Uri($"http://127.0.0.1:{port}/primary")); return true; }
            catch (HttpRequestException) { return false; } // the API is still binding
        }, Wait);
        Assert.Equal(HttpStatusCode.OK, answer!.StatusCode);

        var done = await node.Ask<NodeActor.Done>(new NodeMessages.Release(), Wait);
        Assert.NotNull(done);
        Assert.Equal(1, loop.Released);
        Assert.Equal(1, loop.Running); // the hung pass is still where it was

        Sys.Stop(node);
        await AwaitConditionAsync(() => Task.FromResult(loop.Cancelled == 1 && loop.Running == 0 && loop.WatchStopped == 1), Wait);
        // Its health API went with it.
        await AwaitConditionAsync(async () =>
        {
            try { await http.GetAsync(new Uri($"http://127.0.0.1:{port}/primary")); return false; }
            catch (HttpRequestException) { return true; }
        }, Wait);
    }

    [Fact]
    public async Task The_loops_own_cadence_is_followed()
    {
        // Four passes ask for the next in 50 ms, the fifth for 30 s.
        var loop = Loop(cadence: n => n < 5 ? TimeSpan.FromMilliseconds(50) : TimeSpan.FromSeconds(30));
        Start(loop);
        await AwaitConditionAsync(() => Task.FromResult(loop.Passes == 5 && loop.Running == 0), Wait);
        await Task.Delay(300);
        Assert.Equal(5, loop.Passes);
    }
}
