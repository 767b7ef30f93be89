using Dingo.Model;
using Dingo.Store;
using Microsoft.Extensions.Logging;

namespace Dingo.Ha;

/// <summary>
/// The leader-key piece of a node's HA pass: taking the free key under a fresh lease, moving it to a lease of the TTL the
/// node's company calls for, and giving it up — only ever once this node's PostgreSQL no longer accepts writes.
/// </summary>
/// <param name="report">writes this node's report (the pass's report step), so the others see it stopped before the key goes</param>
internal sealed class LeaderKey(AgentState state, LeaderLease lease, Func<HaInput, HaAction, string?, CancellationToken, Task> report)
{
    private string NodeId => state.Spec.NodeId;
    private string InstanceId => state.Spec.InstanceId;
    private Keys K => state.K;
    private EtcdStore Store => state.Store;

    private LeaderRecord MyLeaderRecord() => new() { NodeId = NodeId, Host = state.Address, Port = state.Spec.Port, Since = DateTimeOffset.UtcNow };

    /// <summary>Creates the leader key under a fresh lease of this node's; true when this node now leads.</summary>
    /// <param name="bootstrap">
    /// the first primary of a new cluster takes it: nobody else has data yet, so nobody could take over, and the key goes
    /// under the lease of a node alone (<see cref="Dingo.Config.HaSettings.AloneTtl"/>) until a replica reports data and a
    /// pass moves it to one of the TTL (<see cref="MoveToLeaseAsync"/>). The first start after it is not renewed beside: a
    /// container engine that took 5–10 s to start it on a saturated machine let a TTL lease expire there, and the new
    /// cluster lost its primary over and over (bench/Provision's Docker burst: no primary for the broker's 15 s bind
    /// patience). Fencing and the guard count with the lease's own TTL (<see cref="LeaderLease.Ttl"/>), so neither can
    /// come after it expires.
    /// </param>
    public async Task<bool> TryTakeAsync(CancellationToken ct, bool bootstrap = false)
    {
        var sent = Monotonic.NowNs();
        var alone = bootstrap || state.NoneCouldTakeOver;
        var granted = await Store.GrantLeaseAsync(PassCadence.LeaseTtl(alone, state.Ha), ct).ConfigureAwait(false);
        if (await Store.CreateIfAbsentAsync(K.Leader(InstanceId), MyLeaderRecord(), ct, granted).ConfigureAwait(false))
        {
            lease.Took(granted, alone, sent);
            state.Logger.LogInformation("node {Node}: took the leader key of {Instance}", NodeId, InstanceId);
            return true;
        }
        await Store.RevokeLeaseAsync(granted, ct).ConfigureAwait(false);
        return false;
    }

    /// <summary>
    /// Puts the leader key, as read, under a new lease of the TTL the node's company calls for (<see cref="PassCadence.LeaseTtl"/>),
    /// only if it is still at the revision read; then revokes the old lease (it would lapse by itself). A failure leaves the
    /// key where it was, under the lease this node keeps renewing: the next pass tries again.
    /// </summary>
    public async Task MoveToLeaseAsync(LeaderRecord leader, long revision, CancellationToken etcd)
    {
        var alone = state.NoneCouldTakeOver;
        var sent = Monotonic.NowNs();
        if (!alone) lease.ArmForShorterLease(state.Ha.Ttl, sent);
        long granted = 0;
        try
        {
            granted = await Store.GrantLeaseAsync(PassCadence.LeaseTtl(alone, state.Ha), etcd).ConfigureAwait(false);
            if (!await Store.TransactAsync(new Txn().At(K.Leader(InstanceId), revision).Put(K.Leader(InstanceId), leader, granted), etcd).ConfigureAwait(false))
            {
                await Store.RevokeLeaseAsync(granted, etcd).ConfigureAwait(false);
                return;
            }
            var old = lease.MovedTo(granted, alone, sent);
            granted = 0;
            state.Logger.LogInformation("node {Node}: the leader key of {Instance} is now under a lease of {Ttl:0}s ({Why})", NodeId, InstanceId,
                PassCadence.LeaseTtl(alone, state.Ha).TotalSeconds, alone ? "no other member could take over" : "members could take over");
            // Not waited for: the old lease holds nothing now, and lapses by itself if etcd does not take this.
            RevokeInBackground(old);
            // The guard names the new lease (the one to revoke should this agent die); its deadline stands.
            try { await lease.ArmAsync(etcd).ConfigureAwait(false); }
            catch (Exception ex) when (!etcd.IsCancellationRequested) { state.Logger.LogDebug("node {Node}: arming after the move: {Error}", NodeId, ex.Message); }
        }
        catch (Exception ex) when (AgentState.EtcdUnreachable(ex, CancellationToken.None))
        {
            state.Logger.LogWarning("node {Node}: could not move the leader key to a new lease: {Error}", NodeId, ex.Message);
            if (granted != 0) RevokeInBackground(granted);
        }
    }

