using Dingo.Config;
using Dingo.Model;

namespace Dingo.Ha;

/// <summary>What a node sees of its own PostgreSQL on this pass.</summary>
public sealed record LocalState(
    bool DataInitialised,
    bool Running,
    bool Answering,
    bool InRecovery,
    long Lsn,
    int Timeline,
    bool Streaming,
    /// <summary>The leader node this standby was last configured to follow (null: none or unknown).</summary>
    string? FollowingNodeId,
    /// <summary>How long this standby has not been streaming from its leader (zero while streaming).</summary>
    TimeSpan NotStreamingFor,
    bool RewindFailed)
{
    /// <summary>How long PostgreSQL has run without answering the probe (zero while it answers).</summary>
    public TimeSpan NotAnsweringFor { get; init; }
    /// <summary>Starts in a row that failed (threw, or PostgreSQL exited before answering), and why the last one did.</summary>
    public int FailedStarts { get; init; }
    public string? StartFailure { get; init; }
    /// <summary>This agent started PostgreSQL read-only (standby.signal) and it has not answered since: recovering, not
    /// a hung primary (it accepts no writes).</summary>
    public bool StartingReadOnly { get; init; }
}

/// <summary>Everything one pass of a node's HA loop decides from. Built by the executor; decided by <see cref="Failover"/>.</summary>
public sealed record HaInput(
    string NodeId,
    bool Synchronous,
    LocalState Local,
    bool EtcdReachable,
    LeaderRecord? Leader,
    /// <summary>This process holds the lease behind the leader key (it acquired it and has not lost it).</summary>
    bool HoldsLease,
    /// <summary>Time since this node last renewed its leader lease (only meaningful while it leads).</summary>
    TimeSpan SinceRenewal,
    long? LeaderOptime,
    SyncState? Sync,
    /// <summary>The other members' statuses, as last reported.</summary>
    IReadOnlyList<NodeStatus> Members,
    SwitchoverRequest? Switchover,
    bool ClusterInitialised,
    bool BootstrapCandidate,
    DateTimeOffset Now)
{
    /// <summary>The node that claimed the cluster's initialisation (it resumes the job if it crashed half-way).</summary>
    public string? InitialisedBy { get; init; }
    /// <summary>The instance whose backups the cluster is restored from, instead of an empty initdb.</summary>
    public string? RestoreFrom { get; init; }
    /// <summary>No other node is placed for this instance (as last read): nobody could take over from this one.</summary>
    public bool Alone { get; init; }
    /// <summary>
    /// The TTL of the leader lease this node holds (zero: the TTL). A leader fences itself half of it after its last
    /// renewal; its guard stops PostgreSQL at three quarters; nobody else can take the key before all of it.
    /// </summary>
    public TimeSpan LeaseTtl { get; init; }
    /// <summary>This leader cannot reach etcd, but every other member confirmed within half a TTL that it follows it.</summary>
    public bool Failsafe { get; init; }
    /// <summary>The leader this node confirmed in failsafe mode less than a TTL ago: it must not take the key meanwhile.</summary>
    public string? FailsafePromisedTo { get; init; }
}

/// <summary>One pass's decision and the sentence that explains it (logged, reported, shown by `dingo status`).</summary>
public abstract record HaAction(string Sentence)
{
    public sealed record Bootstrap(string Sentence) : HaAction(Sentence);
    public sealed record CloneFromLeader(LeaderRecord From, string Sentence) : HaAction(Sentence);
    public sealed record Start(LeaderRecord? Leader, string Sentence) : HaAction(Sentence)
    {
        /// <summary>The leader's own PostgreSQL, restarted after a crash while it keeps the key (rule 4): recovery in place.</summary>
        public bool InPlace { get; init; }
    }
    public sealed record ReleaseStaleKey(string Sentence) : HaAction(Sentence);
    public sealed record TakeLeadership(string Sentence) : HaAction(Sentence);
    public sealed record Promote(string Sentence) : HaAction(Sentence);
    public sealed record Lead(string Sentence) : HaAction(Sentence);
    public sealed record Demote(LeaderRecord? Leader, string Sentence) : HaAction(Sentence)
    {
        /// <summary>Fencing or a hung PostgreSQL: stop it at once (fast shutdown, then SIGKILL), not with a clean shutdown.</summary>
        public bool AtOnce { get; init; }
    }
    public sealed record FollowLeader(LeaderRecord Leader, string Sentence) : HaAction(Sentence);
    public sealed record Rewind(LeaderRecord Leader, string Sentence) : HaAction(Sentence);
    public sealed record Reclone(LeaderRecord Leader, string Sentence) : HaAction(Sentence);
    public sealed record HandOver(string Candidate, string Sentence) : HaAction(Sentence);
    public sealed record Wait(string Sentence) : HaAction(Sentence);
}

