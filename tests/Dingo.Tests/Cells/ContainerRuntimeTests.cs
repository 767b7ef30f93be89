using System.Diagnostics;
using Dingo.Cells;
using Dingo.Model;
using Dingo.Postgres;
using Dingo.Tests.Support;
using Microsoft.Extensions.Logging;
using Npgsql;
using Xunit.Abstractions;

namespace Dingo.Tests.Cells;

/// <summary>
/// What every <see cref="IContainerRuntime"/> must do, on real PostgreSQL 15: run by <see cref="LocalProcessRuntimeTests"/>
/// (local processes) and <see cref="DockerRuntimeTests"/> (containers on podman). Each test cleans up even on failure.
/// </summary>
public abstract class ContainerRuntimeTests : IAsyncLifetime
{
    protected const string Superuser = "dingo_admin";
    protected const string Password = "s3cret-'quote\"-pw";

    protected ContainerRuntimeTests(ITestOutputHelper output)
    {
        Output = output;
    }

    protected ITestOutputHelper Output { get; }

    /// <summary>The runtime under test; <see cref="NewRuntime"/> makes another over the same nodes (as after a cell restart).</summary>
    protected IContainerRuntime Runtime { get; private set; } = null!;

    protected abstract IContainerRuntime NewRuntime();

    /// <summary>Who runs the node now: a pid, or a container id and its start time. Changes when the node restarts.</summary>
    protected abstract Task<string> IncarnationAsync(RuntimeNode node);

    /// <summary>kill -9 of the node's postmaster.</summary>
    protected abstract Task KillAsync(RuntimeNode node);

    /// <summary>Whether any of the node's data is left (folder, or volume).</summary>
    protected abstract Task<bool> DataExistsAsync(string nodeId);

    /// <summary>Kills and deletes whatever a test left behind.</summary>
    protected abstract Task CleanupAsync();

    /// <summary>The last lines of the node's PostgreSQL log, for a test that failed.</summary>
    protected abstract Task<string> LogTailAsync(string nodeId);

    public Task InitializeAsync()
    {
        Runtime = NewRuntime();
        return Task.CompletedTask;
    }

    public async Task DisposeAsync()
    {
        foreach (var node in await SafeListAsync())
        {
            try
            {
                using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
                await Runtime.RemoveAsync(node.NodeId, cts.Token);
            }
            catch (Exception e)
            {
                Output.WriteLine($"cleanup: RemoveAsync({node.NodeId}) failed: {e.Message}");
            }
        }
        await CleanupAsync();
        (Runtime as IDisposable)?.Dispose();
    }

    private async Task<IReadOnlyList<RuntimeNode>> SafeListAsync()
    {
        try { return await Runtime.ListAsync(Ct()); }
        catch (Exception e) { Output.WriteLine($"cleanup: ListAsync failed: {e.Message}"); return []; }
    }

    [Fact]
    public async Task Create_and_start_serves_the_superuser_and_refuses_a_wrong_password()
    {
        var spec = NewSpec("node-a");
        await Runtime.CreateAsync(spec, Ct());
        await Runtime.StartAsync(spec, null, Ct());
        await WaitUntilServingAsync(spec);

        Assert.Equal(1, await ScalarAsync(spec, "SELECT 1"));
        var wrong = await Assert.ThrowsAsync<PostgresException>(() => OpenAsync(spec, "not-the-password"));
        Assert.Equal(PostgresErrorCodes.InvalidPassword, wrong.SqlState);

        var node = Assert.Single(await Runtime.ListAsync(Ct()));
        Assert.True(node.Initialised);
        Assert.True(node.Running);
        Assert.StartsWith("running", node.Detail);
    }

    [Fact]
    public async Task Stop_keeps_the_data()
    {
        var spec = NewSpec("node-b");
        await Runtime.CreateAsync(spec, Ct());
        await Runtime.StartAsync(spec, null, Ct());
        await WaitUntilServingAsync(spec);
        await ExecAsync(spec, "CREATE TABLE t (v text); INSERT INTO t VALUES ('kept')");

        await Runtime.StopAsync(spec.NodeId, Ct());
        var stopped = Assert.Single(await Runtime.ListAsync(Ct()));
        Assert.False(stopped.Running);
        Assert.True(stopped.Initialised);
        Assert.Null(stopped.Pid);
        Assert.Equal("stopped", stopped.Detail);
        await Runtime.StopAsync(spec.NodeId, Ct()); // idempotent

        await Runtime.StartAsync(spec, null, Ct());
        await WaitUntilServingAsync(spec);
        Assert.Equal("kept", await ScalarAsync(spec, "SELECT v FROM t"));
    }

