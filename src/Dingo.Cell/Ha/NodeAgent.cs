using System.Runtime.ExceptionServices;
using Dingo.Cells;
using Dingo.Config;
using Dingo.Model;
using Dingo.Store;
using Grpc.Core;
using Microsoft.Extensions.Logging;

namespace Dingo.Ha;

/// <summary>
/// One PostgreSQL node's HA loop on its cell: observe PostgreSQL and etcd (<see cref="NodeObserver"/>), let
/// <see cref="Failover.Decide"/> choose one action, carry it out (<see cref="NodeActions"/>), report (<see cref="NodeReport"/>).
/// The leader lease and fencing are <see cref="LeaderLease"/>'s. It remembers only what it can lose safely (its leader
/// lease id, timers); everything else is read again each pass.
/// </summary>
public sealed class NodeAgent : INodeLoop
{
    private readonly AgentState _state;
    private readonly CellLease _cellLease;
    private readonly Dingo.Health.CellMetrics? _metrics;
    /// <summary>The failsafe piece: asks the members as a leader cut off from etcd, answers a leader's ask as a replica.</summary>
    private readonly FailsafeMember _failsafe;
    private readonly LeaderLease _lease;
    private readonly LeaderKey _key;
    private readonly NodeObserver _observer;
    private readonly NodeActions _actions;
    private readonly NodeBackups _backups;
    private readonly NodeEvents _events;
    /// <summary>The report piece of the pass: builds and writes the node's status.</summary>
    private readonly NodeReport _report;

    private string _lastSentence = "";
    private DateTimeOffset? _failingSince;
    private bool _unchanged, _quiet;
    /// <summary>Since when this node has put its first clone off (CloneSettle); null: not yet.</summary>
    private long? _cloneWaitingSince;
    /// <summary>The cell is stopping cleanly and this node has let go: no pass acts any more.</summary>
    private volatile bool _released;

    /// <param name="guard">the cell's fencing guard; null only where nothing may ever promote without one being needed (tests of
    /// single nodes): a leader is then fenced by its own pass alone</param>
    public NodeAgent(NodeSpec spec, EtcdStore store, IContainerRuntime runtime, CellLease cellLease, DingoSettings settings, ILogger logger,
        Dingo.Backups.CellBackups? backups = null, FenceGuardDirectory? guard = null, Dingo.Health.CellMetrics? metrics = null, EventJournal? events = null)
    {
        _state = new AgentState(spec, store, runtime, settings, logger, events, backups);
        _cellLease = cellLease;
        _metrics = metrics;
        _failsafe = new FailsafeMember(spec, guard, MemberHttp.Client);
        _lease = new LeaderLease(_state, guard, _failsafe);
        _key = new LeaderKey(_state, _lease, ReportAsync);
        _observer = new NodeObserver(_state, _lease, _key, _failsafe, MemberHttp.Client);
        _actions = new NodeActions(_state, _lease, _key);
        _backups = new NodeBackups(_state);
        _events = new NodeEvents(_state);
        _report = new NodeReport(store, spec, settings.Ha.LoopWait);
    }

    public NodeSpec Spec => _state.Spec;
    public string LastSentence => _lastSentence;
    /// <summary>The last observation, for the node's health API.</summary>
    public HaInput? LastInput => _state.LastInput;
    public string Address => _state.Address;
    private HaSettings Ha => _state.Ha;
    private ILogger Logger => _state.Logger;

    /// <summary>The last pass restarted this leader's PostgreSQL in place, or waits for it to answer: pass again soon.</summary>
    public bool RecoveringInPlace { get; private set; }

    /// <summary>When the next pass should run (<see cref="PassCadence"/>): loop-wait, idle-loop-wait when quiet, sooner while recovering in place.</summary>
    public TimeSpan NextPassAfter { get; private set; }

    /// <summary>Called (on the thread pool) when the PostgreSQL this agent saw answering ends: a pass should run now.</summary>
    public Action? PostgresExited
    {
        get => _observer.Watch.Exited;
        set => _observer.Watch.Exited = value;
    }

    /// <summary>The node's actor stops: its PostgreSQL's end no longer concerns anyone here.</summary>
    public void StopWatchingPostgres() => _observer.Watch.Stop();

    /// <summary>The node's health API TLS (NodeHealthServer reads it for each connection).</summary>
    public HealthTls HealthApiTls() => _state.Runtime.HealthApiTls(Spec.NodeId);