/// <summary>
/// The HA rules (docs/ha.md), as one pure function: a leader holds the key and renews it; one that cannot renew for
/// half the TTL fences itself; a free key goes to the most advanced eligible replica; everyone else follows.
/// </summary>
public static class Failover
{
    /// <summary>Failed starts in a row after which a replica is re-cloned (each attempt takes a pass or two).</summary>
    public const int MaxFailedStarts = 3;

    /// <summary>How long a leader waits for its PostgreSQL's crash recovery in place before a replica takes over.</summary>
    public static TimeSpan RecoveryInPlaceLimit(HaSettings s) => s.Ttl * 3;

    public static HaAction Decide(HaInput i, HaSettings s)
    {
        var me = i.NodeId;
        var local = i.Local;
        var leaderIsMe = i.Leader?.NodeId == me;
        var otherLeader = i.Leader is not null && !leaderIsMe ? i.Leader : null;

        // Data is only ever replaced from a leader that reports itself a running primary, and did so lately. A leader
        // whose host or agent is gone keeps its key until its lease expires, longer than that when etcd elects a new
        // leader of its own (which extends every lease): rewinding or re-cloning from it fails, and a re-clone deletes
        // this node's data first. Both replicas of a cluster-ha instance once wiped themselves that way after its
        // primary's host was killed, leaving nobody to take the key when it expired (ThreeHostTests, fresh38).
        bool LeaderServing(LeaderRecord leader) =>
            i.Members.FirstOrDefault(m => m.NodeId == leader.NodeId) is { State: NodeState.Running, Role: NodeRole.Primary } status && IsFresh(i, status, s);

        if (!local.DataInitialised)
        {
            if (otherLeader is not null)
            {
                if (!LeaderServing(otherLeader))
                    return new HaAction.Wait($"waiting for the leader {otherLeader.NodeId} to accept connections before cloning");
                return new HaAction.CloneFromLeader(otherLeader, $"cloning from the leader {otherLeader.NodeId} (pg_basebackup)");
            }
            if (leaderIsMe) return new HaAction.ReleaseStaleKey("releasing a leader key I hold without data");
            if ((!i.ClusterInitialised && i.BootstrapCandidate) || i.InitialisedBy == me)
                return new HaAction.Bootstrap(i.RestoreFrom is { } from
                    ? $"bootstrapping the cluster from the backups of {from}"
                    : "bootstrapping the cluster (initdb)");
            return new HaAction.Wait("waiting for a leader to clone from");
        }

        if (!local.Running)
        {
            // A node is always started read-only; it becomes writable only by promotion while holding the key.
            if (leaderIsMe && !i.HoldsLease) return new HaAction.ReleaseStaleKey("releasing the leader key left from before PostgreSQL stopped");
            if (leaderIsMe)
            {
                // PostgreSQL died under a living agent. With synchronous replication a listed standby that runs holds every
                // acknowledged commit: the key goes at once and that standby takes over (faster than crash recovery here,
                // which took 2-3 s under bench/Chaos's load). Otherwise only this node's own data holds the last commits it
                // acknowledged (bench/Chaos kill-pg: an asynchronous replica promoted at once lost one): crash recovery in
                // place, keeping the key (the start is read-only; the next pass promotes). The key goes too if it will not
                // start, or the lease is no longer fresh enough to promote on.
                if (i.Synchronous && i.Sync is { } sync && i.Members.Any(m => sync.Standbys.Contains(m.NodeId) && m.NodeId != me && IsFresh(i, m, s) && m is { State: NodeState.Running, Role: NodeRole.Replica }))
                    return new HaAction.ReleaseStaleKey("PostgreSQL is not running: giving up the leader key at once (a synchronous standby holds every acknowledged commit)");
                if (local.FailedStarts < MaxFailedStarts && i.EtcdReachable && i.SinceRenewal < FenceAfter(i, s))
                    return new HaAction.Start(null, local.FailedStarts == 0
                        ? "PostgreSQL stopped while I lead: restarting it in place (crash recovery), keeping the leader key"
                        : $"PostgreSQL stopped while I lead: restarting it in place, keeping the leader key (start #{local.FailedStarts + 1}; the last failed: {local.StartFailure})") { InPlace = true };
                return new HaAction.ReleaseStaleKey(local.FailedStarts >= MaxFailedStarts
                    ? $"PostgreSQL failed to start {local.FailedStarts} times in a row while I lead ({local.StartFailure}): giving up the leader key"
                    : "PostgreSQL is not running and my leader lease is not fresh: giving up the leader key");
            }
            // A replica whose data cannot start (a timeline its WAL does not reach after a rewind, files damaged or gone)
            // would be restarted for ever: take a fresh copy from the leader instead.
            if (otherLeader is not null && local.FailedStarts >= MaxFailedStarts && LeaderServing(otherLeader))
                return new HaAction.Reclone(otherLeader, $"re-cloning from {otherLeader.NodeId}: PostgreSQL failed to start {local.FailedStarts} times in a row ({local.StartFailure})");
            return otherLeader is not null
                ? new HaAction.Start(otherLeader, $"starting PostgreSQL as a replica of {otherLeader.NodeId}")
                : new HaAction.Start(null, "starting PostgreSQL read-only: no leader yet");
        }
        // Fencing comes before anything else a leader decides: past half its lease's TTL without a renewal it stops
        // accepting writes, whatever PostgreSQL or etcd answer (a node with no other member has nobody to be kept apart
        // from, and demoting it would only take the database away while etcd is slow or gone).
        var surelyReadOnly = local.Answering && local.InRecovery;
        if (i.HoldsLease && !i.Alone && !surelyReadOnly && i.SinceRenewal >= FenceAfter(i, s))
            // The sentence names the cause an operator can act on: a PostgreSQL that stopped answering also holds the pass
            // past its etcd budget, so the pass sees etcd as unreachable too; blaming etcd then sent people to the wrong
            // service (AgentFaultTests' SIGSTOP said "cannot reach etcd").
            return new HaAction.Demote(otherLeader, local is { Running: true, Answering: false }
                ? $"demoting: PostgreSQL has not answered for {local.NotAnsweringFor.TotalSeconds:0.0}s and the leader key was not renewed for {i.SinceRenewal.TotalSeconds:0.0}s (fencing before the lease can expire)"
                : i.EtcdReachable
                ? $"demoting: the leader key was not renewed for {i.SinceRenewal.TotalSeconds:0.0}s (fencing before the lease can expire)"
                : $"demoting: cannot reach etcd to renew the leader key for {i.SinceRenewal.TotalSeconds:0.0}s (fencing before the lease can expire)") { AtOnce = true };

        if (!local.Answering)
        {
            // A leader recovering its PostgreSQL in place (rule 4): it accepts no writes, so there is nothing to fence,
            // and its data holds the last acknowledged commits. It keeps the key while crash recovery runs, up to
            // RecoveryInPlaceLimit; then the key goes to a replica.
            if (leaderIsMe && i.HoldsLease && local.StartingReadOnly)
                return local.NotAnsweringFor < RecoveryInPlaceLimit(s)
                    ? new HaAction.Wait($"waiting for PostgreSQL to finish crash recovery ({local.NotAnsweringFor.TotalSeconds:0.0}s), keeping the leader key")
                    : new HaAction.Demote(otherLeader, $"demoting: PostgreSQL has not finished crash recovery in {local.NotAnsweringFor.TotalSeconds:0.0}s (stopping it so a replica can take over)") { AtOnce = true };
            // A hung primary (stopped, stuck on I/O) serves nobody: stop it and give the key up so a replica takes over.
            if (i.HoldsLease && !i.Alone && local.NotAnsweringFor >= FenceAfter(i, s))
                return new HaAction.Demote(otherLeader, $"demoting: PostgreSQL has not answered for {local.NotAnsweringFor.TotalSeconds:0.0}s while I lead (stopping it so a replica can take over)") { AtOnce = true };
            return new HaAction.Wait("waiting for PostgreSQL to accept connections");
        }

        if (!i.EtcdReachable)
        {
            if (local.InRecovery) return new HaAction.Wait("no action: etcd unreachable, staying a replica");
            if (i.Alone) return new HaAction.Wait($"no action: etcd unreachable for {i.SinceRenewal.TotalSeconds:0.0}s; no other node could take over, so this single node keeps serving");
            if (i.Failsafe && i.HoldsLease) return new HaAction.Wait("no action: etcd unreachable; every other member confirmed it streams from me and will not take the key (failsafe)");
            if (!i.HoldsLease) return new HaAction.Demote(null, "demoting: writable without a leader lease, and etcd cannot be reached to take one") { AtOnce = true };
            return new HaAction.Wait($"no action: etcd unreachable for {i.SinceRenewal.TotalSeconds:0.0}s, leader lease still valid");
        }

        if (leaderIsMe)
        {
            if (!i.HoldsLease) return new HaAction.ReleaseStaleKey("releasing a leader key whose lease this process does not hold");
            if (local.InRecovery) return new HaAction.Promote("promoting: I hold the leader key");
            if (i.Switchover is { } sw && sw.From == me)
            {
                var candidate = BestReplica(i, s, sw.Candidate);
                if (candidate is not null) return new HaAction.HandOver(candidate, $"switching over to {candidate}: stopping cleanly, then releasing the leader key");
                return new HaAction.Lead($"no action: I hold the leader key; switchover waits for a healthy {(sw.Candidate is null ? "replica" : sw.Candidate)}");
            }
            return new HaAction.Lead("no action: I hold the leader key");
        }

        if (otherLeader is not null)
        {
            if (!local.InRecovery) return new HaAction.Demote(otherLeader, $"demoting: {otherLeader.NodeId} holds the leader key");
            if (local.FollowingNodeId != otherLeader.NodeId) return new HaAction.FollowLeader(otherLeader, $"following the leader {otherLeader.NodeId}");
            if (!local.Streaming && local.NotStreamingFor >= s.RewindAfter)
            {
                if (!LeaderServing(otherLeader))
                    return new HaAction.Wait($"no action: not streaming for {local.NotStreamingFor.TotalSeconds:0}s, but the leader {otherLeader.NodeId} has not reported itself serving lately: waiting for it, or for its key to expire");
                return local.RewindFailed
                    ? new HaAction.Reclone(otherLeader, $"re-cloning from {otherLeader.NodeId}: not streaming for {local.NotStreamingFor.TotalSeconds:0}s and pg_rewind failed")
                    : new HaAction.Rewind(otherLeader, $"rewinding to {otherLeader.NodeId}'s timeline: not streaming for {local.NotStreamingFor.TotalSeconds:0}s");
            }
            var lag = i.LeaderOptime is { } opt ? Math.Max(0, opt - local.Lsn) : 0;
            return new HaAction.Wait(local.Streaming
                ? $"no action: streaming from {otherLeader.NodeId}, lag {lag} B"
                : $"no action: waiting to stream from {otherLeader.NodeId}");
        }

        // The leader key is free.
        if (i.FailsafePromisedTo is { } promised && promised != me)
            return new HaAction.Wait($"no action: leader key free, but I confirmed {promised} as leader less than a TTL ago (failsafe)");
        // A switchover's named node gets the key: the others wait for it while it reports. The old leader handed over
        // only once it streamed, and stopped cleanly, so it holds every WAL record; its report may trail the others'
        // own positions by a loop, which is why they do not compare. The named node itself gives way only to a node
        // strictly further on: yielding on a tie (a lower node id) to a node that waits for it left the key free for
        // good (bench/Chaos, 45 s without a primary).
        // A request that named no replica (a drain, `switchover` without --to) names the one the leader chose before it
        // stopped: without it the old leader, restarted as a standby holding the shutdown checkpoint, was further on than
        // the chosen replica's last report and took the key back, and the drain waited for good (PlannedOperationsTests).
        var named = i.Switchover?.HandedTo ?? i.Switchover?.Candidate;
        if (named is not null && named != me && IsFresh(i, i.Members.FirstOrDefault(m => m.NodeId == named), s))
            return new HaAction.Wait($"no action: leader key free, switchover hands it to {named}");
        var refusal = Ineligibility(i, s, me, local.InRecovery, local.Lsn);
        if (refusal is not null) return new HaAction.Wait($"no action: leader key free, but {refusal}");
        var iAmNamed = named == me;
        var better = i.Members
            .Where(m => IsFresh(i, m, s) && m.State == NodeState.Running)
            .Where(m => Ineligibility(i, s, m.NodeId, !Writable(m), m.Lsn) is null)
            .FirstOrDefault(m => iAmNamed ? m.Lsn > local.Lsn : IsBetter(m, local, me));
        if (better is not null)
            return new HaAction.Wait(local.InRecovery && local.FollowingNodeId == better.NodeId && Writable(better)
                ? $"no action: leader key free, {better.NodeId} accepts writes and I stream from it"
                : $"no action: leader key free, {better.NodeId} is more advanced ({better.Lsn} ≥ {local.Lsn})");
        var myLag = i.LeaderOptime is { } last ? Math.Max(0, last - local.Lsn) : 0;
        return new HaAction.TakeLeadership($"taking the leader key: it is free and I am the most advanced eligible node (lag {myLag} B)");
    }

