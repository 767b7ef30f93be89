using System.Diagnostics;
using Dingo.Backups;
using Dingo.Cells;
using Dingo.Ha;
using Dingo.Health;
using Dingo.Model;
using Dingo.Postgres;
using Dingo.Store;
using Dingo.Tests.Support;
using Npgsql;
using Xunit.Abstractions;

namespace Dingo.Tests.Ha;

/// <summary>
/// A new leader's first preparation of roles and database that takes longer than the guard's deadline (¾ TTL after the
/// last renewal), on real etcd, a real PostgreSQL 15 and the real `dingo-cell guard` process. On a loaded machine it
/// did (fresh114, fresh115: more than 3 s beside a three-host platform) and the guard killed the primary its own agent
/// had just made. The lease must be renewed beside a slow step while PostgreSQL answers, and not once it stops answering.
/// The slowness is a lock the test holds on what the preparation changes, so the step waits as long as the test says.
/// And a leader's step after a stop that outlasted the pass's etcd budget: a switchover's release of the key.
/// </summary>
[SuiteCost(44)]
public sealed class SlowLeaderStepTests(ITestOutputHelper output) : IAsyncLifetime
{
    private static readonly CancellationToken None = CancellationToken.None;
    private readonly Dingo.Config.DingoSettings _settings = TestPlatform.NewSettings();
    private EtcdStore _store = null!;
    private LocalProcessRuntime _runtime = null!;
    private CellLease _lease = null!;
    private CellReconciler _cell = null!;
    private FenceGuardDirectory _guard = null!;
    private NodeSpec _spec = null!;
    private InstanceRecord _record = null!;
    private NodeSpec _absent = null!;
    private Keys K => _store.Keys;

    public async Task InitializeAsync()
    {
        _store = new EtcdStore(_settings.EtcdEndpoints, _settings.EtcdPrefix);
        _runtime = new LocalProcessRuntime(
            new LocalProcessRuntimeOptions(Path.Combine(_settings.DataDir, "cells", "cell-1", "nodes"), _settings.Cell.PostgresBin, _settings.Cell.RunAsUser),
            new TestOutputLogger<LocalProcessRuntime>(output));
        _lease = new CellLease(_store, TimeSpan.FromSeconds(5), new TestOutputLogger<CellLease>(output));
        _cell = new CellReconciler(_store, _runtime, _lease, _settings, new TestOutputLogger<CellReconciler>(output));
        _guard = new FenceGuardDirectory(Path.Combine(_settings.DataDir, "guard"), ["dotnet", Path.Combine(AppContext.BaseDirectory, "Dingo.Cell.dll"), "guard"]);
        using var start = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        if (!await _guard.EnsureGuardRunningAsync(TimeSpan.FromSeconds(20), start.Token))
            Assert.Fail("the guard did not start: " + (FenceGuardDirectory.ReadOrNull(Path.Combine(_guard.Path, "guard.log")) ?? "(no guard.log)"));

        // Two members, so the leader is guarded (a node alone is never fenced); only the first one runs.
        var id = "i-" + Guid.NewGuid().ToString("N")[..8];
        _record = new InstanceRecord
        {
            Id = id, ServiceId = Catalog.ServiceId, PlanId = Catalog.ClusterPlanId, OrganizationGuid = "o", SpaceGuid = "s",
            Port = _settings.Router.PortFirst, NodeCount = 2, Superuser = new Credentials(DatabaseAdmin.SuperuserName, Secrets.Password()),
            Replication = new Credentials(DatabaseAdmin.ReplicationUserName, Secrets.Password()),
        };
        await _store.PutAsync(K.Instance(id), _record, None);
        var now = DateTimeOffset.UtcNow;
        _spec = new NodeSpec { NodeId = "n-" + Guid.NewGuid().ToString("N")[..6], InstanceId = id, CellId = "cell-1", Port = _settings.NodePortFirst, CreatedAt = now };
        var absent = _absent = new NodeSpec { NodeId = "n-" + Guid.NewGuid().ToString("N")[..6], InstanceId = id, CellId = "cell-2", Port = _settings.NodePortFirst + 1, CreatedAt = now.AddSeconds(1) };
        await _store.PutAsync(K.Assignment("cell-1", _spec.NodeId), _spec, None);
        await _store.PutAsync(K.Node(id, _spec.NodeId), _spec, None);
        await _store.PutAsync(K.Node(id, absent.NodeId), absent, None);
    }

