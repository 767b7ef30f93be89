using Dingo.Backups;
using Dingo.Cells;
using Dingo.Model;
using Dingo.Store;
using Dingo.Tests.Support;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Xunit.Abstractions;

namespace Dingo.Tests.Backups;

/// <summary>
/// A new cluster's first base backup waits until the cell's runtime has made or started no node for
/// `dingo.backups.first-backup-settle` (BackupSchedule.FirstBackupWaits; BackupScheduleRulesTests has its table), on a real
/// runtime, PostgreSQL, etcd and store: the cell's own node work holds it back, and an instance whose commits wait for
/// it does not wait.
/// </summary>
[SuiteCost(25)]
public sealed class FirstBackupSettleTests(ITestOutputHelper output) : IAsyncLifetime
{
    private static readonly TimeSpan Settle = TimeSpan.FromSeconds(3);
    private readonly string _root = Path.Combine("/tmp", "dingo-settle-" + Guid.NewGuid().ToString("N")[..12]);

    public Task InitializeAsync() => Task.CompletedTask;

    public Task DisposeAsync()
    {
        try { Directory.Delete(_root, recursive: true); } catch (DirectoryNotFoundException) { }
        return Task.CompletedTask;
    }

    [Fact]
    public async Task The_first_base_backup_waits_while_the_cell_makes_and_starts_nodes_unless_commits_wait_for_it()
    {
        await using var etcd = TestEtcd.NewStore(out var prefix);
        var runtime = new LocalProcessRuntime(new LocalProcessRuntimeOptions(Path.Combine(_root, "nodes")), new TestOutputLogger<LocalProcessRuntime>(output));
        var superuser = new Credentials("dingo_admin", "Pw" + Guid.NewGuid().ToString("N"));
        var a = new NodeLaunchSpec("n-1", "settle-a", "127.0.0.1", FreePorts.One(), superuser);
        var b = new NodeLaunchSpec("n-2", "settle-b", "127.0.0.1", FreePorts.One(), superuser);
        var store = new LocalFolderObjectStore(Path.Combine(_root, "store"));
        var log = new Lines(output);
        var backups = new BaseBackups(store, NullLogger.Instance);
        try
        {
            await runtime.CreateAsync(a, CancellationToken.None);
            await runtime.StartAsync(a, null, CancellationToken.None);
            // Held busy until the duty has said it waits (on a loaded machine its first look could come after the settle time).
            var held = true;
            var cell = new CellBackups(store, TestPlatform.NewSettings().Backups! with { FirstBackupSettle = Settle }, etcd, Path.Combine(_root, "work"),
                "/usr/lib/postgresql/15/bin", TestPlatform.NewSettings().Ha, log) { NodeWorkQuietFor = span => !Volatile.Read(ref held) && runtime.NodeWorkQuietFor(span) };
            await using (cell.Lead(a.InstanceId, a.NodeId, "127.0.0.1", a.Port, superuser, baseBackupNow: false))
            {
                await Eventually.UntilAsync(() => Task.FromResult(log.Has("the first waits until the cell has made or started no node for 3 s")),
                    TimeSpan.FromSeconds(30), "the duty puts the first base backup off");
                // The cell makes and starts another node (initdb, a start): the first backup waits for that work too. The
                // runtime counts the work from the call on (before its first await), so the hold ends inside it.
                var creating = runtime.CreateAsync(b, CancellationToken.None);
                Volatile.Write(ref held, false);
                await creating;
                await runtime.StartAsync(b, null, CancellationToken.None);
                var workEnded = DateTimeOffset.UtcNow;
                Assert.Empty(await backups.ListAsync(a.InstanceId, CancellationToken.None));
                await Eventually.UntilAsync(async () => (await backups.ListAsync(a.InstanceId, CancellationToken.None)).Count == 1,
                    TimeSpan.FromSeconds(60), "the first base backup once the cell has settled");
                var taken = (await backups.ListAsync(a.InstanceId, CancellationToken.None))[0];
                output.WriteLine($"node work ended {workEnded:HH:mm:ss.fff}, the backup started {taken.StartedAt:HH:mm:ss.fff}");
                // The work's end is marked inside StartAsync, a moment before workEnded was read.
                Assert.True(taken.StartedAt >= workEnded + Settle - TimeSpan.FromMilliseconds(200),
                    $"the base backup started at {taken.StartedAt:O}, less than {Settle.TotalSeconds} s after the cell's node work ended at {workEnded:O}");
                Assert.True(log.Has("the store holds no base backup of this instance yet (waited"), "the backup's reason says it waited");
            }

            // Commits that wait for a standby (cluster-ha) or for the store (store-sync): no waiting, even on a busy cell.
            await runtime.StartAsync(b, null, CancellationToken.None); // node work: the cell is not quiet now
            await using (var duty = cell.Lead(b.InstanceId, b.NodeId, "127.0.0.1", b.Port, superuser, baseBackupNow: false))
            {
                duty.Synchronous = true;
                await Eventually.UntilAsync(async () => (await backups.ListAsync(b.InstanceId, CancellationToken.None)).Count == 1,
                    TimeSpan.FromSeconds(60), "the synchronous instance's first base backup");
                Assert.False(log.Has($"base backup of {b.InstanceId}: the first waits"), "a synchronous instance's first base backup waited for the cell");
            }
        }
        finally
        {
            foreach (var spec in new[] { a, b }) await runtime.RemoveAsync(spec.NodeId, CancellationToken.None);
            await etcd.DeletePrefixAsync(prefix + "/", CancellationToken.None);
        }
    }

    /// <summary>The test's output, and the lines kept to look for.</summary>
    private sealed class Lines(ITestOutputHelper output) : TestOutputLogger(output), ILogger
    {
        private readonly List<string> _lines = [];

        public bool Has(string text)
        {
            lock (_lines) return _lines.Any(l => l.Contains(text, StringComparison.Ordinal));
        }

        public new void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            lock (_lines) _lines.Add(formatter(state, exception));
            base.Log(logLevel, eventId, state, exception, formatter);
        }
    }
}
