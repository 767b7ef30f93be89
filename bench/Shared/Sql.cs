using Dingo.Cells;
using Npgsql;

namespace Dingo.Bench.Shared;

/// <summary>Plain SQL on a bench node as its superuser, one unpooled connection per call.</summary>
internal static class Sql
{
    public static NpgsqlConnection Connection(NodeLaunchSpec spec) => new(ConnectionString(spec));

    public static string ConnectionString(NodeLaunchSpec spec) => new NpgsqlConnectionStringBuilder
    {
        Host = spec.ListenAddress,
        Port = spec.Port,
        Username = spec.Superuser.Username,
        Password = spec.Superuser.Password,
        Database = "postgres",
        Pooling = false,
        Timeout = 5,
        CommandTimeout = 600,
    }.ConnectionString;

    public static async Task ExecAsync(NodeLaunchSpec spec, string sql, CancellationToken ct)
    {
        await using var conn = Connection(spec);
        await conn.OpenAsync(ct);
        await using var cmd = new NpgsqlCommand(sql, conn);
        await cmd.ExecuteNonQueryAsync(ct);
    }

    public static async Task<T> ScalarAsync<T>(NodeLaunchSpec spec, string sql, CancellationToken ct)
    {
        await using var conn = Connection(spec);
        await conn.OpenAsync(ct);
        await using var cmd = new NpgsqlCommand(sql, conn);
        var value = await cmd.ExecuteScalarAsync(ct);
        return value is T t ? t : throw new InvalidOperationException($"`{sql}` returned {value ?? "null"} ({value?.GetType().Name ?? "no value"}), not a {typeof(T).Name}");
    }

    /// <summary>The position of PostgreSQL's WAL flushed to its disk, as a number.</summary>
    public static async Task<ulong> FlushLsnAsync(NodeLaunchSpec spec, CancellationToken ct) =>
        (ulong)await ScalarAsync<decimal>(spec, "SELECT pg_current_wal_flush_lsn() - '0/0'", ct);

    public static async Task<ulong> SystemIdAsync(NodeLaunchSpec spec, CancellationToken ct) =>
        (ulong)await ScalarAsync<long>(spec, "SELECT system_identifier FROM pg_control_system()", ct);

    public static async Task WaitServingAsync(NodeLaunchSpec spec, CancellationToken ct)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while (true)
        {
            try
            {
                await using var conn = Connection(spec);
                await conn.OpenAsync(ct);
                return;
            }
            catch (NpgsqlException) when (DateTime.UtcNow < deadline)
            {
                await Task.Delay(100, ct);
            }
        }
    }
}
