using Dingo.Cells;
using Dingo.Model;
using Dingo.Postgres;
using Microsoft.Extensions.Logging;

namespace Dingo.Ha;

/// <summary>
/// The act piece of a node's HA pass: carries out the one action <see cref="Failover.Decide"/> chose. A short dispatcher;
/// the steps are the standby's (<see cref="StandbySteps"/>), the leader's (<see cref="LeaderSteps"/>) and the key's
/// (<see cref="LeaderKey"/>). A key is given up only once this node's PostgreSQL no longer accepts writes.
/// </summary>
internal sealed class NodeActions(AgentState state, LeaderLease lease, LeaderKey key)
{
    private readonly StandbySteps _standby = new(state);
    private readonly LeaderSteps _leading = new(state, lease);

    private string NodeId => state.Spec.NodeId;
    private string InstanceId => state.Spec.InstanceId;

    /// <summary>A leader's duties each pass (<see cref="LeaderSteps.LeadAsync"/>).</summary>
    public LeaderSteps Leading => _leading;

    /// <param name="etcd">for etcd calls: cancelled at the fencing deadline while leading</param>
    /// <param name="ct">for everything else: cancelled only when the actor stops</param>
    public async Task ExecuteAsync(HaAction action, HaInput input, InstanceRecord record, NodeLaunchSpec launch, PostgresProbe probe, CancellationToken etcd, CancellationToken ct)
    {
        switch (action)
        {
            case HaAction.Bootstrap:
                await BootstrapAsync(input, record, launch, probe, etcd, ct).ConfigureAwait(false);
                break;
            case HaAction.CloneFromLeader clone:
                await state.Runtime.CloneAsync(launch, StandbySteps.Source(clone.From, record), ct).ConfigureAwait(false);
                await _standby.StartAsync(launch, clone.From, record, ct).ConfigureAwait(false);
                await _standby.WaitUntilAnsweringAsync(probe, ct).ConfigureAwait(false);
                break;
            case HaAction.Start start:
                await _standby.StartAsync(launch, start.Leader, record, ct, leaderAfterCrash: start.InPlace).ConfigureAwait(false);
                break;
            case HaAction.ReleaseStaleKey:
                await ReleaseStaleKeyAsync(action, input, ct).ConfigureAwait(false);
                break;
            case HaAction.TakeLeadership:
                await TakeLeadershipAsync(input, record, probe, etcd, ct).ConfigureAwait(false);
                break;
            case HaAction.Promote:
                await _leading.PromoteAndLeadAsync(new StepTimes(), promote: true, record, probe, input, etcd, ct).ConfigureAwait(false);
                break;
            case HaAction.Lead:
                await LeadAsync(input, record, probe, etcd, ct).ConfigureAwait(false);
                break;
            case HaAction.Demote demote:
                await DemoteAsync(demote, input, record, launch, ct).ConfigureAwait(false);
                break;
            case HaAction.FollowLeader follow:
                await state.Runtime.ConfigureStandbyAsync(launch, _standby.Standby(follow.Leader, record), ct).ConfigureAwait(false);
                await probe.ReloadAsync(ct).ConfigureAwait(false);
                state.Following = follow.Leader.NodeId;
                state.NotStreamingSince = DateTime.UtcNow;
                break;
            case HaAction.Rewind rewind:
                await _standby.TryRewindAsync(launch, rewind.Leader, record, ct).ConfigureAwait(false);
                await _standby.StartAsync(launch, rewind.Leader, record, ct).ConfigureAwait(false);
                break;
            case HaAction.Reclone reclone:
                state.Logger.LogWarning("node {Node}: {Decision}", NodeId, reclone.Sentence);
                await state.Runtime.CloneAsync(launch, StandbySteps.Source(reclone.Leader, record), ct).ConfigureAwait(false);
                state.RewindFailed = false;
                (state.FailedStarts, state.StartFailure) = (0, null);
                await _standby.StartAsync(launch, reclone.Leader, record, ct).ConfigureAwait(false);
                break;
            case HaAction.HandOver handOver:
                await HandOverAsync(handOver, input, record, launch, etcd, ct).ConfigureAwait(false);
                break;
        }
    }

