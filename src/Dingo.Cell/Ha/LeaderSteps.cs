using Dingo.Health;
using Dingo.Model;
using Dingo.Postgres;
using Dingo.Store;
using Microsoft.Extensions.Logging;

namespace Dingo.Ha;

/// <summary>
/// The leading piece of a node's HA actions: a new leader's promotion once it holds the key, and every leader's duties
/// each pass (replication slots, roles prepared once, its WAL position published, synchronous standbys kept right).
/// </summary>
internal sealed class LeaderSteps(AgentState state, LeaderLease lease)
{
    private string NodeId => state.Spec.NodeId;
    private string InstanceId => state.Spec.InstanceId;
    private Keys K => state.K;

    /// <summary>
    /// A new leader's steps once it holds the key: the archive's newer timeline histories, the armed guard, the promotion
    /// (a node still in recovery), then the leader's duties; each timed, for the line telling where a failover's time went.
    /// </summary>
    /// <param name="tookKey">it took the free key in this pass (a switchover that handed it over is then done)</param>
    public async Task PromoteAndLeadAsync(StepTimes steps, bool promote, InstanceRecord record, PostgresProbe probe, HaInput input, CancellationToken etcd, CancellationToken ct, bool tookKey = false)
    {
        if (promote) await AddTimelineHistoriesAsync(probe, etcd).ConfigureAwait(false);
        steps.Mark("histories");
        await lease.PrepareToPromoteAsync(etcd, ct).ConfigureAwait(false);
        steps.Mark("guard");
        if (promote) await probe.PromoteAsync(etcd).WaitAsync(etcd).ConfigureAwait(false);
        steps.Mark("pg_promote");
        state.Following = null;
        // The switchover is done once this node holds the key: cleared before the rest of leading, which may outlast the
        // pass's budget on a busy machine (the Lead case clears what is left all the same).
        if (tookKey && input.Switchover is not null) await state.Store.DeleteAsync(K.Switchover(InstanceId), etcd).ConfigureAwait(false);
        await LeadAsync(record, probe, input, promoted: promote, etcd, ct).ConfigureAwait(false);
        steps.Mark("leading");
        state.Logger.LogInformation("node {Node}: leading {Instance} after {Steps}", NodeId, InstanceId, steps);
    }

    /// <summary>
    /// Right before pg_promote: every history file the archive holds above this node's timeline goes into its pg_wal, so
    /// PostgreSQL picks a timeline no other branch took (docs/ha.md). Bounded by a small budget; a failure never blocks the
    /// promotion (availability first): it is logged as an error and the promotion goes on.
    /// </summary>
    private async Task AddTimelineHistoriesAsync(PostgresProbe probe, CancellationToken ct)
    {
        if (state.Histories is not { } histories) return;
        try
        {
            // The node's own answer comes on the pass's warm connection, bounded by the pass; the budget is the store's
            // alone (a fresh connection with a TLS handshake once spent all of it on a loaded machine: fresh8).
            var node = await probe.ReadTimelinesAsync(ct).ConfigureAwait(false);
            var budget = TimeSpan.FromTicks(Math.Min(TimeSpan.FromSeconds(1).Ticks, (state.Ha.Ttl / 8).Ticks));
            var files = await histories.BeforePromotionAsync(node, budget, ct).ConfigureAwait(false);
            if (files.Count == 0) return;
            var written = await state.Runtime.AddTimelineHistoriesAsync(NodeId, files, ct).ConfigureAwait(false);
            if (written.Count > 0)
                state.Logger.LogInformation("node {Node}: added the archive's timeline history file(s) {Files} to pg_wal: the promotion picks a timeline above them", NodeId, string.Join(", ", written));
        }
        catch (Exception ex) when (ex is not OperationCanceledException || !ct.IsCancellationRequested)
        {
            state.Logger.LogError("node {Node}: could not add the archive's timeline history files to pg_wal before promoting ({Error}); promoting anyway (availability first): the new timeline may repeat one the archive holds",
                NodeId, ex.Message);
        }
    }

    /// <summary>A leader's duties each pass: prepare roles once, publish its WAL position, keep slots and sync standbys right.</summary>
    /// <param name="promoted">promoted in this pass: the WAL position observed before is stale</param>
    /// <param name="ct">bounded by the fencing deadline: every step of a leader's pass is</param>
    /// <param name="stopping">for the first preparation of roles (a restored clone's takes long on a busy machine: cut at the
    /// fencing deadline every pass, it never finished); progress renews after it, and a pass stuck in it is fenced by the guard</param>
    public async Task LeadAsync(InstanceRecord record, PostgresProbe probe, HaInput input, bool promoted, CancellationToken ct, CancellationToken stopping)
    {
        await lease.RenewOnProgressAsync(ct).ConfigureAwait(false);
        // This pass's probe saw the slots and the synchronous setting: asked again only after a promotion, or when the
        // slots must change (two round trips less on every steady leader pass).
        var seen = promoted ? null : state.LastPg;
        await EnsureSlotsAsync(probe, seen, ct).ConfigureAwait(false);
        if (!state.Prepared) await PrepareAsync(record, probe, stopping).ConfigureAwait(false);
        await PublishPositionAsync(probe, input, promoted, ct).ConfigureAwait(false);
        await KeepSynchronousAsync(record, probe, input, seen, ct).ConfigureAwait(false);
    }