    /// <summary>
    /// The input with WAL positions asked of the nodes themselves just now, in place of the reported ones. A report can be
    /// a loop old: after a leader's PostgreSQL died, the synchronous standby that alone acknowledged the last commits
    /// (<c>ANY 1</c> of two) reported a position from before them, the other standby was further on than that report,
    /// took the key at once, and the commits were lost (AgentFaultTests, fresh184). A node that did not answer keeps its
    /// report; <paramref name="localLsn"/> null keeps this node's observed position.
    /// </summary>
    public static HaInput WithLivePositions(HaInput i, long? localLsn, IReadOnlyDictionary<string, long> live) =>
        i with
        {
            Local = localLsn is { } mine ? i.Local with { Lsn = mine } : i.Local,
            Members = [.. i.Members.Select(m => live.TryGetValue(m.NodeId, out var lsn) ? m with { Lsn = lsn } : m)],
        };

    /// <summary>
    /// Whether another member is a better holder of the free key. A writable node and a replica streaming from it, on no
    /// later timeline than it: the writable one, whatever positions their reports show. The replica cannot hold a WAL
    /// record its primary lacks; a later position in its report only means it was read later, and under a steady
    /// writer that is most of the time (EtcdBlipTests: after an etcd hang longer than the TTL etcd revokes the leader's
    /// lease; the primary must take the key back, not wait for a replica that reported after the primary's own probe).
    /// Otherwise the further on; at the same position a writable node beats a replica (it keeps serving with no
    /// promotion); then the lower node id.
    /// </summary>
    private static bool IsBetter(NodeStatus m, LocalState local, string me)
    {
        bool theirsWritable = Writable(m), mineWritable = !local.InRecovery;
        if (theirsWritable && !mineWritable && local.FollowingNodeId == m.NodeId && m.Timeline >= local.Timeline) return true;
        if (mineWritable && !theirsWritable && m.Following == me && m.Timeline <= local.Timeline) return false;
        if (m.Lsn != local.Lsn) return m.Lsn > local.Lsn;
        if (theirsWritable != mineWritable) return theirsWritable;
        return string.CompareOrdinal(m.NodeId, me) < 0;
    }