    private async Task BootstrapAsync(HaInput input, InstanceRecord record, NodeLaunchSpec launch, PostgresProbe probe, CancellationToken etcd, CancellationToken ct)
    {
        // Claimed once; the claimant finishes (or resumes after a crash) what it started.
        if (input.InitialisedBy != NodeId
            && !await state.Store.CreateIfAbsentAsync(state.K.Initialize(InstanceId), NodeId, etcd).ConfigureAwait(false)) return;
        if (record.Restore is { } source) await RestoreAsync(source, launch, ct).ConfigureAwait(false);
        else await state.Runtime.CreateAsync(launch, ct).ConfigureAwait(false);
        var primary = await TakeKeyAfterInitAsync(ct).ConfigureAwait(false);
        await state.Runtime.StartAsync(launch, primary ? null : _standby.Standby(null, record), ct).ConfigureAwait(false);
        state.Following = null;
        // Nobody else has data yet, so nobody could be writable beside it before this arming. Starting may have
        // taken a while on a busy host: renew first, so the deadline counts from now.
        if (primary && await lease.RenewAsync(ct).ConfigureAwait(false)) await lease.ArmAsync(ct).ConfigureAwait(false);
        // A new cluster is bindable once its primary leads: catch PostgreSQL's first moment up in this pass, not a
        // loop-wait later. One attempt may take seconds on a loaded machine (a 2 s connect timeout, then a retry):
        // the lease is renewed beside the wait, or the guard stopped the primary meanwhile (fresh115). Not only
        // once it answers, as beside a leader's other slow steps: it does not answer yet, and the wait is short.
        if (primary) await lease.WhileRenewingAsync(null, "waiting for PostgreSQL to accept connections", step => _standby.WaitUntilAnsweringAsync(probe, step), ct).ConfigureAwait(false);
        else await _standby.WaitUntilAnsweringAsync(probe, ct).ConfigureAwait(false);
        // Starting PostgreSQL may take longer than half the TTL on a busy host: renew at once, or the next pass
        // would find the fencing deadline passed and demote a primary that just came up.
        if (primary && await lease.RenewAsync(ct).ConfigureAwait(false)) await lease.ArmAsync(ct).ConfigureAwait(false);
    }

    private async Task RestoreAsync(RestoreSource source, NodeLaunchSpec launch, CancellationToken ct)
    {
        if (state.Backups is not { } backups) throw new InvalidOperationException("backups are disabled on this cell (dingo.backups.enabled): it cannot restore");
        var prepared = await backups.PrepareRestoreAsync(source, NodeId, ct).ConfigureAwait(false);
        await state.Runtime.RestoreAsync(launch, prepared.Input, ct).ConfigureAwait(false);
        backups.CleanRestore(NodeId);
        state.Restored = true;
        state.ClonedFromOther = source.InstanceId != InstanceId;
        state.Logger.LogInformation("node {Node}: restored {Instance} from base backup {Label} of {Source}{Target}", NodeId, InstanceId,
            prepared.Backup.Label, source.InstanceId, source.PointInTime is { } t ? $" up to {t:O}" : " (latest)");
        state.Events?.Record(InstanceId, NodeId, EventKind.Restore,
            $"restored from base backup {prepared.Backup.Label} of {source.InstanceId}{(source.PointInTime is { } at ? $" up to {at:O}" : " (latest)")}");
    }

    /// <summary>
    /// The first primary starts writable only once it holds the leader key. (initdb or a restore took a while: the pass's
    /// etcd budget is spent, so taking the key gets one of its own.) An etcd too slow to answer in that budget does not
    /// undo the initdb: the node starts read-only and a later pass takes the key (a data directory without the key is
    /// exactly a replica waiting for a leader).
    /// </summary>
    private async Task<bool> TakeKeyAfterInitAsync(CancellationToken ct)
    {
        using var take = CancellationTokenSource.CreateLinkedTokenSource(ct);
        take.CancelAfter(state.Ha.Ttl / 2);
        try { return await key.TryTakeAsync(take.Token, bootstrap: true).ConfigureAwait(false); }
        catch (Exception ex) when (AgentState.EtcdUnreachable(ex, ct))
        {
            state.Logger.LogWarning("node {Node}: the data is initialised but etcd did not answer in time to take the leader key ({Error}); starting read-only, a later pass takes it",
                NodeId, ex.Message);
            return false;
        }
    }