    /// <summary>The node's Patroni-compatible health API (for HAProxy checks written for Patroni), answering from <see cref="Health"/>.</summary>
    public INodeHealthApi HealthApi(System.Net.IPAddress address) =>
        new NodeHealthServer(address, Spec.ApiPort, Health, Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance)
        {
            Failsafe = ask => _failsafe.Answer(ask, _state.Record, _state.LastInput, _state.Following, Ha.Ttl),
            WalPosition = LivePositionAsync,
            Tls = HealthApiTls,
        };

    /// <summary>This node's WAL position as its PostgreSQL has it now, on the HA loop's pooled session (the health API's <c>/wal-position</c>).</summary>
    public Task<long> LivePositionAsync(CancellationToken ct) =>
        _state.Record is { } record
            ? new PostgresProbe(Address, Spec.Port, record.Superuser).WalPositionAsync(ct)
            : Task.FromException<long>(new InvalidOperationException("no instance record yet"));

    public async Task<string> RunPassAsync(CancellationToken ct)
    {
        // The cell is stopping and this node let go (ReleaseOnShutdownAsync): a pass now would find PostgreSQL stopped and
        // start it again, read-only or in place, and the process would outlive its agent (a test platform's solo node did,
        // woken by its own PostgreSQL's exit).
        if (_released) return "no action: the cell is stopping";
        // While this node leads, no etcd call of the pass may outlast the moment it must fence itself (half the TTL
        // after its last renewal): a call still waiting then counts as etcd unreachable, so the decision to demote
        // is taken in time even when etcd does not answer at all (calls would otherwise wait out their deadlines).
        using var fence = CancellationTokenSource.CreateLinkedTokenSource(ct);
        _lease.Fence = fence;
        try
        {
            // A node with no other member is never fenced (Failover): its etcd calls wait out their own deadlines. Past
            // the deadline the pass runs on ordinary call deadlines: it must still be able to renew, or give up the key
            // (the guard has stopped or will stop PostgreSQL meanwhile).
            // Any other node's etcd calls share half a TTL too: a pass must not hang on an etcd that does not answer (its
            // observation would go stale, and a leader in failsafe needs fresh ones from its replicas).
            // After a pass that found etcd unreachable, a quarter TTL (what a leader's renewal gets too): a replica's passes
            // must keep coming while etcd hangs, since a leader in failsafe asks it about its last observation, and one
            // that waited out half a TTL of etcd calls every pass was refused as too old (fresh86: an 8 s etcd hang
            // became a failover).
            fence.CancelAfter(_lease.Guarded && _lease.UntilFencing() > TimeSpan.Zero ? _lease.UntilFencing()
                : _state.LastInput is { EtcdReachable: false } ? Ha.Ttl / 4
                : Ha.Ttl / 2);
            if (_lease.TakeFenced() is { } fenced)
            {
                Logger.LogWarning("node {Node}: {Fenced}", Spec.NodeId, fenced);
                _state.Events?.Record(Spec.InstanceId, Spec.NodeId, EventKind.Fenced, fenced);
            }
            return await RunPassAsync(fence.Token, ct).ConfigureAwait(false);
        }
        finally
        {
            _lease.Fence = null;
        }
    }

