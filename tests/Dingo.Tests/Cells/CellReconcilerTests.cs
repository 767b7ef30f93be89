using Dingo.Cells;
using Dingo.Ha;
using Dingo.Model;
using Dingo.Postgres;
using Dingo.Store;
using Dingo.Tests.Support;
using Microsoft.Extensions.Logging.Abstractions;

namespace Dingo.Tests.Cells;

/// <summary>
/// The cell's reconcile passes and a node's HA loop against real etcd and a real runtime: run by
/// <see cref="ProcessCellReconcilerTests"/> (local processes) and <see cref="DockerCellReconcilerTests"/> (containers on podman).
/// </summary>
public abstract class CellReconcilerTests : IAsyncLifetime
{
    private readonly Dingo.Config.DingoSettings _settings;
    private EtcdStore _store = null!;
    private IContainerRuntime _runtime = null!;
    private CellReconciler _cell = null!;
    private CellLease _lease = null!;
    private static readonly CancellationToken None = CancellationToken.None;
    private Keys K => _store.Keys;

    protected CellReconcilerTests(string runtime)
    {
        // A short grace, so the test of an unwanted node's data being kept and then removed does not wait minutes.
        var settings = TestPlatform.NewSettings(runtime: runtime);
        _settings = settings with { Cell = settings.Cell with { OrphanGrace = TimeSpan.FromSeconds(3) } };
    }

    protected Dingo.Config.DingoSettings Settings => _settings;
    protected IContainerRuntime Runtime => _runtime;
    protected CellReconciler Cell => _cell;

    /// <summary>A runtime over this cell's nodes; a second one stands for the cell process after a restart.</summary>
    protected abstract IContainerRuntime NewRuntime();

    /// <summary>Who runs the node now (pid, or container and its start): unchanged when a node is adopted.</summary>
    protected abstract Task<string> IncarnationAsync(RuntimeNode node);

    public Task InitializeAsync()
    {
        _store = new EtcdStore(_settings.EtcdEndpoints, _settings.EtcdPrefix);
        _runtime = NewRuntime();
        _lease = new CellLease(_store, TimeSpan.FromSeconds(5), NullLogger.Instance);
        _cell = new CellReconciler(_store, _runtime, _lease, _settings, NullLogger.Instance);
        return Task.CompletedTask;
    }

    public async Task DisposeAsync()
    {
        foreach (var n in await _runtime.ListAsync(None)) await _runtime.RemoveAsync(n.NodeId, None);
        await TestPlatform.DestroyDataAsync(_settings);
        await _store.DisposeAsync();
        (_runtime as IDisposable)?.Dispose();
    }

    protected async Task<NodeSpec> AssignAsync()
    {
        var id = "i-" + Guid.NewGuid().ToString("N")[..8];
        await _store.PutAsync(K.Instance(id), new InstanceRecord
        {
            Id = id, ServiceId = Catalog.ServiceId, PlanId = Catalog.SoloPlanId, OrganizationGuid = "o", SpaceGuid = "s",
            Port = _settings.Router.PortFirst, NodeCount = 1, Superuser = new Credentials(DatabaseAdmin.SuperuserName, Secrets.Password()),
            Replication = new Credentials(DatabaseAdmin.ReplicationUserName, Secrets.Password()),
        }, None);
        var spec = new NodeSpec { NodeId = "n-" + Guid.NewGuid().ToString("N")[..6], InstanceId = id, CellId = "cell-1", Port = _settings.NodePortFirst, CreatedAt = DateTimeOffset.UtcNow };
        await _store.PutAsync(K.Assignment("cell-1", spec.NodeId), spec, None);
        await _store.PutAsync(K.Node(id, spec.NodeId), spec, None);
        return spec;
    }

    private NodeAgent Agent(NodeSpec spec, IContainerRuntime? runtime = null) =>
        new(spec, _store, runtime ?? _runtime, _lease, _settings, NullLogger.Instance);

