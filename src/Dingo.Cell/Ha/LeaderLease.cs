using Microsoft.Extensions.Logging;

namespace Dingo.Ha;

/// <summary>
/// The lease and fencing piece of a node's HA pass: the leader lease this node holds, the pass's fencing deadline (half a
/// TTL after the last renewal, when a leader that has not renewed must demote itself) and the fencing guard, armed to stop
/// this node's PostgreSQL a quarter TTL after that should the pass not get there first. A renewal counts from the moment it
/// was sent. Failsafe (every other member vouching for this leader while etcd is away) moves the deadline as a renewal does.
/// </summary>
internal sealed class LeaderLease(AgentState state, FenceGuardDirectory? guard, FailsafeMember failsafe)
{
    private long _lease;
    /// <summary><see cref="_lease"/> was granted for a leader nobody could take over from (<see cref="HaSettings.AloneTtl"/>).</summary>
    private bool _alone;
    /// <summary>When the last successful renewal (or grant) of the leader lease was sent (monotonic ns; 0: never).</summary>
    private long _renewedNs;
    /// <summary>When (monotonic ns) every other member last confirmed this leader while etcd was unreachable (0: never).</summary>
    private long _failsafeNs;
    private bool _failsafeLogged;
    private string? _failsafeRefusal;
    /// <summary>The postmaster the guard is armed with (resolved once per PostgreSQL start).</summary>
    private ProcessIdentity? _guarded;
    /// <summary>What the guard was last told of <see cref="AgentState.Synchronous"/> (null: nothing yet).</summary>
    private bool? _markedSynchronous;

    private string NodeId => state.Spec.NodeId;
    private Dingo.Config.HaSettings Ha => state.Ha;

    /// <summary>The leader lease this node holds (0: none).</summary>
    public long Id => _lease;
    public bool Held => _lease != 0;
    /// <summary>The lease held was granted for a leader nobody could take over from (<see cref="HaSettings.AloneTtl"/>).</summary>
    public bool Alone => _alone;
    /// <summary>The TTL of the lease held (the TTL when none): fencing counts half of it, the guard three quarters.</summary>
    public TimeSpan Ttl => _alone ? Ha.AloneTtl : Ha.Ttl;
    /// <summary>A lease this node gave up (fenced) without reaching etcd to revoke it: it is never adopted again.</summary>
    public long Abandoned { get; private set; }
    /// <summary>The running pass's fencing deadline (null between passes): cancelled when a leader must fence itself.</summary>
    public CancellationTokenSource? Fence { get; set; }

    /// <summary>This node leads with other members: its PostgreSQL is guarded, and fenced at the deadline.</summary>
    public bool Guarded => _lease != 0 && state.Others.Count > 0;

    /// <summary>The time left before a leader that has not renewed must demote itself.</summary>
    public TimeSpan UntilFencing()
    {
        if (_renewedNs == 0) return TimeSpan.Zero;
        var left = Ttl / 2 - Monotonic.Between(FencingBasisNs, Monotonic.NowNs());
        return left > TimeSpan.Zero ? left : TimeSpan.Zero;
    }

    /// <summary>What fencing counts from: the last renewal, or the last failsafe confirmation by every member if later.</summary>
    private long FencingBasisNs => Math.Max(_renewedNs, _failsafeNs);

    public TimeSpan SinceRenewal => _renewedNs == 0 ? TimeSpan.MaxValue : Monotonic.Between(FencingBasisNs, Monotonic.NowNs());

    /// <summary>Since the last renewal or confirmation, the deadline moved: the pass's fencing deadline moves with it.</summary>
    private void MoveFence()
    {
        if (UntilFencing() > TimeSpan.Zero) Fence?.CancelAfter(UntilFencing());
    }

    /// <summary>
    /// After a late renewal: when the pass's etcd token (<paramref name="spent"/>) had already reached the old fencing
    /// deadline, a source cancelled at the deadline that renewal moved, for the rest of the pass; null when the token
    /// still holds (the renewal moved it, <see cref="MoveFence"/>) or nothing is left before fencing.
    /// </summary>
    public CancellationTokenSource? FenceAfterLateRenewal(CancellationToken spent, CancellationToken ct)
    {
        if (!spent.IsCancellationRequested || UntilFencing() <= TimeSpan.Zero) return null;
        var fence = CancellationTokenSource.CreateLinkedTokenSource(ct);
        fence.CancelAfter(UntilFencing());
        return fence;
    }

