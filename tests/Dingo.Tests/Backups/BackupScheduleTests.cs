using System.Text;
using System.Text.Json;
using Dingo.Backups;
using Dingo.Broker;
using Dingo.Cells;
using Dingo.Model;
using Dingo.Store;
using Dingo.Tests.Support;
using Microsoft.Extensions.Logging.Abstractions;
using Npgsql;
using Xunit.Abstractions;

namespace Dingo.Tests.Backups;

/// <summary>Retention of base backups and WAL, deleted instances' retention, and the archive backlog alarm.</summary>
[SuiteCost(9)]
public sealed class BackupScheduleTests(ITestOutputHelper output) : IAsyncLifetime
{
    private readonly string _root = Path.Combine("/tmp", "dingo-sched-" + Guid.NewGuid().ToString("N")[..12]);
    private const ulong Seg = 16 * 1024 * 1024;

    public Task InitializeAsync() => Task.CompletedTask;

    public Task DisposeAsync()
    {
        try { Directory.Delete(_root, recursive: true); } catch (DirectoryNotFoundException) { }
        return Task.CompletedTask;
    }

    private static async Task PutAsync(IObjectStore store, string key, byte[] bytes)
    {
        using var ms = new MemoryStream(bytes);
        await store.PutAsync(key, ms);
    }

    private static async Task AddBackupAsync(IObjectStore store, string id, ulong system, uint tli, ulong startLsn, DateTimeOffset finished)
    {
        var label = finished.ToString("yyyyMMdd'T'HHmmssfff'Z'", System.Globalization.CultureInfo.InvariantCulture);
        var prefix = ArchiveLayout.BaseBackup(id, system, label);
        await PutAsync(store, prefix + "base.tar", [1, 2, 3]);
        var manifest = new BaseBackupManifest
        {
            Label = label, InstanceId = id, SystemId = system, Timeline = tli, StartLsn = Lsn.Format(startLsn), EndLsn = Lsn.Format(startLsn + 100),
            StartedAt = finished.AddSeconds(-1), FinishedAt = finished, Source = "n-1", Files = [new BackupFile("base.tar", 3, "x")],
        };
        await PutAsync(store, prefix + BaseBackups.ManifestName, JsonSerializer.SerializeToUtf8Bytes(manifest, Json.Options));
    }

    [Fact]
    public async Task Retention_keeps_the_newest_backups_and_the_WAL_they_need_and_nothing_older()
    {
        var store = new LocalFolderObjectStore(Path.Combine(_root, "store"));
        const string id = "inst-1";
        var t0 = DateTimeOffset.UtcNow.AddDays(-10);
        // An old system (re-initialised since), then the current one with five daily backups.
        await AddBackupAsync(store, id, 111, 1, 1 * Seg, t0);
        await PutAsync(store, ArchiveLayout.Segment(id, 111, new WalSegment(1, 1, Seg)), [0]);
        for (var day = 1; day <= 5; day++) await AddBackupAsync(store, id, 222, 1, (ulong)(day * 10) * Seg, t0.AddDays(day));
        for (ulong n = 5; n <= 60; n += 5) await PutAsync(store, ArchiveLayout.Segment(id, 222, new WalSegment(1, n, Seg)), [0]);
        await PutAsync(store, ArchiveLayout.Part(id, 222, new WalSegment(1, 12, Seg), 12 * Seg, 12 * Seg + 10), [0]);
        await PutAsync(store, ArchiveLayout.Part(id, 222, new WalSegment(2, 61, Seg), 61 * Seg, 61 * Seg + 10), [0]);
        // A third system that never had a backup yet (just initialised): never touched.
        await PutAsync(store, ArchiveLayout.Segment(id, 333, new WalSegment(1, 1, Seg)), [0]);

        var deleted = await new BaseBackups(store, NullLogger.Instance).ApplyRetentionAsync(id, keep: 4, CancellationToken.None);

        var left = await new BaseBackups(store, NullLogger.Instance).ListAsync(id, CancellationToken.None);
        Assert.Equal(4, left.Count);
        Assert.All(left, b => Assert.Equal(222UL, b.SystemId));
        Assert.Equal(t0.AddDays(2), left[0].FinishedAt);
        var keys = (await store.ListAsync(ArchiveLayout.Systems(id))).Select(o => o.Key).ToList();
        Assert.DoesNotContain(keys, k => k.Contains("/111/", StringComparison.Ordinal));
        // The oldest kept backup starts in segment 20: everything before it goes, the rest stays.
        Assert.DoesNotContain(ArchiveLayout.Segment(id, 222, new WalSegment(1, 15, Seg)), keys);
        Assert.DoesNotContain(keys, k => k.Contains("/parts/", StringComparison.Ordinal) && k.Contains("0000000C", StringComparison.Ordinal));
        Assert.Contains(ArchiveLayout.Segment(id, 222, new WalSegment(1, 20, Seg)), keys);
        Assert.Contains(ArchiveLayout.Segment(id, 222, new WalSegment(1, 60, Seg)), keys);
        Assert.Contains(keys, k => k.Contains("/parts/", StringComparison.Ordinal) && k.Contains("0000003D", StringComparison.Ordinal));
        Assert.Contains(ArchiveLayout.Segment(id, 333, new WalSegment(1, 1, Seg)), keys);
        output.WriteLine($"deleted {deleted} objects");
    }

