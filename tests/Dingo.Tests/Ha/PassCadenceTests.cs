using Dingo.Config;
using Dingo.Ha;
using Dingo.Model;
using Dingo.Tests.Support;

namespace Dingo.Tests.Ha;

/// <summary>
/// When a node's next HA pass runs (<see cref="PassCadence"/>), case by case. QuietNodeTests shows a real solo leader
/// going quiet, waking for a replica and moving its key to a short lease.
/// </summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class PassCadenceTests
{
    private static readonly HaSettings Settings = new()
    {
        Ttl = TimeSpan.FromSeconds(4), LoopWait = TimeSpan.FromMilliseconds(500), IdleLoopWait = TimeSpan.FromSeconds(5),
        MaximumLagOnFailover = 1 << 20, RewindAfter = TimeSpan.FromSeconds(8), LostCellGrace = TimeSpan.FromSeconds(60),
    };

    private static readonly LeaderRecord Someone = new() { NodeId = "n-b", Host = "127.0.0.1", Port = 5432 };

    private static HaAction Action(string kind) => kind switch
    {
        "lead" => new HaAction.Lead("no action: I hold the leader key"),
        "wait" => new HaAction.Wait("waiting for PostgreSQL to accept connections"),
        "follow" => new HaAction.FollowLeader(Someone, "following the leader n-b"),
        "start" => new HaAction.Start(null, "PostgreSQL stopped while I lead: restarting it in place") { InPlace = true },
        _ => throw new ArgumentOutOfRangeException(nameof(kind)),
    };

    [Theory]
    // action, failed, etcd reachable, alone, alone lease, writable primary, unchanged, recovering in place → next pass (ms)
    [InlineData("lead", false, true, true, true, true, true, false, 5000)]      // a healthy solo leader that changed nothing: quiet
    [InlineData("lead", false, true, true, true, true, false, false, 500)]      // its first steady pass (something changed): not yet
    [InlineData("lead", true, true, true, true, true, true, false, 500)]       // its step failed
    [InlineData("lead", false, false, true, true, true, true, false, 500)]     // etcd did not answer
    [InlineData("lead", false, true, false, false, true, true, false, 500)]    // it has members: renews a short lease every loop
    [InlineData("lead", false, true, false, true, true, true, false, 500)]     // members just came, the long lease not yet moved
    [InlineData("lead", false, true, true, false, true, true, false, 500)]     // alone under a short lease (members just left): moved first
    [InlineData("lead", false, true, true, true, false, true, false, 500)]     // PostgreSQL does not answer, or is read-only
    [InlineData("wait", false, true, true, true, false, true, true, 100)]      // recovering in place: a fifth of a loop
    [InlineData("start", false, true, true, true, false, false, true, 100)]
    [InlineData("follow", false, true, false, false, false, true, false, 500)] // a replica is never quiet
    [InlineData("wait", false, true, true, true, true, true, false, 500)]      // any decision but lead
    public void Decides_when_the_next_pass_runs(string action, bool failed, bool reachable, bool alone, bool aloneLease, bool writable, bool unchanged,
        bool recovering, int expectedMs)
    {
        var outcome = new PassCadence.Outcome(Action(action), failed, reachable, alone, aloneLease, writable, unchanged, recovering);
        Assert.Equal(TimeSpan.FromMilliseconds(expectedMs), PassCadence.Next(outcome, Settings));
        Assert.Equal(expectedMs == 5000, PassCadence.Quiet(outcome, Settings));
    }

    [Fact]
    public void Idle_loop_wait_equal_to_loop_wait_turns_quiet_passes_off()
    {
        var off = Settings with { IdleLoopWait = Settings.LoopWait };
        var quiet = new PassCadence.Outcome(Action("lead"), false, true, true, true, true, true, false);
        Assert.False(PassCadence.Quiet(quiet, off));
        Assert.Equal(off.LoopWait, PassCadence.Next(quiet, off));
        // Nor is the lease of a node alone any longer than the TTL then.
        Assert.Equal(off.Ttl, PassCadence.LeaseTtl(alone: true, off));
    }

    [Fact]
    public void A_leader_alone_holds_a_lease_of_three_idle_passes_and_one_with_members_the_ttl()
    {
        Assert.Equal(TimeSpan.FromSeconds(15), PassCadence.LeaseTtl(alone: true, Settings));
        Assert.Equal(TimeSpan.FromSeconds(4), PassCadence.LeaseTtl(alone: false, Settings));
        // A short idle-loop-wait never makes an alone lease shorter than the TTL.
        Assert.Equal(TimeSpan.FromSeconds(4), PassCadence.LeaseTtl(alone: true, Settings with { IdleLoopWait = TimeSpan.FromSeconds(1) }));
    }
}