    /// <summary>A member's report says it accepts writes (reports written before the field: its role says primary).</summary>
    private static bool Writable(NodeStatus m) => m.Writable || m.Role == NodeRole.Primary;

    /// <summary>Why a node may not take the free key, or null when it may.</summary>
    private static string? Ineligibility(HaInput i, HaSettings s, string nodeId, bool inRecovery, long lsn)
    {
        if (i.Synchronous)
        {
            // Only a node that may hold every acknowledged commit: the former leader, or a listed synchronous standby.
            // None recorded yet: only the node that initialised the cluster ever acknowledged a commit (it may have
            // been demoted to read-only since, e.g. fenced right after bootstrap: it must still be able to lead).
            if (i.Sync is null) return inRecovery && nodeId != i.InitialisedBy ? $"{nodeId} is not a synchronous standby (none recorded)" : null;
            if (i.Sync.Leader == nodeId) return null;
            return i.Sync.Standbys.Contains(nodeId) ? null : $"{nodeId} is not a synchronous standby";
        }
        if (inRecovery && i.LeaderOptime is { } optime && optime - lsn > s.MaximumLagOnFailover)
            return $"{nodeId} lags {optime - lsn} B behind the last leader position (limit {s.MaximumLagOnFailover} B)";
        return null;
    }