    /// <param name="etcd">for etcd calls: cancelled at the fencing deadline while leading</param>
    /// <param name="ct">for everything else: cancelled only when the actor stops</param>
    private async Task<string> RunPassAsync(CancellationToken etcd, CancellationToken ct)
    {
        _state.Pass = new StepTimes();
        (_unchanged, NextPassAfter) = (false, Ha.LoopWait);
        if (await RecordAsync(etcd).ConfigureAwait(false) is not { } record) return "no action: the instance is being deleted";
        var launch = new NodeLaunchSpec(Spec.NodeId, Spec.InstanceId, Address, Spec.Port, record.Superuser);
        var probe = new PostgresProbe(Address, Spec.Port, record.Superuser);

        var input = await _observer.ObserveAsync(record, probe, etcd, ct).ConfigureAwait(false);
        if (_state.Record is null) return "no action: the instance is being deleted";
        (input, var action) = await DecideAsync(input, record, probe, ct).ConfigureAwait(false);
        _state.LastInput = input;
        _state.Pass.Mark("decide");
        // A late renewal (DecideAsync) moved the fencing deadline the pass's etcd calls had already reached: the rest of
        // the pass counts to the new one (half a TTL from that renewal; later renewals in this pass do not move it).
        using var renewedFence = _lease.Guarded ? _lease.FenceAfterLateRenewal(etcd, ct) : null;
        if (renewedFence is not null) etcd = renewedFence.Token;
        var (failure, etcdLost) = await ActAsync(action, input, record, launch, probe, etcd, ct).ConfigureAwait(false);
        Passed(action, input, failure);
        await _backups.KeepAsync(action, failure, record, _lease.Held).ConfigureAwait(false);
        // Ahead of any failover, in the background: a promotion then needs no listing of the store.
        if (_state.Histories is not null && !_lease.Held && input.Local is { Answering: true, InRecovery: true })
            _state.Histories.RefreshIfDue(Address, Spec.Port, record.Superuser);
        ExceptionDispatchInfo? reportFailed = null;
        if (input.EtcdReachable && !etcdLost)
        {
            reportFailed = await RenewAndReportAsync(input, action, failure, etcd, ct).ConfigureAwait(false);
            etcdLost = reportFailed is not null;
        }
        if (etcdLost && action is HaAction.Lead && _lease.Guarded && input.Local is { Answering: true, InRecovery: false })
        {
            // etcd stopped answering after this pass's read (fresh162: an 8 s SIGSTOP began just after it), in the step or
            // the report: a leader that goes on leading asks its members now. Its next pass would come a loop-wait later,
            // after the guard's deadline (¼ TTL after the fencing deadline): the guard stopped a primary that failsafe
            // would have kept, and a replica took over.
            if (await _lease.ConfirmFailsafeAsync(ct).ConfigureAwait(false)) await _lease.ArmAsync(ct).ConfigureAwait(false);
        }
        _state.Pass.Mark("act and report");
        LogSlowPass(input, action, probe);
        var quiet = new PassCadence.Outcome(action, failure is not null, input.EtcdReachable && !etcdLost, input.Alone, _lease.Held && _lease.Alone,
            input.Local is { Answering: true, InRecovery: false }, _unchanged, RecoveringInPlace);
        (NextPassAfter, _quiet) = (PassCadence.Next(quiet, Ha), PassCadence.Quiet(quiet, Ha));
        _metrics?.Cadence(Spec.InstanceId, Spec.NodeId, NextPassAfter);
        reportFailed?.Throw();
        return failure is null ? action.Sentence : $"{action.Sentence} — failed: {failure}";
    }

    /// <summary>
    /// The instance record: read on its own only until one was seen. From then on the pass's one cluster read
    /// (<see cref="NodeObserver.ObserveAsync"/>) brings it too, and this pass decides with the record the last read brought:
    /// one etcd call less per node per pass (an idle platform's cost is its passes). The record changes only on an
    /// update, which then takes one pass longer to be seen; a record gone ends the pass before it acts, as this read did.
    /// </summary>
    private async Task<InstanceRecord?> RecordAsync(CancellationToken etcd)
    {
        if (_state.Record is { } seen) return seen;
        var instance = await _state.Store.GetAsync<InstanceRecord>(_state.K.Instance(Spec.InstanceId), etcd).ConfigureAwait(false);
        return instance is null ? null : _state.Record = instance.Value;
    }

    private async Task<(HaInput Input, HaAction Action)> DecideAsync(HaInput input, InstanceRecord record, PostgresProbe probe, CancellationToken ct)
    {
        var action = Failover.Decide(input, Ha);
        if (action is HaAction.Demote && Failover.LateForRenewalOnly(input, Ha))
        {
            // Slowed, not cut off: a saturated machine held the pass (fresh315: a probe of 1.9 s) past half the TTL.
            // Renewed now, it leads on; demoting would cost the cluster a failover for nothing.
            var late = input.SinceRenewal;
            if (await _lease.RenewLateAsync(ct).ConfigureAwait(false))
            {
                Logger.LogWarning("node {Node}: the pass reached its decision {Late:0.0}s after the last renewal of the leader lease, past the fencing deadline, with PostgreSQL and etcd answering: renewed the lease instead of demoting",
                    Spec.NodeId, late.TotalSeconds);
                input = input with { SinceRenewal = _lease.SinceRenewal };
                action = Failover.Decide(input, Ha);
            }
        }
        if (action is HaAction.CloneFromLeader clone) return (input, SettledClone(clone, record));
        if (action is not HaAction.TakeLeadership || input.Members.Count == 0) return (input, action);
        // The key is free and the reports say this node is the most advanced: ask the nodes themselves first.
        var asking = Monotonic.NowNs();
        input = await _observer.WithLivePositionsAsync(input, record, probe, ct).ConfigureAwait(false);
        _state.PositionsTook = Monotonic.Between(asking, Monotonic.NowNs());
        return (input, Failover.Decide(input, Ha));
    }

