using System.Runtime.InteropServices;
using Dingo.Backups;
using Dingo.Cells;
using Dingo.Ha;
using Dingo.Health;
using Dingo.Model;
using Dingo.Tests.Support;
using Npgsql;
using Xunit.Abstractions;

namespace Dingo.Tests.Backups;

/// <summary>
/// Store-synchronous commit against real PostgreSQL 15, etcd and a local-folder store: a commit is acknowledged only
/// once the store holds it, waits (with the alarm and the metric) while the store is down, and every acknowledged
/// commit comes back from the store alone after PostgreSQL and its disk vanish in the middle of back-to-back commits.
/// </summary>
[SuiteCost(25)]
public sealed class StoreSyncTests(ITestOutputHelper output) : IAsyncLifetime
{
    private readonly string _root = Path.Combine("/tmp", "dingo-ssync-" + Guid.NewGuid().ToString("N")[..12]);
    private LocalProcessRuntime? _runtime;

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        if (_runtime is not null)
            foreach (var node in await _runtime.ListAsync(CancellationToken.None))
            {
                try { await _runtime.RemoveAsync(node.NodeId, new CancellationTokenSource(TimeSpan.FromSeconds(60)).Token); }
                catch (Exception e) { output.WriteLine($"cleanup: {e.Message}"); }
            }
        try { Directory.Delete(_root, recursive: true); } catch (DirectoryNotFoundException) { }
    }

    [Fact]
    public async Task A_commit_waits_for_the_store_and_every_acknowledged_one_survives_the_loss_of_the_node_and_its_disk()
    {
        await using var etcd = TestEtcd.NewStore(out var prefix);
        _runtime = new LocalProcessRuntime(new LocalProcessRuntimeOptions(Path.Combine(_root, "nodes")), new TestOutputLogger<LocalProcessRuntime>(output));
        var superuser = new Credentials("dingo_admin", "Pw" + Guid.NewGuid().ToString("N"));
        var spec = new NodeLaunchSpec("n-1", "ssync-" + Guid.NewGuid().ToString("N")[..8], "127.0.0.1", FreePorts.One(), superuser);
        var store = new FailingObjectStore(new LocalFolderObjectStore(Path.Combine(_root, "store")));
        var metrics = new CellMetrics();
        try
        {
            await _runtime.CreateAsync(spec, NodeSql.Ct());
            await _runtime.StartAsync(spec, null, NodeSql.Ct());
            await NodeSql.WaitServingAsync(spec, superuser);
            await NodeSql.ExecAsync(spec, superuser, "CREATE TABLE t(id int PRIMARY KEY)");
            var systemId = (ulong)(long)(await NodeSql.ScalarAsync(spec, superuser, "SELECT system_identifier FROM pg_control_system()"))!;
            await new BaseBackups(store, new TestOutputLogger(output)).TakeAsync(spec.InstanceId, systemId, spec.NodeId, "127.0.0.1", spec.Port, superuser,
                "/usr/lib/postgresql/15/bin", Path.Combine(_root, "work"), caFingerprint: null, NodeSql.Ct());

            var settings = TestPlatform.NewSettings().Backups! with { CommitWaitAlarm = TimeSpan.FromSeconds(1) };
            var cell = new CellBackups(store, settings, etcd, Path.Combine(_root, "work"), "/usr/lib/postgresql/15/bin",
                TestPlatform.NewSettings().Ha, new TestOutputLogger(output), metrics: metrics);
            var duty = cell.Lead(spec.InstanceId, spec.NodeId, "127.0.0.1", spec.Port, superuser, baseBackupNow: false);
            try
            {
                duty.StoreSynchronous = true;
                // What a store-sync leader's agent writes: the archiver is the synchronous standby.
                var setting = SynchronousCommit.Decide(false, true, [], []).Setting;
                await NodeSql.ExecAsync(spec, superuser, $"ALTER SYSTEM SET synchronous_standby_names = '{setting}'");
                await NodeSql.ExecAsync(spec, superuser, "SELECT pg_reload_conf()");
                await Eventually.UntilAsync(async () => (string?)await NodeSql.ScalarAsync(spec, superuser,
                    $"SELECT sync_state FROM pg_stat_replication WHERE application_name = '{WalArchiver.ApplicationName}'") == "sync",
                    TimeSpan.FromSeconds(30), "the archiver streams as the synchronous standby");

                // Each acknowledged commit is in the store when the client hears of it: read back right after it returns.
                await using var conn = NodeSql.Connection(spec, superuser);
                await conn.OpenAsync();
                for (var id = 1; id <= 20; id++)
                {
                    await using (var insert = new NpgsqlCommand($"INSERT INTO t VALUES ({id})", conn)) await insert.ExecuteNonQueryAsync();
                    await using var lsn = new NpgsqlCommand("SELECT pg_current_wal_insert_lsn() - '0/0'", conn);
                    var after = (ulong)(decimal)(await lsn.ExecuteScalarAsync())!;
                    // The commit's record ends at or before `after`; what the store holds must reach past the commit's start.
                    var stored = await StoredEndAsync(store, spec.InstanceId, systemId);
                    Assert.True(stored + 4096 >= after, $"commit {id} returned with the store at {Lsn.Format(stored)}, the server at {Lsn.Format(after)}");
                }

                // The store goes down: a commit waits, never acknowledged early; the alarm rises and the metric counts it.
                store.Failing = true;
                var waiting = Task.Run(async () =>
                {
                    await using var insert = new NpgsqlCommand("INSERT INTO t VALUES (1000)", conn);
                    await insert.ExecuteNonQueryAsync();
                });
                await Task.Delay(TimeSpan.FromSeconds(3));
                Assert.False(waiting.IsCompleted, "a commit returned while the store was down");
                await Eventually.UntilAsync(async () =>
                    (await etcd.GetAsync<BackupState>(etcd.Keys.Backup(spec.InstanceId), CancellationToken.None))?.Value is { CommitsWaiting: 1, Alarm: { } a }
                    && a.Contains("waiting for the object store", StringComparison.Ordinal),
                    TimeSpan.FromSeconds(20), "the commit-wait alarm in etcd");
                var state = (await etcd.GetAsync<BackupState>(etcd.Keys.Backup(spec.InstanceId), CancellationToken.None))!.Value;
                output.WriteLine($"alarm: {state.Alarm}");
                var text = await ScrapeAsync(metrics);
                Assert.Matches($"dingo_commits_waiting{{service_instance=\"{spec.InstanceId}\"}} 1", text);
                Assert.Matches($"dingo_commit_wait_seconds{{service_instance=\"{spec.InstanceId}\"}} [1-9]", text);
                Assert.False(waiting.IsCompleted, "a commit returned while the store was down");

                // The store is back: the commit returns, the alarm clears.
                store.Failing = false;
                await waiting.WaitAsync(TimeSpan.FromSeconds(30));
                await Eventually.UntilAsync(async () =>
                    (await etcd.GetAsync<BackupState>(etcd.Keys.Backup(spec.InstanceId), CancellationToken.None))?.Value is { CommitsWaiting: 0, Alarm: null },
                    TimeSpan.FromSeconds(30), "the alarm clears");

                // Back-to-back commits, then PostgreSQL SIGKILLed and the archiver stopped in one instant, the disk gone.
                var acked = new List<int>();
                using var writerStop = new CancellationTokenSource();
                var writer = Task.Run(async () =>
                {
                    try
                    {
                        for (var id = 2000; !writerStop.IsCancellationRequested; id++)
                        {
                            await using var insert = new NpgsqlCommand($"INSERT INTO t VALUES ({id})", conn);
                            await insert.ExecuteNonQueryAsync(CancellationToken.None);
                            lock (acked) acked.Add(id);
                        }
                    }
                    catch (Exception ex) when (ex is NpgsqlException or IOException or InvalidOperationException) { }
                });
                await Task.Delay(TimeSpan.FromMilliseconds(1500 + Random.Shared.Next(1000)));
                var tree = ProcStat.Tree((await _runtime.PostmasterPidAsync(spec.NodeId, NodeSql.Ct())).GetValueOrDefault());
                Assert.NotEmpty(tree);
                foreach (var pid in tree) _ = kill(pid, 19); // SIGSTOP first: no process answers or forks any more
                foreach (var pid in tree) _ = kill(pid, 9);
                await duty.DisposeAsync();
                writerStop.Cancel();
                await writer.WaitAsync(TimeSpan.FromSeconds(30));
                List<int> acknowledged;
                lock (acked) acknowledged = acked.ToList();
                Assert.True(acknowledged.Count > 10, $"only {acknowledged.Count} commits before the kill");
                await _runtime.RemoveAsync(spec.NodeId, NodeSql.Ct());
                Directory.Delete(Path.Combine(_root, "work", "spool"), recursive: true);

                // Only the store is left: every acknowledged commit is in it.
                var prepared = await new ArchiveRestore(store, new TestOutputLogger(output)).PrepareAsync(spec.InstanceId, null, Path.Combine(_root, "restore"), NodeSql.Ct());
                var restoredSpec = new NodeLaunchSpec("n-2", spec.InstanceId, "127.0.0.1", FreePorts.One(), superuser);
                await _runtime.RestoreAsync(restoredSpec, prepared.Input, NodeSql.Ct());
                await _runtime.StartAsync(restoredSpec, null, NodeSql.Ct());
                await NodeSql.WaitServingAsync(restoredSpec, superuser);
                var present = new HashSet<int>();
                await using (var check = NodeSql.Connection(restoredSpec, superuser))
                {
                    await check.OpenAsync();
                    await using var read = new NpgsqlCommand("SELECT id FROM t", check);
                    await using var r = await read.ExecuteReaderAsync();
                    while (await r.ReadAsync()) present.Add(r.GetInt32(0));
                }
                var missing = acknowledged.Concat(Enumerable.Range(1, 20)).Append(1000).Where(id => !present.Contains(id)).ToList();
                output.WriteLine($"{acknowledged.Count} back-to-back commits acknowledged before the kill; {present.Count} rows restored");
                Assert.True(missing.Count == 0, $"acknowledged but not restored: {string.Join(", ", missing.Take(20))}");
            }
            finally
            {
                await duty.DisposeAsync();
            }
        }
        finally
        {
            await etcd.DeletePrefixAsync(prefix + "/", CancellationToken.None);
        }
    }

    /// <summary>The end of the WAL the store holds for the system: whole segments and pieces alike.</summary>
    private static async Task<ulong> StoredEndAsync(IObjectStore store, string instance, ulong systemId)
    {
        ulong end = 0;
        foreach (var o in await store.ListAsync(ArchiveLayout.System(instance, systemId)))
        {
            if (ArchiveLayout.TryParsePart(o.Key, WalSegment.DefaultSize, out _, out _, out var to)) end = Math.Max(end, to);
            else if (WalSegment.TryParse(o.Key[(o.Key.LastIndexOf('/') + 1)..], WalSegment.DefaultSize, out var segment)) end = Math.Max(end, segment.End);
        }
        return end;
    }

    private static async Task<string> ScrapeAsync(CellMetrics metrics)
    {
        using var ms = new MemoryStream();
        await metrics.Registry.CollectAndExportAsTextAsync(ms);
        return System.Text.Encoding.UTF8.GetString(ms.ToArray());
    }

    [DllImport("libc")]
    private static extern int kill(int pid, int sig);
}
