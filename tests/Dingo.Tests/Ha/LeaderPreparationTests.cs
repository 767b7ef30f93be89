using System.Diagnostics;
using Dingo.Cells;
using Dingo.Model;
using Dingo.Postgres;
using Dingo.Tests.Support;
using Npgsql;
using Xunit.Abstractions;

namespace Dingo.Tests.Ha;

/// <summary>
/// A new leader's first step, the preparation of roles and database, on a real PostgreSQL 15 that names a synchronous
/// standby which does not stream (a node promoted right after a link cut, its old sync standby cut off). The preparation
/// must finish at once: it is re-run by every leader, so it need not wait for standbys; an application's commit still
/// waits, as synchronous replication promises. Found by bench/Chaos link-cut, where the wait outlasted the fencing
/// deadline on every promotion and the key went back and forth between two nodes every 3.6 s.
/// </summary>
[SuiteCost(21)]
public sealed class LeaderPreparationTests(ITestOutputHelper output)
{
    [Fact]
    public async Task Preparing_a_new_leader_does_not_wait_for_a_synchronous_standby_that_does_not_stream_but_applications_do()
    {
        await using var node = await SingleNode.StartAsync(output, "prep");
        var spec = node.Spec;
        // What a node that led before carries into its next promotion (ALTER SYSTEM persists it): a sync standby gone.
        await NodeSql.ExecAsync(spec, node.Superuser, "ALTER SYSTEM SET synchronous_standby_names = 'ANY 1 (\"n-gone\")'");
        await NodeSql.ExecAsync(spec, node.Superuser, "SELECT pg_reload_conf()");
        await Eventually.UntilAsync(async () => (string?)await NodeSql.ScalarAsync(spec, node.Superuser, "SHOW synchronous_standby_names") == "ANY 1 (\"n-gone\")",
            TimeSpan.FromSeconds(10), "synchronous_standby_names reloaded");

        // Twice: the first creates roles and the database, the second is a later leader's (ALTER ROLE … PASSWORD writes again).
        var replication = new Credentials(DatabaseAdmin.ReplicationUserName, "Rp" + Guid.NewGuid().ToString("N"));
        foreach (var pass in new[] { "first", "again" })
        {
            var watch = Stopwatch.StartNew();
            using var limit = new CancellationTokenSource(TimeSpan.FromSeconds(20));
            await DatabaseAdmin.PrepareAsync("127.0.0.1", node.Port, node.Superuser, "appdb", limit.Token, replication);
            output.WriteLine($"preparation ({pass}) with an absent sync standby: {watch.Elapsed.TotalSeconds:0.00}s");
            Assert.True(watch.Elapsed < TimeSpan.FromSeconds(10), $"the preparation ({pass}) took {watch.Elapsed}");
        }
        Assert.Equal(1L, await NodeSql.ScalarAsync(spec, node.Superuser, "SELECT count(*) FROM pg_database WHERE datname = 'appdb'"));

        // An application's commit on the same node still waits for the standby (sync replication is not weakened).
        await using var app = new NpgsqlConnection(DatabaseAdmin.ConnectionString("127.0.0.1", node.Port, node.Superuser, "appdb").ConnectionString);
        await app.OpenAsync(NodeSql.Ct());
        await using (var create = new NpgsqlCommand("SET synchronous_commit = local; CREATE TABLE t(v int); RESET synchronous_commit", app))
            await create.ExecuteNonQueryAsync(NodeSql.Ct());
        await using var insert = new NpgsqlCommand("INSERT INTO t VALUES (1)", app);
        var committing = insert.ExecuteNonQueryAsync(CancellationToken.None);
        Assert.NotSame(committing, await Task.WhenAny(committing, Task.Delay(TimeSpan.FromSeconds(2))));
        // No standby will come: end that session, whose commit then fails instead of hanging the test.
        await NodeSql.ExecAsync(spec, node.Superuser, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = 'INSERT INTO t VALUES (1)'");
        var ended = await Assert.ThrowsAnyAsync<Exception>(() => committing);
        output.WriteLine($"an application's commit with the standby absent waited 2 s and more, until its session ended: {ended.Message}");
    }
}
