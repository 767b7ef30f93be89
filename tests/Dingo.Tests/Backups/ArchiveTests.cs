using System.Diagnostics;
using Dingo.Backups;
using Dingo.Cells;
using Dingo.Model;
using Dingo.Tests.Support;
using Microsoft.Extensions.Logging;
using Npgsql;
using Xunit.Abstractions;

namespace Dingo.Tests.Backups;

/// <summary>
/// Continuous WAL archiving, base backups and restores against real PostgreSQL 15 and the real stores: what the
/// archiver stores is byte-compared with PostgreSQL's own pg_wal, and restores must bring back exactly the rows.
/// </summary>
[SuiteCost(202)]
public sealed class ArchiveTests : IAsyncLifetime
{
    private readonly ITestOutputHelper _output;
    private readonly string _root = Path.Combine("/tmp", "dingo-arch-" + Guid.NewGuid().ToString("N")[..12]);
    private readonly LocalProcessRuntime _runtime;
    private readonly ILogger _logger;
    private readonly string _instance = "arch-" + Guid.NewGuid().ToString("N")[..10];
    private readonly Credentials _superuser = new("dingo_admin", "Pw" + Guid.NewGuid().ToString("N"));

    public ArchiveTests(ITestOutputHelper output)
    {
        _output = output;
        _logger = new TestOutputLogger(output);
        _runtime = new LocalProcessRuntime(new LocalProcessRuntimeOptions(Path.Combine(_root, "nodes")), new TestOutputLogger<LocalProcessRuntime>(output));
    }

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        foreach (var node in await _runtime.ListAsync(CancellationToken.None))
        {
            try { await _runtime.RemoveAsync(node.NodeId, new CancellationTokenSource(TimeSpan.FromSeconds(60)).Token); }
            catch (Exception e) { _output.WriteLine($"cleanup: {e.Message}"); }
        }
        try { Directory.Delete(_root, recursive: true); } catch (IOException) { }
    }

    private IObjectStore Store(string kind) => kind switch
    {
        "local" => new LocalFolderObjectStore(Path.Combine(_root, "store")),
        "s3" => TestObjectStores.NewS3Store(),
        "azure" => TestObjectStores.NewAzureStore(),
        _ => throw new ArgumentException(kind),
    };

    [Theory]
    [InlineData("local")]
    [InlineData("s3")]
    [InlineData("azure")]
    public async Task Archived_segments_match_pg_wal_and_a_restore_replays_every_commit(string kind)
    {
        var store = Store(kind);
        var a = Spec("node-a");
        await _runtime.CreateAsync(a, Ct());
        await _runtime.StartAsync(a, null, Ct());
        await WaitServingAsync(a);
        await ExecAsync(a, "CREATE TABLE t(id int primary key, at timestamptz default clock_timestamp())");

        using var stop = new CancellationTokenSource();
        var archiver = NewArchiver(store, a);
        var run = archiver.RunAsync(stop.Token);
        await new BaseBackups(store, _logger).TakeAsync(_instance, await SystemIdAsync(a), "node-a", "127.0.0.1", a.Port, _superuser, Pg, Path.Combine(_root, "work"), caFingerprint: null, Ct());

        await ExecEachAsync(a, Enumerable.Range(1, 200).Select(i => $"INSERT INTO t(id) VALUES ({i})"));
        // A full segment, then more rows in the next one: both the whole-segment and the pieces path get used.
        await ExecAsync(a, "INSERT INTO t(id) SELECT g FROM generate_series(1001, 60000) g");
        var switched = (string)(await ScalarAsync(a, "SELECT pg_walfile_name(pg_switch_wal())"))!;
        await ExecEachAsync(a, Enumerable.Range(201, 30).Select(i => $"INSERT INTO t(id) VALUES ({i})"));
        var end = await CurrentLsnAsync(a);
        await Eventually.UntilAsync(() => Task.FromResult(archiver.Progress.ArchivedLsn >= end), TimeSpan.FromSeconds(30), $"archive reaches {Lsn.Format(end)}");
        await stop.CancelAsync();
        await run;

        // Every complete segment in the store is byte-identical to PostgreSQL's own file.
        var sys = await SystemIdAsync(a);
        var stored = (await store.ListAsync(ArchiveLayout.Wal(_instance, sys))).Where(o => WalSegment.TryParse(o.Key[(o.Key.LastIndexOf('/') + 1)..], 16 << 20, out _)).ToList();
        Assert.Contains(stored, o => o.Key.EndsWith(switched, StringComparison.Ordinal));
        foreach (var o in stored)
        {
            var name = o.Key[(o.Key.LastIndexOf('/') + 1)..];
            var local = Path.Combine(_root, "nodes", "node-a", "pgdata", "pg_wal", name);
            if (!File.Exists(local)) continue; // recycled already
            using var ms = new MemoryStream();
            await store.GetAsync(o.Key, ms);
            var onDisk = await File.ReadAllBytesAsync(local);
            Assert.True(ms.ToArray().SequenceEqual(onDisk), $"{name} differs from pg_wal");
        }
        Assert.NotEmpty(await store.ListAsync(ArchiveLayout.Parts(_instance, sys)));

        // The whole cluster and its disk are gone: only the store is left.
        await _runtime.RemoveAsync("node-a", Ct());
        var b = await RestoreAsync(store, "node-b", null);
        Assert.Equal(230L + 59000, await ScalarAsync(b, "SELECT count(*) FROM t"));
        Assert.Equal(230, await ScalarAsync(b, "SELECT max(id) FROM t WHERE id < 1000"));
        // Writable, on a new timeline.
        await ExecAsync(b, "INSERT INTO t(id) VALUES (100000)");
    }

    [Fact]
    public async Task Point_in_time_restore_keeps_exactly_the_rows_committed_before_the_target()
    {
        var store = Store("local");
        var a = Spec("node-a");
        await _runtime.CreateAsync(a, Ct());
        await _runtime.StartAsync(a, null, Ct());
        await WaitServingAsync(a);
        await ExecAsync(a, "CREATE TABLE t(id int primary key)");
        using var stop = new CancellationTokenSource();
        var archiver = NewArchiver(store, a);
        var run = archiver.RunAsync(stop.Token);
        await new BaseBackups(store, _logger).TakeAsync(_instance, await SystemIdAsync(a), "node-a", "127.0.0.1", a.Port, _superuser, Pg, Path.Combine(_root, "work"), caFingerprint: null, Ct());

        await ExecEachAsync(a, Enumerable.Range(1, 20).Select(i => $"INSERT INTO t VALUES ({i})"));
        await Task.Delay(300);
        var target = DateTimeOffset.UtcNow;
        await Task.Delay(300);
        await ExecEachAsync(a, Enumerable.Range(21, 20).Select(i => $"INSERT INTO t VALUES ({i})"));
        var end = await CurrentLsnAsync(a);
        await Eventually.UntilAsync(() => Task.FromResult(archiver.Progress.ArchivedLsn >= end), TimeSpan.FromSeconds(30), "archive catches up");
        await stop.CancelAsync();
        await run;
        await _runtime.RemoveAsync("node-a", Ct());

        var b = await RestoreAsync(store, "node-b", target);
        Assert.Equal(20L, await ScalarAsync(b, "SELECT count(*) FROM t"));
        Assert.Equal(20, await ScalarAsync(b, "SELECT max(id) FROM t"));

        // A target after the last commit: everything (PostgreSQL itself would refuse: no commit after the target).
        var c = await RestoreAsync(store, "node-c", DateTimeOffset.UtcNow);
        Assert.Equal(40L, await ScalarAsync(c, "SELECT count(*) FROM t"));

        // A target before any backup finished: a clear refusal.
        var early = await Assert.ThrowsAsync<RestoreException>(() => new ArchiveRestore(store, _logger).ChooseAsync(_instance, DateTimeOffset.UtcNow.AddHours(-1), Ct()));
        Assert.Contains("no base backup", early.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task After_a_failover_the_new_leader_fills_the_old_timeline_and_archives_the_new_one()
    {
        var store = Store("local");
        var a = Spec("node-a");
        var b = Spec("node-b");
        await _runtime.CreateAsync(a, Ct());
        await _runtime.StartAsync(a, null, Ct());
        await WaitServingAsync(a);
        await ExecAsync(a, "CREATE TABLE t(id int primary key)");
        await _runtime.CloneAsync(b, new ReplicationSource("127.0.0.1", a.Port, _superuser), Ct());
        await _runtime.StartAsync(b, new StandbyConfig(new ReplicationSource("127.0.0.1", a.Port, _superuser), "", "node-b"), Ct());
        await WaitServingAsync(b);

        using (var stopA = new CancellationTokenSource())
        {
            var archA = NewArchiver(store, a);
            var runA = archA.RunAsync(stopA.Token);
            await new BaseBackups(store, _logger).TakeAsync(_instance, await SystemIdAsync(a), "node-b", "127.0.0.1", b.Port, _superuser, Pg, Path.Combine(_root, "work"), caFingerprint: null, Ct());
            for (var i = 1; i <= 10; i++) await ExecAsync(a, $"INSERT INTO t VALUES ({i})");
            var end = await CurrentLsnAsync(a);
            await Eventually.UntilAsync(() => Task.FromResult(archA.Progress.ArchivedLsn >= end), TimeSpan.FromSeconds(30), "archive catches up");
            await stopA.CancelAsync();
            await runA;
        }
        // Written after the old leader's archiver stopped: only the replica has these.
        for (var i = 11; i <= 20; i++) await ExecAsync(a, $"INSERT INTO t VALUES ({i})");
        var last = await CurrentLsnAsync(a);
        await Eventually.UntilAsync(async () => (long)(decimal)(await ScalarAsync(b, "SELECT pg_last_wal_replay_lsn() - '0/0'"))! >= (long)last, TimeSpan.FromSeconds(30), "replica catches up");
        await _runtime.StopAsync("node-a", Ct());
        await ExecAsync(b, "SELECT pg_promote(true, 30)");
        for (var i = 21; i <= 30; i++) await ExecAsync(b, $"INSERT INTO t VALUES ({i})");

        using (var stopB = new CancellationTokenSource())
        {
            var archB = NewArchiver(store, b);
            var runB = archB.RunAsync(stopB.Token);
            var end = await CurrentLsnAsync(b);
            await Eventually.UntilAsync(() => Task.FromResult(archB.Progress.Timeline == 2 && archB.Progress.ArchivedLsn >= end), TimeSpan.FromSeconds(30), "new leader archives timeline 2");
            await stopB.CancelAsync();
            await runB;
        }
        var sys = await SystemIdAsync(b);
        Assert.True(await store.ExistsAsync(ArchiveLayout.History(_instance, sys, 2)));
        await _runtime.RemoveAsync("node-a", Ct());
        await _runtime.RemoveAsync("node-b", Ct());

        var c = await RestoreAsync(store, "node-c", null);
        Assert.Equal(30L, await ScalarAsync(c, "SELECT count(*) FROM t"));
        Assert.True((int)(await ScalarAsync(c, "SELECT timeline_id FROM pg_control_checkpoint()"))! >= 3);
    }

    [Fact]
    public async Task A_restore_that_cannot_reach_the_archives_end_fails_with_the_reason_instead_of_succeeding_short()
    {
        var store = Store("local");
        var a = Spec("node-a");
        await _runtime.CreateAsync(a, Ct());
        await _runtime.StartAsync(a, null, Ct());
        await WaitServingAsync(a);
        await ExecAsync(a, "CREATE TABLE t(id int primary key)");
        using var stop = new CancellationTokenSource();
        var archiver = NewArchiver(store, a);
        var run = archiver.RunAsync(stop.Token);
        await new BaseBackups(store, _logger).TakeAsync(_instance, await SystemIdAsync(a), "node-a", "127.0.0.1", a.Port, _superuser, Pg, Path.Combine(_root, "work"), caFingerprint: null, Ct());
        // Rows in three segments: two complete ones, and the one being written (stored in pieces).
        for (var i = 1; i <= 30; i++)
        {
            await ExecAsync(a, $"INSERT INTO t VALUES ({i})");
            if (i % 10 == 0 && i < 30) await ScalarAsync(a, "SELECT pg_switch_wal()");
        }
        var end = await CurrentLsnAsync(a);
        await Eventually.UntilAsync(() => Task.FromResult(archiver.Progress.ArchivedLsn >= end), TimeSpan.FromSeconds(30), $"archive reaches {Lsn.Format(end)}");
        await stop.CancelAsync();
        await run;
        var sys = await SystemIdAsync(a);
        var last = (await store.ListAsync(ArchiveLayout.Wal(_instance, sys))).Select(o => o.Key[(o.Key.LastIndexOf('/') + 1)..])
            .Where(n => WalSegment.TryParse(n, WalSegment.DefaultSize, out _)).Max(StringComparer.Ordinal)!;
        var key = ArchiveLayout.Wal(_instance, sys) + last;

        // Damaged in the store (right size, no WAL in it): the listing looks whole, PostgreSQL stops at the damage
        // and promotes; the restore must say so instead of handing out the rows before it.
        using (var zeros = new MemoryStream(new byte[WalSegment.DefaultSize])) await store.PutAsync(key, zeros);
        var damaged = await Assert.ThrowsAsync<RestoreException>(() => RestoreAsync(store, "node-b", null));
        _output.WriteLine(damaged.Message);
        Assert.Contains("could not be replayed", damaged.Message, StringComparison.Ordinal);
        Assert.Contains($"recovery ended at {Lsn.Format(WalSegment.TryParse(last, WalSegment.DefaultSize, out var seg) ? seg.Start : 0)}", damaged.Message, StringComparison.Ordinal);
        Assert.DoesNotContain(await _runtime.ListAsync(Ct()), n => n.NodeId == "node-b" && n.Initialised);

        // Missing from the store: refused before anything is replayed, naming the segment.
        await store.DeleteAsync(key);
        var missing = await Assert.ThrowsAsync<RestoreException>(() => RestoreAsync(store, "node-c", null));
        _output.WriteLine(missing.Message);
        Assert.Contains($"WAL segment {last} is missing from the archive", missing.Message, StringComparison.Ordinal);
        Assert.DoesNotContain(await _runtime.ListAsync(Ct()), n => n.NodeId == "node-c" && n.Initialised);
    }

    private const string Pg = "/usr/lib/postgresql/15/bin";

    private WalArchiver NewArchiver(IObjectStore store, NodeLaunchSpec spec) =>
        new(store, _instance, "127.0.0.1", spec.Port, _superuser, Path.Combine(_root, "spool", spec.NodeId), new WalArchiverOptions(), _logger);

    private async Task<NodeLaunchSpec> RestoreAsync(IObjectStore store, string nodeId, DateTimeOffset? target)
    {
        var watch = Stopwatch.StartNew();
        var prepared = await new ArchiveRestore(store, _logger).PrepareAsync(_instance, target, Path.Combine(_root, "restore", nodeId), Ct());
        var spec = Spec(nodeId);
        await _runtime.RestoreAsync(spec, prepared.Input, Ct());
        await _runtime.StartAsync(spec, null, Ct());
        await WaitServingAsync(spec);
        _output.WriteLine($"restore {nodeId}: {prepared.Segments} segments, {watch.ElapsedMilliseconds} ms");
        return spec;
    }

    private NodeLaunchSpec Spec(string nodeId) => new(nodeId, _instance, "127.0.0.1", FreePorts.One(), _superuser);

    private static CancellationToken Ct() => NodeSql.Ct();
    private NpgsqlConnection Connection(NodeLaunchSpec spec) => NodeSql.Connection(spec, _superuser);
    private Task WaitServingAsync(NodeLaunchSpec spec) => NodeSql.WaitServingAsync(spec, _superuser);
    private Task ExecAsync(NodeLaunchSpec spec, string sql) => NodeSql.ExecAsync(spec, _superuser, sql);
    private Task ExecEachAsync(NodeLaunchSpec spec, IEnumerable<string> statements) => NodeSql.ExecEachAsync(spec, _superuser, statements);
    private Task<object?> ScalarAsync(NodeLaunchSpec spec, string sql) => NodeSql.ScalarAsync(spec, _superuser, sql);

    private async Task<ulong> CurrentLsnAsync(NodeLaunchSpec spec) => (ulong)(decimal)(await ScalarAsync(spec, "SELECT pg_current_wal_flush_lsn() - '0/0'"))!;

    private async Task<ulong> SystemIdAsync(NodeLaunchSpec spec) => (ulong)(long)(await ScalarAsync(spec, "SELECT system_identifier FROM pg_control_system()"))!;
}
