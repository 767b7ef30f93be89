using System.Text.Json;
using Dingo.Cells;
using Dingo.Config;
using Dingo.Health;
using Dingo.Model;
using Dingo.Postgres;
using Dingo.Store;
using Grpc.Core;
using Microsoft.Extensions.Logging;

namespace Dingo.Ha;

/// <summary>
/// One PostgreSQL node's HA loop on its cell: observe PostgreSQL and etcd, let <see cref="Failover.Decide"/>
/// choose one action, carry it out, report. It remembers only what it can lose safely (its leader lease id,
/// timers); everything else is read again each pass.
/// </summary>
public sealed class NodeAgent : INodeLoop
{
    private readonly EtcdStore _store;
    private readonly IContainerRuntime _runtime;
    private readonly CellLease _cellLease;
    private readonly DingoSettings _settings;
    private readonly ILogger _logger;
    private readonly NodeSpec _spec;

    private long _leaderLease;
    /// <summary><see cref="_leaderLease"/> was granted for a node with no other member (<see cref="HaSettings.AloneTtl"/>).</summary>
    private bool _aloneLease;
    /// <summary>A lease this node gave up (fenced) without reaching etcd to revoke it: it is never adopted again.</summary>
    private long _abandonedLease;
    /// <summary>When the last successful renewal (or grant) of the leader lease was sent (monotonic ns; 0: never).</summary>
    private long _renewedNs;
    /// <summary>Since when (monotonic ns) a running PostgreSQL has not answered the probe (0: it answers).</summary>
    private long _notAnsweringSinceNs;
    private readonly FenceGuardDirectory? _guard;
    /// <summary>When (monotonic ns) every other member last confirmed this leader while etcd was unreachable (0: never).</summary>
    private long _failsafeNs;
    /// <summary>The other members' health APIs, from the last etcd read: whom a leader asks in failsafe mode.</summary>
    private IReadOnlyList<(string NodeId, string? Host, int ApiPort)> _peers = [];
    /// <summary>The failsafe piece: asks the members as a leader cut off from etcd, answers a leader's ask as a replica.</summary>
    private readonly FailsafeMember _failsafe;
    private bool _failsafeLogged;
    private string? _failsafeRefusal;
    // With require-tls the members' health APIs take HTTPS only; their certificates are checked against the platform
    // CAs this process trusts (PlatformConnectionTls), as its PostgreSQL connections do.
    private static readonly HttpClient Http = new(new SocketsHttpHandler
    {
        UseProxy = false,
        ConnectTimeout = TimeSpan.FromSeconds(1),
        SslOptions = new System.Net.Security.SslClientAuthenticationOptions
        {
            EnabledSslProtocols = Dingo.Security.PemTls.Protocols,
            RemoteCertificateValidationCallback = (_, certificate, _, _) => certificate is not null && Dingo.Postgres.PlatformConnectionTls.VerifiesNode(certificate),
        },
    });

    /// <summary>The node's health API TLS (NodeHealthServer reads it for each connection).</summary>
    public HealthTls HealthApiTls() => _runtime.HealthApiTls(_spec.NodeId);

    /// <summary>The node's Patroni-compatible health API (for HAProxy checks written for Patroni), answering from <see cref="Health"/>.</summary>
    public INodeHealthApi HealthApi(System.Net.IPAddress address) =>
        new NodeHealthServer(address, _spec.ApiPort, Health, Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance)
        {
            Failsafe = ask => _failsafe.Answer(ask, _record, _lastInput, _following, _settings.Ha.Ttl),
            WalPosition = LivePositionAsync,
            Tls = HealthApiTls,
        };
    /// <summary>The postmaster the guard is armed with (resolved once per PostgreSQL start).</summary>
    private ProcessIdentity? _guarded;
    private string? _following;
    private DateTime? _notStreamingSince;
    private bool _rewindFailed;
    private bool _prepared;
    private bool _seenRunning;
    private int _restarts;
    private readonly Dingo.Health.CellMetrics? _metrics;
    private readonly Dingo.Store.EventJournal? _events;
    private (string Kind, string Sentence, DateTimeOffset At)? _lastEvent;
    /// <summary>What PostgreSQL answered in the last pass (null: it did not), for the cell's metrics.</summary>
    private PostgresObservation? _lastPg;
    /// <summary>Started since it last answered: a start that ends with PostgreSQL gone again counts as failed.</summary>
    private bool _awaitingStart;
    /// <summary>Starts in a row that failed (threw, or PostgreSQL exited before answering), and why the last did.</summary>
    private int _failedStarts;
    private string? _startFailure;
    private string _lastSentence = "";
    private DateTimeOffset? _failingSince;
    private HaInput? _lastInput;
    private InstanceRecord? _record;
    /// <summary>The cluster's other node ids, as read by this pass's observation.</summary>
    private IReadOnlyList<string> _others = [];
    private CancellationTokenSource? _fence;
    private readonly Dingo.Backups.CellBackups? _backups;
    private Dingo.Backups.CellBackups.BackupDuty? _duty;
    /// <summary>This node restored the cluster from a backup: its first base backup is taken at once.</summary>
    private bool _restored;
    /// <summary>Restored from another instance's backups: its login roles must be disabled once this node leads.</summary>
    private bool _clonedFromOther;
    /// <summary>The archive's timeline history files, fetched while a replica, added to pg_wal right before a promotion.</summary>
    private readonly Dingo.Backups.TimelineHistories? _histories;

    /// <param name="guard">the cell's fencing guard; null only where nothing may ever promote without one being needed (tests of
    /// single nodes): a leader is then fenced by its own pass alone</param>
    public NodeAgent(NodeSpec spec, EtcdStore store, IContainerRuntime runtime, CellLease cellLease, DingoSettings settings, ILogger logger,
        Dingo.Backups.CellBackups? backups = null, FenceGuardDirectory? guard = null, Dingo.Health.CellMetrics? metrics = null, Dingo.Store.EventJournal? events = null)
    {
        _guard = guard;
        _metrics = metrics;
        _events = events;
        _failsafe = new FailsafeMember(spec, guard, Http);
        _backups = backups is { Settings.Enabled: true } ? backups : null;
        _histories = _backups is null ? null : new Dingo.Backups.TimelineHistories(_backups.Store, spec.InstanceId, logger);
        _spec = spec;
        _store = store;
        _runtime = runtime;
        _cellLease = cellLease;
        _settings = settings;
        _logger = logger;
        _report = new NodeReport(store, spec, settings.Ha.LoopWait);
    }

    /// <summary>The report piece of the pass: builds and writes the node's status.</summary>
    private readonly NodeReport _report;

    public NodeSpec Spec => _spec;
    public string LastSentence => _lastSentence;
    /// <summary>The last observation, for the node's health API.</summary>
    public HaInput? LastInput => _lastInput;

    private Keys K => _store.Keys;
    public string Address => _settings.Cell.Address;