    [Fact]
    public async Task A_new_runtime_adopts_a_running_node()
    {
        var spec = NewSpec("node-c");
        await Runtime.CreateAsync(spec, Ct());
        await Runtime.StartAsync(spec, null, Ct());
        await WaitUntilServingAsync(spec);
        var before = Assert.Single(await Runtime.ListAsync(Ct()));
        var incarnation = await IncarnationAsync(before);

        var fresh = NewRuntime();
        try
        {
            var adopted = Assert.Single(await fresh.ListAsync(Ct()));
            Assert.Equal(spec.NodeId, adopted.NodeId);
            Assert.True(adopted.Running);
            Assert.Equal(before.Pid, adopted.Pid);
            Assert.Equal(before.ContainerId, adopted.ContainerId);
            Assert.Equal(incarnation, await IncarnationAsync(adopted));

            await fresh.StartAsync(spec, null, Ct()); // already running: nothing started twice
            Assert.Equal(incarnation, await IncarnationAsync(Assert.Single(await fresh.ListAsync(Ct()))));
        }
        finally
        {
            (fresh as IDisposable)?.Dispose();
        }
    }

    [Fact]
    public async Task Killed_postmaster_is_reported_down_and_restarts_with_its_data()
    {
        var spec = NewSpec("node-d");
        await Runtime.CreateAsync(spec, Ct());
        await Runtime.StartAsync(spec, null, Ct());
        await WaitUntilServingAsync(spec);
        await ExecAsync(spec, "CREATE TABLE t (v int); INSERT INTO t VALUES (42)");
        // An ordinary start syncs the data directory file by file after a crash (PostgreSQL's default)...
        Assert.Equal("fsync", await ScalarAsync(spec, "SHOW recovery_init_sync_method"));
        var before = Assert.Single(await Runtime.ListAsync(Ct()));
        var incarnation = await IncarnationAsync(before);

        await KillAsync(before);

        var down = Stopwatch.StartNew();
        RuntimeNode node;
        while ((node = Assert.Single(await Runtime.ListAsync(Ct()))).Running)
        {
            Assert.True(down.Elapsed < TimeSpan.FromSeconds(10), "node still reported running 10 s after kill -9");
            await Task.Delay(50);
        }
        Assert.Null(node.Pid);
        Assert.True(node.Initialised);
        await AssertKilledDetailAsync(node);

        // ...a leader restarted in place after its crash, read-only until promoted, with one syncfs.
        var restart = Stopwatch.StartNew();
        await Runtime.StartAsync(spec, new StandbyConfig(null, "slot_node_d", spec.NodeId) { LeaderAfterCrash = true }, Ct());
        await WaitUntilServingAsync(spec);
        Output.WriteLine($"serving again {restart.ElapsedMilliseconds} ms after StartAsync (kill -9 recovery)");

        Assert.Equal(42, await ScalarAsync(spec, "SELECT v FROM t"));
        Assert.Equal("syncfs", await ScalarAsync(spec, "SHOW recovery_init_sync_method"));
        Assert.Equal(true, await ScalarAsync(spec, "SELECT pg_is_in_recovery()"));
        Assert.NotEqual(incarnation, await IncarnationAsync(Assert.Single(await Runtime.ListAsync(Ct()))));
        AssertRunningAgain();
    }

    /// <summary>What the runtime says about a node whose postmaster was killed.</summary>
    protected virtual Task AssertKilledDetailAsync(RuntimeNode node) => Task.CompletedTask;

    /// <summary>What the runtime keeps once that node runs again (listed since).</summary>
    protected virtual void AssertRunningAgain() { }