    [Fact]
    public async Task A_deleted_instance_is_marked_then_its_backups_go_after_the_retention_and_an_empty_etcd_forgets_nothing()
    {
        await using var etcd = TestEtcd.NewStore(out var prefix);
        var store = new LocalFolderObjectStore(Path.Combine(_root, "store"));
        var settings = TestPlatform.NewSettings(extra: "dingo.backups.deleted-retention = 0s");
        settings = settings with { Backups = settings.Backups! with { DeletedRetention = TimeSpan.Zero } };
        var recovery = new Recovery(etcd, store, settings, NullLogger<Recovery>.Instance);
        var janitor = new ClusterDataBackup(etcd, store, recovery, settings, NullLogger<ClusterDataBackup>.Instance);
        var record = new InstanceRecord
        {
            Id = "gone-1", ServiceId = Catalog.ServiceId, PlanId = Catalog.SoloPlanId, OrganizationGuid = "o", SpaceGuid = "s",
            Port = 21001, NodeCount = 1, Superuser = new Credentials("dingo_admin", "pw"), CreatedAt = DateTimeOffset.UtcNow,
        };
        await etcd.PutAsync(etcd.Keys.Instance(record.Id), record, CancellationToken.None);
        await PutAsync(store, ArchiveLayout.Segment(record.Id, 1, new WalSegment(1, 1, Seg)), [0]);

        await janitor.SyncAsync(CancellationToken.None);
        var saved = await recovery.ReadRecordAsync(record.Id, CancellationToken.None);
        Assert.NotNull(saved);
        Assert.Equal(21001, saved.Instance.Port);
        Assert.Null(saved.DeletedAt);

        // etcd loses everything (a lost platform): nothing is marked deleted, nothing is removed.
        await etcd.DeletePrefixAsync(prefix + "/", CancellationToken.None);
        await janitor.SyncAsync(CancellationToken.None);
        Assert.Null((await recovery.ReadRecordAsync(record.Id, CancellationToken.None))!.DeletedAt);

        // A real deletion leaves the retired port behind: marked, then (retention 0) removed with every backup.
        await etcd.PutAsync(etcd.Keys.Port(21001), new PortRecord { InstanceId = record.Id, State = PortState.Retired }, CancellationToken.None);
        await janitor.SyncAsync(CancellationToken.None);
        Assert.NotNull((await recovery.ReadRecordAsync(record.Id, CancellationToken.None))!.DeletedAt);
        await janitor.SyncAsync(CancellationToken.None);
        Assert.Null(await recovery.ReadRecordAsync(record.Id, CancellationToken.None));
        Assert.Empty(await store.ListAsync(ArchiveLayout.Instance(record.Id)));
        await TestPlatform.DestroyDataAsync(settings);
    }