    protected async Task<NodeStatus?> PassUntilAsync(NodeSpec spec, Func<NodeStatus?, bool> done, TimeSpan timeout, NodeAgent? agent = null)
    {
        agent ??= Agent(spec);
        var deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            await _cell.RunPassAsync(new HashSet<string> { spec.NodeId }, None);
            await agent.RunPassAsync(None);
            var status = (await _store.GetAsync<NodeStatus>(K.Status(spec.InstanceId, spec.NodeId), None))?.Value;
            if (done(status)) return status;
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"node {spec.NodeId} did not get there: {status}");
            await Task.Delay(200);
        }
    }

    [Fact]
    public async Task An_assigned_node_is_bootstrapped_started_registered_and_leads()
    {
        var spec = await AssignAsync();
        var agent = Agent(spec);
        var status = await PassUntilAsync(spec, s => s?.State == NodeState.Running && s.Role == NodeRole.Primary, TimeSpan.FromSeconds(60), agent);
        Assert.Equal(NodeRole.Primary, status!.Role);
        Assert.NotNull(await _store.GetAsync<CellInfo>(K.Cell("cell-1"), None));
        var leader = (await _store.GetAsync<LeaderRecord>(K.Leader(spec.InstanceId), None))!.Value;
        Assert.Equal((spec.NodeId, spec.Port), (leader.NodeId, leader.Port));
        Assert.Equal(spec.NodeId, (await _store.GetAsync<string>(K.Initialize(spec.InstanceId), None))!.Value);

        // Further passes with nothing changed do nothing.
        Assert.Equal("no action: I hold the leader key", await agent.RunPassAsync(None));
        Assert.StartsWith("no action", (await _cell.RunPassAsync(new HashSet<string> { spec.NodeId }, None)).Summary);
    }

    [Fact]
    public async Task A_node_of_a_deleted_instance_is_stopped_and_its_data_deleted_at_once()
    {
        var spec = await AssignAsync();
        await PassUntilAsync(spec, s => s?.State == NodeState.Running, TimeSpan.FromSeconds(60));
        // Deprovision: the broker marks the instance absent and removes its assignments.
        var instance = (await _store.GetAsync<InstanceRecord>(K.Instance(spec.InstanceId), None))!.Value;
        await _store.PutAsync(K.Instance(spec.InstanceId), instance with { Desired = DesiredState.Absent }, None);
        await _store.DeleteAsync(K.Assignment("cell-1", spec.NodeId), None);
        // While its agent still runs, the node is left alone; once the agent is gone, it is removed.
        Assert.DoesNotContain("removed", (await _cell.RunPassAsync(new HashSet<string> { spec.NodeId }, None)).Summary);
        var summary = (await _cell.RunPassAsync(new HashSet<string>(), None)).Summary;
        Assert.Contains($"removed {spec.NodeId}", summary);
        Assert.Empty(await _runtime.ListAsync(None));
        Assert.Null(await _store.GetAsync<NodeStatus>(K.Status(spec.InstanceId, spec.NodeId), None));
    }

    [Fact]
    public async Task A_node_etcd_stops_assigning_without_a_removal_is_stopped_and_its_data_kept_and_shown_even_when_safe_elsewhere()
    {
        var spec = await AssignAsync();
        var running = await PassUntilAsync(spec, s => s?.State == NodeState.Running, TimeSpan.FromSeconds(60));
        // The assignment goes, but no tombstone says the node was removed (what an edit by hand, or a half-restored
        // etcd, looks like): not an instruction to delete.
        await _store.DeleteAsync(K.Assignment("cell-1", spec.NodeId), None);
        await LeadElsewhereAsync(spec, running!.Lsn);

        Assert.Contains($"stopped {spec.NodeId}", (await _cell.RunPassAsync(new HashSet<string>(), None)).Summary);
        await Task.Delay(_settings.Cell.OrphanGrace);
        Assert.StartsWith("no action", (await _cell.RunPassAsync(new HashSet<string>(), None)).Summary);
        var kept = Assert.Single(await _runtime.ListAsync(None));
        Assert.False(kept.Running);
        Assert.True(kept.Initialised);
        var cell = (await _store.GetAsync<CellInfo>(K.Cell("cell-1"), None))!.Value;
        Assert.Null(cell.Problem); // it still takes nodes
        Assert.Contains($"{spec.NodeId} (instance {spec.InstanceId} no longer lists it, but etcd holds no removal of it)", cell.Kept);
    }

    [Fact]
    public async Task A_node_removed_by_a_shrink_is_deleted_after_the_grace_once_safe_elsewhere_even_after_a_cell_restart()
    {
        var spec = await AssignAsync();
        var running = await PassUntilAsync(spec, s => s?.State == NodeState.Running, TimeSpan.FromSeconds(60));
        // Two nodes listed for a one-node instance, an update in progress: the instance's own decision removes the newest
        // replica. The other node (on cell-2) leads, but behind this one's last position.
        var other = await LeadElsewhereAsync(spec, running!.Lsn - 1);
        await _store.PutAsync(K.Node(spec.InstanceId, other.NodeId), other, None);
        await _store.PutAsync(K.Operation(spec.InstanceId), new OperationRecord
        {
            Id = "update-1", Kind = OperationKind.Update, State = OperationState.InProgress, Description = "accepted: resizing from 2 to 1 node(s)",
            StartedAt = DateTimeOffset.UtcNow, UpdatedAt = DateTimeOffset.UtcNow,
        }, None);
        var decision = await new Dingo.Instances.InstanceReconciler(_store, _settings, NullLogger.Instance).RunPassAsync(spec.InstanceId, None);
        var remove = Assert.IsType<Dingo.Instances.InstanceDecision.RemoveNodes>(decision);
        Assert.Equal(spec.NodeId, Assert.Single(remove.Nodes).NodeId);
        var tombstone = (await _store.GetAsync<NodeTombstone>(K.RemovedNode(spec.NodeId), None))!.Value;
        Assert.Equal(("cell-1", spec.InstanceId), (tombstone.CellId, tombstone.InstanceId));
        Assert.Equal(running.Lsn, tombstone.LastLsn);
        Assert.True(running.Timeline > 0, "a running node reports its timeline");
        Assert.Equal(running.Timeline, tombstone.LastTimeline);
        // Its own report goes (as when the cell stays away past its lease): the tombstone still holds the bar.
        await _store.DeleteAsync(K.Status(spec.InstanceId, spec.NodeId), None);
        Assert.Null(await _store.GetAsync<NodeSpec>(K.Assignment("cell-1", spec.NodeId), None));

        // The cell restarts: a new runtime object and a reconciler with no memory of what it was assigned.
        var runtime = NewRuntime();
        try
        {
            var cell = new CellReconciler(_store, runtime, _lease, _settings, NullLogger.Instance);
            Assert.Equal(spec.InstanceId, Assert.Single(await runtime.ListAsync(None)).InstanceId);
            Assert.Contains($"stopped {spec.NodeId}", (await cell.RunPassAsync(new HashSet<string>(), None)).Summary);
            await Task.Delay(_settings.Cell.OrphanGrace);
            // Past the grace, but the primary is behind this node's last position and no backup holds it: kept.
            Assert.DoesNotContain("removed", (await cell.RunPassAsync(new HashSet<string>(), None)).Summary);
            Assert.Single(await runtime.ListAsync(None));
            Assert.Null((await _store.GetAsync<CellInfo>(K.Cell("cell-1"), None))!.Value.Kept); // removal recorded: nothing unexplained

            // The archive far past this node's position, but on another timeline: says nothing of this node's WAL. Kept.
            await _store.PutAsync(K.Backup(spec.InstanceId), new BackupState
            {
                NodeId = other.NodeId, Timeline = (uint)running.Timeline + 1, ArchivedLsn = Dingo.Backups.Lsn.Format((ulong)running.Lsn + (64UL << 20)),
                LastBaseBackup = "base-1", LastBaseBackupAt = DateTimeOffset.UtcNow, BaseBackups = 1, UpdatedAt = DateTimeOffset.UtcNow,
            }, None);
            Assert.DoesNotContain("removed", (await cell.RunPassAsync(new HashSet<string>(), None)).Summary);
            Assert.Single(await runtime.ListAsync(None));

            await LeadElsewhereAsync(spec, running.Lsn, other.NodeId);
            Assert.Contains($"removed {spec.NodeId}", (await cell.RunPassAsync(new HashSet<string>(), None)).Summary);
            Assert.Empty(await runtime.ListAsync(None));
        }
        finally
        {
            (runtime as IDisposable)?.Dispose();
        }
    }

    [Fact]
    public async Task A_cell_away_while_its_instance_was_deleted_removes_the_data_when_it_returns()
    {
        var spec = await AssignAsync();
        await PassUntilAsync(spec, s => s?.State == NodeState.Running, TimeSpan.FromSeconds(60));
        // The cell goes away (its registration and statuses with its lease); meanwhile the instance is deprovisioned
        // and its deletion finishes: no record is left, only the instance's tombstone.
        await _lease.RevokeAsync(None);
        var instance = (await _store.GetAsync<InstanceRecord>(K.Instance(spec.InstanceId), None))!;
        await _store.PutAsync(K.Instance(spec.InstanceId), instance.Value with { Desired = DesiredState.Absent }, None);
        await _store.PutAsync(K.Operation(spec.InstanceId), new OperationRecord
        {
            Id = "deprovision-1", Kind = OperationKind.Deprovision, State = OperationState.InProgress, Description = "accepted: removing nodes",
            StartedAt = DateTimeOffset.UtcNow, UpdatedAt = DateTimeOffset.UtcNow,
        }, None);
        var instances = new Dingo.Instances.InstanceReconciler(_store, _settings, NullLogger.Instance);
        Assert.IsType<Dingo.Instances.InstanceDecision.RemoveNodes>(await instances.RunPassAsync(spec.InstanceId, None));
        Assert.IsType<Dingo.Instances.InstanceDecision.FinishDeletion>(await instances.RunPassAsync(spec.InstanceId, None));
        Assert.Null(await _store.GetAsync<InstanceRecord>(K.Instance(spec.InstanceId), None));
        Assert.NotNull(await _store.GetAsync<InstanceTombstone>(K.DeletedInstance(spec.InstanceId), None));

        Assert.Contains($"removed {spec.NodeId}", (await _cell.RunPassAsync(new HashSet<string>(), None)).Summary);
        Assert.Empty(await _runtime.ListAsync(None));
    }

    [Fact]
    public async Task A_cell_pointed_at_an_empty_etcd_or_another_prefix_deletes_nothing_takes_no_node_and_says_why()
    {
        var spec = await AssignAsync();
        await PassUntilAsync(spec, s => s?.State == NodeState.Running, TimeSpan.FromSeconds(60));
        var identityFile = Path.Combine(_settings.DataDir, "cells", "cell-1", EtcdIdentity.FileName);
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(identityFile));

        // Another prefix: an etcd with no trace of this cell's node, and a node of its own assigned to cell-1.
        var elsewhere = _settings with { EtcdPrefix = _settings.EtcdPrefix + "-other" };
        await using var otherStore = new EtcdStore(elsewhere.EtcdEndpoints, elsewhere.EtcdPrefix);
        try
        {
            var stranger = spec with { NodeId = "n-" + Guid.NewGuid().ToString("N")[..6], InstanceId = "i-stranger" };
            await otherStore.PutAsync(otherStore.Keys.Assignment("cell-1", stranger.NodeId), stranger, None);
            var otherLease = new CellLease(otherStore, TimeSpan.FromSeconds(5), NullLogger.Instance);
            var misdirected = new CellReconciler(otherStore, _runtime, otherLease, elsewhere, NullLogger.Instance);
            var first = await misdirected.RunPassAsync(new HashSet<string>(), None);
            Assert.Empty(first.Desired); // takes no new node
            Assert.Contains($"stopped {spec.NodeId}", first.Summary); // no HA loop here: it must not serve
            await Task.Delay(_settings.Cell.OrphanGrace);
            Assert.DoesNotContain("removed", (await misdirected.RunPassAsync(new HashSet<string>(), None)).Summary);
            Assert.Equal(spec.NodeId, Assert.Single(await _runtime.ListAsync(None)).NodeId);
            var problem = (await otherStore.GetAsync<CellInfo>(otherStore.Keys.Cell("cell-1"), None))!.Value.Problem;
            Assert.Contains($"key prefix {elsewhere.EtcdPrefix}, not {_settings.EtcdPrefix}", problem);
            Assert.Contains("deleting nothing and taking no new node", problem);
            await otherLease.RevokeAsync(None);
        }
        finally
        {
            await otherStore.DeletePrefixAsync(otherStore.Keys.Root + "/", None);
        }

        // The same prefix, emptied (a wiped etcd started again answers with the same cluster id).
        await _store.DeletePrefixAsync(K.Root + "/", None);
        Assert.DoesNotContain("removed", (await _cell.RunPassAsync(new HashSet<string>(), None)).Summary);
        await Task.Delay(_settings.Cell.OrphanGrace);
        Assert.DoesNotContain("removed", (await _cell.RunPassAsync(new HashSet<string>(), None)).Summary);
        Assert.Equal(spec.NodeId, Assert.Single(await _runtime.ListAsync(None)).NodeId);
        Assert.Contains("an empty or wiped etcd", (await _store.GetAsync<CellInfo>(K.Cell("cell-1"), None))!.Value.Problem);
    }

    /// <summary>Another node (on cell-2) holds the instance's leader key, running and reporting the given WAL position.</summary>
    private async Task<NodeSpec> LeadElsewhereAsync(NodeSpec spec, long lsn, string? nodeId = null, int timeline = 1)
    {
        var other = spec with { NodeId = nodeId ?? "n-" + Guid.NewGuid().ToString("N")[..6], CellId = "cell-2", Port = _settings.NodePortFirst + 1, CreatedAt = spec.CreatedAt.AddMinutes(-1) };
        await _store.DeleteAsync(K.Leader(spec.InstanceId), None);
        await _store.PutAsync(K.Leader(spec.InstanceId), new LeaderRecord { NodeId = other.NodeId, Host = "127.0.0.1", Port = other.Port }, None);
        await _store.PutAsync(K.Status(spec.InstanceId, other.NodeId), new NodeStatus
        {
            NodeId = other.NodeId, InstanceId = spec.InstanceId, CellId = "cell-2", State = NodeState.Running, Role = NodeRole.Primary, Detail = "no action: I hold the leader key",
            Lsn = lsn, Timeline = timeline, Host = "127.0.0.1", Port = other.Port, UpdatedAt = DateTimeOffset.UtcNow,
        }, None);
        return other;
    }

    [Fact]
    public async Task A_restarted_cell_adopts_its_running_node_instead_of_recreating_it()
    {
        var spec = await AssignAsync();
        await PassUntilAsync(spec, s => s?.State == NodeState.Running && s.Role == NodeRole.Primary, TimeSpan.FromSeconds(60));
        var before = (await _runtime.ListAsync(None)).Single();
        var incarnation = await IncarnationAsync(before);
        // A new runtime and agent over the same data, as after the cell process restarts: the old leader key
        // (held under the dead process's lease) is released, and the same PostgreSQL takes it again.
        var runtime = NewRuntime();
        try
        {
            var reborn = Agent(spec, runtime);
            var status = await PassUntilAsync(spec, s => s?.Role == NodeRole.Primary && s.Decision == "no action: I hold the leader key", TimeSpan.FromSeconds(30), reborn);
            Assert.Equal(NodeState.Running, status!.State);
            var after = (await runtime.ListAsync(None)).Single();
            Assert.Equal(before.Pid, after.Pid);
            Assert.Equal(before.ContainerId, after.ContainerId);
            // The runtime still knows whose node it is, so its data can only ever go on its instance's word.
            Assert.Equal(spec.InstanceId, after.InstanceId);
            Assert.Equal(incarnation, await IncarnationAsync(after)); // the same process: adopted, not restarted
        }
        finally
        {
            (runtime as IDisposable)?.Dispose();
        }
    }
}