    /// <summary>
    /// A leader past its fencing deadline for want of a renewal alone: PostgreSQL answers as a primary and etcd answered
    /// this pass (a pass slowed by a saturated machine, not a hung PostgreSQL or an etcd gone). One renewal settles it
    /// (NodeAgent renews and decides again): a lease etcd still renews is one nobody else can hold, and the guard's
    /// deadline moves with it.
    /// </summary>
    public static bool LateForRenewalOnly(HaInput i, HaSettings s) =>
        i.HoldsLease && !i.Alone && i.EtcdReachable && i.Local is { Answering: true, InRecovery: false } && i.SinceRenewal >= FenceAfter(i, s);

    /// <summary>
    /// Half the TTL of the lease this leader holds: when it fences itself without a renewal, and gives up a PostgreSQL
    /// that does not answer. A lease of a node alone (<see cref="HaSettings.AloneTtl"/>) is held while no other member
    /// has data to take over with: a new cluster's first primary whose replicas are still cloning. Fenced at 2 s of a
    /// 4 s TTL, such a primary was stopped whenever a saturated machine held one probe back, and nobody could take
    /// over (bench/Provision's Docker burst: new clusters on their fourth timeline, binds failing).
    /// </summary>
    public static TimeSpan FenceAfter(HaInput i, HaSettings s) => (i.LeaseTtl > TimeSpan.Zero ? i.LeaseTtl : s.Ttl) / 2;

    /// <summary>Reports older than a few loops come from a node that is gone or cut off: they do not count.</summary>
    public static bool IsFresh(HaInput i, NodeStatus? m, HaSettings s) =>
        m is not null && i.Now - m.UpdatedAt <= s.LoopWait * 3 + TimeSpan.FromSeconds(1);

    /// <summary>The replica a switchover hands over to: the named one if healthy and streaming, else the most advanced.</summary>
    private static string? BestReplica(HaInput i, HaSettings s, string? named)
    {
        var healthy = i.Members.Where(m => IsFresh(i, m, s) && m.State == NodeState.Running && m.Role == NodeRole.Replica && m.Streaming)
            .Where(m => !i.Synchronous || i.Sync?.Standbys.Contains(m.NodeId) == true)
            .ToList();
        if (named is not null) return healthy.Any(m => m.NodeId == named) ? named : null;
        return healthy.OrderByDescending(m => m.Lsn).ThenBy(m => m.NodeId, StringComparer.Ordinal).FirstOrDefault()?.NodeId;
    }
}