    [Fact]
    public async Task When_the_store_refuses_writes_the_backlog_alarm_rises_and_nothing_is_lost()
    {
        await using var etcd = TestEtcd.NewStore(out var prefix);
        var runtime = new LocalProcessRuntime(new LocalProcessRuntimeOptions(Path.Combine(_root, "nodes")), new TestOutputLogger<LocalProcessRuntime>(output));
        var superuser = new Credentials("dingo_admin", "Pw" + Guid.NewGuid().ToString("N"));
        var spec = new NodeLaunchSpec("n-1", "alarm-1", "127.0.0.1", FreePorts.One(), superuser);
        var failing = new FailingObjectStore(new LocalFolderObjectStore(Path.Combine(_root, "store")));
        try
        {
            await runtime.CreateAsync(spec, CancellationToken.None);
            await runtime.StartAsync(spec, null, CancellationToken.None);
            var settings = TestPlatform.NewSettings().Backups! with { BacklogAlarmBytes = 8 * 1024 * 1024 };
            var cell = new CellBackups(failing, settings, etcd, Path.Combine(_root, "work"), "/usr/lib/postgresql/15/bin",
                TestPlatform.NewSettings().Ha, new TestOutputLogger(output));
            await using (var duty = cell.Lead(spec.InstanceId, spec.NodeId, "127.0.0.1", spec.Port, superuser, baseBackupNow: false))
            {
                await Eventually.UntilAsync(() => Task.FromResult(duty.Progress.ArchivedLsn > 0), TimeSpan.FromSeconds(30), "archiving starts");
                failing.Failing = true;
                var cs = new NpgsqlConnectionStringBuilder { Host = "127.0.0.1", Port = spec.Port, Username = superuser.Username, Password = superuser.Password, Database = "postgres", Pooling = false }.ConnectionString;
                await using (var conn = new NpgsqlConnection(cs))
                {
                    await conn.OpenAsync();
                    await using var cmd = new NpgsqlCommand("CREATE TABLE big AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 100000) g", conn);
                    await cmd.ExecuteNonQueryAsync();
                }
                await Eventually.UntilAsync(async () =>
                    (await etcd.GetAsync<BackupState>(etcd.Keys.Backup(spec.InstanceId), CancellationToken.None))?.Value.Alarm?.Contains("backlog", StringComparison.Ordinal) == true,
                    TimeSpan.FromSeconds(30), "the backlog alarm in etcd");
                var alarm = (await etcd.GetAsync<BackupState>(etcd.Keys.Backup(spec.InstanceId), CancellationToken.None))!.Value;
                output.WriteLine($"alarm: {alarm.Alarm}");

                // The store comes back: the archiver catches up by itself and the alarm clears.
                failing.Failing = false;
                await Eventually.UntilAsync(async () =>
                    (await etcd.GetAsync<BackupState>(etcd.Keys.Backup(spec.InstanceId), CancellationToken.None))?.Value is { Alarm: null, BacklogBytes: < 8 * 1024 * 1024 },
                    TimeSpan.FromSeconds(60), "the alarm clears once the store takes the backlog");
            }
        }
        finally
        {
            await runtime.RemoveAsync(spec.NodeId, CancellationToken.None);
            await etcd.DeletePrefixAsync(prefix + "/", CancellationToken.None);
        }
    }

