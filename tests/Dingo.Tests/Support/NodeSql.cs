using Dingo.Cells;
using Dingo.Model;
using Npgsql;

namespace Dingo.Tests.Support;

/// <summary>SQL against one node started by a runtime in a test, as its superuser on 127.0.0.1.</summary>
public static class NodeSql
{
    public static CancellationToken Ct() => new CancellationTokenSource(TimeSpan.FromSeconds(120)).Token;

    public static NpgsqlConnection Connection(NodeLaunchSpec spec, Credentials superuser) => new(new NpgsqlConnectionStringBuilder
    {
        Host = "127.0.0.1", Port = spec.Port, Username = superuser.Username, Password = superuser.Password, Database = "postgres", Pooling = false, Timeout = 5,
    }.ConnectionString);

    public static async Task WaitServingAsync(NodeLaunchSpec spec, Credentials superuser) =>
        await Eventually.UntilAsync(async () =>
        {
            try { await using var c = Connection(spec, superuser); await c.OpenAsync(); return true; }
            catch (NpgsqlException) { return false; }
        }, TimeSpan.FromSeconds(30), $"{spec.NodeId} accepts connections");

    public static async Task ExecAsync(NodeLaunchSpec spec, Credentials superuser, string sql)
    {
        await using var c = Connection(spec, superuser);
        await c.OpenAsync(Ct());
        await using var cmd = new NpgsqlCommand(sql, c);
        await cmd.ExecuteNonQueryAsync(Ct());
    }

    /// <summary>
    /// Each statement in its own transaction (a commit each), over one connection: a connection per statement cost a
    /// backend start and a SCRAM exchange on both sides each, for hundreds of rows in ArchiveTests.
    /// </summary>
    public static async Task ExecEachAsync(NodeLaunchSpec spec, Credentials superuser, IEnumerable<string> statements)
    {
        await using var c = Connection(spec, superuser);
        await c.OpenAsync(Ct());
        foreach (var sql in statements)
        {
            await using var cmd = new NpgsqlCommand(sql, c);
            await cmd.ExecuteNonQueryAsync(Ct());
        }
    }

    public static async Task<object?> ScalarAsync(NodeLaunchSpec spec, Credentials superuser, string sql)
    {
        await using var c = Connection(spec, superuser);
        await c.OpenAsync(Ct());
        await using var cmd = new NpgsqlCommand(sql, c);
        return await cmd.ExecuteScalarAsync(Ct());
    }

    /// <summary>
    /// Two nodes taken from a warm pool are two clusters: each logs in with its own superuser password only, has its own
    /// system identifier, and holds no role but initdb's (nothing a pool could have left behind).
    /// </summary>
    public static async Task AssertSeparateClustersAsync(NodeLaunchSpec a, NodeLaunchSpec b)
    {
        var sysA = await ScalarAsync(a, a.Superuser, "SELECT system_identifier FROM pg_control_system()");
        var sysB = await ScalarAsync(b, b.Superuser, "SELECT system_identifier FROM pg_control_system()");
        Assert.NotEqual(sysA, sysB);
        var wrong = await Assert.ThrowsAsync<PostgresException>(() => ScalarAsync(b, a.Superuser, "SELECT 1"));
        Assert.Equal(PostgresErrorCodes.InvalidPassword, wrong.SqlState);
        Assert.Equal(1L, await ScalarAsync(a, a.Superuser, "SELECT count(*) FROM pg_roles WHERE rolname NOT LIKE 'pg\\_%'"));
    }
}