    private void RevokeInBackground(long revoked) =>
        _ = Store.RevokeLeaseAsync(revoked, CancellationToken.None).ContinueWith(
            t => state.Logger.LogDebug("node {Node}: revoking lease {Lease}: {Error}", NodeId, revoked, t.Exception?.GetBaseException().Message),
            CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted, TaskScheduler.Default);

    /// <summary>True when the leader key names this node, whichever lease holds it.</summary>
    public async Task<bool> NamesThisNodeAsync(CancellationToken ct) =>
        (await Store.GetAsync<LeaderRecord>(K.Leader(InstanceId), ct).ConfigureAwait(false))?.Value.NodeId == NodeId;

    /// <summary>Deletes the leader key if it still names this node, and drops this node's lease.</summary>
    public async Task ReleaseAsync(CancellationToken ct)
    {
        var current = await Store.GetAsync<LeaderRecord>(K.Leader(InstanceId), ct).ConfigureAwait(false);
        if (current is not null && current.Value.NodeId == NodeId)
        {
            await Store.TransactAsync(new Txn().At(current.Key, current.ModRevision).Delete(current.Key), ct).ConfigureAwait(false);
            state.Logger.LogWarning("node {Node}: released the leader key of {Instance}", NodeId, InstanceId);
        }
        if (lease.Held) await Store.RevokeLeaseAsync(lease.Id, ct).ConfigureAwait(false);
        lease.Drop();
    }

    /// <summary>The pass's input as it stands once this node's PostgreSQL was stopped (what its report says next).</summary>
    public static HaInput Stopped(HaInput input) =>
        input with { Local = input.Local with { Running = false, Answering = false, Streaming = false } };

    /// <summary>
    /// PostgreSQL no longer accepts writes: giving the key up now is safe and lets a replica take over at once. The stop
    /// before it may have outlasted the pass's etcd budget (a clean stop takes seconds on a loaded machine), so the
    /// release gets a short budget of its own. It ran on the spent one: a switchover's hand-over failed after its clean
    /// stop, the key went only with the next pass (fresh120, PlannedOperationsTests). An etcd that does not answer: the
    /// lease lapses by itself, and this node never picks it up again.
    /// </summary>
    /// <param name="now">this node as it is now, reported before the key goes</param>
    public async Task ReleaseAfterStopAsync(HaInput now, HaAction action, CancellationToken ct)
    {
        // The others decide from the members' reports the moment the key is gone (its deletion wakes them). A report
        // still saying this node accepts writes made its streaming replica wait a whole loop for it with the key free
        // (bench/Chaos kill-pg: a 1.23 s stall, 0.5 s of it that wait). So the report goes first, on a small budget of
        // its own; should it fail, the key goes all the same.
        using (var reporting = CancellationTokenSource.CreateLinkedTokenSource(ct))
        {
            reporting.CancelAfter(state.Ha.Ttl / 8);
            try { await report(now, action, null, reporting.Token).ConfigureAwait(false); }
            catch (Exception ex) when (AgentState.EtcdUnreachable(ex, ct)) { }
        }
        using var release = CancellationTokenSource.CreateLinkedTokenSource(ct);
        release.CancelAfter(state.Ha.Ttl / 4);
        try
        {
            await ReleaseAsync(release.Token).ConfigureAwait(false);
        }
        catch (Exception ex) when (AgentState.EtcdUnreachable(ex, ct))
        {
            lease.Abandon();
        }
    }
}