    /// <summary>A fencing the guard carried out since the last pass (taken once), or null.</summary>
    public string? TakeFenced() => guard?.TakeFenced(NodeId);

    /// <summary>Renews the leader lease once; the renewal counts from the moment the request was sent.</summary>
    public async Task<bool> RenewAsync(CancellationToken etcd)
    {
        var sent = Monotonic.NowNs();
        if (!await state.Store.KeepAliveOnceAsync(_lease, etcd).ConfigureAwait(false)) return false;
        _renewedNs = sent;
        MoveFence();
        return true;
    }

    /// <summary>
    /// Moves the guard's deadline to the last renewal + ¾ TTL for this node's running postmaster. A node with no other
    /// member is never fenced, so it is disarmed. False when PostgreSQL does not run (nothing to guard).
    /// </summary>
    public async Task<bool> ArmAsync(CancellationToken ct)
    {
        if (guard is null) return true;
        if (_lease == 0) return false;
        if (state.Others.Count == 0)
        {
            Disarm();
            return true;
        }
        if (_guarded is not { Alive: true })
            _guarded = await state.Runtime.PostmasterPidAsync(NodeId, ct).ConfigureAwait(false) is { } pid ? ProcessIdentity.Of(pid) : null;
        if (_guarded is not { } postmaster) return false;
        // Written before the arming, and again only when it changes (a plan update): the guard reads it for a dead leader.
        if (_markedSynchronous != state.Synchronous)
        {
            guard.MarkSynchronous(NodeId, state.Synchronous);
            _markedSynchronous = state.Synchronous;
        }
        ArmAt(guard, postmaster, FencingBasisNs, Ttl);
        return true;
    }

    /// <summary>Arms the guard for <paramref name="postmaster"/> at ¾ of <paramref name="ttl"/> after <paramref name="basisNs"/>, naming the lease held.</summary>
    private void ArmAt(FenceGuardDirectory armed, ProcessIdentity postmaster, long basisNs, TimeSpan ttl) =>
        armed.Arm(NodeId, new GuardArm(Monotonic.Add(basisNs, FenceGuard.DeadlineAfterRenewal(ttl)), postmaster, state.Spec.InstanceId, _lease));

    /// <summary>
    /// One renewal on a budget of its own (an eighth of the TTL) for a leader whose pass ran past its fencing deadline
    /// while its PostgreSQL and etcd both answered (<see cref="Failover.LateForRenewalOnly"/>); the guard is armed on it.
    /// False: etcd did not renew in time, or the lease is gone.
    /// </summary>
    public async Task<bool> RenewLateAsync(CancellationToken ct)
    {
        using var budget = CancellationTokenSource.CreateLinkedTokenSource(ct);
        budget.CancelAfter(Ha.Ttl / 8);
        try
        {
            if (!await RenewAsync(budget.Token).ConfigureAwait(false)) return false;
        }
        catch (Exception ex) when (AgentState.EtcdUnreachable(ex, ct))
        {
            return false;
        }
        await ArmAsync(ct).ConfigureAwait(false);
        return true;
    }

