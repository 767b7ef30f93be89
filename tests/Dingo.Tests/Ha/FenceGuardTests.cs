using System.Diagnostics;
using Dingo.Cells;
using Dingo.Ha;
using Dingo.Model;
using Dingo.Tests.Support;
using Npgsql;
using Xunit.Abstractions;

namespace Dingo.Tests.Ha;

/// <summary>
/// The fencing guard as a cell runs it: a separate `dingo-cell guard` process, started detached, watching a real
/// PostgreSQL 15 (local process runtime). Past an armed deadline PostgreSQL stops accepting writes, whatever state it is
/// in; a deadline moved on in time keeps it serving.
/// </summary>
[SuiteCost(34)]
public sealed class FenceGuardTests(ITestOutputHelper output) : IAsyncLifetime
{
    private const string Superuser = "dingo_su";
    private const string Password = "guard-test-pw";
    private readonly string _root = Path.Combine("/tmp", "dingo-guard-" + Guid.NewGuid().ToString("N")[..10]);
    private LocalProcessRuntime _runtime = null!;
    private FenceGuardDirectory _guard = null!;
    private NodeLaunchSpec _spec = null!;

    public async Task InitializeAsync()
    {
        try { await StartAsync(); }
        catch
        {
            // xunit does not dispose what failed to initialise: stop what was started here.
            await DisposeAsync();
            throw;
        }
    }

