using Dingo.Config;

namespace Dingo.Ha;

/// <summary>
/// When a node's next HA pass runs. Most nodes pass every loop-wait: a leader with members renews a short lease and
/// is fenced without it, a replica must see its leader go. A leader with no other member (a solo instance) has nobody to
/// be kept apart from and nobody to hand over to: once a pass finds it healthy and changes nothing, it passes every
/// idle-loop-wait under a lease of three of those (<see cref="HaSettings.AloneTtl"/>). What could need it sooner wakes
/// it (its PostgreSQL exiting, a change of the instance record, its node specs or its cluster keys).
/// </summary>
public static class PassCadence
{
    /// <summary>What a pass found and did, as far as its cadence goes.</summary>
    /// <param name="Action">the pass's decision</param>
    /// <param name="Failed">the decision's step failed</param>
    /// <param name="EtcdReachable">the pass read the cluster from etcd</param>
    /// <param name="Alone">the instance has no node but this one</param>
    /// <param name="AloneLease">the leader lease this node holds was granted for a node alone (<see cref="HaSettings.AloneTtl"/>)</param>
    /// <param name="WritablePrimary">PostgreSQL answered, and not in recovery</param>
    /// <param name="Unchanged">the pass's report says what the last one said (only its WAL position and client count may move)</param>
    /// <param name="RecoveringInPlace">the leader restarted its PostgreSQL in place and waits for it to answer</param>
    public sealed record Outcome(HaAction Action, bool Failed, bool EtcdReachable, bool Alone, bool AloneLease,
        bool WritablePrimary, bool Unchanged, bool RecoveringInPlace);

    /// <summary>True when the node may wait idle-loop-wait for its next pass.</summary>
    public static bool Quiet(Outcome o, HaSettings s) =>
        s.IdleLoopWait > s.LoopWait
        && !o.Failed && o.EtcdReachable && !o.RecoveringInPlace
        && o.Action is HaAction.Lead
        && o.Alone && o.WritablePrimary && o.Unchanged
        // A lease that three quiet passes could outlive (a short one from before the node was alone) is moved first.
        && o.AloneLease;

    /// <summary>The wait before the next pass.</summary>
    public static TimeSpan Next(Outcome o, HaSettings s) =>
        o.RecoveringInPlace ? s.LoopWait / 5
        : Quiet(o, s) ? s.IdleLoopWait
        : s.LoopWait;

    /// <summary>The TTL a leader's lease should have: <see cref="HaSettings.AloneTtl"/> with no other member, else the TTL.</summary>
    public static TimeSpan LeaseTtl(bool alone, HaSettings s) => alone ? s.AloneTtl : s.Ttl;
}