    /// <summary>
    /// A new replica of an asynchronous cluster clones once its cell has started no primary for a while (CloneSettle,
    /// docs/ha.md): until then, or at most CloneSettle.MostWait, the pass waits.
    /// </summary>
    private HaAction SettledClone(HaAction.CloneFromLeader clone, InstanceRecord record)
    {
        var settle = _state.Settings.Cell.CloneSettle;
        var waited = _cloneWaitingSince is { } since ? Monotonic.Between(since, Monotonic.NowNs()) : TimeSpan.Zero;
        var verdict = CloneSettle.Waits(CloneSettle.NothingWaitsForReplicas(record), settle, _state.Runtime.ServingWorkQuietFor(settle), waited);
        if (!verdict.Waits) return clone;
        _cloneWaitingSince ??= Monotonic.NowNs();
        return new HaAction.Wait($"waiting to clone from the leader {clone.From.NodeId} until this cell has started no primary for {settle.TotalSeconds:0.#} s: {verdict.Why}");
    }

    /// <returns>why the action failed (null: it did not), and whether etcd stopped answering during it</returns>
    private async Task<(string? Failure, bool EtcdLost)> ActAsync(HaAction action, HaInput input, InstanceRecord record, NodeLaunchSpec launch, PostgresProbe probe,
        CancellationToken etcd, CancellationToken ct)
    {
        try
        {
            if (_released) return (null, false);
            await _actions.ExecuteAsync(action, input, record, launch, probe, etcd, ct).ConfigureAwait(false);
            return (null, false);
        }
        catch (Exception ex) when (ex is not OperationCanceledException || !ct.IsCancellationRequested)
        {
            Logger.LogWarning("node {Node}: {Action} failed: {Error}", Spec.NodeId, action.Sentence, ex.Message);
            // etcd stopped answering after this pass's read: a call of the step failed, or waited until the fencing deadline.
            return (ex.Message, ex is RpcException || ex is OperationCanceledException && etcd.IsCancellationRequested);
        }
    }

    /// <summary>What the pass did, told: the log line when the decision changes, the failing time, the metrics, the event.</summary>
    private void Passed(HaAction action, HaInput input, string? failure)
    {
        // A leader whose PostgreSQL it restarted in place is promoted the moment it answers: its writes wait on that, so
        // the next passes come quickly (below a loop-wait) until then.
        RecoveringInPlace = failure is null && (action is HaAction.Start { InPlace: true }
            || _lease.Held && input.Leader?.NodeId == Spec.NodeId && action is HaAction.Wait && input.Local is { Running: true, Answering: false });
        if (action.Sentence != _lastSentence || failure is not null)
        {
            if (failure is null) Logger.LogInformation("node {Node} ({Instance}): {Decision}", Spec.NodeId, Spec.InstanceId, action.Sentence);
            _lastSentence = action.Sentence;
        }
        _failingSince = failure is null ? null : _failingSince ?? DateTimeOffset.UtcNow;
        _metrics?.Passed(Health(), _state.LastPg, _state.Restarts, action, failure);
        _events.Record(action, failure);
    }

    /// <summary>A leader's renewal on progress, then the report on a budget of its own; returns the report's etcd failure (null: none).</summary>
    private async Task<ExceptionDispatchInfo?> RenewAndReportAsync(HaInput input, HaAction action, string? failure, CancellationToken etcd, CancellationToken ct)
    {
        try { if (failure is null) await _lease.RenewOnProgressAsync(etcd).ConfigureAwait(false); }
        catch (Exception ex) when (AgentState.EtcdUnreachable(ex, ct)) { } // the next pass decides what an unreachable etcd means
        // A budget of its own: a long pass (a clone, a bootstrap) has spent the pass's, and the report is only news.
        using var report = CancellationTokenSource.CreateLinkedTokenSource(ct);
        report.CancelAfter(Ha.Ttl / 2);
        try
        {
            await ReportAsync(input, action, failure, report.Token).ConfigureAwait(false);
            return null;
        }
        catch (Exception ex) when (AgentState.EtcdUnreachable(ex, ct))
        {
            return ExceptionDispatchInfo.Capture(ex);
        }
    }

