using System.Text;
using Dingo.Backups;
using Dingo.Ha;
using Dingo.Cells;
using Dingo.Model;
using Dingo.Tests.Support;
using Microsoft.Extensions.Logging;
using Npgsql;
using Xunit.Abstractions;

namespace Dingo.Tests.Backups;

/// <summary>
/// One timeline number, one branch: a promoted replica takes a timeline above every history file the archive holds,
/// and the archiver never writes a timeline whose archived history tells another lineage. Real PostgreSQL 15.
/// </summary>
[SuiteCost(8)]
public sealed class TimelineHistoryTests : IAsyncLifetime
{
    private readonly ITestOutputHelper _output;
    private readonly string _root = Path.Combine("/tmp", "dingo-tli-" + Guid.NewGuid().ToString("N")[..12]);
    private readonly LocalProcessRuntime _runtime;
    private readonly ILogger _logger;
    private readonly string _instance = "tli-" + Guid.NewGuid().ToString("N")[..10];
    private readonly Credentials _superuser = new("dingo_admin", "Pw" + Guid.NewGuid().ToString("N"));
    private readonly LocalFolderObjectStore _store;

    public TimelineHistoryTests(ITestOutputHelper output)
    {
        _output = output;
        _logger = new TestOutputLogger(output);
        _runtime = new LocalProcessRuntime(new LocalProcessRuntimeOptions(Path.Combine(_root, "nodes")), new TestOutputLogger<LocalProcessRuntime>(output));
        _store = new LocalFolderObjectStore(Path.Combine(_root, "store"));
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

    [Theory]
    [InlineData(new uint[] { 2, 3 }, 1u, new uint[0], new uint[] { 2, 3 })]
    [InlineData(new uint[] { 2, 3, 5 }, 2u, new uint[0], new uint[] { 3, 5 })] // every one above, gaps included
    [InlineData(new uint[] { 2, 3 }, 1u, new uint[] { 2 }, new uint[] { 3 })] // its own 2 (streamed) is kept
    [InlineData(new uint[] { 2 }, 2u, new uint[0], new uint[0])]
    [InlineData(new uint[0], 1u, new uint[0], new uint[0])]
    public void A_node_gets_every_archived_history_above_its_timeline_that_its_pg_wal_lacks(uint[] archived, uint current, uint[] inPgWal, uint[] expected) =>
        Assert.Equal(expected, TimelineHistories.ToInstall(archived, current, inPgWal.ToHashSet()));

    [Fact]
    public void Histories_telling_the_same_lineage_agree_and_a_different_branch_point_is_named_on_both_sides()
    {
        var server = new List<(uint, ulong)> { (1, 0x3000000), (2, 0x5000060) };
        // Timeline 3 as the archive holds it from this very lineage; and timeline 2, whose lineage is the first entry.
        Assert.Null(WalArchiver.HistoryConflict(3, server, server));
        Assert.Null(WalArchiver.HistoryConflict(2, server, [(1, 0x3000000)]));
        var other = WalArchiver.HistoryConflict(3, server, [(1, 0x3000000), (2, 0x4000000)]);
        Assert.NotNull(other);
        Assert.Contains("timeline 2 until 0/4000000", other, StringComparison.Ordinal);
        Assert.Contains("timeline 2 until 0/5000060", other, StringComparison.Ordinal);
        Assert.NotNull(WalArchiver.HistoryConflict(2, server, [(1, 0x2000000)]));
        Assert.NotNull(WalArchiver.HistoryConflict(2, server, []));
    }

    [Fact]
    public async Task A_replica_promoted_after_another_branch_took_the_next_timeline_takes_the_one_after()
    {
        var a = Spec("node-a");
        var b = Spec("node-b");
        await _runtime.CreateAsync(a, Ct());
        await _runtime.StartAsync(a, null, Ct());
        await WaitServingAsync(a);
        await _runtime.CloneAsync(b, new ReplicationSource("127.0.0.1", a.Port, _superuser), Ct());
        await _runtime.StartAsync(b, new StandbyConfig(new ReplicationSource("127.0.0.1", a.Port, _superuser), "", "node-b"), Ct());
        await WaitServingAsync(b);
        var sys = (ulong)(long)(await ScalarAsync(b, "SELECT system_identifier FROM pg_control_system()"))!;
        // Another node of this cluster was promoted to timeline 2 and fenced before node-b ever followed it.
        var other = Encoding.ASCII.GetBytes("1\t0/3000000\tno recovery target specified\n");
        await _store.PutAsync(ArchiveLayout.History(_instance, sys, 2), new MemoryStream(other));

        var histories = new TimelineHistories(_store, _instance, _logger);
        // Read on the HA probe's pooled connection, as the agent does right before pg_promote.
        var node = await new PostgresProbe("127.0.0.1", b.Port, _superuser).ReadTimelinesAsync(Ct());
        Assert.Equal((sys, 1u), (node.SystemId, node.Timeline));
        var files = await histories.BeforePromotionAsync(node, TimeSpan.FromSeconds(5), Ct());
        Assert.Equal([2u], files.Select(f => f.Timeline));
        Assert.Equal(["00000002.history"], await _runtime.AddTimelineHistoriesAsync("node-b", files, Ct()));
        // Written once, never replaced: a second call adds nothing.
        Assert.Empty(await _runtime.AddTimelineHistoriesAsync("node-b", [new TimelineHistoryFile(2, [1, 2, 3])], Ct()));
        var path = Path.Combine(_root, "nodes", "node-b", "pgdata", "pg_wal", "00000002.history");
        Assert.Equal(other, await File.ReadAllBytesAsync(path));
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(path));
        Assert.Equal(OwnerOf(Path.Combine(_root, "nodes", "node-b", "pgdata", "PG_VERSION")), OwnerOf(path));

        await _runtime.StopAsync("node-a", Ct());
        await ExecAsync(b, "SELECT pg_promote(true, 30)");
        Assert.Equal("00000003", ((string)(await ScalarAsync(b, "SELECT pg_walfile_name(pg_current_wal_lsn())"))!)[..8]);
        Assert.Equal(other, await GetAsync(ArchiveLayout.History(_instance, sys, 2)));
    }