    [Fact]
    public async Task Remove_deletes_the_data_and_closes_the_port()
    {
        var spec = NewSpec("node-e");
        await Runtime.CreateAsync(spec, Ct());
        await Runtime.StartAsync(spec, null, Ct());
        await WaitUntilServingAsync(spec);
        Assert.True(await DataExistsAsync(spec.NodeId));

        await Runtime.RemoveAsync(spec.NodeId, Ct());

        Assert.False(await DataExistsAsync(spec.NodeId));
        Assert.Empty(await Runtime.ListAsync(Ct()));
        await Assert.ThrowsAnyAsync<NpgsqlException>(() => OpenAsync(spec));
        await Runtime.RemoveAsync(spec.NodeId, Ct()); // absent: nothing to do
    }

    [Fact]
    public async Task A_clone_streams_from_its_primary_and_a_diverged_old_primary_is_rewound()
    {
        // With the platform's certificates and TLS required: pg_basebackup, streaming and pg_rewind verify the source
        // (verify-full against the CA), and nothing gets in without TLS.
        using var ca = Dingo.Security.PlatformCa.Create($"runtime test {Guid.NewGuid():N}", DateTimeOffset.UtcNow, TimeSpan.FromDays(1));
        await Runtime.ApplyPlatformAccessAsync(Dingo.Postgres.PlatformAccess.From(["127.0.0.1"], [], requireTls: true,
            tls: new NodeTls(ca, ["127.0.0.1", "localhost"], TimeSpan.FromDays(1))), Ct());
        // The platform's roles also need a client certificate of the CA now: this process holds one, as a cell does.
        Dingo.Postgres.PlatformConnectionTls.Trust(ca);
        var a = NewSpec("node-p");
        var b = NewSpec("node-s");
        var slot = "slot_node_s";
        await Runtime.CreateAsync(a, Ct());
        await Runtime.StartAsync(a, null, Ct());
        await WaitUntilServingAsync(a);
        await AssertTlsOnlyAsync(a, ca);
        await ExecAsync(a, $"SELECT pg_create_physical_replication_slot('{slot}'); CREATE TABLE t (v int); INSERT INTO t VALUES (1)");

        // B: a base backup of A, started as a standby streaming from A through its slot.
        var fromA = new ReplicationSource("127.0.0.1", a.Port, new Credentials(Superuser, Password));
        await Runtime.CloneAsync(b, fromA, Ct());
        Assert.True(Assert.Single(await Runtime.ListAsync(Ct()), n => n.NodeId == b.NodeId).Initialised);
        await Runtime.StartAsync(b, new StandbyConfig(fromA, slot, b.NodeId), Ct());
        await WaitUntilServingAsync(b);
        await ExecAsync(a, "INSERT INTO t VALUES (2)");
        await Eventually.UntilAsync(async () => Equals(2L, await ScalarAsync(b, "SELECT count(*) FROM t")), TimeSpan.FromSeconds(20), "the standby did not replay the primary's insert");
        Assert.Equal(true, await ScalarAsync(b, "SELECT pg_is_in_recovery()"));
        Assert.Equal("streaming", await ScalarAsync(a, $"SELECT state FROM pg_stat_replication WHERE application_name = '{b.NodeId}'"));
        Assert.Equal(true, await ScalarAsync(a, $"SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s ON s.pid = r.pid WHERE r.application_name = '{b.NodeId}'"));
        await AssertTlsOnlyAsync(b, ca);

        // Failover: B is promoted while A goes on writing alone, so their timelines diverge.
        await ExecAsync(b, "SELECT pg_promote()");
        await Eventually.UntilAsync(async () => Equals(false, await ScalarAsync(b, "SELECT pg_is_in_recovery()")), TimeSpan.FromSeconds(20), "B was not promoted");
        await ExecAsync(a, "INSERT INTO t VALUES (100)");
        // pg_rewind reads the source's timeline from its control file, which a promotion updates only at its first
        // checkpoint (as Patroni does, checkpoint after promoting); without one, "no rewind required".
        await ExecAsync(b, $"INSERT INTO t VALUES (3); SELECT pg_create_physical_replication_slot('slot_node_p'); CHECKPOINT");

        // A rejoins as B's standby: rewound onto B's timeline (its lone write gone), then streaming.
        var fromB = new ReplicationSource("127.0.0.1", b.Port, new Credentials(Superuser, Password));
        await Runtime.RewindAsync(a, fromB, Ct());
        await Runtime.StartAsync(a, new StandbyConfig(fromB, "slot_node_p", a.NodeId), Ct());
        await WaitUntilServingAsync(a);
        await ExecAsync(b, "INSERT INTO t VALUES (4)");
        try
        {
            await Eventually.UntilAsync(async () => Equals(4L, await ScalarAsync(a, "SELECT count(*) FROM t")), TimeSpan.FromSeconds(30), "the rewound node did not catch up");
        }
        catch (TimeoutException)
        {
            Output.WriteLine("rewound node's log:\n" + await LogTailAsync(a.NodeId));
            throw;
        }
        Assert.Equal(0L, await ScalarAsync(a, "SELECT count(*) FROM t WHERE v = 100"));
        Assert.Equal(true, await ScalarAsync(a, "SELECT pg_is_in_recovery()"));
        Assert.Equal(true, await ScalarAsync(b, $"SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s ON s.pid = r.pid WHERE r.application_name = '{a.NodeId}'"));
    }