    private async Task ReleaseStaleKeyAsync(HaAction action, HaInput input, CancellationToken ct)
    {
        // A key is given up only once this node's PostgreSQL no longer accepts writes.
        var readOnly = input.Local.Running && input.Local.Answering && input.Local.InRecovery;
        if (input.Local.Running && !readOnly)
            await state.Runtime.StopAsync(NodeId, ct).ConfigureAwait(false);
        lease.Disarm();
        await key.ReleaseAfterStopAsync(readOnly ? input : LeaderKey.Stopped(input), action, ct).ConfigureAwait(false);
    }

    private async Task TakeLeadershipAsync(HaInput input, InstanceRecord record, PostgresProbe probe, CancellationToken etcd, CancellationToken ct)
    {
        var steps = new StepTimes(("positions", state.PositionsTook));
        if (!await key.TryTakeAsync(etcd).ConfigureAwait(false)) return;
        steps.Mark("key");
        await _leading.PromoteAndLeadAsync(steps, input.Local.InRecovery, record, probe, input, etcd, ct, tookKey: true).ConfigureAwait(false);
    }

    private async Task LeadAsync(HaInput input, InstanceRecord record, PostgresProbe probe, CancellationToken etcd, CancellationToken ct)
    {
        // A switchover request from another leader is over: this node holds the key (it took it, the request's
        // own clean-up failed in that pass), or a failover overtook it. Left in place, it would name a node
        // for the next free key long after (PlannedOperationsTests, fresh110: the take's pass ran out of
        // budget after the promotion and the request stayed for good).
        if (input.Switchover is { } done && done.From != NodeId)
            await state.Store.DeleteAsync(state.K.Switchover(InstanceId), etcd).ConfigureAwait(false);
        await _leading.LeadAsync(record, probe, input, promoted: false, etcd, ct).ConfigureAwait(false);
    }

    private async Task DemoteAsync(HaAction.Demote demote, HaInput input, InstanceRecord record, NodeLaunchSpec launch, CancellationToken ct)
    {
        // Writes stop first; the key is given up only once PostgreSQL no longer accepts them (until then the
        // guard stays armed, and stops it at the deadline if this stop hangs).
        if (demote.AtOnce) await lease.StopAtOnceAsync().ConfigureAwait(false);
        await state.Runtime.StopAsync(NodeId, ct).ConfigureAwait(false);
        lease.Disarm();
        await key.ReleaseAfterStopAsync(LeaderKey.Stopped(input), demote, ct).ConfigureAwait(false);
        if (demote.Leader is not null) await _standby.TryRewindAsync(launch, demote.Leader, record, ct).ConfigureAwait(false);
        await _standby.StartAsync(launch, demote.Leader, record, ct).ConfigureAwait(false);
    }

    private async Task HandOverAsync(HaAction.HandOver handOver, HaInput input, InstanceRecord record, NodeLaunchSpec launch, CancellationToken etcd, CancellationToken ct)
    {
        // The replica chosen goes into the request first: once the key is free, the others (this node included)
        // wait for it. Should this write fail, nothing has stopped yet and the next pass tries again.
        if (input.Switchover is { } request && request.HandedTo != handOver.Candidate)
            await state.Store.PutAsync(state.K.Switchover(InstanceId), request with { HandedTo = handOver.Candidate }, etcd).ConfigureAwait(false);
        // A clean stop sends every WAL record to the connected standbys before the key is released.
        await state.Runtime.StopAsync(NodeId, ct).ConfigureAwait(false);
        lease.Disarm();
        await key.ReleaseAfterStopAsync(LeaderKey.Stopped(input), handOver, ct).ConfigureAwait(false);
        await _standby.StartAsync(launch, null, record, ct).ConfigureAwait(false);
    }
}