    [Fact]
    public async Task The_archiver_never_writes_a_timeline_whose_archived_history_tells_another_branch_and_raises_the_alarm()
    {
        // A node on timeline 2: a standby with no upstream, promoted.
        var a = Spec("node-a");
        await _runtime.CreateAsync(a, Ct());
        await _runtime.StartAsync(a, new StandbyConfig(null, "", "node-a"), Ct());
        await WaitServingAsync(a);
        await ExecAsync(a, "SELECT pg_promote(true, 30)");
        await ExecAsync(a, "CREATE TABLE t(v int); INSERT INTO t VALUES (1)");
        var sys = (ulong)(long)(await ScalarAsync(a, "SELECT system_identifier FROM pg_control_system()"))!;
        var other = Encoding.ASCII.GetBytes("1\t0/1000000\tno recovery target specified\n");
        await _store.PutAsync(ArchiveLayout.History(_instance, sys, 2), new MemoryStream(other));

        var archiver = new WalArchiver(_store, _instance, "127.0.0.1", a.Port, _superuser, Path.Combine(_root, "spool"), new WalArchiverOptions(), _logger);
        using var stop = new CancellationTokenSource();
        var run = archiver.RunAsync(stop.Token);
        try
        {
            await Eventually.UntilAsync(() => Task.FromResult(archiver.Progress.Error is not null), TimeSpan.FromSeconds(20), "the archiver's alarm");
            var error = archiver.Progress.Error!;
            _output.WriteLine(error);
            Assert.Contains("timeline 2 exists twice", error, StringComparison.Ordinal);
            Assert.Contains("timeline 1 until 0/1000000", error, StringComparison.Ordinal);
            Assert.Matches("this server's says timeline 1 until [0-9A-F]+/[0-9A-F]+", error);
            Assert.Equal((2u, sys), (archiver.Progress.Timeline, archiver.Progress.SystemId));
        }
        finally
        {
            await stop.CancelAsync();
            await run;
        }
        // Nothing of timeline 2 was written; the other branch's history is as it was.
        var keys = (await _store.ListAsync(ArchiveLayout.System(_instance, sys))).Select(o => o.Key).ToList();
        Assert.DoesNotContain(keys, k => k.Contains("/00000002", StringComparison.Ordinal) && !k.EndsWith("00000002.history", StringComparison.Ordinal));
        Assert.Equal(other, await GetAsync(ArchiveLayout.History(_instance, sys, 2)));
    }