    /// <summary>
    /// The members' replication slots first: a replica cannot stream from a new primary until its slot exists, and a
    /// cluster-ha primary's commits wait for one that streams. Made after the preparation of roles, they came hundreds of
    /// ms after the promotion, and the followers' walreceivers, refused ('replication slot … does not exist'), tried again
    /// only after wal_retrieve_retry_interval (bench/Chaos kill-pg: a 1.22 s stall).
    /// </summary>
    private async Task EnsureSlotsAsync(PostgresProbe probe, PostgresObservation? seen, CancellationToken ct)
    {
        var slots = state.Others.Select(PostgresProbe.SlotName).ToHashSet();
        if (state.Backups is not null) slots.Add(Dingo.Backups.WalArchiverOptions.DefaultSlotName); // the archiver's own slot
        if (seen?.Slots is not { } existing || !PostgresProbe.SlotsAsWanted(existing, slots))
            await probe.EnsureSlotsAsync(slots, ct).WaitAsync(ct).ConfigureAwait(false);
    }

    /// <summary>The first preparation of roles and database since PostgreSQL started as this leader's, renewing beside it.</summary>
    private async Task PrepareAsync(InstanceRecord record, PostgresProbe probe, CancellationToken stopping)
    {
        await lease.WhileRenewingAsync(probe, "preparing roles and the database", async step =>
        {
            await DatabaseAdmin.PrepareAsync(state.Address, state.Spec.Port, record.Superuser, record.Database, step, record.Replication).ConfigureAwait(false);
            if (state.ClonedFromOther)
            {
                await DatabaseAdmin.DisableInheritedLoginsAsync(state.Address, state.Spec.Port, record.Superuser, step).ConfigureAwait(false);
                state.ClonedFromOther = false;
            }
        }, stopping).ConfigureAwait(false);
        state.Prepared = true;
        // The preparation may have outlasted the pass's fencing budget: the renewal after it gets one of its own.
        using var renewal = CancellationTokenSource.CreateLinkedTokenSource(stopping);
        renewal.CancelAfter(state.Ha.Ttl / 4);
        await lease.RenewOnProgressAsync(renewal.Token).ConfigureAwait(false);
    }

    /// <summary>Publishes the leader's WAL position when it moved (an idle primary's stays put).</summary>
    private async Task PublishPositionAsync(PostgresProbe probe, HaInput input, bool promoted, CancellationToken ct)
    {
        // This pass already observed PostgreSQL and read the members; only a promotion just now moved the WAL position.
        var lsn = promoted ? (await probe.ObserveAsync(ct).WaitAsync(ct).ConfigureAwait(false)).Lsn : input.Local.Lsn;
        if (lsn == state.LastOptime) return;
        await state.Store.PutAsync(K.Optime(InstanceId), lsn, ct).ConfigureAwait(false);
        state.LastOptime = lsn;
    }

    /// <summary>synchronous_standby_names and the sync key as the plan and the streaming standbys call for.</summary>
    private async Task KeepSynchronousAsync(InstanceRecord record, PostgresProbe probe, HaInput input, PostgresObservation? seen, CancellationToken ct)
    {
        var others = state.Others;
        var plan = Catalog.FindPlan(record.PlanId);
        var inPg = seen?.SynchronousStandbyNames ?? await probe.SynchronousSettingAsync(ct).WaitAsync(ct).ConfigureAwait(false);
        var storeSync = state.StoreSync;
        var streaming = plan?.Synchronous == true || storeSync
            ? (await probe.StreamingStandbysAsync(ct).WaitAsync(ct).ConfigureAwait(false)).Where(others.Contains).ToList()
            : [];
        var wanted = SynchronousCommit.Decide(plan?.Synchronous == true, storeSync, streaming, SynchronousCommit.NamedStandbys(inPg));
        // The set in etcd must always contain every standby PostgreSQL may wait for: grow etcd first, shrink it last.
        var target = wanted.Standbys.Order(StringComparer.Ordinal).ToList();
        var recorded = input.Sync?.Leader == NodeId ? input.Sync.Standbys : [];
        if (!target.All(recorded.Contains))
        {
            await state.Store.PutAsync(K.Sync(InstanceId), new SyncState(recorded.Union(target).OrderBy(n => n, StringComparer.Ordinal).ToList(), NodeId), ct).ConfigureAwait(false);
            recorded = recorded.Union(target).ToList();
        }
        if (inPg != wanted.Setting)
        {
            await probe.SetSynchronousSettingAsync(wanted.Setting, ct).WaitAsync(ct).ConfigureAwait(false);
            state.Logger.LogInformation("{Node}: synchronous_standby_names = '{Setting}': {Why}", NodeId, wanted.Setting, wanted.Sentence);
        }
        if (!state.Synchronous) return; // an asynchronous cluster's failover reads no sync key
        if (!recorded.OrderBy(n => n, StringComparer.Ordinal).SequenceEqual(target) || input.Sync?.Leader != NodeId)
            await state.Store.PutAsync(K.Sync(InstanceId), new SyncState(target, NodeId), ct).ConfigureAwait(false);
    }
}
