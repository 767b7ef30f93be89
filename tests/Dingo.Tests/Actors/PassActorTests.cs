using Akka.Actor;
using Akka.Configuration;
using Akka.TestKit.Xunit2;
using Dingo.Membership;
using Dingo.Tests.Support;

namespace Dingo.Tests.Actors;

/// <summary>
/// The wait between two passes of a <see cref="PassActor{TResult}"/> is the one asked for, not rounded up to the Akka
/// scheduler's tick (AkkaDefaults makes it 100 ms so an idle actor system does not wake 100 times a second; a node's
/// HA loop waits 500 ms between passes and must not become 600).
/// </summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class PassActorTests() : TestKit(ConfigurationFactory.ParseString(AkkaDefaults.Hocon))
{
    private sealed record Count;

    private sealed record Nudge;

    private sealed class Ticker(TimeSpan? wait) : PassActor<int>
    {
        private int _passes;

        protected override Task<int> RunPassAsync(CancellationToken cancellationToken) => Task.FromResult(++_passes);
        protected override TimeSpan? AfterPass(int result) => wait;
        protected override TimeSpan? AfterFailure(Exception error) => wait;
        protected override void PreStart() => RequestPass();

        protected override void Unhandled(object message)
        {
            if (message is Count) Sender.Tell(_passes);
            else if (message is Nudge) Wake();
            else base.Unhandled(message);
        }
    }

    [Fact]
    public async Task Passes_follow_the_wait_asked_for_not_the_schedulers_tick()
    {
        Assert.Equal(TimeSpan.FromMilliseconds(100), Sys.Settings.Config.GetTimeSpan("akka.scheduler.tick-duration"));
        var ticker = Sys.ActorOf(Props.Create(() => new Ticker(TimeSpan.FromMilliseconds(30))));
        var watch = System.Diagnostics.Stopwatch.StartNew();
        await Task.Delay(TimeSpan.FromSeconds(3));
        var passes = await ticker.Ask<int>(new Count(), TimeSpan.FromSeconds(5));
        var seconds = watch.Elapsed.TotalSeconds;
        // 30 ms apart: about 100 passes in 3 s. Rounded up to 100 ms ticks it would be 30 at most.
        Assert.True(passes > 45, $"{passes} passes in {seconds:0.0} s with 30 ms between them");
    }

    [Fact]
    public async Task A_wake_adds_no_pass_to_an_actor_at_work_and_passes_at_once_when_it_rests()
    {
        // Woken every 10 ms while it passes every second: still about one pass a second (a request would pass each time).
        var busy = Sys.ActorOf(Props.Create(() => new Ticker(TimeSpan.FromSeconds(1))));
        for (var i = 0; i < 150; i++)
        {
            busy.Tell(new Nudge());
            await Task.Delay(10);
        }
        var passes = await busy.Ask<int>(new Count(), TimeSpan.FromSeconds(5));
        Assert.InRange(passes, 1, 4);

        // Resting (no wait pending after its first pass): a wake passes at once.
        var resting = Sys.ActorOf(Props.Create(() => new Ticker(null)));
        await AwaitAssertAsync(async () => Assert.Equal(1, await resting.Ask<int>(new Count(), TimeSpan.FromSeconds(5))), TimeSpan.FromSeconds(5));
        resting.Tell(new Nudge());
        await AwaitAssertAsync(async () => Assert.Equal(2, await resting.Ask<int>(new Count(), TimeSpan.FromSeconds(5))), TimeSpan.FromSeconds(5));
    }
}