    public async Task<string> RunPassAsync(CancellationToken ct)
    {
        // While this node leads, no etcd call of the pass may outlast the moment it must fence itself (half the TTL
        // after its last renewal): a call still waiting then counts as etcd unreachable, so the decision to demote
        // is taken in time even when etcd does not answer at all (calls would otherwise wait out their deadlines).
        using var fence = CancellationTokenSource.CreateLinkedTokenSource(ct);
        _fence = fence;
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
            fence.CancelAfter(Guarded && UntilFencing() > TimeSpan.Zero ? UntilFencing()
                : _lastInput is { EtcdReachable: false } ? _settings.Ha.Ttl / 4
                : _settings.Ha.Ttl / 2);
            if (_guard?.TakeFenced(_spec.NodeId) is { } fenced)
            {
                _logger.LogWarning("node {Node}: {Fenced}", _spec.NodeId, fenced);
                _events?.Record(_spec.InstanceId, _spec.NodeId, Dingo.Model.EventKind.Fenced, fenced);
            }
            return await RunPassAsync(fence.Token, ct).ConfigureAwait(false);
        }
        finally
        {
            _fence = null;
        }
    }

    /// <summary>This node leads with other members: its PostgreSQL is guarded, and fenced at the deadline.</summary>
    private bool Guarded => _leaderLease != 0 && _others.Count > 0;

    /// <summary>The time left before a leader that has not renewed must demote itself.</summary>
    private TimeSpan UntilFencing()
    {
        if (_renewedNs == 0) return TimeSpan.Zero;
        var left = _settings.Ha.Ttl / 2 - Monotonic.Between(FencingBasisNs, Monotonic.NowNs());
        return left > TimeSpan.Zero ? left : TimeSpan.Zero;
    }

    /// <summary>What fencing counts from: the last renewal, or the last failsafe confirmation by every member if later.</summary>
    private long FencingBasisNs => Math.Max(_renewedNs, _failsafeNs);

    private TimeSpan SinceRenewal => _renewedNs == 0 ? TimeSpan.MaxValue : Monotonic.Between(FencingBasisNs, Monotonic.NowNs());

    private TimeSpan GuardAfter => FenceGuard.DeadlineAfterRenewal(_settings.Ha.Ttl);

    /// <summary>Renews the leader lease once; the renewal counts from the moment the request was sent.</summary>
    private async Task<bool> RenewAsync(CancellationToken etcd)
    {
        var sent = Monotonic.NowNs();
        if (!await _store.KeepAliveOnceAsync(_leaderLease, etcd).ConfigureAwait(false)) return false;
        _renewedNs = sent;
        if (UntilFencing() > TimeSpan.Zero) _fence?.CancelAfter(UntilFencing());
        return true;
    }

    /// <summary>
    /// Moves the guard's deadline to the last renewal + ¾ TTL for this node's running postmaster. A node with no other
    /// member is never fenced, so it is disarmed. False when PostgreSQL does not run (nothing to guard).
    /// </summary>
    /// <summary>The last pass restarted this leader's PostgreSQL in place, or waits for it to answer: pass again soon.</summary>
    public bool RecoveringInPlace { get; private set; }

    private async Task<bool> ArmAsync(CancellationToken ct)
    {
        if (_guard is null) return true;
        if (_leaderLease == 0) return false;
        if (_others.Count == 0)
        {
            Disarm();
            return true;
        }
        if (_guarded is not { Alive: true })
            _guarded = await _runtime.PostmasterPidAsync(_spec.NodeId, ct).ConfigureAwait(false) is { } pid ? ProcessIdentity.Of(pid) : null;
        if (_guarded is not { } postmaster) return false;
        // Written before the arming, and again only when it changes (a plan update): the guard reads it for a dead leader.
        if (_markedSynchronous != _synchronous)
        {
            _guard.MarkSynchronous(_spec.NodeId, _synchronous);
            _markedSynchronous = _synchronous;
        }
        _guard.Arm(_spec.NodeId, new GuardArm(Monotonic.Add(FencingBasisNs, GuardAfter), postmaster, _spec.InstanceId, _leaderLease));
        return true;
    }

    /// <summary>The plan of the last pass replicates synchronously; what the guard was last told of it (null: nothing yet).</summary>
    private bool _synchronous;
    /// <summary>The instance asked for store-synchronous commit, as this pass's record says (read once per pass).</summary>
    private bool _storeSync;
    private bool? _markedSynchronous;

    /// <summary>
    /// Fencing, or a hung PostgreSQL: the guard's deadline is moved to now, so it stops PostgreSQL its way (fast shutdown,
    /// SIGKILL of the whole tree 300 ms later) — a clean shutdown of a stopped process would wait for ever. Waits up to
    /// 2 s for the postmaster to be gone; the caller's ordinary stop follows.
    /// </summary>
    private async Task StopAtOnceAsync()
    {
        if (_guard is null || _guarded is not { Alive: true } postmaster || !_guard.GuardRunning()) return;
        _guard.Arm(_spec.NodeId, new GuardArm(Monotonic.NowNs(), postmaster, _spec.InstanceId, _leaderLease));
        var until = Monotonic.Add(Monotonic.NowNs(), TimeSpan.FromSeconds(2));
        while (postmaster.Alive && Monotonic.NowNs() < until) await Task.Delay(20, CancellationToken.None).ConfigureAwait(false);
    }

    /// <summary>
    /// A leader's long pass (a promotion, the first preparation of roles, a slow machine) renews at the points where it
    /// shows progress, so the guard's deadline counts from the last step done, not from the start of the pass. A pass
    /// stuck in one step never gets here: the fencing deadline cuts it, and the guard stops PostgreSQL after it.
    /// </summary>
    private async Task RenewOnProgressAsync(CancellationToken etcd)
    {
        if (_leaderLease == 0 || SinceRenewal < _settings.Ha.LoopWait) return;
        if (await RenewAsync(etcd).ConfigureAwait(false)) await ArmAsync(etcd).ConfigureAwait(false);
    }

    /// <summary>
    /// A leader's step that talks to its PostgreSQL alone and may take long on a busy machine: the first preparation of
    /// roles and database after a bootstrap or a take-over. The lease is renewed beside it every loop-wait, each time
    /// PostgreSQL has just answered the probe, so the guard's deadline (¾ TTL after the last renewal) does not stop a
    /// primary that is merely slow. It did: a preparation of more than 3 s beside a three-host platform had the guard
    /// kill the new primary it had just made (fresh114, fresh115), and the cluster failed over again. A PostgreSQL that
    /// stops answering gets no more renewals, so it is fenced as in any pass; a step that does not end is cut after
    /// <see cref="StepLimit"/> (the pass fails, the next one tries again). Without a probe, renewals do not wait for
    /// PostgreSQL to answer (waiting for one just started to answer).
    /// </summary>
    private async Task WhileRenewingAsync(PostgresProbe? probe, string what, Func<CancellationToken, Task> step, CancellationToken stopping)
    {
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(stopping);
        limit.CancelAfter(StepLimit);
        using var beside = CancellationTokenSource.CreateLinkedTokenSource(stopping);
        var renewing = Guarded ? KeepRenewingAsync(probe, beside.Token) : Task.CompletedTask;
        try
        {
            await step(limit.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (limit.IsCancellationRequested && !stopping.IsCancellationRequested)
        {
            throw new TimeoutException($"{what} took more than {StepLimit.TotalSeconds:0}s");
        }
        finally
        {
            await beside.CancelAsync().ConfigureAwait(false);
            await renewing.ConfigureAwait(false);
        }
    }

    /// <summary>The longest a leader's step may renew beside it (<see cref="WhileRenewingAsync"/>): four TTLs.</summary>
    private TimeSpan StepLimit => _settings.Ha.Ttl * 4;

    /// <summary>Every loop-wait until cancelled: asks PostgreSQL (when given a probe), and renews and arms only when it answered.</summary>
    private async Task KeepRenewingAsync(PostgresProbe? probe, CancellationToken ct)
    {
        while (!ct.IsCancellationRequested)
        {
            try
            {
                await Task.Delay(_settings.Ha.LoopWait, ct).ConfigureAwait(false);
                if (SinceRenewal < _settings.Ha.LoopWait) continue;
                using var tick = CancellationTokenSource.CreateLinkedTokenSource(ct);
                tick.CancelAfter(_settings.Ha.Ttl / 4);
                if (probe is not null) await probe.ObserveAsync(tick.Token).WaitAsync(tick.Token).ConfigureAwait(false);
                // The lease is gone: no more renewals; the guard stops PostgreSQL at its deadline unless the pass decides first.
                if (!await RenewAsync(tick.Token).ConfigureAwait(false)) return;
                await ArmAsync(tick.Token).ConfigureAwait(false);
            }
            catch (Exception) when (ct.IsCancellationRequested)
            {
                return;
            }
            catch (Exception ex)
            {
                // PostgreSQL or etcd did not answer this time: no renewal now; the guard's deadline stands.
                _logger.LogDebug("node {Node}: no renewal beside the step: {Error}", _spec.NodeId, ex.Message);
            }
        }
    }

    private void Disarm()
    {
        _guarded = null;
        _markedSynchronous = null;
        _guard?.Disarm(_spec.NodeId);
    }

    /// <summary>
    /// Before PostgreSQL becomes writable: the guard runs and is armed, and enough of the lease is left for the promotion
    /// to finish well inside it (renewed first when a quarter of the TTL has gone).
    /// </summary>
    private async Task PrepareToPromoteAsync(CancellationToken etcd, CancellationToken ct)
    {
        if (_guard is not null && _others.Count > 0 && !await _guard.EnsureGuardRunningAsync(TimeSpan.FromSeconds(2), ct).ConfigureAwait(false))
            throw new InvalidOperationException($"the fencing guard does not run (see {_guard.Path}/guard.log): not promoting without it");
        if (SinceRenewal > _settings.Ha.Ttl / 4 && !await RenewAsync(etcd).ConfigureAwait(false))
            throw new InvalidOperationException("the leader lease expired before promotion");
        if (!await ArmAsync(etcd).ConfigureAwait(false))
            throw new InvalidOperationException("PostgreSQL is not running: nothing to promote");
    }

    /// <summary>An etcd call failed or was cut short by the fencing deadline (not by the actor stopping).</summary>
    private static bool EtcdUnreachable(Exception ex, CancellationToken ct) =>
        ex is RpcException || (ex is OperationCanceledException && !ct.IsCancellationRequested);

    /// <param name="etcd">for etcd calls: cancelled at the fencing deadline while leading</param>
    /// <param name="ct">for everything else: cancelled only when the actor stops</param>
    private async Task<string> RunPassAsync(CancellationToken etcd, CancellationToken ct)
    {
        _pass = new StepTimes();
        (_unchanged, NextPassAfter) = (false, _settings.Ha.LoopWait);
        // The instance record: read on its own only until one was seen. From then on the pass's one cluster read
        // (ObserveAsync) brings it too, and this pass decides with the record the last read brought: one etcd call less
        // per node per pass (an idle platform's cost is its passes). The record changes only on an update, which then
        // takes one pass longer to be seen; a record gone ends the pass before it acts, as this read did.
        InstanceRecord record;
        if (_record is { } seen)
        {
            record = seen;
        }
        else
        {
            var instance = await _store.GetAsync<InstanceRecord>(K.Instance(_spec.InstanceId), etcd).ConfigureAwait(false);
            if (instance is null) return "no action: the instance is being deleted";
            record = _record = instance.Value;
        }
        var launch = new NodeLaunchSpec(_spec.NodeId, _spec.InstanceId, Address, _spec.Port, record.Superuser);
        var probe = new PostgresProbe(Address, _spec.Port, record.Superuser);

        var input = await ObserveAsync(record, probe, etcd, ct).ConfigureAwait(false);
        if (_record is null) return "no action: the instance is being deleted";
        var action = Failover.Decide(input, _settings.Ha);
        if (action is HaAction.TakeLeadership && input.Members.Count > 0)
        {
            // The key is free and the reports say this node is the most advanced: ask the nodes themselves first.
            var asking = Monotonic.NowNs();
            input = await WithLivePositionsAsync(input, record, probe, ct).ConfigureAwait(false);
            _positionsTook = Monotonic.Between(asking, Monotonic.NowNs());
            action = Failover.Decide(input, _settings.Ha);
        }
        _lastInput = input;
        string? failure = null;
        var etcdLost = false;
        _pass.Mark("decide");
        try
        {
            await ExecuteAsync(action, input, record, launch, probe, etcd, ct).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is not OperationCanceledException || !ct.IsCancellationRequested)
        {
            failure = ex.Message;
            // etcd stopped answering after this pass's read: a call of the step failed, or waited until the fencing deadline.
            etcdLost = ex is RpcException || ex is OperationCanceledException && etcd.IsCancellationRequested;
            _logger.LogWarning("node {Node}: {Action} failed: {Error}", _spec.NodeId, action.Sentence, ex.Message);
        }
        // A leader whose PostgreSQL it restarted in place is promoted the moment it answers: its writes wait on that, so
        // the next passes come quickly (below a loop-wait) until then.
        RecoveringInPlace = failure is null && (action is HaAction.Start { InPlace: true }
            || _leaderLease != 0 && input.Leader?.NodeId == _spec.NodeId && action is HaAction.Wait && input.Local is { Running: true, Answering: false });
        if (action.Sentence != _lastSentence || failure is not null)
        {
            if (failure is null) _logger.LogInformation("node {Node} ({Instance}): {Decision}", _spec.NodeId, _spec.InstanceId, action.Sentence);
            _lastSentence = action.Sentence;
        }
        _failingSince = failure is null ? null : _failingSince ?? DateTimeOffset.UtcNow;
        _metrics?.Passed(Health(), _lastPg, _restarts, action, failure);
        RecordEvent(action, failure);
        await KeepBackupDutyAsync(action, failure, record).ConfigureAwait(false);
        // Ahead of any failover, in the background: a promotion then needs no listing of the store.
        if (_histories is not null && _leaderLease == 0 && input.Local is { Answering: true, InRecovery: true })
            _histories.RefreshIfDue(Address, _spec.Port, record.Superuser);
        System.Runtime.ExceptionServices.ExceptionDispatchInfo? reportFailed = null;
        if (input.EtcdReachable && !etcdLost)
        {
            try { if (failure is null) await RenewOnProgressAsync(etcd).ConfigureAwait(false); }
            catch (Exception ex) when (EtcdUnreachable(ex, ct)) { } // the next pass decides what an unreachable etcd means
            // A budget of its own: a long pass (a clone, a bootstrap) has spent the pass's, and the report is only news.
            using var report = CancellationTokenSource.CreateLinkedTokenSource(ct);
            report.CancelAfter(_settings.Ha.Ttl / 2);
            try { await ReportAsync(input, action, failure, report.Token).ConfigureAwait(false); }
            catch (Exception ex) when (EtcdUnreachable(ex, ct))
            {
                (etcdLost, reportFailed) = (true, System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(ex));
            }
        }
        if (etcdLost && action is HaAction.Lead && Guarded && input.Local is { Answering: true, InRecovery: false })
        {
            // etcd stopped answering after this pass's read (fresh162: an 8 s SIGSTOP began just after it), in the step or
            // the report: a leader that goes on leading asks its members now. Its next pass would come a loop-wait later,
            // after the guard's deadline (¼ TTL after the fencing deadline): the guard stopped a primary that failsafe
            // would have kept, and a replica took over.
            if (await ConfirmFailsafeAsync(ct).ConfigureAwait(false)) await ArmAsync(ct).ConfigureAwait(false);
        }
        _pass.Mark("act and report");
        // A leader's slow pass is how it comes to be fenced (the renewal waits for the next pass): say where the time
        // went. (Others' passes may take long by nature: a clone, a bootstrap.)
        if (_pass.Total > _settings.Ha.Ttl / 4 && (input.HoldsLease || _leaderLease != 0) && action is not (HaAction.Bootstrap or HaAction.TakeLeadership))
            _logger.LogWarning("node {Node}: HA pass took {Steps}{Probe}: {Decision}", _spec.NodeId, _pass,
                (probe.LastOpen is { } open ? $"; the probe's open {open.TotalMilliseconds:0} ms" : "") + (probe.LastRetry is { } retry ? $"; the probe {retry}" : ""), action.Sentence);
        var quiet = new PassCadence.Outcome(action, failure is not null, input.EtcdReachable && !etcdLost, input.Alone, _leaderLease != 0 && _aloneLease,
            input.Local is { Answering: true, InRecovery: false }, _unchanged, RecoveringInPlace);
        (NextPassAfter, _quiet) = (PassCadence.Next(quiet, _settings.Ha), PassCadence.Quiet(quiet, _settings.Ha));
        _metrics?.Cadence(_spec.InstanceId, _spec.NodeId, NextPassAfter);
        reportFailed?.Throw();
        return failure is null ? action.Sentence : $"{action.Sentence} — failed: {failure}";
    }

    /// <summary>
    /// Before taking a free key: this node's and every running member's WAL position as they are now — a member's asked of
    /// its agent (<c>GET /wal-position</c> on its health API), or of its PostgreSQL directly when the agent cannot say —
    /// on a budget of a quarter TTL (the key is free: every moment of it is a moment without a primary). A member that
    /// does not answer in time keeps its reported position, as before this check.
    /// </summary>
    private async Task<HaInput> WithLivePositionsAsync(HaInput input, InstanceRecord record, PostgresProbe probe, CancellationToken ct)
    {
        using var budget = CancellationTokenSource.CreateLinkedTokenSource(ct);
        budget.CancelAfter(_settings.Ha.Ttl / 4);
        async Task<(string NodeId, long? Lsn, string? Error)> AskAsync(string nodeId, PostgresProbe of)
        {
            try { return (nodeId, await of.WalPositionAsync(budget.Token).WaitAsync(budget.Token).ConfigureAwait(false), null); }
            catch (Exception ex) when (ex is Npgsql.NpgsqlException or TimeoutException or System.Net.Sockets.SocketException or InvalidOperationException or System.IO.IOException
                                       || (ex is OperationCanceledException && !ct.IsCancellationRequested))
            {
                return (nodeId, null, ex is OperationCanceledException ? "no answer in time" : ex.Message);
            }
        }
        async Task<(string NodeId, long? Lsn, string? Error)> AskMemberAsync(NodeStatus m)
        {
            // Its agent first (one query on its warm pooled session); PostgreSQL itself when the agent cannot say.
            if (_peers.FirstOrDefault(p => p.NodeId == m.NodeId) is { Host: { } host, ApiPort: > 0 } peer)
            {
                try
                {
                    var uri = new UriBuilder(Dingo.Postgres.PlatformConnectionTls.Required ? "https" : "http", host, peer.ApiPort, "/wal-position").Uri;
                    using var response = await Http.GetAsync(uri, budget.Token).ConfigureAwait(false);
                    if (response.IsSuccessStatusCode
                        && System.Text.Json.Nodes.JsonNode.Parse(await response.Content.ReadAsStringAsync(budget.Token).ConfigureAwait(false))?["wal_position"] is System.Text.Json.Nodes.JsonValue value
                        && value.TryGetValue<long>(out var lsn))
                        return (m.NodeId, lsn, null);
                }
                catch (Exception ex) when (ex is HttpRequestException or System.Text.Json.JsonException || (ex is OperationCanceledException && !ct.IsCancellationRequested))
                {
                    if (budget.IsCancellationRequested) return (m.NodeId, null, "no answer in time");
                }
            }
            return await AskAsync(m.NodeId, new PostgresProbe(m.Host, m.Port, record.Superuser)).ConfigureAwait(false);
        }
        var asked = input.Members.Where(m => m.State == NodeState.Running && Failover.IsFresh(input, m, _settings.Ha)).ToList();
        var answers = await Task.WhenAll(asked.Select(AskMemberAsync).Append(AskAsync(_spec.NodeId, probe))).ConfigureAwait(false);
        foreach (var (nodeId, _, error) in answers.Where(a => a.Error is not null && a.NodeId != _spec.NodeId))
            _logger.LogWarning("node {Node}: could not ask {Member} its WAL position before taking the leader key ({Error}): its report decides", _spec.NodeId, nodeId, error);
        var live = answers.Where(a => a.Lsn is not null && a.NodeId != _spec.NodeId).ToDictionary(a => a.NodeId, a => a.Lsn!.Value);
        return Failover.WithLivePositions(input, answers.Single(a => a.NodeId == _spec.NodeId).Lsn, live);
    }

    /// <summary>
    /// Records the pass's step in the instance's history when it changes something (a bootstrap, a clone, taking or
    /// releasing the leader key, a promotion, a demotion, a switchover, a rewind, a re-clone), with its sentence and its
    /// failure if it failed. Steady passes (lead, follow, wait, start) are not events.
    /// </summary>
    private void RecordEvent(HaAction action, string? failure)
    {
        if (_events is null || action is HaAction.Lead or HaAction.FollowLeader or HaAction.Wait or HaAction.Start) return;
        var kind = Dingo.Health.CellMetrics.DecisionName(action);
        var sentence = failure is null ? action.Sentence : $"{action.Sentence} — failed: {failure}";
        var now = DateTimeOffset.UtcNow;
        // A step repeated pass after pass (a demotion while etcd stays away, whose sentence counts the seconds) is one
        // event per 10 s at most, and the very same sentence one per minute.
        if (_lastEvent is { } last && last.Kind == kind
            && (now - last.At < TimeSpan.FromSeconds(10) || last.Sentence == sentence && now - last.At < TimeSpan.FromMinutes(1))) return;
        _lastEvent = (kind, sentence, now);
        _events.Record(_spec.InstanceId, _spec.NodeId, kind, sentence);
    }

    /// <summary>The leader archives WAL and takes base backups; a node that no longer holds the key stops at once.</summary>
    private async Task KeepBackupDutyAsync(HaAction action, string? failure, InstanceRecord record)
    {
        if (_backups is null) return;
        var leading = _leaderLease != 0 && failure is null && action is HaAction.Lead or HaAction.TakeLeadership or HaAction.Promote;
        if (leading)
        {
            if (_duty is { Stopped: false })
            {
                (_duty.StoreSynchronous, _duty.Synchronous) = (_storeSync, _synchronous);
                return;
            }
            if (_duty is not null) await _duty.DisposeAsync().ConfigureAwait(false);
            _duty = _backups.Lead(_spec.InstanceId, _spec.NodeId, Address, _spec.Port, record.Superuser, baseBackupNow: _restored);
            (_duty.StoreSynchronous, _duty.Synchronous) = (_storeSync, _synchronous);
            _restored = false;
        }
        else if (_leaderLease == 0)
        {
            await StopBackupsAsync().ConfigureAwait(false);
        }
    }

    /// <summary>Stops this node's archiver and backup schedule (no longer leading, or the node is going away).</summary>
    public async Task StopBackupsAsync()
    {
        var duty = _duty;
        _duty = null;
        if (duty is not null) await duty.DisposeAsync().ConfigureAwait(false);
    }

    private async Task<HaInput> ObserveAsync(InstanceRecord record, PostgresProbe probe, CancellationToken etcd, CancellationToken ct)
    {
        var now = DateTimeOffset.UtcNow;
        // A leader renews first thing: the renewal says this pass runs, and PostgreSQL's health has rules of its own
        // (a hung primary demotes). Renewing after the slower observations made a loaded machine's leaders fence.
        bool reachable = true, renewed = false;
        try
        {
            if (_leaderLease != 0)
            {
                // At most half of what is left before fencing (and a quarter TTL): an etcd that does not answer must leave
                // the pass time to look at PostgreSQL and, in failsafe, to ask the other members.
                using var renewal = CancellationTokenSource.CreateLinkedTokenSource(etcd);
                var budget = _others.Count > 0 ? TimeSpan.FromTicks(Math.Min(UntilFencing().Ticks / 2, (_settings.Ha.Ttl / 4).Ticks)) : _settings.Ha.Ttl;
                renewal.CancelAfter(budget > TimeSpan.Zero ? budget : TimeSpan.FromMilliseconds(100));
                renewed = await RenewAsync(renewal.Token).ConfigureAwait(false);
                if (!renewed)
                {
                    // The guard stays armed: if PostgreSQL is still writable, it stops it at the deadline unless this
                    // pass demotes first, or takes the key again (etcd revokes a lease it did not see renewed for a TTL,
                    // as after a hang longer than that, while failsafe kept the primary serving).
                    _logger.LogWarning("node {Node}: my leader lease expired", _spec.NodeId);
                    (_leaderLease, _aloneLease) = (0, false);
                    // etcd answered: what is left of this pass is no leader's, and gets a follower's budget from now
                    // rather than the rest of the fencing deadline. With the rest of it, the cluster read or taking the
                    // key again found the token spent, and the pass demoted a primary that could have kept serving.
                    _fence?.CancelAfter(_settings.Ha.Ttl / 2);
                }
            }
        }
        catch (Exception ex) when (EtcdUnreachable(ex, ct))
        {
            reachable = false;
        }
        _pass.Mark(_leaderLease != 0 || renewed ? "renew" : "start");
        var mine = await _runtime.InspectAsync(_spec.NodeId, ct).ConfigureAwait(false);
        _pass.Mark("inspect");
        PostgresObservation? pg = null;
        if (mine is { Running: true })
        {
            // While leading, a PostgreSQL that does not answer (hung, stopped) must not hold the pass past the fencing deadline.
            // WaitAsync: Npgsql's own cancellation asks the server to cancel, which a stopped server never answers.
            // Past (or at) the fencing deadline a leader still needs to know whether its PostgreSQL answers (failsafe
            // keeps only one that does): a short budget of its own; the guard keeps the deadline meanwhile.
            using var late = CancellationTokenSource.CreateLinkedTokenSource(ct);
            late.CancelAfter(_leaderLease == 0 ? _settings.Ha.Ttl / 2 : _settings.Ha.Ttl / 8);
            // A node that does not lead has nothing to fence: its probe gets its own budget, not what the pass's etcd calls
            // left of theirs (a hung etcd must not make a healthy replica look dead: failsafe asks replicas about it).
            var probing = _leaderLease == 0 || UntilFencing() < _settings.Ha.Ttl / 8 ? late.Token : etcd;
            try { pg = await probe.ObserveAsync(probing).WaitAsync(probing).ConfigureAwait(false); }
            catch (Exception ex) when (ex is Npgsql.NpgsqlException or TimeoutException or System.Net.Sockets.SocketException or InvalidOperationException
                                       || (ex is OperationCanceledException && !ct.IsCancellationRequested)) { }
            _pass.Mark("probe");
        }
        _lastPg = pg;
        if (pg is not null) await WatchPostmasterAsync(ct).ConfigureAwait(false);
        if (mine is { Running: true } && pg is null) { if (_notAnsweringSinceNs == 0) _notAnsweringSinceNs = Monotonic.NowNs(); }
        else _notAnsweringSinceNs = 0;
        if (mine is { Running: false } && _seenRunning)
        {
            _restarts++;
            _seenRunning = false;
            _prepared = false;
            _lastOptime = null;
            _logger.LogWarning("node {Node}: PostgreSQL is not running ({Detail}) (restart #{Count})", _spec.NodeId, mine.Detail, _restarts);
            _events?.Record(_spec.InstanceId, _spec.NodeId, Dingo.Model.EventKind.PostgresRestarted, $"PostgreSQL was found not running ({mine.Detail}): restart #{_restarts}");
        }
        if (pg is not null)
        {
            _seenRunning = true;
            _awaitingStart = false;
            _failedStarts = 0;
        }
        else if (mine is { Running: false } && _awaitingStart)
        {
            _awaitingStart = false;
            StartFailed($"PostgreSQL exited before accepting connections ({mine.Detail})");
        }

        var streaming = pg is { InRecovery: true, Streaming: true };
        if (pg is { InRecovery: true } && !streaming) _notStreamingSince ??= DateTime.UtcNow;
        else _notStreamingSince = null;

        LeaderRecord? leader = null;
        long? optime = null;
        SyncState? sync = null;
        SwitchoverRequest? switchover = null;
        var members = new List<NodeStatus>();
        long leaderKeyLease = 0, leaderRevision = 0;
        bool initialised = false, candidate = false;
        string? initialisedBy = null;
        try
        {
            if (!reachable) throw new RpcException(new Status(StatusCode.Unavailable, "the lease renewal found etcd unreachable"));
            // The cluster's keys, the members' reports, the node specs and the instance record: one read, at one revision.
            var (read, keys, _) = await _store.ReadManyRawAsync([K.Cluster(_spec.InstanceId), K.Statuses(_spec.InstanceId), K.Nodes(_spec.InstanceId)],
                [K.Instance(_spec.InstanceId)], etcd).ConfigureAwait(false);
            // The next pass decides with this record; none: the instance is being deleted (RunPassAsync ends this pass).
            _record = keys[0] is { } instance ? EtcdStore.Decode<InstanceRecord>(instance).Value : null;
            var cluster = read[0].Select(EtcdStore.Decode<System.Text.Json.JsonElement>);
            foreach (var kv in cluster)
            {
                var name = kv.Key[K.Cluster(_spec.InstanceId).Length..];
                switch (name)
                {
                    case "leader":
                        leader = kv.Value.Deserialize<LeaderRecord>(Json.Options);
                        (leaderKeyLease, leaderRevision) = (kv.Lease, kv.ModRevision);
                        break;
                    case "optime": optime = kv.Value.GetInt64(); break;
                    case "sync": sync = kv.Value.Deserialize<SyncState>(Json.Options); break;
                    case "switchover": switchover = kv.Value.Deserialize<SwitchoverRequest>(Json.Options); break;
                    case "initialize":
                        initialised = true;
                        initialisedBy = kv.Value.ValueKind == JsonValueKind.String ? kv.Value.GetString() : null;
                        break;
                }
            }
            if (_leaderLease == 0 && leader?.NodeId == _spec.NodeId && leaderKeyLease != 0 && leaderKeyLease != _abandonedLease)
            {
                // The key names this node under a lease this process did not take: the agent restarted (SIGKILL, a
                // crash) while PostgreSQL went on. The lease is still alive, so nobody else can lead: carry on with it
                // instead of giving up a working primary.
                var sent = Monotonic.NowNs();
                if (await _store.KeepAliveOnceTtlAsync(leaderKeyLease, etcd).ConfigureAwait(false) is > 0 and var ttl)
                {
                    // Its TTL says what it was granted for (etcd may round a TTL up, never to an alone lease's).
                    (_leaderLease, _aloneLease, _renewedNs, renewed) = (leaderKeyLease, ttl >= Math.Ceiling(_settings.Ha.AloneTtl.TotalSeconds) && _settings.Ha.AloneTtl > _settings.Ha.Ttl, sent, true);
                    if (UntilFencing() > TimeSpan.Zero) _fence?.CancelAfter(UntilFencing());
                    _logger.LogInformation("node {Node}: adopted the leader lease of {Instance} (the agent restarted while this node led)", _spec.NodeId, _spec.InstanceId);
                }
            }
            members = read[1].Select(m => EtcdStore.Decode<NodeStatus>(m).Value).Where(m => m.NodeId != _spec.NodeId).ToList();
            var specs = read[2].Select(n => EtcdStore.Decode<NodeSpec>(n).Value)
                .OrderBy(n => n.CreatedAt).ThenBy(n => n.NodeId, StringComparer.Ordinal).ToList();
            candidate = specs.FirstOrDefault()?.NodeId == _spec.NodeId;
            _others = specs.Where(s => s.NodeId != _spec.NodeId).Select(s => s.NodeId).ToList();
            // Only members of the cluster as it is now count (a removed node's last report may linger).
            members = members.Where(m => specs.Any(s => s.NodeId == m.NodeId)).ToList();
            _peers = specs.Where(s => s.NodeId != _spec.NodeId).Select(s => (s.NodeId, members.FirstOrDefault(m => m.NodeId == s.NodeId)?.Host, s.ApiPort)).ToList();
            // A leader that got members (or lost them all) moves its key to a lease of the TTL that now applies: a short one
            // as soon as a replica could take over, a long one while nobody could (PassCadence).
            if (renewed && leader is { } held && held.NodeId == _spec.NodeId && leaderKeyLease == _leaderLease && _aloneLease != (_others.Count == 0))
                await MoveKeyToLeaseAsync(held, leaderRevision, etcd).ConfigureAwait(false);
            _failsafeNs = 0;
            if (_failsafeLogged) _logger.LogInformation("node {Node}: etcd reachable again; failsafe mode over", _spec.NodeId);
            _failsafeLogged = false;
        }
        catch (Exception ex) when (EtcdUnreachable(ex, ct))
        {
            reachable = false;
        }
        // Failsafe keeps a working primary: one that does not answer itself (hung, stopped) is not kept this way (its
        // replicas may not have noticed yet that nothing comes).
        _pass.Mark("read");
        var failsafe = !reachable && pg is { InRecovery: false } && Guarded && await ConfirmFailsafeAsync(ct).ConfigureAwait(false);
        if (renewed || failsafe) await ArmAsync(ct).ConfigureAwait(false);

        var local = new LocalState(
            DataInitialised: mine?.Initialised == true,
            Running: mine?.Running == true,
            Answering: pg is not null,
            InRecovery: pg?.InRecovery ?? true,
            Lsn: pg?.Lsn ?? 0,
            Timeline: pg?.Timeline ?? 0,
            Streaming: streaming,
            FollowingNodeId: _following,
            NotStreamingFor: _notStreamingSince is { } since ? DateTime.UtcNow - since : TimeSpan.Zero,
            RewindFailed: _rewindFailed)
        {
            NotAnsweringFor = _notAnsweringSinceNs == 0 ? TimeSpan.Zero : Monotonic.Between(_notAnsweringSinceNs, Monotonic.NowNs()),
            StartingReadOnly = _awaitingStart,
            FailedStarts = _failedStarts,
            StartFailure = _startFailure,
        };
        var plan = Catalog.FindPlan(record.PlanId);
        _storeSync = SynchronousCommit.StoreSync(record);
        _synchronous = SynchronousCommit.Synchronous(plan?.Synchronous == true, _storeSync, record.NodeCount);
        return new HaInput(_spec.NodeId, _synchronous, local, reachable, leader, _leaderLease != 0, SinceRenewal,
            optime, sync, members, switchover, initialised, candidate, now)
        {
            InitialisedBy = initialisedBy,
            RestoreFrom = record.Restore?.InstanceId,
            Alone = _others.Count == 0,
            Failsafe = failsafe,
            FailsafePromisedTo = _failsafe.PromisedTo(_settings.Ha.Ttl),
        };
    }

    /// <summary>The current pass's steps, timed: a pass slower than a quarter TTL says where its time went.</summary>
    private StepTimes _pass = new();

    /// <summary>How long this pass's asking of the members' WAL positions took (the step before taking the key).</summary>
    private TimeSpan _positionsTook;

    /// <summary>Called (on the thread pool) when the PostgreSQL this agent saw answering ends: a pass should run now.</summary>
    public Action? PostgresExited { get; set; }

    private ProcessExits.Watching? _exitWatch;
    private long _exitWatchFailedNs;

    /// <summary>
    /// Watches the answering PostgreSQL's postmaster, so its end wakes a pass at once (<see cref="ProcessExits"/>): a
    /// leader's crashed PostgreSQL is then restarted or its key given up within milliseconds, not up to a loop-wait
    /// later. Asked of the runtime only when nothing is watched; where watching fails, again 10 s later.
    /// </summary>
    private async Task WatchPostmasterAsync(CancellationToken ct)
    {
        if (PostgresExited is not { } exited || _exitWatch is { Ended: false }) return;
        if (_exitWatchFailedNs != 0 && Monotonic.Between(_exitWatchFailedNs, Monotonic.NowNs()) < TimeSpan.FromSeconds(10)) return;
        _exitWatch = null;
        int? pid;
        // Only a quicker wake-up: a runtime that cannot say (an engine that does not answer) must not fail the pass.
        try { pid = await _runtime.PostmasterPidAsync(_spec.NodeId, ct).ConfigureAwait(false); }
        catch (Exception ex) when (ex is not OperationCanceledException || !ct.IsCancellationRequested) { pid = null; }
        if (pid is null)
        {
            _exitWatchFailedNs = Monotonic.NowNs();
            return;
        }
        _exitWatch = ProcessExits.Shared.Watch(pid.Value, exited);
        _exitWatchFailedNs = _exitWatch is null ? Monotonic.NowNs() : 0;
    }

    /// <summary>This node's WAL position as its PostgreSQL has it now, on the HA loop's pooled session (the health API's <c>/wal-position</c>).</summary>
    public Task<long> LivePositionAsync(CancellationToken ct) =>
        _record is { } record
            ? new PostgresProbe(Address, _spec.Port, record.Superuser).WalPositionAsync(ct)
            : Task.FromException<long>(new InvalidOperationException("no instance record yet"));

    /// <summary>The node's actor stops: its PostgreSQL's end no longer concerns anyone here.</summary>
    public void StopWatchingPostgres()
    {
        PostgresExited = null;
        _exitWatch?.Dispose();
        _exitWatch = null;
    }

    private ReplicationSource Source(LeaderRecord leader, InstanceRecord record) =>
        new(leader.Host, leader.Port, record.Replication ?? throw new InvalidOperationException($"instance {record.Id} has no replication role: it cannot have replicas"));

    private StandbyConfig Standby(LeaderRecord? leader, InstanceRecord record) =>
        new(leader is null ? null : Source(leader, record), PostgresProbe.SlotName(_spec.NodeId), _spec.NodeId);

    private LeaderRecord MyLeaderRecord() => new() { NodeId = _spec.NodeId, Host = Address, Port = _spec.Port, Since = DateTimeOffset.UtcNow };

    private async Task ExecuteAsync(HaAction action, HaInput input, InstanceRecord record, NodeLaunchSpec launch, PostgresProbe probe, CancellationToken etcd, CancellationToken ct)
    {
        switch (action)
        {
            case HaAction.Bootstrap:
                // Claimed once; the claimant finishes (or resumes after a crash) what it started.
                if (input.InitialisedBy != _spec.NodeId
                    && !await _store.CreateIfAbsentAsync(K.Initialize(_spec.InstanceId), _spec.NodeId, etcd).ConfigureAwait(false)) return;
                if (record.Restore is { } source)
                {
                    if (_backups is null) throw new InvalidOperationException("backups are disabled on this cell (dingo.backups.enabled): it cannot restore");
                    var prepared = await _backups.PrepareRestoreAsync(source, _spec.NodeId, ct).ConfigureAwait(false);
                    await _runtime.RestoreAsync(launch, prepared.Input, ct).ConfigureAwait(false);
                    _backups.CleanRestore(_spec.NodeId);
                    _restored = true;
                    _clonedFromOther = source.InstanceId != _spec.InstanceId;
                    _logger.LogInformation("node {Node}: restored {Instance} from base backup {Label} of {Source}{Target}", _spec.NodeId, _spec.InstanceId,
                        prepared.Backup.Label, source.InstanceId, source.PointInTime is { } t ? $" up to {t:O}" : " (latest)");
                    _events?.Record(_spec.InstanceId, _spec.NodeId, Dingo.Model.EventKind.Restore,
                        $"restored from base backup {prepared.Backup.Label} of {source.InstanceId}{(source.PointInTime is { } at ? $" up to {at:O}" : " (latest)")}");
                }
                else
                {
                    await _runtime.CreateAsync(launch, ct).ConfigureAwait(false);
                }
                // The first primary starts writable only once it holds the leader key. (initdb or a restore took a while:
                // the pass's etcd budget is spent, so taking the key gets one of its own.)
                // An etcd too slow to answer in that budget does not undo the initdb: the node starts read-only and a
                // later pass takes the key (a data directory without the key is exactly a replica waiting for a leader).
                bool primary;
                using (var take = CancellationTokenSource.CreateLinkedTokenSource(ct))
                {
                    take.CancelAfter(_settings.Ha.Ttl / 2);
                    try { primary = await TryTakeKeyAsync(take.Token).ConfigureAwait(false); }
                    catch (Exception ex) when (EtcdUnreachable(ex, ct))
                    {
                        primary = false;
                        _logger.LogWarning("node {Node}: the data is initialised but etcd did not answer in time to take the leader key ({Error}); starting read-only, a later pass takes it",
                            _spec.NodeId, ex.Message);
                    }
                }
                await _runtime.StartAsync(launch, primary ? null : Standby(null, record), ct).ConfigureAwait(false);
                _following = null;
                // Nobody else has data yet, so nobody could be writable beside it before this arming. Starting may have
                // taken a while on a busy host: renew first, so the deadline counts from now.
                if (primary && await RenewAsync(ct).ConfigureAwait(false)) await ArmAsync(ct).ConfigureAwait(false);
                // A new cluster is bindable once its primary leads: catch PostgreSQL's first moment up in this pass, not a
                // loop-wait later. One attempt may take seconds on a loaded machine (a 2 s connect timeout, then a retry):
                // the lease is renewed beside the wait, or the guard stopped the primary meanwhile (fresh115). Not only
                // once it answers, as beside a leader's other slow steps: it does not answer yet, and the wait is short.
                if (primary) await WhileRenewingAsync(null, "waiting for PostgreSQL to accept connections", step => WaitUntilAnsweringAsync(probe, step), ct).ConfigureAwait(false);
                else await WaitUntilAnsweringAsync(probe, ct).ConfigureAwait(false);
                // Starting PostgreSQL may take longer than half the TTL on a busy host: renew at once, or the next pass
                // would find the fencing deadline passed and demote a primary that just came up.
                if (primary && await RenewAsync(ct).ConfigureAwait(false)) await ArmAsync(ct).ConfigureAwait(false);
                break;

            case HaAction.CloneFromLeader clone:
                await _runtime.CloneAsync(launch, Source(clone.From, record), ct).ConfigureAwait(false);
                await StartStandbyAsync(launch, clone.From, record, ct).ConfigureAwait(false);
                await WaitUntilAnsweringAsync(probe, ct).ConfigureAwait(false);
                break;

            case HaAction.Start start:
                await StartStandbyAsync(launch, start.Leader, record, ct, leaderAfterCrash: start.InPlace).ConfigureAwait(false);
                break;

            case HaAction.ReleaseStaleKey:
                // A key is given up only once this node's PostgreSQL no longer accepts writes.
                var readOnly = input.Local.Running && input.Local.Answering && input.Local.InRecovery;
                if (input.Local.Running && !readOnly)
                    await _runtime.StopAsync(_spec.NodeId, ct).ConfigureAwait(false);
                Disarm();
                await ReleaseAfterStopAsync(readOnly ? input : Stopped(input), action, ct).ConfigureAwait(false);
                break;

            case HaAction.TakeLeadership:
            {
                var steps = new StepTimes(("positions", _positionsTook));
                if (!await TryTakeKeyAsync(etcd).ConfigureAwait(false)) return;
                steps.Mark("key");
                await PromoteAndLeadAsync(steps, input.Local.InRecovery, record, probe, input, etcd, ct, tookKey: true).ConfigureAwait(false);
                break;
            }

            case HaAction.Promote:
                await PromoteAndLeadAsync(new StepTimes(), promote: true, record, probe, input, etcd, ct).ConfigureAwait(false);
                break;

            case HaAction.Lead:
                // A switchover request from another leader is over: this node holds the key (it took it, the request's
                // own clean-up failed in that pass), or a failover overtook it. Left in place, it would name a node
                // for the next free key long after (PlannedOperationsTests, fresh110: the take's pass ran out of
                // budget after the promotion and the request stayed for good).
                if (input.Switchover is { } done && done.From != _spec.NodeId)
                    await _store.DeleteAsync(K.Switchover(_spec.InstanceId), etcd).ConfigureAwait(false);
                await LeadAsync(record, probe, input, promoted: false, etcd, ct).ConfigureAwait(false);
                break;

            case HaAction.Demote demote:
                // Writes stop first; the key is given up only once PostgreSQL no longer accepts them (until then the
                // guard stays armed, and stops it at the deadline if this stop hangs).
                if (demote.AtOnce) await StopAtOnceAsync().ConfigureAwait(false);
                await _runtime.StopAsync(_spec.NodeId, ct).ConfigureAwait(false);
                Disarm();
                await ReleaseAfterStopAsync(Stopped(input), action, ct).ConfigureAwait(false);
                if (demote.Leader is not null) await TryRewindAsync(launch, demote.Leader, record, ct).ConfigureAwait(false);
                await StartStandbyAsync(launch, demote.Leader, record, ct).ConfigureAwait(false);
                break;

            case HaAction.FollowLeader follow:
                await _runtime.ConfigureStandbyAsync(launch, Standby(follow.Leader, record), ct).ConfigureAwait(false);
                await probe.ReloadAsync(ct).ConfigureAwait(false);
                _following = follow.Leader.NodeId;
                _notStreamingSince = DateTime.UtcNow;
                break;

            case HaAction.Rewind rewind:
                await TryRewindAsync(launch, rewind.Leader, record, ct).ConfigureAwait(false);
                await StartStandbyAsync(launch, rewind.Leader, record, ct).ConfigureAwait(false);
                break;

            case HaAction.Reclone reclone:
                _logger.LogWarning("node {Node}: {Decision}", _spec.NodeId, reclone.Sentence);
                await _runtime.CloneAsync(launch, Source(reclone.Leader, record), ct).ConfigureAwait(false);
                _rewindFailed = false;
                (_failedStarts, _startFailure) = (0, null);
                await StartStandbyAsync(launch, reclone.Leader, record, ct).ConfigureAwait(false);
                break;

            case HaAction.HandOver handOver:
                // The replica chosen goes into the request first: once the key is free, the others (this node included)
                // wait for it. Should this write fail, nothing has stopped yet and the next pass tries again.
                if (input.Switchover is { } request && request.HandedTo != handOver.Candidate)
                    await _store.PutAsync(K.Switchover(_spec.InstanceId), request with { HandedTo = handOver.Candidate }, etcd).ConfigureAwait(false);
                // A clean stop sends every WAL record to the connected standbys before the key is released.
                await _runtime.StopAsync(_spec.NodeId, ct).ConfigureAwait(false);
                Disarm();
                await ReleaseAfterStopAsync(Stopped(input), action, ct).ConfigureAwait(false);
                await StartStandbyAsync(launch, null, record, ct).ConfigureAwait(false);
                break;
        }
    }

    /// <summary>
    /// Right before pg_promote: every history file the archive holds above this node's timeline goes into its pg_wal, so
    /// PostgreSQL picks a timeline no other branch took (docs/ha.md). Bounded by a small budget; a failure never blocks the
    /// promotion (availability first): it is logged as an error and the promotion goes on.
    /// </summary>
    private async Task AddTimelineHistoriesAsync(PostgresProbe probe, CancellationToken ct)
    {
        if (_histories is null) return;
        try
        {
            // The node's own answer comes on the pass's warm connection, bounded by the pass; the budget is the store's
            // alone (a fresh connection with a TLS handshake once spent all of it on a loaded machine: fresh8).
            var node = await probe.ReadTimelinesAsync(ct).ConfigureAwait(false);
            var budget = TimeSpan.FromTicks(Math.Min(TimeSpan.FromSeconds(1).Ticks, (_settings.Ha.Ttl / 8).Ticks));
            var files = await _histories.BeforePromotionAsync(node, budget, ct).ConfigureAwait(false);
            if (files.Count == 0) return;
            var written = await _runtime.AddTimelineHistoriesAsync(_spec.NodeId, files, ct).ConfigureAwait(false);
            if (written.Count > 0)
                _logger.LogInformation("node {Node}: added the archive's timeline history file(s) {Files} to pg_wal: the promotion picks a timeline above them", _spec.NodeId, string.Join(", ", written));
        }
        catch (Exception ex) when (ex is not OperationCanceledException || !ct.IsCancellationRequested)
        {
            _logger.LogError("node {Node}: could not add the archive's timeline history files to pg_wal before promoting ({Error}); promoting anyway (availability first): the new timeline may repeat one the archive holds",
                _spec.NodeId, ex.Message);
        }
    }

    /// <summary>Polls PostgreSQL just started until it answers, for about a quarter of the TTL (an attempt may take longer).</summary>
    private async Task WaitUntilAnsweringAsync(PostgresProbe probe, CancellationToken ct)
    {
        var until = DateTime.UtcNow + _settings.Ha.Ttl / 4;
        while (DateTime.UtcNow < until)
        {
            try
            {
                await probe.ObserveAsync(ct).ConfigureAwait(false);
                return;
            }
            catch (Exception ex) when (ex is Npgsql.NpgsqlException or TimeoutException or System.Net.Sockets.SocketException)
            {
                await Task.Delay(50, ct).ConfigureAwait(false);
            }
        }
    }

    /// <summary>
    /// A new leader's steps once it holds the key: the archive's newer timeline histories, the armed guard, the promotion
    /// (a node still in recovery), then the leader's duties; each timed, for the line telling where a failover's time went.
    /// </summary>
    /// <param name="tookKey">it took the free key in this pass (a switchover that handed it over is then done)</param>
    private async Task PromoteAndLeadAsync(StepTimes steps, bool promote, InstanceRecord record, PostgresProbe probe, HaInput input, CancellationToken etcd, CancellationToken ct, bool tookKey = false)
    {
        if (promote) await AddTimelineHistoriesAsync(probe, etcd).ConfigureAwait(false);
        steps.Mark("histories");
        await PrepareToPromoteAsync(etcd, ct).ConfigureAwait(false);
        steps.Mark("guard");
        if (promote) await probe.PromoteAsync(etcd).WaitAsync(etcd).ConfigureAwait(false);
        steps.Mark("pg_promote");
        _following = null;
        // The switchover is done once this node holds the key: cleared before the rest of leading, which may outlast the
        // pass's budget on a busy machine (the Lead case clears what is left all the same).
        if (tookKey && input.Switchover is not null) await _store.DeleteAsync(K.Switchover(_spec.InstanceId), etcd).ConfigureAwait(false);
        await LeadAsync(record, probe, input, promoted: promote, etcd, ct).ConfigureAwait(false);
        steps.Mark("leading");
        _logger.LogInformation("node {Node}: leading {Instance} after {Steps}", _spec.NodeId, _spec.InstanceId, steps);
    }

    private async Task StartStandbyAsync(NodeLaunchSpec launch, LeaderRecord? leader, InstanceRecord record, CancellationToken ct, bool leaderAfterCrash = false)
    {
        try
        {
            await _runtime.StartAsync(launch, Standby(leader, record) with { LeaderAfterCrash = leaderAfterCrash }, ct).ConfigureAwait(false);
            _awaitingStart = true;
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            StartFailed(ex.Message);
            throw;
        }
        _following = leader?.NodeId;
        _notStreamingSince = DateTime.UtcNow;
        _prepared = false;
        _lastOptime = null;
    }

    private void StartFailed(string why)
    {
        _failedStarts++;
        _startFailure = why;
        _logger.LogWarning("node {Node}: start #{Count} in a row failed: {Why}", _spec.NodeId, _failedStarts, why);
    }

    private async Task TryRewindAsync(NodeLaunchSpec launch, LeaderRecord leader, InstanceRecord record, CancellationToken ct)
    {
        try
        {
            await _runtime.RewindAsync(launch, new ReplicationSource(leader.Host, leader.Port, record.Superuser), ct).ConfigureAwait(false);
            _rewindFailed = false;
        }
        catch (InvalidOperationException ex)
        {
            _rewindFailed = true;
            _logger.LogWarning("node {Node}: pg_rewind from {Leader} failed; it will be re-cloned: {Error}", _spec.NodeId, leader.NodeId, ex.Message);
        }
    }

    /// <summary>Creates the leader key under a fresh lease of this node's; true when this node now leads.</summary>
    private async Task<bool> TryTakeKeyAsync(CancellationToken ct)
    {
        var sent = Monotonic.NowNs();
        var alone = _others.Count == 0;
        var lease = await _store.GrantLeaseAsync(PassCadence.LeaseTtl(alone, _settings.Ha), ct).ConfigureAwait(false);
        if (await _store.CreateIfAbsentAsync(K.Leader(_spec.InstanceId), MyLeaderRecord(), ct, lease).ConfigureAwait(false))
        {
            (_leaderLease, _aloneLease) = (lease, alone);
            _renewedNs = sent;
            _logger.LogInformation("node {Node}: took the leader key of {Instance}", _spec.NodeId, _spec.InstanceId);
            return true;
        }
        await _store.RevokeLeaseAsync(lease, ct).ConfigureAwait(false);
        return false;
    }

    /// <summary>
    /// Puts the leader key, as read, under a new lease of the TTL the node's company calls for (<see cref="PassCadence.LeaseTtl"/>),
    /// only if it is still at the revision read; then revokes the old lease (it would lapse by itself). A failure leaves the
    /// key where it was, under the lease this node keeps renewing: the next pass tries again.
    /// </summary>
    private async Task MoveKeyToLeaseAsync(LeaderRecord leader, long revision, CancellationToken etcd)
    {
        var alone = _others.Count == 0;
        var sent = Monotonic.NowNs();
        long lease = 0;
        try
        {
            lease = await _store.GrantLeaseAsync(PassCadence.LeaseTtl(alone, _settings.Ha), etcd).ConfigureAwait(false);
            if (!await _store.TransactAsync(new Txn().At(K.Leader(_spec.InstanceId), revision).Put(K.Leader(_spec.InstanceId), leader, lease), etcd).ConfigureAwait(false))
            {
                await _store.RevokeLeaseAsync(lease, etcd).ConfigureAwait(false);
                return;
            }
            var old = _leaderLease;
            (_leaderLease, _aloneLease, _renewedNs) = (lease, alone, sent);
            lease = 0;
            if (Guarded && UntilFencing() > TimeSpan.Zero) _fence?.CancelAfter(UntilFencing());
            _logger.LogInformation("node {Node}: the leader key of {Instance} is now under a lease of {Ttl:0}s ({Why})", _spec.NodeId, _spec.InstanceId,
                PassCadence.LeaseTtl(alone, _settings.Ha).TotalSeconds, alone ? "no other member could take over" : "members could take over");
            // Not waited for: the old lease holds nothing now, and lapses by itself if etcd does not take this.
            RevokeInBackground(old);
        }
        catch (Exception ex) when (EtcdUnreachable(ex, CancellationToken.None))
        {
            _logger.LogWarning("node {Node}: could not move the leader key to a new lease: {Error}", _spec.NodeId, ex.Message);
            if (lease != 0) RevokeInBackground(lease);
        }
    }

    private void RevokeInBackground(long lease) =>
        _ = _store.RevokeLeaseAsync(lease, CancellationToken.None).ContinueWith(
            t => _logger.LogDebug("node {Node}: revoking lease {Lease}: {Error}", _spec.NodeId, lease, t.Exception?.GetBaseException().Message),
            CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted, TaskScheduler.Default);

    /// <summary>Deletes the leader key if it still names this node, and drops this node's lease.</summary>
    private async Task ReleaseKeyAsync(CancellationToken ct)
    {
        var current = await _store.GetAsync<LeaderRecord>(K.Leader(_spec.InstanceId), ct).ConfigureAwait(false);
        if (current is not null && current.Value.NodeId == _spec.NodeId)
        {
            await _store.TransactAsync(new Txn().At(current.Key, current.ModRevision).Delete(current.Key), ct).ConfigureAwait(false);
            _logger.LogWarning("node {Node}: released the leader key of {Instance}", _spec.NodeId, _spec.InstanceId);
        }
        if (_leaderLease != 0) await _store.RevokeLeaseAsync(_leaderLease, ct).ConfigureAwait(false);
        DropLease();
    }

    /// <summary>
    /// PostgreSQL no longer accepts writes: giving the key up now is safe and lets a replica take over at once. The stop
    /// before it may have outlasted the pass's etcd budget (a clean stop takes seconds on a loaded machine), so the
    /// release gets a short budget of its own. It ran on the spent one: a switchover's hand-over failed after its clean
    /// stop, the key went only with the next pass (fresh120, PlannedOperationsTests). An etcd that does not answer: the
    /// lease lapses by itself, and this node never picks it up again.
    /// </summary>
    /// <summary>The pass's input as it stands once this node's PostgreSQL was stopped (what its report says next).</summary>
    private static HaInput Stopped(HaInput input) =>
        input with { Local = input.Local with { Running = false, Answering = false, Streaming = false } };

    /// <param name="now">this node as it is now, reported before the key goes</param>
    private async Task ReleaseAfterStopAsync(HaInput now, HaAction action, CancellationToken ct)
    {
        // The others decide from the members' reports the moment the key is gone (its deletion wakes them). A report
        // still saying this node accepts writes made its streaming replica wait a whole loop for it with the key free
        // (bench/Chaos kill-pg: a 1.23 s stall, 0.5 s of it that wait). So the report goes first, on a small budget of
        // its own; should it fail, the key goes all the same.
        using (var report = CancellationTokenSource.CreateLinkedTokenSource(ct))
        {
            report.CancelAfter(_settings.Ha.Ttl / 8);
            try { await ReportAsync(now, action, null, report.Token).ConfigureAwait(false); }
            catch (Exception ex) when (EtcdUnreachable(ex, ct)) { }
        }
        using var release = CancellationTokenSource.CreateLinkedTokenSource(ct);
        release.CancelAfter(_settings.Ha.Ttl / 4);
        try
        {
            await ReleaseKeyAsync(release.Token).ConfigureAwait(false);
        }
        catch (Exception ex) when (EtcdUnreachable(ex, ct))
        {
            _abandonedLease = _leaderLease;
            DropLease();
        }
    }

    private void DropLease()
    {
        _leaderLease = 0;
        _aloneLease = false;
        _renewedNs = 0;
        _failsafeNs = 0;
    }

    /// <summary>
    /// Failsafe (Patroni 3's idea): etcd cannot be reached, but if every other member confirms on its health API that it
    /// streams from this leader — and so promises not to take the key for a TTL — no one can be promoted, and this leader
    /// may go on serving: fencing then counts from when the confirmations were asked for. For at most
    /// dingo.ha.failsafe-for after the last renewal; a member that cannot confirm means fencing as usual.
    /// </summary>
    private async Task<bool> ConfirmFailsafeAsync(CancellationToken ct)
    {
        var limit = _settings.Ha.FailsafeFor;
        if (limit <= TimeSpan.Zero || _renewedNs == 0 || Monotonic.Between(_renewedNs, Monotonic.NowNs()) > limit) return false;
        var peers = _peers;
        if (peers.Count == 0 || peers.Count != _others.Count || peers.Any(p => p.Host is null || p.ApiPort <= 0)) return false;
        var sent = Monotonic.NowNs();
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        cts.CancelAfter(_settings.Ha.Ttl / 4);
        var refusals = await _failsafe.AskAllAsync(_record, peers.Select(p => (p.NodeId, p.Host!, p.ApiPort)).ToList(), cts.Token).ConfigureAwait(false);
        if (refusals.Count > 0)
        {
            var said = string.Join("; ", refusals);
            if (said != _failsafeRefusal) _logger.LogWarning("node {Node}: etcd unreachable and failsafe not confirmed: {Refusals}", _spec.NodeId, said);
            (_failsafeRefusal, _failsafeLogged) = (said, true);
            return false;
        }
        _failsafeRefusal = null;
        _failsafeNs = sent;
        if (UntilFencing() > TimeSpan.Zero) _fence?.CancelAfter(UntilFencing());
        if (!_failsafeLogged) _logger.LogWarning("node {Node}: etcd unreachable; every other member confirmed it streams from me: serving on (failsafe)", _spec.NodeId);
        _failsafeLogged = true;
        return true;
    }

    /// <summary>A leader's duties each pass: prepare roles once, publish its WAL position, keep slots and sync standbys right.</summary>
    /// <param name="promoted">promoted in this pass: the WAL position observed before is stale</param>
    /// <param name="ct">bounded by the fencing deadline: every step of a leader's pass is</param>
    /// <param name="stopping">for the first preparation of roles (a restored clone's takes long on a busy machine: cut at the
    /// fencing deadline every pass, it never finished); progress renews after it, and a pass stuck in it is fenced by the guard</param>
    private async Task LeadAsync(InstanceRecord record, PostgresProbe probe, HaInput input, bool promoted, CancellationToken ct, CancellationToken stopping)
    {
        var etcd = ct;
        await RenewOnProgressAsync(ct).ConfigureAwait(false);
        // The members' replication slots first: a replica cannot stream from a new primary until its slot exists, and
        // a cluster-ha primary's commits wait for one that streams. Made after the preparation below, they came
        // hundreds of ms after the promotion, and the followers' walreceivers, refused ('replication slot … does not
        // exist'), tried again only after wal_retrieve_retry_interval (bench/Chaos kill-pg: a 1.22 s stall).
        var others = _others;
        var slots = others.Select(PostgresProbe.SlotName).ToHashSet();
        if (_backups is not null) slots.Add(Dingo.Backups.WalArchiverOptions.DefaultSlotName); // the archiver's own slot
        // This pass's probe saw the slots and the synchronous setting: asked again only after a promotion, or when the
        // slots must change (two round trips less on every steady leader pass).
        var seen = promoted ? null : _lastPg;
        if (seen?.Slots is not { } existing || !PostgresProbe.SlotsAsWanted(existing, slots))
            await probe.EnsureSlotsAsync(slots, ct).WaitAsync(ct).ConfigureAwait(false);
        if (!_prepared)
        {
            await WhileRenewingAsync(probe, "preparing roles and the database", async step =>
            {
                await DatabaseAdmin.PrepareAsync(Address, _spec.Port, record.Superuser, record.Database, step, record.Replication).ConfigureAwait(false);
                if (_clonedFromOther)
                {
                    await DatabaseAdmin.DisableInheritedLoginsAsync(Address, _spec.Port, record.Superuser, step).ConfigureAwait(false);
                    _clonedFromOther = false;
                }
            }, stopping).ConfigureAwait(false);
            _prepared = true;
            // The preparation may have outlasted the pass's fencing budget: the renewal after it gets one of its own.
            using var renewal = CancellationTokenSource.CreateLinkedTokenSource(stopping);
            renewal.CancelAfter(_settings.Ha.Ttl / 4);
            await RenewOnProgressAsync(renewal.Token).ConfigureAwait(false);
        }
        // This pass already observed PostgreSQL and read the members; only a promotion just now moved the WAL position.
        var lsn = promoted ? (await probe.ObserveAsync(ct).WaitAsync(ct).ConfigureAwait(false)).Lsn : input.Local.Lsn;
        // Only a moved position is news (an idle primary's stays put).
        if (lsn != _lastOptime)
        {
            await _store.PutAsync(K.Optime(_spec.InstanceId), lsn, etcd).ConfigureAwait(false);
            _lastOptime = lsn;
        }
        var plan = Catalog.FindPlan(record.PlanId);
        var inPg = seen?.SynchronousStandbyNames ?? await probe.SynchronousSettingAsync(ct).WaitAsync(ct).ConfigureAwait(false);
        var storeSync = _storeSync;
        var streaming = plan?.Synchronous == true || storeSync
            ? (await probe.StreamingStandbysAsync(ct).WaitAsync(ct).ConfigureAwait(false)).Where(others.Contains).ToList()
            : [];
        var wanted = SynchronousCommit.Decide(plan?.Synchronous == true, storeSync, streaming, SynchronousCommit.NamedStandbys(inPg));
        // The set in etcd must always contain every standby PostgreSQL may wait for: grow etcd first, shrink it last.
        var target = wanted.Standbys.Order(StringComparer.Ordinal).ToList();
        var recorded = input.Sync?.Leader == _spec.NodeId ? input.Sync.Standbys : [];
        if (!target.All(recorded.Contains))
        {
            await _store.PutAsync(K.Sync(_spec.InstanceId), new SyncState(recorded.Union(target).OrderBy(n => n, StringComparer.Ordinal).ToList(), _spec.NodeId), etcd).ConfigureAwait(false);
            recorded = recorded.Union(target).ToList();
        }
        if (inPg != wanted.Setting)
        {
            await probe.SetSynchronousSettingAsync(wanted.Setting, ct).WaitAsync(ct).ConfigureAwait(false);
            _logger.LogInformation("{Node}: synchronous_standby_names = '{Setting}': {Why}", _spec.NodeId, wanted.Setting, wanted.Sentence);
        }
        if (!_synchronous) return; // an asynchronous cluster's failover reads no sync key
        if (!recorded.OrderBy(n => n, StringComparer.Ordinal).SequenceEqual(target) || input.Sync?.Leader != _spec.NodeId)
            await _store.PutAsync(K.Sync(_spec.InstanceId), new SyncState(target, _spec.NodeId), etcd).ConfigureAwait(false);
    }

    private async Task ReportAsync(HaInput input, HaAction action, string? failure, CancellationToken ct)
    {
        var status = NodeReport.Status(_spec, _settings.Cell.Id, Address, input, action, failure, _restarts, _failingSince, _lastPg?.Connections, DateTimeOffset.UtcNow);
        var lease = await _cellLease.EnsureAsync(ct).ConfigureAwait(false);
        _unchanged = _report.Unchanged(status);
        await _report.WriteAsync(status, lease, _quiet, ct).ConfigureAwait(false);
    }

    private long? _lastOptime;
    private bool _unchanged, _quiet;

    /// <summary>When the next pass should run (<see cref="PassCadence"/>): loop-wait, idle-loop-wait when quiet, sooner while recovering in place.</summary>
    public TimeSpan NextPassAfter { get; private set; }

    /// <summary>What the node's health API answers from: the last pass's observation.</summary>
    public NodeHealth Health()
    {
        var input = _lastInput;
        if (input is null)
        {
            var none = NodeCondition.Of(null, leading: false, passFailed: false);
            return new NodeHealth(_spec.NodeId, _spec.InstanceId, none.Postgres, none.ServerRole, false, null, false, false, null, null, null, _lastSentence);
        }
        var local = input.Local;
        var isLeader = input.Leader?.NodeId == _spec.NodeId && _leaderLease != 0;
        // The health API answers as Patroni's: PostgreSQL's own state and role; the key is IsLeader.
        var condition = NodeCondition.Of(local, isLeader, passFailed: false);
        var (state, role) = (condition.Postgres, condition.ServerRole);
        long? lag = local.InRecovery && input.LeaderOptime is { } opt ? Math.Max(0, opt - local.Lsn) : local.InRecovery ? null : 0;
        var sync = input.Sync?.Standbys.Contains(_spec.NodeId) == true;
        return new NodeHealth(_spec.NodeId, _spec.InstanceId, state, role, isLeader, lag, local.Streaming, sync, local.Lsn, local.Timeline, input.Leader?.NodeId, _lastSentence);
    }

    /// <summary>On a clean stop of the cell: give up the leader key at once so a replica takes over without waiting for the TTL.</summary>
    public async Task ReleaseOnShutdownAsync(CancellationToken ct)
    {
        await StopBackupsAsync().ConfigureAwait(false);
        if (_leaderLease != 0)
        {
            // Writes stop before the key goes, or a replica could promote beside a primary still accepting them.
            await _runtime.StopAsync(_spec.NodeId, ct).ConfigureAwait(false);
            Disarm();
        }
        try { await ReleaseKeyAsync(ct).ConfigureAwait(false); }
        catch (RpcException) { }
    }
}

/// <summary>How long each step of a promotion took, for the log line that tells an operator where a failover's time went.</summary>
internal sealed class StepTimes
{
    private readonly long _startNs = Monotonic.NowNs();
    private long _lastNs;
    private readonly List<(string Step, TimeSpan Took)> _steps = [];

    /// <param name="before">steps taken before this was started, shown first but not counted in the total</param>
    public StepTimes(params (string Step, TimeSpan Took)[] before)
    {
        _lastNs = _startNs;
        _steps.AddRange(before);
    }

    public void Mark(string step)
    {
        var now = Monotonic.NowNs();
        _steps.Add((step, Monotonic.Between(_lastNs, now)));
        _lastNs = now;
    }

    public TimeSpan Total => Monotonic.Between(_startNs, _lastNs);

    public override string ToString() =>
        $"{Total.TotalMilliseconds:0} ms ("
        + string.Join(", ", _steps.Select(s => $"{s.Step} {s.Took.TotalMilliseconds:0}")) + ")";
}