[SuiteCost(69)]
public sealed class ProcessCellReconcilerTests() : CellReconcilerTests("process")
{
    [Fact]
    public async Task A_node_made_before_its_instance_was_recorded_learns_it_from_its_assignment()
    {
        var spec = await AssignAsync();
        await PassUntilAsync(spec, s => s?.State == NodeState.Running, TimeSpan.FromSeconds(60));
        var record = Path.Combine(Settings.DataDir, "cells", "cell-1", "nodes", spec.NodeId + "@instance.json");
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(record));
        // As a node from an older version: no record beside its folder, and a cell restarted since.
        File.Delete(record);
        var restarted = NewRuntime();
        Assert.Null(Assert.Single(await restarted.ListAsync(CancellationToken.None)).InstanceId);
        await using var store = new EtcdStore(Settings.EtcdEndpoints, Settings.EtcdPrefix);
        await new CellReconciler(store, restarted, Cell.Lease, Settings, NullLogger.Instance).RunPassAsync(new HashSet<string> { spec.NodeId }, CancellationToken.None);
        Assert.Equal(spec.InstanceId, Assert.Single(await NewRuntime().ListAsync(CancellationToken.None)).InstanceId);
    }

    protected override IContainerRuntime NewRuntime() => new LocalProcessRuntime(
        new LocalProcessRuntimeOptions(Path.Combine(Settings.DataDir, "cells", "cell-1", "nodes"), Settings.Cell.PostgresBin, Settings.Cell.RunAsUser),
        NullLogger<LocalProcessRuntime>.Instance);

    protected override Task<string> IncarnationAsync(RuntimeNode node) => Task.FromResult($"pid {node.Pid}");
}

[SuiteCost(152)]
public sealed class DockerCellReconcilerTests() : CellReconcilerTests("docker")
{
    protected override IContainerRuntime NewRuntime() => new DockerRuntime(new DockerRuntimeOptions("cell-1", Settings.Cell.Docker), NullLogger.Instance);

    protected override async Task<string> IncarnationAsync(RuntimeNode node)
    {
        using var client = TestPodman.Client();
        var c = await client.Containers.InspectContainerAsync(node.ContainerId);
        return $"{c.ID} started {c.State.StartedAt}";
    }
}