    [Fact]
    public async Task A_new_primarys_archiver_plans_and_streams_on_one_replication_session()
    {
        // Every new primary's archiver planned on one replication session and streamed on a second: in a burst of 20
        // provisions, 20 forks, TLS handshakes and authentications more beside the binds. On timeline 1 with nothing
        // archived, the plan is the current timeline alone, streamed on the session that planned it.
        var a = Spec("node-a");
        await _runtime.CreateAsync(a, Ct());
        await _runtime.StartAsync(a, null, Ct());
        await WaitServingAsync(a);
        var sys = (ulong)(long)(await ScalarAsync(a, "SELECT system_identifier FROM pg_control_system()"))!;
        var archiver = new WalArchiver(_store, _instance, "127.0.0.1", a.Port, _superuser, Path.Combine(_root, "spool"), new WalArchiverOptions(), _logger);
        using var stop = new CancellationTokenSource();
        var run = archiver.RunAsync(stop.Token);
        try
        {
            await Eventually.UntilAsync(() => Task.FromResult(archiver.Progress.ServerLsn > 0), TimeSpan.FromSeconds(20), "the archiver's plan");
            await ExecAsync(a, "CREATE TABLE t(v int); INSERT INTO t VALUES (1); SELECT pg_switch_wal()");
            await Eventually.UntilAsync(async () => (await _store.ListAsync(ArchiveLayout.System(_instance, sys))).Any(o => o.Key.Contains("/000000010000000000000001", StringComparison.Ordinal)),
                TimeSpan.FromSeconds(20), "the first segment stored");
            Assert.Null(archiver.Progress.Error);
            Assert.Equal(1, archiver.SessionsOpened);
        }
        finally
        {
            await stop.CancelAsync();
            await run;
        }
    }

    private async Task<byte[]> GetAsync(string key)
    {
        using var ms = new MemoryStream();
        await _store.GetAsync(key, ms);
        return ms.ToArray();
    }

    private static (uint Uid, uint Gid) OwnerOf(string path)
    {
        var psi = new System.Diagnostics.ProcessStartInfo("stat", ["-c", "%u %g", path]) { RedirectStandardOutput = true };
        using var p = System.Diagnostics.Process.Start(psi)!;
        var fields = p.StandardOutput.ReadToEnd().Trim().Split(' ');
        p.WaitForExit();
        return (uint.Parse(fields[0]), uint.Parse(fields[1]));
    }

    private NodeLaunchSpec Spec(string nodeId) => new(nodeId, _instance, "127.0.0.1", FreePorts.One(), _superuser);

    private static CancellationToken Ct() => NodeSql.Ct();
    private NpgsqlConnection Connection(NodeLaunchSpec spec) => NodeSql.Connection(spec, _superuser);
    private Task WaitServingAsync(NodeLaunchSpec spec) => NodeSql.WaitServingAsync(spec, _superuser);
    private Task ExecAsync(NodeLaunchSpec spec, string sql) => NodeSql.ExecAsync(spec, _superuser, sql);
    private Task<object?> ScalarAsync(NodeLaunchSpec spec, string sql) => NodeSql.ScalarAsync(spec, _superuser, sql);
}
