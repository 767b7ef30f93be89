using Npgsql;

namespace Dingo.Bench.Rpo;

/// <summary>
/// Commits one row on a tick, on one connection: row n carries PostgreSQL's clock when it was inserted. Remembers
/// every commit PostgreSQL acknowledged; stops at the first failure (the node is gone). A zero tick commits back to
/// back: a kill then lands in the middle of a commit as often as not.
/// </summary>
internal sealed class RowWriter(string connectionString, TimeSpan every)
{
    public const string CreateTable = "CREATE TABLE rpo(n int PRIMARY KEY, at timestamptz NOT NULL)";

    public sealed record Row(int N, DateTime At);

    private readonly List<Row> _acknowledged = [];

    public IReadOnlyList<Row> Acknowledged { get { lock (_acknowledged) return _acknowledged.ToList(); } }

    public DateTime StartedAt { get; private set; }

    /// <summary>Why writing stopped, when it was not cancelled.</summary>
    public string? StoppedBy { get; private set; }

    public async Task RunAsync(CancellationToken ct)
    {
        await using var conn = new NpgsqlConnection(connectionString);
        await conn.OpenAsync(ct);
        using var timer = every > TimeSpan.Zero ? new PeriodicTimer(every) : null;
        StartedAt = DateTime.UtcNow;
        var n = 0;
        try
        {
            while (timer is null ? !ct.IsCancellationRequested : await timer.WaitForNextTickAsync(ct))
            {
                n++;
                await using var cmd = new NpgsqlCommand("INSERT INTO rpo(n, at) VALUES ($1, clock_timestamp()) RETURNING at", conn);
                cmd.Parameters.AddWithValue(n);
                // Never cancelled by us: a commit in flight is either acknowledged or fails with the connection.
                var at = (DateTime)(await cmd.ExecuteScalarAsync(CancellationToken.None))!;
                lock (_acknowledged) _acknowledged.Add(new Row(n, at));
            }
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
        }
        catch (Exception ex) when (ex is NpgsqlException or IOException or InvalidOperationException)
        {
            StoppedBy = ex.Message;
        }
    }
}
