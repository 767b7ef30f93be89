using Dingo.Cells;
using Dingo.Model;
using Dingo.Postgres;
using Dingo.Tests.Support;
using Npgsql;
using Xunit.Abstractions;

namespace Dingo.Tests.Cells;

/// <summary>
/// The process runtime's warm pool against real PostgreSQL 15: a new node takes an initialised data directory instead
/// of running initdb (and the application database, its WAL moved on to a new segment), with the node's own superuser
/// password and its own system identifier, never another's; the pool
/// is filled again, half-made entries are removed, no node is listed for it, and a node whose superuser has another
/// name runs initdb as before.
/// </summary>
[SuiteCost(12)]
public sealed class WarmPoolTests(ITestOutputHelper output) : IAsyncLifetime
{
    private readonly string _root = Path.Combine("/tmp", "dingo-warm-" + Guid.NewGuid().ToString("N")[..12]);
    private LocalProcessRuntime _runtime = null!;

    public Task InitializeAsync()
    {
        _runtime = new LocalProcessRuntime(new LocalProcessRuntimeOptions(_root) { WarmPool = 2 }, new TestOutputLogger<LocalProcessRuntime>(output));
        return Task.CompletedTask;
    }

    public async Task DisposeAsync()
    {
        foreach (var node in await _runtime.ListAsync(CancellationToken.None))
        {
            try { await _runtime.RemoveAsync(node.NodeId, new CancellationTokenSource(TimeSpan.FromSeconds(60)).Token); }
            catch (Exception e) { output.WriteLine($"cleanup: {e.Message}"); }
        }
        try { Directory.Delete(_root, recursive: true); } catch (DirectoryNotFoundException) { }
    }

    private static NodeLaunchSpec Spec(string nodeId, string user = DatabaseAdmin.SuperuserName) =>
        new(nodeId, "warm-" + nodeId, "127.0.0.1", FreePorts.One(), new Credentials(user, "Pw" + Guid.NewGuid().ToString("N")));

    [Fact]
    public async Task A_new_node_takes_a_warm_directory_with_its_own_password_and_system_identifier()
    {
        Assert.True(await _runtime.FillWarmOnceAsync(NodeSql.Ct()));
        Assert.True(await _runtime.FillWarmOnceAsync(NodeSql.Ct()));
        Assert.False(await _runtime.FillWarmOnceAsync(NodeSql.Ct()), "the pool holds its size, no more");
        Assert.Equal(2, _runtime.WarmCount());
        Assert.Empty(await _runtime.ListAsync(NodeSql.Ct())); // pool entries are not nodes
        // No password of the pool's is left anywhere: initdb's pwfile lives only while initdb runs.
        Assert.Empty(Directory.EnumerateFiles(Path.Combine(_root, "@warm"), ".pwfile", SearchOption.AllDirectories));

        var a = Spec("node-a");
        var b = Spec("node-b");
        var watch = System.Diagnostics.Stopwatch.StartNew();
        await _runtime.CreateAsync(a, NodeSql.Ct());
        output.WriteLine($"create from the pool: {watch.ElapsedMilliseconds} ms");
        Assert.Equal(1, _runtime.WarmCount());
        await _runtime.CreateAsync(b, NodeSql.Ct());
        Assert.Equal(0, _runtime.WarmCount());
        foreach (var spec in new[] { a, b })
        {
            await _runtime.StartAsync(spec, null, NodeSql.Ct());
            await NodeSql.WaitServingAsync(spec, spec.Superuser);
        }

        // Each logs in with its own password only, and has its own system identifier; no role but initdb's, and no
        // database but initdb's and the application's, made with the entry so that the first primary's preparation need not.
        await NodeSql.AssertSeparateClustersAsync(a, b);
        Assert.Equal("dingo", await NodeSql.ScalarAsync(a, a.Superuser, "SELECT string_agg(datname, ',') FROM pg_database WHERE datname NOT IN ('postgres', 'template0', 'template1')"));
        // Its WAL went on past the segment initdb and that database filled: the archiver of a new primary starts there.
        Assert.Equal(true, await NodeSql.ScalarAsync(a, a.Superuser, "SELECT pg_current_wal_lsn() >= '0/2000000'::pg_lsn"));

        // Filled again; a half-made entry (initdb killed) is removed on the way.
        var half = Path.Combine(_root, "@warm", "half-made");
        Directory.CreateDirectory(Path.Combine(half, "pgdata"));
        Assert.True(await _runtime.FillWarmOnceAsync(NodeSql.Ct()));
        Assert.False(Directory.Exists(half));
        Assert.Equal(1, _runtime.WarmCount());

        // A superuser of another name: initdb as before, the pool untouched.
        var other = Spec("node-c", "someone_else");
        await _runtime.CreateAsync(other, NodeSql.Ct());
        Assert.Equal(1, _runtime.WarmCount());
        await _runtime.StartAsync(other, null, NodeSql.Ct());
        await NodeSql.WaitServingAsync(other, other.Superuser);
    }
}