    /// <summary>
    /// A leader's long pass (a promotion, the first preparation of roles, a slow machine) renews at the points where it
    /// shows progress, so the guard's deadline counts from the last step done, not from the start of the pass. A pass
    /// stuck in one step never gets here: the fencing deadline cuts it, and the guard stops PostgreSQL after it.
    /// </summary>
    public async Task RenewOnProgressAsync(CancellationToken etcd)
    {
        if (_lease == 0 || SinceRenewal < Ha.LoopWait) return;
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
    public async Task WhileRenewingAsync(PostgresProbe? probe, string what, Func<CancellationToken, Task> step, CancellationToken stopping)
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

    /// <summary>
    /// The longest a leader's step may renew beside it (<see cref="WhileRenewingAsync"/>): four TTLs, and at least a minute.
    /// At 16 s a saturated machine's first preparation (its CREATE DATABASE above all) was cut, rolled back and begun again
    /// every pass, until the provision failed (bench/Provision's Docker burst); the renewals beside it hold only while
    /// PostgreSQL answers, so a longer step fences as a short one does.
    /// </summary>
    private TimeSpan StepLimit => Ha.Ttl * 4 > TimeSpan.FromMinutes(1) ? Ha.Ttl * 4 : TimeSpan.FromMinutes(1);

    /// <summary>Every loop-wait until cancelled: asks PostgreSQL (when given a probe), and renews and arms only when it answered.</summary>
    private async Task KeepRenewingAsync(PostgresProbe? probe, CancellationToken ct)
    {
        while (!ct.IsCancellationRequested)
        {
            try
            {
                await Task.Delay(Ha.LoopWait, ct).ConfigureAwait(false);
                if (SinceRenewal < Ha.LoopWait) continue;
                using var tick = CancellationTokenSource.CreateLinkedTokenSource(ct);
                tick.CancelAfter(Ha.Ttl / 4);
                if (probe is not null) await probe.ObserveDetached().WaitAsync(tick.Token).ConfigureAwait(false);
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
                state.Logger.LogDebug("node {Node}: no renewal beside the step: {Error}", NodeId, ex.Message);
            }
        }
    }

    public void Disarm()
    {
        _guarded = null;
        _markedSynchronous = null;
        guard?.Disarm(NodeId);
    }

    /// <summary>
    /// Fencing, or a hung PostgreSQL: the guard's deadline is moved to now, so it stops PostgreSQL its way (fast shutdown,
    /// SIGKILL of the whole tree 300 ms later) — a clean shutdown of a stopped process would wait for ever. Waits up to
    /// 2 s for the postmaster to be gone; the caller's ordinary stop follows.
    /// </summary>
    public async Task StopAtOnceAsync()
    {
        if (guard is null || _guarded is not { Alive: true } postmaster || !guard.GuardRunning()) return;
        guard.Arm(NodeId, new GuardArm(Monotonic.NowNs(), postmaster, state.Spec.InstanceId, _lease));
        var until = Monotonic.Add(Monotonic.NowNs(), TimeSpan.FromSeconds(2));
        while (postmaster.Alive && Monotonic.NowNs() < until) await Task.Delay(20, CancellationToken.None).ConfigureAwait(false);
    }

    /// <summary>
    /// Before PostgreSQL becomes writable: the guard runs and is armed, and enough of the lease is left for the promotion
    /// to finish well inside it (renewed first when a quarter of the TTL has gone).
    /// </summary>
    public async Task PrepareToPromoteAsync(CancellationToken etcd, CancellationToken ct)
    {
        if (guard is not null && state.Others.Count > 0 && !await guard.EnsureGuardRunningAsync(TimeSpan.FromSeconds(2), ct).ConfigureAwait(false))
            throw new InvalidOperationException($"the fencing guard does not run (see {guard.Path}/guard.log): not promoting without it");
        if (SinceRenewal > Ha.Ttl / 4 && !await RenewAsync(etcd).ConfigureAwait(false))
            throw new InvalidOperationException("the leader lease expired before promotion");
        if (!await ArmAsync(etcd).ConfigureAwait(false))
            throw new InvalidOperationException("PostgreSQL is not running: nothing to promote");
    }

    /// <summary>
    /// Before the key moves to a lease shorter than the one held (a replica of a new cluster has data now): the guard's
    /// deadline comes to what the new lease allows, counted from <paramref name="sentNs"/> (sent before its grant). An agent
    /// killed between the move and its next arming would otherwise leave its guard on the long lease's deadline, and its
    /// PostgreSQL writable after the short lease expired and a replica took over.
    /// </summary>
    public void ArmForShorterLease(TimeSpan ttl, long sentNs)
    {
        if (guard is null || _guarded is not { Alive: true } postmaster || state.Others.Count == 0) return;
        ArmAt(guard, postmaster, sentNs, ttl);
    }

    /// <summary>
    /// This node took the leader key under <paramref name="lease"/>, granted when <paramref name="sentNs"/>. The rest of the
    /// pass is a leader's: its etcd calls count to this lease's fencing deadline, not to the budget the pass began with
    /// as a replica (a quarter TTL after a pass that found etcd unreachable). On that budget the promotion's etcd calls
    /// were cut 1.1 s after the take, the pass failed without renewing, and the next one began 0.3 s before the
    /// fencing deadline and demoted the new primary: two failovers for one cut link (ThreeHostTests, fresh323).
    /// </summary>
    public void Took(long lease, bool alone, long sentNs)
    {
        (_lease, _alone) = (lease, alone);
        _renewedNs = sentNs;
        if (Guarded) MoveFence();
    }

    /// <summary>The key names this node under a live lease an earlier run of the agent took: this one carries on with it.</summary>
    public void Adopt(long lease, bool alone, long sentNs)
    {
        (_lease, _alone, _renewedNs) = (lease, alone, sentNs);
        MoveFence();
    }

    /// <summary>The leader key moved to <paramref name="lease"/>; returns the lease it was under.</summary>
    public long MovedTo(long lease, bool alone, long sentNs)
    {
        var old = _lease;
        (_lease, _alone, _renewedNs) = (lease, alone, sentNs);
        if (Guarded) MoveFence();
        return old;
    }

    /// <summary>
    /// etcd answered that the lease is gone. The guard stays armed: if PostgreSQL is still writable, it stops it at the
    /// deadline unless this pass demotes first, or takes the key again. What is left of the pass is no leader's: it gets a
    /// follower's budget from now rather than the rest of the fencing deadline. With the rest of it, the cluster read or
    /// taking the key again found the token spent, and the pass demoted a primary that could have kept serving.
    /// </summary>
    public void Expired()
    {
        (_lease, _alone) = (0, false);
        Fence?.CancelAfter(Ha.Ttl / 2);
    }

    public void Drop()
    {
        _lease = 0;
        _alone = false;
        _renewedNs = 0;
        _failsafeNs = 0;
    }

    /// <summary>Given up without reaching etcd: the lease lapses by itself, and this node never picks it up again.</summary>
    public void Abandon()
    {
        Abandoned = _lease;
        Drop();
    }

    /// <summary>etcd answered the pass's read: failsafe, if it was on, is over.</summary>
    public void EtcdReachable()
    {
        _failsafeNs = 0;
        if (_failsafeLogged) state.Logger.LogInformation("node {Node}: etcd reachable again; failsafe mode over", NodeId);
        _failsafeLogged = false;
    }

    /// <summary>
    /// Failsafe (Patroni 3's idea): etcd cannot be reached, but if every other member confirms on its health API that it
    /// streams from this leader — and so promises not to take the key for a TTL — no one can be promoted, and this leader
    /// may go on serving: fencing then counts from when the confirmations were asked for. For at most
    /// dingo.ha.failsafe-for after the last renewal; a member that cannot confirm means fencing as usual.
    /// </summary>
    public async Task<bool> ConfirmFailsafeAsync(CancellationToken ct)
    {
        var limit = Ha.FailsafeFor;
        if (limit <= TimeSpan.Zero || _renewedNs == 0 || Monotonic.Between(_renewedNs, Monotonic.NowNs()) > limit) return false;
        var peers = state.Peers;
        if (peers.Count == 0 || peers.Count != state.Others.Count || peers.Any(p => p.Host is null || p.ApiPort <= 0)) return false;
        var sent = Monotonic.NowNs();
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        cts.CancelAfter(Ha.Ttl / 4);
        var refusals = await failsafe.AskAllAsync(state.Record, peers.Select(p => (p.NodeId, p.Host!, p.ApiPort)).ToList(), cts.Token).ConfigureAwait(false);
        if (refusals.Count > 0)
        {
            var said = string.Join("; ", refusals);
            if (said != _failsafeRefusal) state.Logger.LogWarning("node {Node}: etcd unreachable and failsafe not confirmed: {Refusals}", NodeId, said);
            (_failsafeRefusal, _failsafeLogged) = (said, true);
            return false;
        }
        _failsafeRefusal = null;
        _failsafeNs = sent;
        MoveFence();
        if (!_failsafeLogged) state.Logger.LogWarning("node {Node}: etcd unreachable; every other member confirmed it streams from me: serving on (failsafe)", NodeId);
        _failsafeLogged = true;
        return true;
    }
}