    /// <summary>
    /// A leader's slow pass is how it comes to be fenced (the renewal waits for the next pass): say where the time went.
    /// (Others' passes may take long by nature: a clone, a bootstrap.)
    /// </summary>
    private void LogSlowPass(HaInput input, HaAction action, PostgresProbe probe)
    {
        if (_state.Pass.Total > Ha.Ttl / 4 && (input.HoldsLease || _lease.Held) && action is not (HaAction.Bootstrap or HaAction.TakeLeadership))
            Logger.LogWarning("node {Node}: HA pass took {Steps}{Probe}: {Decision}", Spec.NodeId, _state.Pass,
                (probe.LastOpen is { } open ? $"; the probe's open {open.TotalMilliseconds:0} ms" : "") + (probe.LastRetry is { } retry ? $"; the probe {retry}" : ""), action.Sentence);
    }

    /// <summary>Stops this node's archiver and backup schedule (no longer leading, or the node is going away).</summary>
    public Task StopBackupsAsync() => _backups.CloseAsync();

    private async Task ReportAsync(HaInput input, HaAction action, string? failure, CancellationToken ct)
    {
        var status = NodeReport.Status(Spec, _state.Settings.Cell.Id, Address, input, action, failure, _state.Restarts, _failingSince, _state.LastPg?.Connections, DateTimeOffset.UtcNow);
        var lease = await _cellLease.EnsureAsync(ct).ConfigureAwait(false);
        _unchanged = _report.Unchanged(status);
        await _report.WriteAsync(status, lease, _quiet, ct).ConfigureAwait(false);
    }

    /// <summary>What the node's health API answers from: the last pass's observation.</summary>
    public NodeHealth Health()
    {
        var input = _state.LastInput;
        if (input is null)
        {
            var none = NodeCondition.Of(null, leading: false, passFailed: false);
            return new NodeHealth(Spec.NodeId, Spec.InstanceId, none.Postgres, none.ServerRole, false, null, false, false, null, null, null, _lastSentence);
        }
        var local = input.Local;
        var isLeader = input.Leader?.NodeId == Spec.NodeId && _lease.Held;
        // The health API answers as Patroni's: PostgreSQL's own state and role; the key is IsLeader.
        var condition = NodeCondition.Of(local, isLeader, passFailed: false);
        var (state, role) = (condition.Postgres, condition.ServerRole);
        long? lag = local.InRecovery && input.LeaderOptime is { } opt ? Math.Max(0, opt - local.Lsn) : local.InRecovery ? null : 0;
        var sync = input.Sync?.Standbys.Contains(Spec.NodeId) == true;
        return new NodeHealth(Spec.NodeId, Spec.InstanceId, state, role, isLeader, lag, local.Streaming, sync, local.Lsn, local.Timeline, input.Leader?.NodeId, _lastSentence);
    }

    /// <summary>On a clean stop of the cell: give up the leader key at once so a replica takes over without waiting for the TTL.</summary>
    public async Task ReleaseOnShutdownAsync(CancellationToken ct)
    {
        _released = true;
        await StopBackupsAsync().ConfigureAwait(false);
        // Writes stop before the key goes, or a replica could promote beside a primary still accepting them. A key that
        // names this node under a lease this process has not adopted yet is no different (the agent restarted while
        // leading and stops before its first pass took the lease over): its PostgreSQL is as writable. An etcd that does
        // not answer: the key cannot go either, so it lapses with its lease after the guard's deadline, as on a crash.
        var named = false;
        if (!_lease.Held)
        {
            try { named = await _key.NamesThisNodeAsync(ct).ConfigureAwait(false); }
            catch (RpcException) { }
        }
        if (_lease.Held || named)
        {
            await _state.Runtime.StopAsync(Spec.NodeId, ct).ConfigureAwait(false);
            _lease.Disarm();
        }
        try { await _key.ReleaseAsync(ct).ConfigureAwait(false); }
        catch (RpcException) { }
    }
}