    /// <summary>The node's certificate verifies against the CA for its address (verify-full), and a login without TLS is refused.</summary>
    private static async Task AssertTlsOnlyAsync(NodeLaunchSpec spec, Dingo.Security.PlatformCa ca)
    {
        var caFile = Path.Combine(Path.GetTempPath(), $"dingo-rt-ca-{Guid.NewGuid():N}.crt");
        await File.WriteAllTextAsync(caFile, ca.CertificatePem);
        try
        {
            var verified = new NpgsqlConnectionStringBuilder
            {
                Host = "127.0.0.1", Port = spec.Port, Username = Superuser, Password = Password, Database = "postgres", Pooling = false, Timeout = 5,
                SslMode = SslMode.VerifyFull, RootCertificate = caFile,
            };
            // The superuser with its password and TLS but no client certificate of the platform CA: refused.
            var bare = await Assert.ThrowsAsync<PostgresException>(async () => { await using var c = new NpgsqlConnection(verified.ConnectionString); await c.OpenAsync(Ct()); });
            Assert.Contains("certificate", bare.MessageText, StringComparison.Ordinal);
            await using (var conn = Dingo.Postgres.PlatformConnectionTls.Connection(verified))
            {
                await conn.OpenAsync(Ct());
                await using var cmd = new NpgsqlCommand("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", conn);
                Assert.Equal(true, await cmd.ExecuteScalarAsync(Ct()));
            }
            var plain = new NpgsqlConnectionStringBuilder(verified.ConnectionString) { SslMode = SslMode.Disable };
            var refused = await Assert.ThrowsAsync<PostgresException>(async () => { await using var c = new NpgsqlConnection(plain.ConnectionString); await c.OpenAsync(Ct()); });
            Assert.Contains("no encryption", refused.MessageText, StringComparison.Ordinal);
        }
        finally
        {
            File.Delete(caFile);
        }
    }