    /// <summary>
    /// Two leaders on one cell, both due for their first base backup at once: the cell takes them one after the other
    /// (CellBackups.BaseBackupGate), and both are taken.
    /// </summary>
    [Fact]
    public async Task A_new_primarys_duty_publishes_at_once_and_asks_its_server_only_a_period_later()
    {
        // A new primary's duty opened a session of its own to ask for the slot's backlog the moment it began, beside the
        // provision's bind; its archiver knows the backlog of a new primary as well.
        await using var etcd = TestEtcd.NewStore(out var prefix);
        var runtime = new LocalProcessRuntime(new LocalProcessRuntimeOptions(Path.Combine(_root, "nodes")), new TestOutputLogger<LocalProcessRuntime>(output));
        var superuser = new Credentials("dingo_admin", "Pw" + Guid.NewGuid().ToString("N"));
        var spec = new NodeLaunchSpec("n-1", "ask-1", "127.0.0.1", FreePorts.One(), superuser);
        var store = new LocalFolderObjectStore(Path.Combine(_root, "store"));
        try
        {
            await runtime.CreateAsync(spec, CancellationToken.None);
            await runtime.StartAsync(spec, null, CancellationToken.None);
            await NodeSql.WaitServingAsync(spec, superuser);
            var cell = new CellBackups(store, TestPlatform.NewSettings().Backups!, etcd, Path.Combine(_root, "work"), "/usr/lib/postgresql/15/bin",
                TestPlatform.NewSettings().Ha, new TestOutputLogger(output));
            var began = DateTime.UtcNow;
            await using (var duty = cell.Lead(spec.InstanceId, spec.NodeId, "127.0.0.1", spec.Port, superuser, baseBackupNow: false))
            {
                await Eventually.UntilAsync(async () => await etcd.GetAsync<BackupState>(etcd.Keys.Backup(spec.InstanceId), CancellationToken.None) is not null,
                    TimeSpan.FromSeconds(20), "the duty's first state");
                var sessions = await NodeSql.ScalarAsync(spec, superuser,
                    $"SELECT count(*) FROM pg_stat_activity WHERE application_name = '{Dingo.Ha.PostgresProbe.BackupsApplicationName}'");
                Assert.True(DateTime.UtcNow - began < TimeSpan.FromSeconds(9), "the first state came too late to tell");
                Assert.Equal(0L, sessions);
            }
        }
        finally
        {
            await runtime.RemoveAsync(spec.NodeId, CancellationToken.None);
            await etcd.DeletePrefixAsync(prefix + "/", CancellationToken.None);
        }
    }

    [Fact]
    public async Task A_cell_takes_one_base_backup_at_a_time_and_every_due_one_is_taken()
    {
        await using var etcd = TestEtcd.NewStore(out var prefix);
        var runtime = new LocalProcessRuntime(new LocalProcessRuntimeOptions(Path.Combine(_root, "nodes")), new TestOutputLogger<LocalProcessRuntime>(output));
        var superuser = new Credentials("dingo_admin", "Pw" + Guid.NewGuid().ToString("N"));
        var specs = new[] { new NodeLaunchSpec("n-1", "gate-1", "127.0.0.1", FreePorts.One(), superuser), new NodeLaunchSpec("n-2", "gate-2", "127.0.0.1", FreePorts.One(), superuser) };
        var store = new LocalFolderObjectStore(Path.Combine(_root, "store"));
        try
        {
            foreach (var spec in specs)
            {
                await runtime.CreateAsync(spec, CancellationToken.None);
                await runtime.StartAsync(spec, null, CancellationToken.None);
            }
            var cell = new CellBackups(store, TestPlatform.NewSettings().Backups!, etcd, Path.Combine(_root, "work"), "/usr/lib/postgresql/15/bin",
                TestPlatform.NewSettings().Ha, new TestOutputLogger(output));
            var duties = specs.Select(spec => cell.Lead(spec.InstanceId, spec.NodeId, "127.0.0.1", spec.Port, superuser, baseBackupNow: true)).ToList();
            try
            {
                var backups = new BaseBackups(store, NullLogger.Instance);
                await Eventually.UntilAsync(async () => (await backups.ListAsync("gate-1", CancellationToken.None)).Count == 1
                                                        && (await backups.ListAsync("gate-2", CancellationToken.None)).Count == 1,
                    TimeSpan.FromSeconds(60), "a base backup of each instance");
                var (a, b) = ((await backups.ListAsync("gate-1", CancellationToken.None))[0], (await backups.ListAsync("gate-2", CancellationToken.None))[0]);
                output.WriteLine($"gate-1 {a.StartedAt:HH:mm:ss.fff}-{a.FinishedAt:HH:mm:ss.fff}, gate-2 {b.StartedAt:HH:mm:ss.fff}-{b.FinishedAt:HH:mm:ss.fff}");
                var (first, second) = a.StartedAt <= b.StartedAt ? (a, b) : (b, a);
                Assert.True(first.FinishedAt <= second.StartedAt, $"the backups overlapped: {first.StartedAt:O}-{first.FinishedAt:O} and {second.StartedAt:O}-{second.FinishedAt:O}");
            }
            finally
            {
                foreach (var duty in duties) await duty.DisposeAsync();
            }
        }
        finally
        {
            foreach (var spec in specs) await runtime.RemoveAsync(spec.NodeId, CancellationToken.None);
            await etcd.DeletePrefixAsync(prefix + "/", CancellationToken.None);
        }
    }
}
