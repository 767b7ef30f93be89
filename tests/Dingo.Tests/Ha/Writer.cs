using System.Collections.Concurrent;
using Npgsql;

namespace Dingo.Tests.Ha;

/// <summary>
/// An application that commits a counter every few milliseconds through the router, reconnecting when its
/// connection breaks, and remembers every commit PostgreSQL acknowledged and when. A commit answered with
/// PostgreSQL's "canceling wait for synchronous replication" warning is committed on the primary alone: it is
/// not counted as acknowledged (the synchronous plans promise nothing for it).
/// </summary>
public sealed class Writer : IAsyncDisposable
{
    /// <summary>The start of the warning PostgreSQL sends when a commit stops waiting for its synchronous standbys.</summary>
    public const string SyncRepCancelledWarning = "canceling wait for synchronous replication";

    private readonly string _connectionString;
    private readonly TimeSpan _every;
    private readonly TimeSpan? _attemptLimit;
    private readonly CancellationTokenSource _stop = new();
    private readonly ConcurrentBag<Task> _abandoned = new();
    private Task? _loop;

    /// <param name="attemptLimit">
    /// when set, an attempt (connecting included) not answered within it is abandoned on its connection and counted
    /// in <see cref="InDoubt"/>; the next attempt starts at once on a new connection
    /// </param>
    public Writer(string connectionString, TimeSpan every, TimeSpan? attemptLimit = null)
    {
        _connectionString = new NpgsqlConnectionStringBuilder(connectionString) { Timeout = 2, CommandTimeout = 3, Pooling = false }.ConnectionString;
        _every = every;
        _attemptLimit = attemptLimit;
    }

    public ConcurrentDictionary<long, DateTime> Acknowledged { get; } = new();
    /// <summary>When each acknowledged commit was sent.</summary>
    public ConcurrentDictionary<long, DateTime> Started { get; } = new();
    /// <summary>Attempts abandoned after the attempt limit (sent when): they may or may not have committed.</summary>
    public ConcurrentDictionary<long, DateTime> InDoubt { get; } = new();
    /// <summary>Commits answered with the synchronous-replication cancel warning (answered when): not acknowledged.</summary>
    public ConcurrentDictionary<long, DateTime> SyncRepCancelled { get; } = new();
    public long Attempts;

    /// <summary>
    /// The writer's table, before any fault. Each try has the writer's own short timeouts (2 s to connect), which a
    /// machine busy with three hosts' processes starting has been seen to miss once (ThreeHostTests on a fresh clone),
    /// so setup tries again for up to 30 s; the commits measured later keep their short timeouts.
    /// </summary>
    public async Task CreateTableAsync()
    {
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (true)
        {
            try
            {
                await using var conn = new NpgsqlConnection(_connectionString);
                await conn.OpenAsync();
                await using var cmd = new NpgsqlCommand("CREATE TABLE IF NOT EXISTS counter(n bigint primary key, at timestamptz not null default clock_timestamp())", conn);
                await cmd.ExecuteNonQueryAsync();
                return;
            }
            catch (Exception ex) when (ex is NpgsqlException { IsTransient: true } or TimeoutException && DateTime.UtcNow < deadline)
            {
                await Task.Delay(250);
            }
        }
    }

    public void Start() => _loop = Task.Run(() => RunAsync(_stop.Token));

    private async Task RunAsync(CancellationToken ct)
    {
        NpgsqlConnection? conn = null;
        while (!ct.IsCancellationRequested)
        {
            var n = Interlocked.Increment(ref Attempts);
            var started = DateTime.UtcNow;
            var attempt = CommitAsync(conn, n, ct);
            try
            {
                (conn, var warned) = _attemptLimit is { } limit ? await attempt.WaitAsync(limit, ct) : await attempt;
                if (warned) SyncRepCancelled[n] = DateTime.UtcNow;
                else
                {
                    Started[n] = started;
                    Acknowledged[n] = DateTime.UtcNow;
                }
            }
            catch (TimeoutException) when (!attempt.IsCompleted && !ct.IsCancellationRequested)
            {
                // The attempt keeps its connection until Npgsql gives up on it; the writer goes on without both.
                InDoubt[n] = started;
                conn = null;
                _abandoned.Add(attempt.ContinueWith(async t => { if (t.IsCompletedSuccessfully) await t.Result.Connection.DisposeAsync(); }, TaskScheduler.Default).Unwrap());
            }
            catch (Exception) when (!ct.IsCancellationRequested)
            {
                conn = null;
            }
            catch (OperationCanceledException)
            {
                // Stopped while an attempt was on its way: it holds the connection, and disposes it itself when the
                // stop cuts it short. Disposing it here as well, under its pending read, threw from DisposeAsync
                // (bench/Chaos). Let it settle first; what it ends with is the stop's doing, and is not counted.
                try { await attempt; }
                catch (Exception) when (ct.IsCancellationRequested) { }
                conn = attempt.IsCompletedSuccessfully ? attempt.Result.Connection : null;
                break;
            }
            try { await Task.Delay(_every, ct); } catch (OperationCanceledException) { break; }
        }
        if (conn is not null) await conn.DisposeAsync();
    }

    /// <summary>One commit of <paramref name="n"/>; the connection is disposed when the attempt fails.</summary>
    private async Task<(NpgsqlConnection Connection, bool SyncRepCancelled)> CommitAsync(NpgsqlConnection? conn, long n, CancellationToken ct)
    {
        var warned = false;
        void OnNotice(object sender, NpgsqlNoticeEventArgs e)
        {
            if (e.Notice.MessageText.StartsWith(SyncRepCancelledWarning, StringComparison.Ordinal)) warned = true;
        }

        conn ??= new NpgsqlConnection(_connectionString);
        conn.Notice += OnNotice;
        try
        {
            if (conn.State == System.Data.ConnectionState.Closed) await conn.OpenAsync(ct);
            await using var cmd = new NpgsqlCommand("INSERT INTO counter(n) VALUES ($1)", conn);
            cmd.Parameters.AddWithValue(n);
            await cmd.ExecuteNonQueryAsync(ct);
            return (conn, warned);
        }
        catch
        {
            await conn.DisposeAsync();
            throw;
        }
        finally
        {
            conn.Notice -= OnNotice;
        }
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
        // Abandoned attempts end once Npgsql gives up on their connection (the cancelled token, its timeouts).
        try { await Task.WhenAll(_abandoned).WaitAsync(TimeSpan.FromSeconds(15)); }
        catch (Exception) { /* an abandoned attempt's own failure is already counted as in doubt */ }
        _stop.Dispose();
    }
}