    private async Task StartAsync()
    {
        _runtime = new LocalProcessRuntime(new LocalProcessRuntimeOptions(Path.Combine(_root, "nodes")), new TestOutputLogger<LocalProcessRuntime>(output));
        _guard = new FenceGuardDirectory(Path.Combine(_root, "guard"),
            ["dotnet", Path.Combine(AppContext.BaseDirectory, "Dingo.Cell.dll"), "guard"]);
        _spec = new NodeLaunchSpec("n-guard", "i-guard", "127.0.0.1", FreePorts.One(), new Credentials(Superuser, Password));
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(120));
        await _runtime.CreateAsync(_spec, cts.Token);
        await _runtime.StartAsync(_spec, standby: null, cts.Token);
        await Eventually.UntilAsync(async () => await WritableAsync() == true, TimeSpan.FromSeconds(30), "PostgreSQL answering");
        if (!await _guard.EnsureGuardRunningAsync(TimeSpan.FromSeconds(20), cts.Token))
            Assert.Fail("the guard did not start: " + (FenceGuardDirectory.ReadOrNull(Path.Combine(_guard.Path, "guard.log")) ?? "(no guard.log)"));
    }

    public async Task DisposeAsync()
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        try { await _guard.StopGuardAsync(cts.Token); } catch (Exception ex) { output.WriteLine($"stopping the guard: {ex.Message}"); }
        foreach (var pid in PostgresPids()) _ = kill(pid, 18); // SIGCONT, so a stopped tree can be killed and removed
        try { await _runtime.RemoveAsync(_spec.NodeId, cts.Token); } catch (Exception ex) { output.WriteLine($"removing the node: {ex.Message}"); }
        var log = Path.Combine(_guard.Path, "guard.log");
        if (File.Exists(log)) output.WriteLine(File.ReadAllText(log));
        Assert.False(_guard.GuardRunning(), "the guard was asked to stop and still runs");
        try { Directory.Delete(_root, recursive: true); } catch (IOException) { }
    }

    private async Task<ProcessIdentity> PostmasterAsync() =>
        ProcessIdentity.Of((await _runtime.PostmasterPidAsync(_spec.NodeId, CancellationToken.None)).GetValueOrDefault())
        ?? throw new InvalidOperationException("no postmaster");

    /// <summary>True: accepts writes; false: read-only; null: does not answer within a second.</summary>
    private async Task<bool?> WritableAsync()
    {
        var cs = new NpgsqlConnectionStringBuilder
        {
            Host = "127.0.0.1", Port = _spec.Port, Username = Superuser, Password = Password, Database = "postgres",
            Pooling = false, Timeout = 1, CommandTimeout = 1,
        };
        try
        {
            await using var conn = new NpgsqlConnection(cs.ConnectionString);
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(1));
            await conn.OpenAsync(cts.Token);
            await using var cmd = new NpgsqlCommand("SELECT NOT pg_is_in_recovery()", conn);
            return (bool)(await cmd.ExecuteScalarAsync(cts.Token))!;
        }
        catch (Exception ex) when (ex is NpgsqlException or OperationCanceledException or TimeoutException or System.Net.Sockets.SocketException)
        {
            return null;
        }
    }

    private IEnumerable<int> PostgresPids()
    {
        var pgdata = Path.Combine(_root, "nodes", _spec.NodeId);
        foreach (var dir in Directory.GetDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), out var pid)) continue;
            string cwd;
            try { cwd = new DirectoryInfo($"/proc/{pid}/cwd").ResolveLinkTarget(false)?.FullName ?? ""; }
            catch (Exception) { continue; }
            if (cwd.StartsWith(pgdata, StringComparison.Ordinal)) yield return pid;
        }
    }

    /// <summary>The guard's report on the node, waited for: it writes it after the processes are gone and the arm removed.</summary>
    private async Task<string> FencedReportAsync()
    {
        string? report = null;
        await Eventually.UntilAsync(() => Task.FromResult((report = _guard.TakeFenced(_spec.NodeId)) is not null), TimeSpan.FromSeconds(3), "the guard's report");
        return report!;
    }

    [System.Runtime.InteropServices.DllImport("libc")]
    private static extern int kill(int pid, int sig);

    [Fact]
    public async Task Past_an_unrenewed_deadline_the_guard_stops_PostgreSQL_and_says_so()
    {
        var postmaster = await PostmasterAsync();
        var deadline = Monotonic.Add(Monotonic.NowNs(), TimeSpan.FromSeconds(1));
        _guard.Arm(_spec.NodeId, new GuardArm(deadline, postmaster));
        await Task.Delay(500);
        Assert.True(await WritableAsync() == true, "stopped before its deadline");
        await Eventually.UntilAsync(() => Task.FromResult(!postmaster.Alive), TimeSpan.FromSeconds(3), "the postmaster gone");
        var late = Monotonic.Between(deadline, Monotonic.NowNs());
        output.WriteLine($"postmaster gone {late.TotalMilliseconds:0} ms after the deadline");
        Assert.True(late < TimeSpan.FromSeconds(1.5), $"gone only {late} after the deadline");
        Assert.NotEqual(true, await WritableAsync());
        // The guard disarms and then reports, some milliseconds after the postmaster is gone (fresh73 read the arm in
        // between): once the report is there, the arm must be gone.
        Assert.Contains("fencing guard", await FencedReportAsync(), StringComparison.Ordinal);
        Assert.Null(_guard.Armed(_spec.NodeId));
    }

    [Fact]
    public async Task A_stopped_PostgreSQL_is_killed_with_all_its_processes_so_it_never_resumes_writable()
    {
        var postmaster = await PostmasterAsync();
        var tree = PostgresPids().ToList();
        Assert.True(tree.Count > 2, $"expected the postmaster and its children, found {tree.Count}");
        foreach (var pid in tree) _ = kill(pid, 19); // SIGSTOP: hung, as in the fault that showed two writable nodes
        var deadline = Monotonic.Add(Monotonic.NowNs(), TimeSpan.FromMilliseconds(300));
        _guard.Arm(_spec.NodeId, new GuardArm(deadline, postmaster));
        await Eventually.UntilAsync(() => Task.FromResult(!PostgresPids().Any()), TimeSpan.FromSeconds(3), "every PostgreSQL process gone");
        output.WriteLine($"all {tree.Count} processes gone {Monotonic.Between(deadline, Monotonic.NowNs()).TotalMilliseconds:0} ms after the deadline");
        foreach (var pid in tree) _ = kill(pid, 18); // SIGCONT: nothing left to resume
        Assert.Null(await WritableAsync());
        Assert.Contains("killed PostgreSQL", await FencedReportAsync(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_deadline_moved_on_in_time_keeps_PostgreSQL_serving_and_disarming_stops_the_guard_from_acting()
    {
        var postmaster = await PostmasterAsync();
        var watch = Stopwatch.StartNew();
        while (watch.Elapsed < TimeSpan.FromSeconds(2))
        {
            // Moved on every 150 ms, 3 s ahead: this test process stalled for more than 450 ms on a busy machine once (a
            // 600 ms deadline then passed and the guard rightly fenced); what is shown is a deadline kept moving, not how
            // tight the margin may be (the other tests here show the guard acting within its poll after a deadline).
            _guard.Arm(_spec.NodeId, new GuardArm(Monotonic.Add(Monotonic.NowNs(), TimeSpan.FromSeconds(3)), postmaster));
            await Task.Delay(150);
        }
        _guard.Disarm(_spec.NodeId);
        await Task.Delay(1000);
        Assert.True(postmaster.Alive);
        Assert.True(await WritableAsync() == true);
        Assert.Null(_guard.TakeFenced(_spec.NodeId));
    }

    [Fact]
    public async Task A_reused_pid_is_never_signalled()
    {
        var postmaster = await PostmasterAsync();
        // Same PID, another start time: not the process the agent armed the guard with.
        _guard.Arm(_spec.NodeId, new GuardArm(Monotonic.NowNs(), postmaster with { StartTime = postmaster.StartTime + 1 }));
        await Eventually.UntilAsync(() => Task.FromResult(_guard.Armed(_spec.NodeId) is null), TimeSpan.FromSeconds(3), "the guard dropping the stale arm");
        Assert.True(postmaster.Alive);
        // Writable, once it answers: a connection that takes over a second on a loaded machine (now with a TLS
        // handshake) says nothing about the guard.
        bool? writable = null;
        await Eventually.UntilAsync(async () => (writable = await WritableAsync()) is not null, TimeSpan.FromSeconds(15), "PostgreSQL answering");
        Assert.True(writable == true, "the guard fenced a node it was never armed for");
        Assert.True(postmaster.Alive);
    }

    [Fact]
    public async Task One_guard_per_folder()
    {
        // A second start finds the first holding the lock and leaves it be.
        var log = Path.Combine(_guard.Path, "guard.log");
        var psi = new ProcessStartInfo("dotnet") { UseShellExecute = false };
        foreach (var a in new[] { Path.Combine(AppContext.BaseDirectory, "Dingo.Cell.dll"), "guard", "--dir", _guard.Path }) psi.ArgumentList.Add(a);
        using var second = Process.Start(psi)!;
        Assert.True(second.WaitForExit(30_000), "a second guard did not exit");
        Assert.Equal(0, second.ExitCode);
        await Eventually.UntilAsync(async () => (await File.ReadAllTextAsync(log)).Contains("another guard holds", StringComparison.Ordinal),
            TimeSpan.FromSeconds(5), "the second guard's word in the log");
        Assert.True(_guard.GuardRunning());
    }

    [Fact]
    public async Task A_guard_with_nothing_armed_exits_once_the_cell_that_owns_it_is_gone()
    {
        using var cell = Process.Start(new ProcessStartInfo("sleep", "60") { UseShellExecute = false })!;
        var owner = ProcessIdentity.Of(cell.Id)!.Value;
        await File.WriteAllTextAsync(Path.Combine(_guard.Path, "guard.owner"), $"{owner.Pid} {owner.StartTime}\n");
        await Task.Delay(500);
        Assert.True(_guard.GuardRunning(), "the guard left while its owner runs");
        cell.Kill();
        await cell.WaitForExitAsync();
        await Eventually.UntilAsync(() => Task.FromResult(!_guard.GuardRunning()), TimeSpan.FromSeconds(5), "the guard exiting after its owner");
    }

    /// <summary>
    /// A leader's cell died with its PostgreSQL (docs/ha.md rule 4, "a dead cell"): the guard, told by the cell how to
    /// reach etcd, gives the key up well before its lease (30 s here) could expire — after the grace of an asynchronous
    /// cluster, and only once the cell that owns it is gone too; its report says so and an event records it.
    /// </summary>
    [Fact]
    public async Task A_leader_whose_cell_and_PostgreSQL_died_has_its_key_released_by_the_guard()
    {
        await using var store = TestEtcd.NewStore(out var prefix);
        var instance = "i-dead-" + Guid.NewGuid().ToString("N")[..6];
        var keys = store.Keys;
        var settings = new GuardSettings([TestEtcd.ClientUrl], prefix, new Dingo.Config.EtcdTlsSettings(), TimeSpan.FromSeconds(4),
            TimeSpan.FromSeconds(1), new Dingo.Config.EventSettings(), "cell-t");
        // The cell writes its settings when it makes sure its guard runs (the guard is running already).
        Assert.True(await new FenceGuardDirectory(_guard.Path, launch: null, settings).EnsureGuardRunningAsync(TimeSpan.FromSeconds(5), CancellationToken.None));
        var lease = await store.GrantLeaseAsync(TimeSpan.FromSeconds(30), CancellationToken.None);
        Assert.True(await store.CreateIfAbsentAsync(keys.Leader(instance), new LeaderRecord { NodeId = _spec.NodeId, Host = "127.0.0.1", Port = _spec.Port }, CancellationToken.None, lease));
        var cellLease = await store.GrantLeaseAsync(TimeSpan.FromSeconds(30), CancellationToken.None);
        await store.PutAsync(keys.Status(instance, _spec.NodeId), new NodeStatus
        {
            NodeId = _spec.NodeId, InstanceId = instance, CellId = "cell-t", State = NodeState.Running, Detail = "no action: I hold the leader key",
            Host = "127.0.0.1", Port = _spec.Port, Role = NodeRole.Primary, Writable = true, Lsn = 1234, UpdatedAt = DateTimeOffset.UtcNow,
        }, CancellationToken.None, cellLease);
        var postmaster = await PostmasterAsync();
        _guard.MarkSynchronous(_spec.NodeId, false);
        _guard.Arm(_spec.NodeId, new GuardArm(Monotonic.Add(Monotonic.NowNs(), TimeSpan.FromSeconds(60)), postmaster, instance, lease));

        // PostgreSQL dies while its cell (this test process owns the guard) lives: the cell's agent decides, not the guard.
        foreach (var pid in PostgresPids()) _ = kill(pid, 9);
        await Eventually.UntilAsync(() => Task.FromResult(!postmaster.Alive), TimeSpan.FromSeconds(5), "the postmaster gone");
        await Task.Delay(1500);
        Assert.NotNull(await store.GetAsync<LeaderRecord>(keys.Leader(instance), CancellationToken.None));

        // Now the cell is gone too.
        using (var cell = Process.Start(new ProcessStartInfo("sleep", "60") { UseShellExecute = false })!)
        {
            var owner = ProcessIdentity.Of(cell.Id)!.Value;
            cell.Kill();
            await cell.WaitForExitAsync();
            await File.WriteAllTextAsync(Path.Combine(_guard.Path, "guard.owner"), $"{owner.Pid} {owner.StartTime}\n");
        }
        var ownerGone = Stopwatch.StartNew();
        // Asynchronous: the key stays for the grace (1 s here), for a restarted cell to recover the node in place.
        await Task.Delay(600);
        Assert.NotNull(await store.GetAsync<LeaderRecord>(keys.Leader(instance), CancellationToken.None));
        await Eventually.UntilAsync(async () => await store.GetAsync<LeaderRecord>(keys.Leader(instance), CancellationToken.None) is null,
            TimeSpan.FromSeconds(10), "the leader key released");
        output.WriteLine($"key released {ownerGone.Elapsed.TotalMilliseconds:0} ms after the owner was gone (grace 1 s, lease 30 s)");
        Assert.True(ownerGone.Elapsed >= TimeSpan.FromSeconds(1), $"released after {ownerGone.Elapsed}, inside the grace");

        var status = (await store.GetAsync<NodeStatus>(keys.Status(instance, _spec.NodeId), CancellationToken.None))!;
        Assert.Equal((NodeState.Failed, false, cellLease), (status.Value.State, status.Value.Writable, status.Lease));
        Assert.Contains("the fencing guard released the leader key", status.Value.Detail, StringComparison.Ordinal);
        // The guard disarms once the revoke has answered, which is after etcd deleted the key this test saw go (fresh301
        // read the arm in between).
        await Eventually.UntilAsync(() => Task.FromResult(_guard.Armed(_spec.NodeId) is null), TimeSpan.FromSeconds(5), "the node disarmed after the release");
        IReadOnlyList<EventRecord> events = [];
        await Eventually.UntilAsync(async () => (events = await Dingo.Store.EventJournal.ReadAsync(store, instance, CancellationToken.None)).Count > 0,
            TimeSpan.FromSeconds(10), "the event of the release");
        var released = Assert.Single(events);
        Assert.Equal((EventKind.LeaderReleased, _spec.NodeId, "cell-t guard"), (released.Kind, released.NodeId, released.Source));
        output.WriteLine(released.Sentence);
        // Nothing armed and its owner gone: the guard leaves.
        await Eventually.UntilAsync(() => Task.FromResult(!_guard.GuardRunning()), TimeSpan.FromSeconds(5), "the guard exiting");
    }
}