    public async Task DisposeAsync()
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        foreach (var pid in PostgresTree()) _ = kill(pid, 18); // SIGCONT: a stopped tree must be able to go
        try { await _guard.StopGuardAsync(cts.Token); } catch (Exception ex) { output.WriteLine($"stopping the guard: {ex.Message}"); }
        try { foreach (var n in await _runtime.ListAsync(cts.Token)) await _runtime.RemoveAsync(n.NodeId, cts.Token); }
        catch (Exception ex) { output.WriteLine($"removing the node: {ex.Message}"); }
        var log = Path.Combine(_guard.Path, "guard.log");
        if (File.Exists(log)) output.WriteLine(File.ReadAllText(log));
        await TestPlatform.DestroyDataAsync(_settings);
        await _store.DisposeAsync();
    }

    private NodeAgent Agent(IContainerRuntime? runtime = null, Dingo.Config.DingoSettings? settings = null, EtcdStore? store = null) =>
        new(_spec, store ?? _store, runtime ?? _runtime, _lease, settings ?? _settings, new TestOutputLogger<NodeAgent>(output), guard: _guard);

    private IReadOnlyList<int> PostgresTree() =>
        _runtime.PostmasterPidAsync(_spec.NodeId, None).GetAwaiter().GetResult() is { } pid ? ProcStat.Tree(pid) : [];

    private async Task<ProcessIdentity?> PostmasterAsync() =>
        await _runtime.PostmasterPidAsync(_spec.NodeId, None) is { } pid ? ProcessIdentity.Of(pid) : null;

    private NpgsqlConnection Superuser(string database) =>
        new(DatabaseAdmin.ConnectionString("127.0.0.1", _spec.Port, _record.Superuser, database).ConnectionString);

    /// <summary>Passes of the first agent until it has bootstrapped and holds the key: the next pass is its first lead.</summary>
    private async Task<NodeAgent> BootstrappedAsync(IContainerRuntime? runtime = null, Dingo.Config.DingoSettings? settings = null, EtcdStore? store = null)
    {
        var agent = Agent(runtime, settings, store);
        var deadline = DateTime.UtcNow.AddSeconds(90);
        while ((await _store.GetAsync<LeaderRecord>(K.Leader(_spec.InstanceId), None))?.Value.NodeId != _spec.NodeId)
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException("the node did not bootstrap");
            await _cell.RunPassAsync(new HashSet<string> { _spec.NodeId }, None);
            output.WriteLine($"pass: {await agent.RunPassAsync(None)}");
        }
        return agent;
    }

    [Fact]
    public async Task A_slow_first_preparation_keeps_its_primary_while_PostgreSQL_answers_and_a_hang_in_it_is_still_fenced()
    {
        var ttl = _settings.Ha.Ttl;
        var agent = await BootstrappedAsync();
        var postmaster = await PostmasterAsync() ?? throw new InvalidOperationException("no postmaster");
        // The other member has data: the key goes to a lease of the TTL at the first lead, and fencing keeps its timing.
        await ReportAbsentAsync(noData: false);

        // 1. The first lead's preparation waits for the test's uncommitted CREATE ROLE of the same role: twice the
        //    guard's deadline and more. The primary must come out of it unharmed.
        await using (var holder = Superuser("postgres"))
        {
            await holder.OpenAsync(None);
            await using (var hold = new NpgsqlCommand($"BEGIN; CREATE ROLE {DatabaseAdmin.OwnerRole} NOLOGIN", holder))
                await hold.ExecuteNonQueryAsync(None);
            var watch = Stopwatch.StartNew();
            var pass = agent.RunPassAsync(None);
            var held = FenceGuard.DeadlineAfterRenewal(ttl) * 2;
            Assert.NotSame(pass, await Task.WhenAny(pass, Task.Delay(held)));
            Assert.Equal(postmaster, await PostmasterAsync());
            await using (var release = new NpgsqlCommand("ROLLBACK", holder)) await release.ExecuteNonQueryAsync(None);
            var sentence = await pass.WaitAsync(TimeSpan.FromSeconds(30));
            output.WriteLine($"the first lead's pass took {watch.Elapsed.TotalSeconds:0.0}s (held {held.TotalSeconds:0.0}s): {sentence}");
            Assert.Equal("no action: I hold the leader key", sentence);
        }
        Assert.Null(_guard.TakeFenced(_spec.NodeId));
        Assert.Equal(postmaster, await PostmasterAsync());
        Assert.Equal(_spec.NodeId, (await _store.GetAsync<LeaderRecord>(K.Leader(_spec.InstanceId), None))!.Value.NodeId);
        Assert.Equal(1L, await NodeSql.ScalarAsync(new NodeLaunchSpec(_spec.NodeId, _spec.InstanceId, "127.0.0.1", _spec.Port, _record.Superuser),
            _record.Superuser, $"SELECT count(*) FROM pg_roles WHERE rolname = '{DatabaseAdmin.OwnerRole}'"));

        // 2. The agent restarts (a new one adopts the lease and prepares again); its preparation waits on the test's
        //    uncommitted change of the database's row (the REVOKE on it waits), and then PostgreSQL hangs (SIGSTOP of the whole tree). No
        //    renewal may keep a PostgreSQL that does not answer: the guard stops it within its deadline.
        var restarted = Agent();
        await using (var holder = Superuser(_record.Database))
        {
            await holder.OpenAsync(None);
            await using (var hold = new NpgsqlCommand($"BEGIN; ALTER DATABASE \"{_record.Database}\" CONNECTION LIMIT -1", holder))
                await hold.ExecuteNonQueryAsync(None);
            var pass = restarted.RunPassAsync(None);
            await Task.Delay(ttl); // renewing beside the waiting step
            Assert.NotSame(pass, await Task.WhenAny(pass, Task.Delay(10)));
            Assert.Equal(postmaster, await PostmasterAsync());
            var tree = PostgresTree();
            foreach (var pid in tree) Assert.Equal(0, kill(pid, 19)); // SIGSTOP
            var hung = Stopwatch.StartNew();
            await Eventually.UntilAsync(async () => await PostmasterAsync() is null, ttl * 3, "the guard stopping the hung PostgreSQL");
            output.WriteLine($"the hung PostgreSQL ({tree.Count} processes) was stopped {hung.Elapsed.TotalSeconds:0.00}s after it hung");
            Assert.True(hung.Elapsed < ttl + TimeSpan.FromSeconds(1), $"a hung PostgreSQL in a renewed step went on for {hung.Elapsed}");
            var failed = await pass.WaitAsync(TimeSpan.FromSeconds(30));
            output.WriteLine($"the restarted agent's pass: {failed}");
            Assert.Contains("failed", failed);
        }
        // The guard writes its report once the processes are gone and the arm removed: waited for, not read at once.
        string? report = null;
        await Eventually.UntilAsync(() => Task.FromResult((report = _guard.TakeFenced(_spec.NodeId)) is not null), TimeSpan.FromSeconds(5), "the guard's report");
        output.WriteLine($"the guard: {report}");
        Assert.Contains("not renewed in time", report);
    }

    [Fact]
    public async Task An_agent_restarted_while_leading_stops_its_primary_before_a_clean_shutdown_gives_the_key_up()
    {
        // The first agent bootstrapped and holds the key under its lease; the cell then restarts its agent (a new
        // NodeAgent for the same node) and shuts down cleanly before that agent's first pass adopted the lease.
        await BootstrappedAsync();
        var restarted = Agent();
        Assert.NotNull(await _runtime.PostmasterPidAsync(_spec.NodeId, None));

        using var budget = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        await restarted.ReleaseOnShutdownAsync(budget.Token);

        // The key went, so a replica may promote at once: the primary it named must no longer accept writes. It did
        // until then (the guard's deadline, ¾ TTL later, was the only stop).
        Assert.Null(await _store.GetAsync<LeaderRecord>(K.Leader(_spec.InstanceId), None));
        Assert.Null(await _runtime.PostmasterPidAsync(_spec.NodeId, None));
    }

    [Fact]
    public async Task After_a_clean_shutdown_let_go_no_pass_starts_postgresql_again()
    {
        // A quiet solo leader's PostgreSQL, stopped by the release, woke a pass through its own exit; that pass found no
        // leader and PostgreSQL stopped, and started it read-only: a process left behind by its agent (CloneSettleTests'
        // platform, at the first try).
        var agent = await BootstrappedAsync();
        using var budget = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        await agent.ReleaseOnShutdownAsync(budget.Token);
        Assert.Null(await _runtime.PostmasterPidAsync(_spec.NodeId, None));

        Assert.Equal("no action: the cell is stopping", await agent.RunPassAsync(budget.Token));
        Assert.Null(await _runtime.PostmasterPidAsync(_spec.NodeId, None));
        Assert.Null(await _store.GetAsync<LeaderRecord>(K.Leader(_spec.InstanceId), None));
    }

    [Fact]
    public async Task A_switchover_whose_clean_stop_outlasts_the_passs_etcd_budget_still_hands_the_key_over_in_that_pass()
    {
        // The replica runs on the same cell; the leader's runtime takes half a TTL and more over every stop, as a clean
        // shutdown does on a loaded machine (fresh120: the hand-over's release then ran on a spent budget and failed).
        var replica = (await _store.GetAsync<NodeSpec>(K.Node(_spec.InstanceId, _absent.NodeId), None))!.Value with { CellId = "cell-1" };
        await _store.PutAsync(K.Node(_spec.InstanceId, replica.NodeId), replica, None);
        await _store.PutAsync(K.Assignment("cell-1", replica.NodeId), replica, None);
        var slow = new SlowStops(_runtime, _settings.Ha.Ttl / 2 + TimeSpan.FromMilliseconds(500));
        var leader = await BootstrappedAsync(slow);
        var follower = new NodeAgent(replica, _store, _runtime, _lease, _settings, new TestOutputLogger<NodeAgent>(output), guard: _guard);
        // Each agent passes on its own, as in a cell: a leader waiting for the replica's clone to end would not renew.
        using var stopLeader = new CancellationTokenSource();
        using var stopOthers = new CancellationTokenSource();
        var leaderLoop = LoopAsync("leader", leader.RunPassAsync, stopLeader.Token);
        var followerLoop = LoopAsync("replica", follower.RunPassAsync, stopOthers.Token);
        var cellLoop = LoopAsync("cell", async ct => (await _cell.RunPassAsync(new HashSet<string> { _spec.NodeId, replica.NodeId }, ct)).Summary, stopOthers.Token);
        try
        {
            await Eventually.UntilAsync(async () => (await _store.GetAsync<NodeStatus>(K.Status(_spec.InstanceId, replica.NodeId), None))?.Value is { Role: NodeRole.Replica, Streaming: true },
                TimeSpan.FromSeconds(120), "the replica streaming");
            await stopLeader.CancelAsync();
            await leaderLoop;
            Assert.Equal(_spec.NodeId, (await _store.GetAsync<LeaderRecord>(K.Leader(_spec.InstanceId), None))?.Value.NodeId);

            await _store.PutAsync(K.Switchover(_spec.InstanceId), new SwitchoverRequest(_spec.NodeId, replica.NodeId, DateTimeOffset.UtcNow), None);
            slow.On = true;
            var watch = Stopwatch.StartNew();
            var sentence = await leader.RunPassAsync(None);
            output.WriteLine($"the hand-over pass ({watch.Elapsed.TotalSeconds:0.0}s, a stop of {slow.Extra.TotalSeconds:0.0}s more): {sentence}");
            Assert.StartsWith($"switching over to {replica.NodeId}", sentence);
            Assert.DoesNotContain("failed", sentence);
            // Released in that very pass: the key is free, or the replica (passing on its own) has taken it already.
            Assert.NotEqual(_spec.NodeId, (await _store.GetAsync<LeaderRecord>(K.Leader(_spec.InstanceId), None))?.Value.NodeId);
            slow.On = false;
            await Eventually.UntilAsync(async () => (await _store.GetAsync<LeaderRecord>(K.Leader(_spec.InstanceId), None))?.Value.NodeId == replica.NodeId,
                TimeSpan.FromSeconds(30), "the replica taking the key");
        }
        finally
        {
            await stopLeader.CancelAsync();
            await stopOthers.CancelAsync();
            await Task.WhenAll(leaderLoop, followerLoop, cellLoop);
        }
    }

    [Fact]
    public async Task A_first_start_slower_than_the_TTL_keeps_the_new_clusters_key_and_primary()
    {
        // A container engine on a saturated machine took 5-10 s to start a new cluster's first primary: its key's lease
        // (the TTL, 4 s) expired meanwhile, and the cluster lost its primary again and again (bench/Provision's Docker
        // burst). Nobody else has data at a bootstrap: the key goes under the lease of a node alone until the first lead.
        var ttl = _settings.Ha.Ttl;
        var slow = new SlowFirstStart(_runtime, ttl + TimeSpan.FromSeconds(1));
        var agent = await BootstrappedAsync(slow);
        Assert.True(slow.Delayed, "the bootstrap's start was not slowed");
        var taken = (await _store.GetAsync<LeaderRecord>(K.Leader(_spec.InstanceId), None))!;
        Assert.True(await _store.KeepAliveOnceTtlAsync(taken.Lease, None) >= (long)_settings.Ha.AloneTtl.TotalSeconds,
            "the bootstrap's key is not under the lease of a node alone");
        var postmaster = await PostmasterAsync() ?? throw new InvalidOperationException("no postmaster");

        // The first lead keeps it, on that lease: the other member has not reported, so nobody is known to have data (in the
        // burst a replica's cell had not passed yet, and the key moved to the short lease with nobody to take over).
        Assert.Equal("no action: I hold the leader key", await agent.RunPassAsync(None));
        var kept = (await _store.GetAsync<LeaderRecord>(K.Leader(_spec.InstanceId), None))!;
        Assert.Equal(taken.Lease, kept.Lease);
        // Once the member reports data, the key moves to a lease of the TTL: it could take over from now on.
        await ReportAbsentAsync(noData: false);
        Assert.Equal("no action: I hold the leader key", await agent.RunPassAsync(None));
        var moved = (await _store.GetAsync<LeaderRecord>(K.Leader(_spec.InstanceId), None))!;
        Assert.Equal(_spec.NodeId, moved.Value.NodeId);
        Assert.NotEqual(taken.Lease, moved.Lease);
        Assert.Equal((long)Math.Ceiling(ttl.TotalSeconds), await _store.KeepAliveOnceTtlAsync(moved.Lease, None));
        Assert.Equal(postmaster, await PostmasterAsync());
        Assert.Null(_guard.TakeFenced(_spec.NodeId));
    }

    [Fact]
    public async Task A_new_clusters_primary_keeps_the_lease_of_a_node_alone_while_its_replica_has_no_data_and_a_short_one_once_it_has()
    {
        // A replica waiting to clone could not take the key: fenced at half the TTL, the first primary was stopped by every
        // late probe of a saturated machine, with nobody to take over (bench/Provision's Docker burst).
        var ttl = _settings.Ha.Ttl;
        var agent = await BootstrappedAsync();
        var taken = (await _store.GetAsync<LeaderRecord>(K.Leader(_spec.InstanceId), None))!;
        await ReportAbsentAsync(noData: true);
        Assert.Equal("no action: I hold the leader key", await agent.RunPassAsync(None));
        var kept = (await _store.GetAsync<LeaderRecord>(K.Leader(_spec.InstanceId), None))!;
        Assert.Equal(taken.Lease, kept.Lease);
        Assert.True(await _store.KeepAliveOnceTtlAsync(kept.Lease, None) >= (long)_settings.Ha.AloneTtl.TotalSeconds, "the key left the lease of a node alone");
        // Guarded all the same, on that lease's deadline (¾ of it after the last renewal).
        var armed = _guard.Armed(_spec.NodeId) ?? throw new InvalidOperationException("the guard is not armed");
        Assert.True(Monotonic.Between(Monotonic.NowNs(), armed.DeadlineNs) > FenceGuard.DeadlineAfterRenewal(ttl) + TimeSpan.FromSeconds(2),
            "the guard's deadline is the TTL's, not the lease's");

        // The replica has data now: the key moves to a lease of the TTL, and the guard's deadline comes with it.
        await ReportAbsentAsync(noData: false);
        Assert.Equal("no action: I hold the leader key", await agent.RunPassAsync(None));
        var moved = (await _store.GetAsync<LeaderRecord>(K.Leader(_spec.InstanceId), None))!;
        Assert.Equal(_spec.NodeId, moved.Value.NodeId);
        Assert.NotEqual(kept.Lease, moved.Lease);
        Assert.Equal((long)Math.Ceiling(ttl.TotalSeconds), await _store.KeepAliveOnceTtlAsync(moved.Lease, None));
        armed = _guard.Armed(_spec.NodeId) ?? throw new InvalidOperationException("the guard is not armed");
        Assert.Equal(moved.Lease, armed.Lease);
        Assert.True(Monotonic.Between(Monotonic.NowNs(), armed.DeadlineNs) <= FenceGuard.DeadlineAfterRenewal(ttl), "the guard kept the long lease's deadline");
        Assert.Null(_guard.TakeFenced(_spec.NodeId));
    }

    [Fact]
    public async Task A_leaders_probe_slowed_under_half_the_TTL_keeps_its_primary_the_guard_moving_with_each_renewal()
    {
        // On a saturated machine a leader's probe waited 1.9 s for a CPU (fresh315). The guard still had the previous
        // pass's deadline, since it was armed only after the probe and the read, and stopped the primary whose lease the pass
        // had just renewed; the pass itself then counted 2.0 s since that renewal and demoted. The probe's session is
        // stopped here (SIGSTOP of its backend) for a while under the fencing deadline.
        var ttl = _settings.Ha.Ttl;
        var agent = await BootstrappedAsync();
        await ReportAbsentAsync(noData: false);
        Assert.Equal("no action: I hold the leader key", await agent.RunPassAsync(None));
        Assert.Equal("no action: I hold the leader key", await agent.RunPassAsync(None));
        var postmaster = await PostmasterAsync() ?? throw new InvalidOperationException("no postmaster");
        var sessions = await HaSessionsAsync();
        Assert.NotEmpty(sessions);
        var began = Monotonic.NowNs();
        foreach (var pid in sessions) Assert.Equal(0, kill(pid, 19)); // SIGSTOP: the probe's answer waits
        Task<string> pass;
        long resumed;
        try
        {
            pass = agent.RunPassAsync(None);
            // 1. The renewal at the start of the pass moves the guard's deadline at once, while the probe still waits.
            await Eventually.UntilAsync(() => Task.FromResult(_guard.Armed(_spec.NodeId) is { } arm && arm.DeadlineNs >= Monotonic.Add(began, FenceGuard.DeadlineAfterRenewal(ttl))),
                ttl / 2, "the guard's deadline moving with the pass's first renewal");
            Assert.False(pass.IsCompleted, "the pass ended before its probe was answered");
            // 2. Held past a loop-wait, well before the fencing deadline (half the TTL after that renewal).
            await Task.Delay(_settings.Ha.LoopWait + TimeSpan.FromMilliseconds(300));
            Assert.False(pass.IsCompleted, "the pass ended before its probe was answered");
        }
        finally
        {
            resumed = Monotonic.NowNs();
            foreach (var pid in sessions) _ = kill(pid, 18);
        }
        // 3. PostgreSQL answered late: the lease is renewed on it, so the decision keeps the key and the guard's deadline
        //    counts from after the answer.
        var sentence = await pass.WaitAsync(TimeSpan.FromSeconds(30));
        output.WriteLine($"the slowed pass: {sentence}");
        Assert.Equal("no action: I hold the leader key", sentence);
        var armed = _guard.Armed(_spec.NodeId) ?? throw new InvalidOperationException("the guard is not armed");
        Assert.True(armed.DeadlineNs >= Monotonic.Add(resumed, FenceGuard.DeadlineAfterRenewal(ttl)), "no renewal after the late answer");
        Assert.Null(_guard.TakeFenced(_spec.NodeId));
        Assert.Equal(postmaster, await PostmasterAsync());
        Assert.Equal(_spec.NodeId, (await _store.GetAsync<LeaderRecord>(K.Leader(_spec.InstanceId), None))!.Value.NodeId);
    }

    [Fact]
    public async Task A_leaders_pass_slowed_past_the_fencing_deadline_renews_late_and_keeps_its_primary_while_PostgreSQL_and_etcd_answer()
    {
        // A container engine's inspect on a saturated machine can hold a leader's pass past half the TTL before it has
        // even asked PostgreSQL. Both answer once asked: the pass must renew and lead on, not demote (a failover for
        // nothing), and the guard must not stop the primary meanwhile. A TTL of 10 s gives the test seconds of margin
        // between the fencing deadline (5 s) and the guard's (7.5 s).
        var settings = _settings with { Ha = _settings.Ha with { Ttl = TimeSpan.FromSeconds(10) } };
        var ttl = settings.Ha.Ttl;
        var slow = new SlowInspect(_runtime, ttl / 2 + TimeSpan.FromMilliseconds(500));
        var agent = await BootstrappedAsync(slow, settings);
        await ReportAbsentAsync(noData: false);
        Assert.Equal("no action: I hold the leader key", await agent.RunPassAsync(None));
        var postmaster = await PostmasterAsync() ?? throw new InvalidOperationException("no postmaster");
        // The next pass looks at the runtime again before it asks PostgreSQL.
        await Task.Delay(NodeObserver.InspectReuse + TimeSpan.FromMilliseconds(200));
        slow.On = true;
        var began = Monotonic.NowNs();
        var sentence = await agent.RunPassAsync(None);
        var took = Monotonic.Between(began, Monotonic.NowNs());
        output.WriteLine($"the slowed pass ({took.TotalSeconds:0.0}s): {sentence}");
        Assert.True(slow.Delayed, "the pass did not look at the runtime");
        Assert.Equal("no action: I hold the leader key", sentence);
        Assert.Null(_guard.TakeFenced(_spec.NodeId));
        Assert.Equal(postmaster, await PostmasterAsync());
        Assert.Equal(_spec.NodeId, (await _store.GetAsync<LeaderRecord>(K.Leader(_spec.InstanceId), None))!.Value.NodeId);
        var armed = _guard.Armed(_spec.NodeId) ?? throw new InvalidOperationException("the guard is not armed");
        Assert.True(armed.DeadlineNs >= Monotonic.Add(began, slow.Extra + FenceGuard.DeadlineAfterRenewal(ttl)), "the guard kept a deadline from before the late renewal");
    }

    [Fact]
    public async Task A_pass_begun_at_the_fencing_deadline_renews_on_a_budget_of_its_own_and_keeps_its_primary()
    {
        // A leader's last pass ran long on a saturated machine, and the next one begins 0.3 s before the fencing deadline,
        // with etcd answering a renewal in 0.6 s. Half of what was left (0.15 s) was the renewal's whole budget: it failed,
        // the pass took etcd for gone, skipped its read and demoted a primary etcd would have renewed (ThreeHostTests,
        // fresh323). The renewal gets an eighth of the TTL of its own, and the rest of the pass counts to the deadline it
        // moved. A TTL of 10 s: fencing at 5 s, the guard at 7.5 s.
        var settings = _settings with { Ha = _settings.Ha with { Ttl = TimeSpan.FromSeconds(10) } };
        var ttl = settings.Ha.Ttl;
        var slow = new SlowKeepAlive(TimeSpan.FromMilliseconds(600));
        await using var store = new EtcdStore(_settings.EtcdEndpoints, _settings.EtcdPrefix, interceptor: slow);
        var agent = await BootstrappedAsync(settings: settings, store: store);
        await ReportAbsentAsync(noData: false);
        var renewedAround = Monotonic.NowNs();
        Assert.Equal("no action: I hold the leader key", await agent.RunPassAsync(None));
        var postmaster = await PostmasterAsync() ?? throw new InvalidOperationException("no postmaster");
        var wait = Monotonic.Between(Monotonic.NowNs(), Monotonic.Add(renewedAround, ttl / 2 - TimeSpan.FromMilliseconds(300)));
        if (wait > TimeSpan.Zero) await Task.Delay(wait);
        slow.On = true;
        var began = Monotonic.NowNs();
        var sentence = await agent.RunPassAsync(None);
        output.WriteLine($"the pass begun {Monotonic.Between(renewedAround, began).TotalSeconds:0.00}s after the last renewal ({slow.Slowed} renewals slowed): {sentence}");
        Assert.True(slow.Slowed > 0, "no renewal was slowed");
        Assert.Equal("no action: I hold the leader key", sentence);
        Assert.Null(_guard.TakeFenced(_spec.NodeId));
        Assert.Equal(postmaster, await PostmasterAsync());
        Assert.Equal(_spec.NodeId, (await _store.GetAsync<LeaderRecord>(K.Leader(_spec.InstanceId), None))!.Value.NodeId);
        var armed = _guard.Armed(_spec.NodeId) ?? throw new InvalidOperationException("the guard is not armed");
        Assert.True(armed.DeadlineNs >= Monotonic.Add(began, FenceGuard.DeadlineAfterRenewal(ttl)), "the guard kept the deadline of the renewal before");
    }

    /// <summary>When on, each lease renewal's answer reaches the caller <paramref name="delay"/> late (etcd slow, not gone).</summary>
    private sealed class SlowKeepAlive(TimeSpan delay) : Grpc.Core.Interceptors.Interceptor
    {
        private int _slowed;
        public volatile bool On;
        public int Slowed => Volatile.Read(ref _slowed);

        public override Grpc.Core.AsyncDuplexStreamingCall<TRequest, TResponse> AsyncDuplexStreamingCall<TRequest, TResponse>(
            Grpc.Core.Interceptors.ClientInterceptorContext<TRequest, TResponse> context, Grpc.Core.Interceptors.Interceptor.AsyncDuplexStreamingCallContinuation<TRequest, TResponse> continuation)
        {
            var call = continuation(context);
            if (!On || typeof(TResponse) != typeof(Etcdserverpb.LeaseKeepAliveResponse)) return call;
            Interlocked.Increment(ref _slowed);
            return new Grpc.Core.AsyncDuplexStreamingCall<TRequest, TResponse>(call.RequestStream, new LateReader<TResponse>(call.ResponseStream, delay),
                call.ResponseHeadersAsync, call.GetStatus, call.GetTrailers, call.Dispose);
        }

        private sealed class LateReader<T>(Grpc.Core.IAsyncStreamReader<T> inner, TimeSpan delay) : Grpc.Core.IAsyncStreamReader<T>
        {
            public T Current => inner.Current;

            public async Task<bool> MoveNext(CancellationToken cancellationToken)
            {
                await Task.Delay(delay, cancellationToken).ConfigureAwait(false);
                return await inner.MoveNext(cancellationToken).ConfigureAwait(false);
            }
        }
    }

    [Fact]
    public async Task A_probe_the_pass_stops_waiting_for_is_not_cancelled_and_keeps_its_session()
    {
        // A cancelled probe costs PostgreSQL a fork for the cancel request, and a session broken when the cancel is not
        // answered in time costs another fork and a SCRAM exchange: on a saturated machine, a storm of them.
        await BootstrappedAsync();
        var probe = new PostgresProbe("127.0.0.1", _spec.Port, _record.Superuser);
        await probe.ObserveDetached();
        var sessions = await HaSessionsAsync();
        Assert.NotEmpty(sessions);
        foreach (var pid in sessions) Assert.Equal(0, kill(pid, 19)); // SIGSTOP: their answers wait
        Task<PostgresObservation> pending;
        try
        {
            pending = probe.ObserveDetached();
            await Assert.ThrowsAsync<TimeoutException>(() => pending.WaitAsync(TimeSpan.FromSeconds(1)));
        }
        finally
        {
            foreach (var pid in sessions) _ = kill(pid, 18);
        }
        // The late answer comes, on a session that was there before: nothing was cancelled, nothing new was forked.
        var answer = await pending.WaitAsync(TimeSpan.FromSeconds(10));
        Assert.True(answer.Timeline >= 1);
        Assert.Subset(sessions.ToHashSet(), (await HaSessionsAsync()).ToHashSet());
    }

    /// <summary>The backends of the HA probes' pooled sessions on the node.</summary>
    private async Task<IReadOnlyList<int>> HaSessionsAsync()
    {
        await using var conn = Superuser("postgres");
        await conn.OpenAsync();
        await using var cmd = new NpgsqlCommand("SELECT pid FROM pg_stat_activity WHERE application_name = $1", conn);
        cmd.Parameters.AddWithValue(PostgresProbe.HaApplicationName);
        var pids = new List<int>();
        await using var r = await cmd.ExecuteReaderAsync();
        while (await r.ReadAsync()) pids.Add(r.GetInt32(0));
        return pids;
    }

    /// <summary>The second member's report: still without data (waiting to clone), or a replica.</summary>
    private Task ReportAbsentAsync(bool noData) => _store.PutAsync(K.Status(_spec.InstanceId, _absent.NodeId), new NodeStatus
    {
        NodeId = _absent.NodeId, InstanceId = _spec.InstanceId, CellId = _absent.CellId, Host = "127.0.0.1", Port = _absent.Port,
        State = noData ? NodeState.Initialising : NodeState.Running, Role = noData ? NodeRole.Unknown : NodeRole.Replica,
        Detail = "", NoData = noData, UpdatedAt = DateTimeOffset.UtcNow,
    }, None);

    /// <summary>The cell's runtime, with its first start of a node taking <paramref name="extra"/> longer.</summary>
    private sealed class SlowFirstStart(IContainerRuntime inner, TimeSpan extra) : DelegatingRuntime(inner)
    {
        private int _starts;
        public bool Delayed => Volatile.Read(ref _starts) > 0;
        public override async Task StartAsync(NodeLaunchSpec spec, StandbyConfig? standby, CancellationToken ct)
        {
            await base.StartAsync(spec, standby, ct);
            if (Interlocked.Increment(ref _starts) == 1) await Task.Delay(extra, ct);
        }
    }

    [Fact]
    public async Task A_leader_whose_PostgreSQL_answers_asks_the_runtime_every_5_s_and_at_once_when_it_stops_answering()
    {
        // Each runtime look of a Docker node is a call into the container engine (2.7 ms of podman's CPU): while
        // PostgreSQL answers, its answer proves the node runs.
        var counting = new CountingInspects(_runtime);
        var agent = await BootstrappedAsync(counting);
        output.WriteLine($"first lead: {await agent.RunPassAsync(None)}");
        var before = counting.Inspects;
        var watch = Stopwatch.StartNew();
        var passes = 0;
        while (watch.Elapsed < TimeSpan.FromSeconds(6))
        {
            Assert.Equal("no action: I hold the leader key", await agent.RunPassAsync(None));
            passes++;
            await Task.Delay(_settings.Ha.LoopWait);
        }
        var looks = counting.Inspects - before;
        output.WriteLine($"{passes} passes in {watch.Elapsed.TotalSeconds:0.0}s asked the runtime {looks} times");
        Assert.True(passes >= 6, $"only {passes} passes");
        Assert.InRange(looks, 1, 2);

        // PostgreSQL killed: the next pass finds it not answering, asks the runtime at once, and sees it stopped.
        var postmaster = await _runtime.PostmasterPidAsync(_spec.NodeId, None) ?? throw new InvalidOperationException("no postmaster");
        foreach (var pid in ProcStat.Tree(postmaster)) _ = kill(pid, 9);
        await Eventually.UntilAsync(async () => await _runtime.PostmasterPidAsync(_spec.NodeId, None) is null, TimeSpan.FromSeconds(10), "PostgreSQL gone");
        before = counting.Inspects;
        var sentence = await agent.RunPassAsync(None);
        output.WriteLine($"the pass after the kill: {sentence}");
        Assert.Equal(before + 1, counting.Inspects);
        Assert.StartsWith("PostgreSQL stopped while I lead", sentence, StringComparison.Ordinal);
    }

    /// <summary>The cell's runtime, counting the HA passes' looks at their node.</summary>
    private sealed class CountingInspects(IContainerRuntime inner) : DelegatingRuntime(inner)
    {
        private int _inspects;
        public int Inspects => Volatile.Read(ref _inspects);
        public override Task<RuntimeNode?> InspectAsync(string nodeId, CancellationToken ct)
        {
            Interlocked.Increment(ref _inspects);
            return base.InspectAsync(nodeId, ct);
        }
    }

    /// <summary>Passes every loop-wait until stopped; a stop ends the loop between passes, never in one.</summary>
    private async Task LoopAsync(string who, Func<CancellationToken, Task<string>> pass, CancellationToken stop)
    {
        while (!stop.IsCancellationRequested)
        {
            try { output.WriteLine($"{who}: {await pass(None)}"); }
            catch (Exception ex) { output.WriteLine($"{who}: the pass threw {ex.Message}"); }
            try { await Task.Delay(_settings.Ha.LoopWait, stop); }
            catch (OperationCanceledException) { return; }
        }
    }

    /// <summary>The cell's runtime, with every stop taking <see cref="Extra"/> longer while <see cref="On"/>.</summary>
    private sealed class SlowStops(IContainerRuntime inner, TimeSpan extra) : DelegatingRuntime(inner)
    {
        public volatile bool On;
        public TimeSpan Extra => extra;
        public override async Task StopAsync(string nodeId, CancellationToken ct)
        {
            await base.StopAsync(nodeId, ct);
            if (On) await Task.Delay(extra, ct);
        }
    }

    /// <summary>The cell's runtime, with its first look at a node once <see cref="On"/> taking <paramref name="extra"/> longer.</summary>
    private sealed class SlowInspect(IContainerRuntime inner, TimeSpan extra) : DelegatingRuntime(inner)
    {
        private int _delayed;
        public volatile bool On;
        public TimeSpan Extra => extra;
        public bool Delayed => Volatile.Read(ref _delayed) > 0;
        public override async Task<RuntimeNode?> InspectAsync(string nodeId, CancellationToken ct)
        {
            if (On && Interlocked.Exchange(ref _delayed, 1) == 0) await Task.Delay(extra, ct);
            return await base.InspectAsync(nodeId, ct);
        }
    }

    /// <summary>The cell's runtime as it is: the wrappers above change one call each.</summary>
    private abstract class DelegatingRuntime(IContainerRuntime inner) : IContainerRuntime
    {
        public string Kind => inner.Kind;
        public string? Problem => inner.Problem;
        public virtual Task<RuntimeNode?> InspectAsync(string nodeId, CancellationToken ct) => inner.InspectAsync(nodeId, ct);
        public Task<IReadOnlyList<RuntimeNode>> ListAsync(CancellationToken ct) => inner.ListAsync(ct);
        public Task CreateAsync(NodeLaunchSpec spec, CancellationToken ct) => inner.CreateAsync(spec, ct);
        public virtual Task StartAsync(NodeLaunchSpec spec, StandbyConfig? standby, CancellationToken ct) => inner.StartAsync(spec, standby, ct);
        public Task ConfigureStandbyAsync(NodeLaunchSpec spec, StandbyConfig standby, CancellationToken ct) => inner.ConfigureStandbyAsync(spec, standby, ct);
        public Task CloneAsync(NodeLaunchSpec spec, ReplicationSource source, CancellationToken ct) => inner.CloneAsync(spec, source, ct);
        public Task RewindAsync(NodeLaunchSpec spec, ReplicationSource source, CancellationToken ct) => inner.RewindAsync(spec, source, ct);
        public Task RestoreAsync(NodeLaunchSpec spec, RestoreInput input, CancellationToken ct) => inner.RestoreAsync(spec, input, ct);
        public Task<int?> PostmasterPidAsync(string nodeId, CancellationToken ct) => inner.PostmasterPidAsync(nodeId, ct);
        public Task<IReadOnlyList<string>> AddTimelineHistoriesAsync(string nodeId, IReadOnlyList<TimelineHistoryFile> files, CancellationToken ct) =>
            inner.AddTimelineHistoriesAsync(nodeId, files, ct);
        public virtual Task StopAsync(string nodeId, CancellationToken ct) => inner.StopAsync(nodeId, ct);
        public Task RecordInstanceAsync(string nodeId, string instanceId, CancellationToken ct) => inner.RecordInstanceAsync(nodeId, instanceId, ct);
        public Task RemoveAsync(string nodeId, CancellationToken ct) => inner.RemoveAsync(nodeId, ct);
        public Task ApplyPlatformAccessAsync(PlatformAccess access, CancellationToken ct) => inner.ApplyPlatformAccessAsync(access, ct);
        public HealthTls HealthApiTls(string nodeId) => inner.HealthApiTls(nodeId);
    }

    [System.Runtime.InteropServices.DllImport("libc")]
    private static extern int kill(int pid, int sig);
}
