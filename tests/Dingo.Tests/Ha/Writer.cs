using System.Collections.Concurrent;
using Npgsql;

namespace Dingo.Tests.Ha;

/// <summary>
/// An application that commits a counter every few milliseconds through the router, reconnecting when its
/// connection breaks, and remembers every commit PostgreSQL acknowledged and when.
/// </summary>
public sealed class Writer : IAsyncDisposable
{
    private readonly string _connectionString;
    private readonly TimeSpan _every;
    private readonly CancellationTokenSource _stop = new();
    private Task? _loop;

    public Writer(string connectionString, TimeSpan every)
    {
        _connectionString = new NpgsqlConnectionStringBuilder(connectionString) { Timeout = 2, CommandTimeout = 3, Pooling = false }.ConnectionString;
        _every = every;
    }

    public ConcurrentDictionary<long, DateTime> Acknowledged { get; } = new();
    /// <summary>When each acknowledged commit was sent.</summary>
    public ConcurrentDictionary<long, DateTime> Started { get; } = new();
    public long Attempts;

    public async Task CreateTableAsync()
    {
        await using var conn = new NpgsqlConnection(_connectionString);
        await conn.OpenAsync();
        await using var cmd = new NpgsqlCommand("CREATE TABLE IF NOT EXISTS counter(n bigint primary key, at timestamptz not null default clock_timestamp())", conn);
        await cmd.ExecuteNonQueryAsync();
    }

    public void Start() => _loop = Task.Run(() => RunAsync(_stop.Token));

    private async Task RunAsync(CancellationToken ct)
    {
        NpgsqlConnection? conn = null;
        while (!ct.IsCancellationRequested)
        {
            var n = Interlocked.Increment(ref Attempts);
            var started = DateTime.UtcNow;
            try
            {
                if (conn is null)
                {
                    conn = new NpgsqlConnection(_connectionString);
                    await conn.OpenAsync(ct);
                }
                await using var cmd = new NpgsqlCommand("INSERT INTO counter(n) VALUES ($1)", conn);
                cmd.Parameters.AddWithValue(n);
                await cmd.ExecuteNonQueryAsync(ct);
                Started[n] = started;
                Acknowledged[n] = DateTime.UtcNow;
            }
            catch (Exception) when (!ct.IsCancellationRequested)
            {
                if (conn is not null) await conn.DisposeAsync();
                conn = null;
            }
            catch (OperationCanceledException) { break; }
            try { await Task.Delay(_every, ct); } catch (OperationCanceledException) { break; }
        }
        if (conn is not null) await conn.DisposeAsync();
    }

    /// <summary>
    /// When the first commit sent after the given moment was acknowledged (an acknowledgement of an earlier commit
    /// can still arrive after it, from a node that is already gone).
    /// </summary>
    public DateTime? FirstAckAfter(DateTime moment) =>
        Acknowledged.Where(a => Started.TryGetValue(a.Key, out var s) && s > moment).Select(a => a.Value)
            .DefaultIfEmpty(DateTime.MaxValue).Min() is var t && t != DateTime.MaxValue ? t : null;

    /// <summary>The longest time between two acknowledged commits (or a window's edge and a commit) within the window.</summary>
    public TimeSpan LongestStall(DateTime from, DateTime to)
    {
        var acks = Acknowledged.Values.Where(t => t > from && t < to).Order().ToList();
        var longest = TimeSpan.Zero;
        var previous = from;
        foreach (var t in acks.Append(to))
        {
            if (t - previous > longest) longest = t - previous;
            previous = t;
        }
        return longest;
    }

    public async Task<IReadOnlyList<long>> MissingAsync()
    {
        await using var conn = new NpgsqlConnection(_connectionString);
        await conn.OpenAsync();
        await using var cmd = new NpgsqlCommand("SELECT n FROM counter", conn);
        var present = new HashSet<long>();
        await using var r = await cmd.ExecuteReaderAsync();
        while (await r.ReadAsync()) present.Add(r.GetInt64(0));
        return Acknowledged.Keys.Where(k => !present.Contains(k)).OrderBy(k => k).ToList();
    }

    private int _disposed;

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 1) return;
        await _stop.CancelAsync();
        if (_loop is not null) await _loop;
        _stop.Dispose();
    }
}
