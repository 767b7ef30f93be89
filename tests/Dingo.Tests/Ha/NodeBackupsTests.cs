using Dingo.Backups;
using Dingo.Cells;
using Dingo.Ha;
using Dingo.Model;
using Dingo.Tests.Support;
using Xunit.Abstractions;

namespace Dingo.Tests.Ha;

/// <summary>
/// A leader's backup duty (WAL archiver and base backups) and the node going away: once closed, a pass that was still
/// running when the node's actor stopped starts no duty that nobody would stop again.
/// </summary>
[SuiteCost(1)]
public sealed class NodeBackupsTests(ITestOutputHelper output) : IAsyncLifetime
{
    private readonly string _root = Path.Combine("/tmp", "dingo-nodebackups-" + Guid.NewGuid().ToString("N")[..12]);

    public Task InitializeAsync() => Task.CompletedTask;

    public Task DisposeAsync()
    {
        try { Directory.Delete(_root, recursive: true); } catch (DirectoryNotFoundException) { }
        return Task.CompletedTask;
    }

    [Fact]
    public async Task A_closed_node_starts_no_duty_again_while_one_only_stopped_from_leading_does()
    {
        await using var etcd = TestEtcd.NewStore(out var prefix);
        try
        {
            var settings = TestPlatform.NewSettings();
            var cell = new CellBackups(new LocalFolderObjectStore(Path.Combine(_root, "store")), settings.Backups!, etcd, Path.Combine(_root, "work"),
                "/usr/lib/postgresql/15/bin", settings.Ha, new TestOutputLogger(output));
            var spec = new NodeSpec { NodeId = "n-1", InstanceId = "nb-1", CellId = "cell-1", Port = FreePorts.One(), CreatedAt = DateTimeOffset.UtcNow };
            var runtime = new LocalProcessRuntime(new LocalProcessRuntimeOptions(Path.Combine(_root, "nodes")), new TestOutputLogger<LocalProcessRuntime>(output));
            var state = new AgentState(spec, etcd, runtime, settings, new TestOutputLogger(output), events: null, cell);
            var record = new InstanceRecord
            {
                Id = spec.InstanceId, ServiceId = "s", PlanId = "p", OrganizationGuid = "o", SpaceGuid = "sp", Port = 20001, ReadOnlyPort = 20002, Database = "dingo",
                NodeCount = 1, Superuser = new Credentials("dingo_admin", "Pw" + Guid.NewGuid().ToString("N")), Desired = DesiredState.Present,
            };
            var lead = new HaAction.Lead("no action: I hold the leader key");
            var backups = new NodeBackups(state);

            await backups.KeepAsync(lead, failure: null, record, holdsLease: true);
            Assert.True(backups.Active);
            await backups.KeepAsync(new HaAction.Wait("waiting"), failure: null, record, holdsLease: false);
            Assert.False(backups.Active);
            await backups.KeepAsync(lead, failure: null, record, holdsLease: true);
            Assert.True(backups.Active); // only no longer leading: leading again starts the duty again

            await backups.CloseAsync();
            Assert.False(backups.Active);
            await backups.KeepAsync(lead, failure: null, record, holdsLease: true); // the pass that was still running
            Assert.False(backups.Active);
        }
        finally
        {
            await etcd.DeletePrefixAsync(prefix + "/", CancellationToken.None);
        }
    }
}