    [Fact]
    public async Task A_node_restored_from_a_base_backup_and_archived_WAL_has_every_commit_and_this_instances_password()
    {
        var a = NewSpec("node-a");
        await Runtime.CreateAsync(a, Ct());
        await Runtime.StartAsync(a, null, Ct());
        await WaitUntilServingAsync(a);
        await ExecAsync(a, "CREATE TABLE t(v int)");
        var root = Path.Combine("/tmp", "dingo-rt-restore-" + Guid.NewGuid().ToString("N")[..10]);
        var log = new TestOutputLogger(Output);
        try
        {
            var store = new Dingo.Backups.LocalFolderObjectStore(Path.Combine(root, "store"));
            using var stop = new CancellationTokenSource();
            var archiver = new Dingo.Backups.WalArchiver(store, "restore-1", a.ListenAddress, a.Port, a.Superuser, Path.Combine(root, "spool"), new Dingo.Backups.WalArchiverOptions(), log);
            var run = archiver.RunAsync(stop.Token);
            var system = (ulong)(long)(await ScalarAsync(a, "SELECT system_identifier FROM pg_control_system()"))!;
            await new Dingo.Backups.BaseBackups(store, log).TakeAsync("restore-1", system, a.NodeId, a.ListenAddress, a.Port, a.Superuser, "/usr/lib/postgresql/15/bin", Path.Combine(root, "work"), caFingerprint: null, Ct());
            for (var i = 1; i <= 20; i++) await ExecAsync(a, $"INSERT INTO t VALUES ({i})");
            var end = Dingo.Backups.Lsn.Parse((string)(await ScalarAsync(a, "SELECT pg_current_wal_flush_lsn()::text"))!);
            await Eventually.UntilAsync(() => Task.FromResult(archiver.Progress.ArchivedLsn >= end), TimeSpan.FromSeconds(30), "the archive has every commit");
            await stop.CancelAsync();
            await run;
            await Runtime.RemoveAsync(a.NodeId, Ct());

            var prepared = await new Dingo.Backups.ArchiveRestore(store, log).PrepareAsync("restore-1", null, Path.Combine(root, "restore"), Ct());
            var b = NewSpec("node-b") with { Superuser = new Credentials(Superuser, "AnotherPassw0rd") };
            await Runtime.RestoreAsync(b, prepared.Input, Ct());
            Assert.True(Assert.Single(await Runtime.ListAsync(Ct()), n => n.NodeId == b.NodeId).Initialised);
            await Runtime.StartAsync(b, null, Ct());
            await Eventually.UntilAsync(async () =>
            {
                try { await using var c = await OpenAsync(b, "AnotherPassw0rd"); return true; }
                catch (NpgsqlException) { return false; }
            }, TimeSpan.FromSeconds(30), "the restored node accepts this instance's password");
            await using var conn = await OpenAsync(b, "AnotherPassw0rd");
            await using var cmd = new NpgsqlCommand("SELECT count(*) FROM t", conn);
            Assert.Equal(20L, await cmd.ExecuteScalarAsync(Ct()));
            await Assert.ThrowsAsync<PostgresException>(() => OpenAsync(b));
        }
        finally
        {
            try { Directory.Delete(root, recursive: true); } catch (DirectoryNotFoundException) { }
        }
    }

    [Fact]
    public async Task A_restore_that_stops_short_of_the_archives_end_fails_and_leaves_the_node_unrestored()
    {
        var a = NewSpec("node-a");
        await Runtime.CreateAsync(a, Ct());
        await Runtime.StartAsync(a, null, Ct());
        await WaitUntilServingAsync(a);
        await ExecAsync(a, "CREATE TABLE t(v int)");
        var root = Path.Combine("/tmp", "dingo-rt-short-" + Guid.NewGuid().ToString("N")[..10]);
        var log = new TestOutputLogger(Output);
        try
        {
            var store = new Dingo.Backups.LocalFolderObjectStore(Path.Combine(root, "store"));
            using var stop = new CancellationTokenSource();
            var archiver = new Dingo.Backups.WalArchiver(store, "short-1", a.ListenAddress, a.Port, a.Superuser, Path.Combine(root, "spool"), new Dingo.Backups.WalArchiverOptions(), log);
            var run = archiver.RunAsync(stop.Token);
            var system = (ulong)(long)(await ScalarAsync(a, "SELECT system_identifier FROM pg_control_system()"))!;
            await new Dingo.Backups.BaseBackups(store, log).TakeAsync("short-1", system, a.NodeId, a.ListenAddress, a.Port, a.Superuser, "/usr/lib/postgresql/15/bin", Path.Combine(root, "work"), caFingerprint: null, Ct());
            for (var i = 1; i <= 20; i++)
            {
                await ExecAsync(a, $"INSERT INTO t VALUES ({i})");
                if (i == 10) await ScalarAsync(a, "SELECT pg_switch_wal()");
            }
            var end = Dingo.Backups.Lsn.Parse((string)(await ScalarAsync(a, "SELECT pg_current_wal_flush_lsn()::text"))!);
            await Eventually.UntilAsync(() => Task.FromResult(archiver.Progress.ArchivedLsn >= end), TimeSpan.FromSeconds(30), "the archive has every commit");
            await stop.CancelAsync();
            await run;
            await Runtime.RemoveAsync(a.NodeId, Ct());
            // The segment with rows 1-10 is damaged in the store (its size intact): recovery stops before it.
            var wal = Dingo.Backups.ArchiveLayout.Wal("short-1", system);
            var last = (await store.ListAsync(wal)).Select(o => o.Key).Where(k => Dingo.Backups.WalSegment.TryParse(k[wal.Length..], Dingo.Backups.WalSegment.DefaultSize, out _)).Max(StringComparer.Ordinal)!;
            using (var zeros = new MemoryStream(new byte[Dingo.Backups.WalSegment.DefaultSize])) await store.PutAsync(last, zeros);

            var prepared = await new Dingo.Backups.ArchiveRestore(store, log).PrepareAsync("short-1", null, Path.Combine(root, "restore"), Ct());
            var b = NewSpec("node-b");
            var short_ = await Assert.ThrowsAsync<Dingo.Backups.RestoreException>(() => Runtime.RestoreAsync(b, prepared.Input, Ct()));
            Output.WriteLine(short_.Message);
            Assert.Contains("could not be replayed", short_.Message, StringComparison.Ordinal);
            Assert.DoesNotContain(await Runtime.ListAsync(Ct()), n => n.NodeId == b.NodeId && n.Initialised);
            await Runtime.RemoveAsync(b.NodeId, Ct());
        }
        finally
        {
            try { Directory.Delete(root, recursive: true); } catch (DirectoryNotFoundException) { }
        }
    }

    // ---- helpers ----

    protected static NodeLaunchSpec NewSpec(string nodeId) =>
        new(nodeId + "-" + Guid.NewGuid().ToString("N")[..6], "instance-1", "127.0.0.1", FreePorts.One(), new Credentials(Superuser, Password));

    protected static CancellationToken Ct() => new CancellationTokenSource(TimeSpan.FromSeconds(120)).Token;

    protected static async Task<NpgsqlConnection> OpenAsync(NodeLaunchSpec spec, string password = Password)
    {
        var builder = new NpgsqlConnectionStringBuilder
        {
            Host = "127.0.0.1", Port = spec.Port, Username = Superuser, Password = password, Database = "postgres", Pooling = false, Timeout = 5,
        };
        // As the platform connects: with its client certificates (a node with require-tls asks the superuser for one).
        var conn = Dingo.Postgres.PlatformConnectionTls.Connection(builder);
        try
        {
            await conn.OpenAsync(Ct());
            return conn;
        }
        catch
        {
            await conn.DisposeAsync();
            throw;
        }
    }

    /// <summary>StartAsync returns before the server accepts connections; poll like the cell's prober would.</summary>
    protected async Task WaitUntilServingAsync(NodeLaunchSpec spec)
    {
        var deadline = Stopwatch.StartNew();
        while (true)
        {
            try
            {
                await using var conn = await OpenAsync(spec);
                return;
            }
            catch (NpgsqlException) when (deadline.Elapsed < TimeSpan.FromSeconds(30))
            {
                await Task.Delay(25);
            }
            catch (NpgsqlException)
            {
                Output.WriteLine("PostgreSQL log tail:\n" + await LogTailAsync(spec.NodeId));
                throw;
            }
        }
    }

    protected static async Task ExecAsync(NodeLaunchSpec spec, string sql)
    {
        await using var conn = await OpenAsync(spec);
        await using var cmd = new NpgsqlCommand(sql, conn);
        await cmd.ExecuteNonQueryAsync(Ct());
    }

    protected static async Task<object?> ScalarAsync(NodeLaunchSpec spec, string sql)
    {
        await using var conn = await OpenAsync(spec);
        await using var cmd = new NpgsqlCommand(sql, conn);
        return await cmd.ExecuteScalarAsync(Ct());
    }

    protected sealed class OutputLogger(ITestOutputHelper output) : ILogger<LocalProcessRuntime>
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Debug;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            try
            {
                output.WriteLine($"[{logLevel}] {formatter(state, exception)}");
            }
            catch (InvalidOperationException)
            {
                // Output helper is closed once the test has finished.
            }
        }
    }
}
