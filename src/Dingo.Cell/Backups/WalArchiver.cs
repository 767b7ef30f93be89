using System.Globalization;
using Dingo.Model;
using Dingo.Postgres;
using Microsoft.Extensions.Logging;
using Microsoft.Win32.SafeHandles;
using Npgsql;
using Npgsql.Replication;
using NpgsqlTypes;

namespace Dingo.Backups;

public sealed record WalArchiverOptions
{
    /// <summary>
    /// Received WAL waits at most this long before it is uploaded (the recovery point objective, less upload time): WAL
    /// after a quiet spell goes at once, a steady stream as one piece per delay (one PUT each on a priced store).
    /// </summary>
    public TimeSpan FlushDelay { get; init; } = TimeSpan.FromMilliseconds(100);
    /// <summary>Upload at once when this much WAL is waiting.</summary>
    public long FlushBytes { get; init; } = 4 * 1024 * 1024;
    /// <summary>Backlog (WAL the server has that the archive lacks) that raises the alarm.</summary>
    public long BacklogAlarmBytes { get; init; } = 256L * 1024 * 1024;
    /// <summary>Replication slot on the leader that keeps WAL until it is archived.</summary>
    public string SlotName { get; init; } = DefaultSlotName;
    public const string DefaultSlotName = "dingo_archive";
    public TimeSpan RetryDelay { get; init; } = TimeSpan.FromSeconds(1);
    /// <summary>While the archive holds another branch's history for the server's timeline, it is checked again this often.</summary>
    public TimeSpan ConflictRecheck { get; init; } = TimeSpan.FromSeconds(30);
}

/// <summary>The archive holds another branch under the server's timeline number: that timeline is not archived.</summary>
public sealed class TimelineConflictException(string message) : Exception(message);

/// <summary>What the archiver has done, for status and alarms.</summary>
public sealed record ArchiveProgress
{
    public ulong SystemId { get; init; }
    public uint Timeline { get; init; }
    /// <summary>Everything below this position (on <see cref="Timeline"/>) is in the store.</summary>
    public ulong ArchivedLsn { get; init; }
    /// <summary>The server's WAL end as last reported to the archiver.</summary>
    public ulong ServerLsn { get; init; }
    public DateTimeOffset? LastUpload { get; init; }
    public string? Error { get; init; }
    public long BacklogBytes => ServerLsn > ArchivedLsn ? (long)(ServerLsn - ArchivedLsn) : 0;
}

/// <summary>
/// Streams one cluster's WAL from its leader over the replication protocol and stores it within a fraction of a
/// second: pieces of the segment being written ("parts") as they arrive, then the whole segment once it is full
/// (and its pieces deleted). A physical slot on the leader keeps WAL until the store has it. On (re)start it reads
/// what the store holds and resumes there; after a failover it first fills the old timeline up to the switch point
/// (the new leader serves it from its history), then follows the new one — so no gap and no mixed timelines.
/// </summary>
public sealed class WalArchiver
{
    private readonly IObjectStore _store;
    private readonly string _instanceId;
    private readonly string _host;
    private readonly int _port;
    private readonly Credentials _credentials;
    private readonly string _spoolDir;
    private readonly WalArchiverOptions _options;
    private readonly ILogger _logger;
    private readonly object _gate = new();
    private ArchiveProgress _progress = new();
    private bool _alarmed;

    public WalArchiver(IObjectStore store, string instanceId, string host, int port, Credentials credentials, string spoolDir, WalArchiverOptions options, ILogger logger)
    {
        _store = store;
        _instanceId = instanceId;
        _host = host;
        _port = port;
        _credentials = credentials;
        _spoolDir = spoolDir;
        _options = options;
        _logger = logger;
    }

    public ArchiveProgress Progress { get { lock (_gate) return _progress; } }

    /// <summary>The archiver's application_name: how a store-synchronous leader names it in synchronous_standby_names.</summary>
    public const string ApplicationName = Dingo.Ha.SynchronousCommit.Archiver;

    private volatile bool _storeSynchronous;

    /// <summary>
    /// Store-synchronous commit (docs/backups.md): every piece is stored as soon as it arrives (no flush delay; what
    /// arrives during an upload goes with the next one) and its end reported to the server at once as flushed, so a
    /// leader that names the archiver in synchronous_standby_names acknowledges a commit only once the store holds it.
    /// Whatever the mode, the position reported flushed is never past what the store acknowledged.
    /// </summary>
    public bool StoreSynchronous { get => _storeSynchronous; set => _storeSynchronous = value; }

    /// <summary>WAL went missing before it was archived; the base-backup schedule takes a new backup and clears this.</summary>
    public bool GapDetected { get; set; }
    private bool _restartAtCurrent;
    private string? _conflict;

    private void Update(Func<ArchiveProgress, ArchiveProgress> change)
    {
        lock (_gate) _progress = change(_progress);
    }

    /// <summary>Archives until cancelled; a failed session is logged and retried.</summary>
    public async Task RunAsync(CancellationToken ct)
    {
        while (!ct.IsCancellationRequested)
        {
            try
            {
                await RunSessionAsync(ct).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested)
            {
                return;
            }
            catch (TimelineConflictException ex)
            {
                // Nothing of this timeline is written over the other branch's: the alarm stays until it is resolved.
                Update(p => p with { Error = ex.Message });
                if (ex.Message != _conflict) _logger.LogError("WAL archiver of {Instance}: {Error}", _instanceId, ex.Message);
                _conflict = ex.Message;
                try { await Task.Delay(_options.ConflictRecheck, ct).ConfigureAwait(false); }
                catch (OperationCanceledException) { return; }
                continue;
            }
            catch (PostgresException ex) when (ex.SqlState == PostgresErrorCodes.UndefinedFile)
            {
                // The leader no longer has the WAL the archive needs next: the archive has a gap. Carry on from now;
                // a new base backup makes the archive whole again from here on.
                _restartAtCurrent = true;
                GapDetected = true;
                Update(p => p with { Error = $"gap in the WAL archive: {ex.MessageText}" });
                _logger.LogError("WAL archiver of {Instance}: {Error}; archiving resumes at the current position and a base backup is taken", _instanceId, ex.MessageText);
            }
            catch (Exception ex) when (ServerEndedStream(ex))
            {
                // PostgreSQL ends a physical stream with CopyDone when it shuts down (a demotion, a switchover, a drain), which
                // Npgsql 10 does not expect ("Received backend message CommandComplete while expecting CopyDataMessage.
                // Please file a bug."). Nothing is lost: the next session, or the next leader from its history, streams
                // again from what the store holds. Said as what it is, not as a fault.
                Update(p => p with { Error = null });
                _logger.LogInformation("WAL archiver of {Instance}: the server ended the WAL stream (PostgreSQL stopping, or no longer the primary); reconnecting", _instanceId);
            }
            catch (Exception ex)
            {
                Update(p => p with { Error = ex.Message });
                _logger.LogWarning("WAL archiver of {Instance}: {Error}; retrying", _instanceId, ex.Message);
            }
            try { await Task.Delay(_options.RetryDelay, ct).ConfigureAwait(false); }
            catch (OperationCanceledException) { return; }
        }
    }

    /// <summary>Npgsql's words for a stream the server ended with CopyDone where it expected more data.</summary>
    internal static bool ServerEndedStream(Exception ex) =>
        ex is NpgsqlException && ex.Message.Contains("while expecting CopyDataMessage", StringComparison.Ordinal);

    private NpgsqlConnectionStringBuilder ConnectionString()
    {
        // 15 s, as the HA probe's and a preparation's opens: on a saturated machine a replication session's fork, TLS and
        // authentication took more than 5 s, and each timed-out open was begun again from the start (a new backend, a
        // new handshake), so the archiver's retries added to the load that made it late (issue 16, the Docker burst).
        var cs = DatabaseAdmin.ConnectionString(_host, _port, _credentials, "postgres", openSeconds: 15);
        cs.ApplicationName = ApplicationName;
        return cs;
    }

    private int _sessions;

    /// <summary>How many replication sessions this archiver has opened (each a backend, a TLS handshake, an authentication).</summary>
    internal int SessionsOpened => Volatile.Read(ref _sessions);

    private async Task<PhysicalReplicationConnection> OpenAsync(CancellationToken ct)
    {
        Interlocked.Increment(ref _sessions);
        var conn = PlatformConnectionTls.ReplicationConnection(ConnectionString());
        // PostgreSQL's own default: each upload is reported at once (ReportAsync); this is the idle heartbeat. At 1 s, every
        // idle instance cost its cell and its walsender a wake-up a second for nothing (issue 16: 300 instances a box).
        conn.WalReceiverStatusInterval = TimeSpan.FromSeconds(10);
        try
        {
            await conn.Open(ct).ConfigureAwait(false);
            return conn;
        }
        catch
        {
            await conn.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    private async Task RunSessionAsync(CancellationToken ct)
    {
        List<(uint Timeline, ulong From)> plan;
        SortedDictionary<uint, ulong> switches = new(); // timeline → the position where the next one branched off
        var conflicts = new Dictionary<uint, string>(); // timelines whose archived history tells another lineage
        ulong systemId, segmentSize;
        uint current;
        ArchiveCatalog catalog;
        PhysicalReplicationSlot slot;
        var planning = await OpenAsync(ct).ConfigureAwait(false);
        try
        {
        var conn = planning;
        var system = await conn.IdentifySystem(ct).ConfigureAwait(false);
        systemId = ulong.Parse(system.SystemId, CultureInfo.InvariantCulture);
        segmentSize = ArchiveLayout.ParseSize(await conn.Show("wal_segment_size", ct).ConfigureAwait(false));
        current = system.Timeline;

        // The server's history: which timeline ends where.
        List<(uint Timeline, ulong End)> lineage = [];
        if (current > 1)
        {
            var history = await ReadHistoryAsync(current, ct).ConfigureAwait(false);
            lineage = ArchiveLayout.ParseHistory(history).ToList();
            foreach (var (tli, end) in lineage) switches[tli] = end;
            var archived = await GetHistoryAsync(systemId, current, ct).ConfigureAwait(false);
            if (archived is null)
            {
                using var content = new MemoryStream(history);
                await _store.PutAsync(ArchiveLayout.History(_instanceId, systemId, current), content, ct).ConfigureAwait(false);
            }
            else if (HistoryConflict(current, lineage, ArchiveLayout.ParseHistory(archived).ToList()) is { } conflict)
            {
                conflicts[current] = conflict;
            }
        }

        catalog = await ArchiveCatalog.ReadAsync(_store, _instanceId, systemId, segmentSize, ct).ConfigureAwait(false);
        plan = _restartAtCurrent
            ? [(current, (ulong)system.XLogPos / segmentSize * segmentSize)]
            : PlanStreams(catalog, current, switches, (ulong)system.XLogPos, segmentSize);
        _restartAtCurrent = false;
        // Older timelines this server fills: only where the archive's history file tells the same lineage.
        foreach (var (tli, _) in plan.Where(p => p.Timeline != current && p.Timeline > 1 && catalog.Histories.Contains(p.Timeline)))
        {
            if (await GetHistoryAsync(systemId, tli, ct).ConfigureAwait(false) is { } archived
                && HistoryConflict(tli, lineage, ArchiveLayout.ParseHistory(archived).ToList()) is { } conflict)
                conflicts[tli] = conflict;
        }
        plan = plan.Where(p => !conflicts.ContainsKey(p.Timeline)).ToList();
        if (conflicts.Keys.Any(t => t != current))
        {
            // A stretch of this server's past cannot be archived: a base backup makes restores whole again without it.
            GapDetected = true;
            foreach (var (tli, why) in conflicts.Where(c => c.Key != current))
                _logger.LogError("WAL archiver of {Instance}: {Conflict}; timeline {Timeline} is not filled and a base backup is taken", _instanceId, why, tli);
        }
        slot = await EnsureSlotAsync(conn, ct).ConfigureAwait(false);
        var xlogPos = (ulong)system.XLogPos;
        // What the store already holds counts as archived from the start (not zero until the first upload): everything
        // before the first position the plan still has to store, older timelines' fills included. (The start of the
        // current timeline's stream is no such point while an older timeline's tail is still missing.)
        var resumeAt = plan.Count > 0 ? plan.Min(p => p.From) : xlogPos;
        Update(p => p with { SystemId = systemId, Timeline = current, ServerLsn = Math.Max(p.ServerLsn, xlogPos), ArchivedLsn = Math.Max(p.ArchivedLsn, resumeAt) });
        if (conflicts.TryGetValue(current, out var mine))
            Update(p => p with { Error = mine });
        }
        catch
        {
            await planning.DisposeAsync().ConfigureAwait(false);
            throw;
        }
        // The planning session streams the current timeline when that is all there is to stream (every new primary, every
        // restart of an archiver that was up to date): one replication session instead of two, each a fork, a TLS
        // handshake and an authentication (20 of them in a burst of 20 provisions, beside the binds).
        var reuse = plan is [var only] && only.Timeline == current ? planning : null;
        if (reuse is null) await planning.DisposeAsync().ConfigureAwait(false);
        foreach (var (timeline, from) in plan)
        {
            _logger.LogInformation("WAL archiver of {Instance}: archiving timeline {Timeline} from {Lsn} (system {System})",
                _instanceId, timeline, Lsn.Format(from), systemId);
            // One connection per timeline: the server ends a historic timeline's stream with CopyDone, which Npgsql 10
            // cannot read, so the archiver stops reading at the switch point and starts afresh for the next.
            await using var conn = reuse ?? await OpenAsync(ct).ConfigureAwait(false);
            var end = switches.TryGetValue(timeline, out var e) && timeline != current ? e : ulong.MaxValue;
            await StreamTimelineAsync(conn, slot, systemId, segmentSize, catalog, timeline, from, end, timeline == current, ct).ConfigureAwait(false);
        }
        if (conflicts.TryGetValue(current, out var conflicting)) throw new TimelineConflictException(conflicting);
        if (_conflict is not null)
        {
            _logger.LogInformation("WAL archiver of {Instance}: the archive's history of timeline {Timeline} now matches the server's", _instanceId, current);
            _conflict = null;
        }
    }

    /// <summary>The archive's history file of <paramref name="timeline"/>, or null when it holds none.</summary>
    private async Task<byte[]?> GetHistoryAsync(ulong systemId, uint timeline, CancellationToken ct)
    {
        using var content = new MemoryStream();
        try
        {
            await _store.GetAsync(ArchiveLayout.History(_instanceId, systemId, timeline), content, ct).ConfigureAwait(false);
            return content.ToArray();
        }
        catch (ObjectNotFoundException)
        {
            return null;
        }
    }

    /// <summary>
    /// Null when the archive's history file of <paramref name="timeline"/> tells the lineage this server's history gives
    /// it (every entry below it, with the same switch points); otherwise a sentence naming both. Two different lineages
    /// under one number are two branches: their WAL segments would have the same names.
    /// </summary>
    internal static string? HistoryConflict(uint timeline, IReadOnlyList<(uint Timeline, ulong End)> server, IReadOnlyList<(uint Timeline, ulong End)> archived)
    {
        var expected = server.Where(e => e.Timeline < timeline).ToList();
        if (expected.SequenceEqual(archived)) return null;
        static string Tell(IReadOnlyList<(uint Timeline, ulong End)> lineage) =>
            lineage.Count == 0 ? "no parent" : string.Join(", ", lineage.Select(e => $"timeline {e.Timeline} until {Lsn.Format(e.End)}"));
        return string.Create(CultureInfo.InvariantCulture,
            $"timeline {timeline} exists twice: the archive's {timeline:X8}.history says {Tell(archived)}; this server's says {Tell(expected)}. "
            + $"Timeline {timeline} of this server is not archived, so the other branch's WAL is never overwritten (a switchover moves the cluster to a new timeline)");
    }

    /// <summary>
    /// The timeline's history file, read over SQL: Npgsql 10's TimelineHistory fails on PostgreSQL 15's text answer.
    /// </summary>
    private async Task<byte[]> ReadHistoryAsync(uint timeline, CancellationToken ct)
    {
        await using var conn = PlatformConnectionTls.Connection(ConnectionString());
        await conn.OpenAsync(ct).ConfigureAwait(false);
        await using var cmd = new NpgsqlCommand("SELECT pg_read_binary_file($1)", conn);
        cmd.Parameters.AddWithValue(string.Create(CultureInfo.InvariantCulture, $"pg_wal/{timeline:X8}.history"));
        return (byte[])(await cmd.ExecuteScalarAsync(ct).ConfigureAwait(false))!;
    }

    /// <summary>
    /// Which timelines to stream, from where: from the oldest timeline the archive knows of that the server's history
    /// still needs, each from its archived end (or the start of the segment where it began) up to its switch point.
    /// </summary>
    internal static List<(uint Timeline, ulong From)> PlanStreams(ArchiveCatalog catalog, uint current, IReadOnlyDictionary<uint, ulong> switches, ulong serverLsn, ulong segmentSize)
    {
        ulong Begin(uint tli) => tli == 1 ? 0 : switches.TryGetValue(tli - 1, out var b) ? b : 0;
        ulong End(uint tli) => switches.TryGetValue(tli, out var e) ? e : ulong.MaxValue;
        var known = catalog.Timelines().Where(t => t <= current && (t == current || switches.ContainsKey(t))).ToList();
        var plan = new List<(uint, ulong)>();
        if (known.Count == 0)
        {
            plan.Add((current, serverLsn / segmentSize * segmentSize));
            return plan;
        }
        for (var tli = known.Min(); tli <= current; tli++)
        {
            if (tli != current && !switches.ContainsKey(tli)) continue; // not in this server's history
            var archived = catalog.ArchivedEnd(tli);
            var from = archived > 0 ? archived : Begin(tli) / segmentSize * segmentSize;
            if (from < End(tli)) plan.Add((tli, from));
        }
        return plan;
    }

    private async Task<PhysicalReplicationSlot> EnsureSlotAsync(PhysicalReplicationConnection conn, CancellationToken ct)
    {
        var slot = await conn.ReadReplicationSlot(_options.SlotName, ct).ConfigureAwait(false);
        if (slot is { RestartLsn: not null }) return slot;
        if (slot is not null)
        {
            // Invalidated (max_slot_wal_keep_size was exceeded while nobody archived): start a fresh one.
            _logger.LogWarning("WAL archiver of {Instance}: slot {Slot} was invalidated; recreating it (the archive may have a gap)", _instanceId, _options.SlotName);
            await conn.DropReplicationSlot(_options.SlotName, cancellationToken: ct).ConfigureAwait(false);
        }
        try
        {
            return await conn.CreateReplicationSlot(_options.SlotName, isTemporary: false, reserveWal: true, ct).ConfigureAwait(false);
        }
        catch (PostgresException ex) when (ex.SqlState == PostgresErrorCodes.DuplicateObject)
        {
            return await conn.ReadReplicationSlot(_options.SlotName, ct).ConfigureAwait(false) ?? new PhysicalReplicationSlot(_options.SlotName);
        }
    }

    private async Task StreamTimelineAsync(PhysicalReplicationConnection conn, PhysicalReplicationSlot slot, ulong systemId, ulong segmentSize,
        ArchiveCatalog catalog, uint timeline, ulong from, ulong end, bool current, CancellationToken ct)
    {
        Directory.CreateDirectory(_spoolDir);
        var spools = new SpoolQueue(this, systemId, segmentSize, timeline);
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(ct);
        // A segment resumed half-way needs its first half back to be stored whole at the end.
        await spools.ResumeAsync(catalog, from, ct).ConfigureAwait(false);
        var flusher = FlushLoopAsync(conn, spools, stop.Token);
        // A failed upload ends the session at once, not when the next WAL arrives: an idle server, or one whose commits
        // wait for this very archiver (store-sync), may send none for many seconds.
        _ = flusher.ContinueWith(_ =>
        {
            try { stop.Cancel(); } catch (ObjectDisposedException) { }
        }, CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted | TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        try
        {
            try
            {
                await StreamAsync().ConfigureAwait(false);
            }
            catch (Exception) when (flusher.IsFaulted && !ct.IsCancellationRequested)
            {
                await flusher.ConfigureAwait(false); // the store's error is the session's
            }
        }
        finally
        {
            await stop.CancelAsync().ConfigureAwait(false);
            try { await flusher.ConfigureAwait(false); } catch (Exception) when (stop.IsCancellationRequested) { }
            spools.Dispose();
        }

        async Task StreamAsync()
        {
            var position = from;
            await foreach (var message in conn.StartReplication(slot, new NpgsqlLogSequenceNumber(from), stop.Token, timeline).ConfigureAwait(false))
            {
                var start = (ulong)message.WalStart;
                var serverEnd = (ulong)message.WalEnd;
                var buffer = new byte[checked((int)message.Data.Length)];
                await message.Data.ReadExactlyAsync(buffer, stop.Token).ConfigureAwait(false);
                if (start > position)
                    throw new InvalidOperationException($"WAL stream jumped from {Lsn.Format(position)} to {Lsn.Format(start)}");
                // Skip anything already held.
                var skip = (int)Math.Min((ulong)buffer.Length, position - start);
                spools.Append(position, buffer.AsSpan(skip));
                position = Math.Max(position, start + (ulong)buffer.Length);
                Update(p => p with { Timeline = current ? timeline : p.Timeline, ServerLsn = Math.Max(p.ServerLsn, Math.Max(serverEnd, start + (ulong)buffer.Length)) });
                spools.Signal();
                if (flusher.IsCompleted) await flusher.ConfigureAwait(false); // surfaces an upload failure
                if (position >= end) break;
            }
            // The server ended the stream: a historic timeline reached its switch point. Store the rest, then move on.
            spools.EndOfTimeline();
            spools.Signal();
            await stop.CancelAsync().ConfigureAwait(false);
            try { await flusher.ConfigureAwait(false); } catch (OperationCanceledException) when (!ct.IsCancellationRequested) { }
            await spools.FlushAllAsync(conn, ct).ConfigureAwait(false);
        }
    }

    private async Task FlushLoopAsync(PhysicalReplicationConnection conn, SpoolQueue spools, CancellationToken ct)
    {
        while (!ct.IsCancellationRequested)
        {
            // Asleep until WAL arrives or the next piece is due. Idle, it wakes every IdleWake only: what its backlog
            // check reads changes only with WAL that arrives (which wakes it) or pieces it stores (after which it looks).
            var wait = spools.UntilDue(_options);
            if (wait > TimeSpan.Zero) await spools.WaitAsync(wait, ct).ConfigureAwait(false);
            await spools.FlushDueAsync(conn, _options, ct).ConfigureAwait(false);
            CheckBacklog();
        }
    }

    private void CheckBacklog()
    {
        var p = Progress;
        var backlog = p.BacklogBytes;
        if (backlog >= _options.BacklogAlarmBytes && !_alarmed)
        {
            _alarmed = true;
            _logger.LogError("WAL archive backlog of {Instance}: {Bytes} MiB not yet in the store (alarm at {Limit} MiB); pg_wal grows until it is",
                _instanceId, backlog / (1024 * 1024), _options.BacklogAlarmBytes / (1024 * 1024));
        }
        else if (backlog < _options.BacklogAlarmBytes / 2 && _alarmed)
        {
            _alarmed = false;
            _logger.LogInformation("WAL archive backlog of {Instance} cleared", _instanceId);
        }
    }

    /// <summary>The segments of one timeline being streamed: received bytes go to a spool file per segment.</summary>
    private sealed class SpoolQueue(WalArchiver owner, ulong systemId, ulong segmentSize, uint timeline) : IDisposable
    {
        private readonly List<Spool> _spools = [];
        private readonly SemaphoreSlim _signal = new(0);
        private bool _ended;

        private sealed class Spool
        {
            public required WalSegment Segment { get; init; }
            public required SafeFileHandle File { get; init; }
            public required string Path { get; init; }
            /// <summary>Absolute positions: [Segment.Start, Filled) is in the spool; [Segment.Start, Uploaded) in the store.</summary>
            public ulong Filled;
            public ulong Uploaded;
            public ulong FirstHeld;
            public bool Complete => Filled == Segment.End;
        }

        public void Signal() => _signal.Release();

        public async Task WaitAsync(TimeSpan timeout, CancellationToken ct) => await _signal.WaitAsync(timeout, ct).ConfigureAwait(false);

        private Spool Open(WalSegment segment, ulong at)
        {
            var path = System.IO.Path.Combine(owner._spoolDir, segment.Name);
            var handle = System.IO.File.OpenHandle(path, FileMode.Create, FileAccess.ReadWrite, FileShare.Read);
            var spool = new Spool { Segment = segment, File = handle, Path = path, Filled = at, Uploaded = at, FirstHeld = segment.Start };
            lock (_spools) _spools.Add(spool);
            return spool;
        }

        public async Task ResumeAsync(ArchiveCatalog catalog, ulong from, CancellationToken ct)
        {
            var segment = WalSegment.Containing(timeline, from, segmentSize);
            var spool = Open(segment, from);
            if (from == segment.Start) return;
            // Put the stored pieces back so the whole segment can be stored once it is full.
            if (catalog.Parts.TryGetValue(segment.Name, out var pieces) && catalog.ContiguousEnd(segment, pieces) >= from)
            {
                foreach (var (pFrom, pTo, key) in pieces)
                {
                    if (pFrom >= from) break;
                    using var ms = new MemoryStream();
                    await owner._store.GetAsync(key, ms, ct).ConfigureAwait(false);
                    var bytes = ms.ToArray();
                    var take = (int)Math.Min((ulong)bytes.Length, Math.Min(pTo, from) - pFrom);
                    RandomAccess.Write(spool.File, bytes.AsSpan(0, take), (long)(pFrom - segment.Start));
                }
            }
            else
            {
                // The start of this segment is not in the store (it began on another timeline's copy, or a hole):
                // the whole segment is never stored, only its pieces.
                spool.FirstHeld = from;
            }
        }

        public void Append(ulong at, ReadOnlySpan<byte> data)
        {
            while (data.Length > 0)
            {
                Spool? found;
                lock (_spools) found = _spools.LastOrDefault(s => s.Segment.Start <= at && at < s.Segment.End);
                var spool = found ?? Open(WalSegment.Containing(timeline, at, segmentSize), at);
                var room = (int)Math.Min((ulong)data.Length, spool.Segment.End - at);
                RandomAccess.Write(spool.File, data[..room], (long)(at - spool.Segment.Start));
                lock (_spools)
                {
                    spool.Filled = at + (ulong)room;
                }
                at += (ulong)room;
                data = data[room..];
            }
        }

        public void EndOfTimeline()
        {
            lock (_spools) _ended = true;
        }

        /// <summary>When the last piece was stored: the next waits at most <see cref="WalArchiverOptions.FlushDelay"/> after it.</summary>
        private long _lastUploadTicks; // 0: none yet

        /// <summary>An archiver with nothing to store: a hundred on a cell woke a hundred times a second at 1 s.</summary>
        public static readonly TimeSpan IdleWake = TimeSpan.FromSeconds(10);

        /// <summary>
        /// How long until the first spool has something due (zero: now). WAL arriving after a quiet spell is stored at
        /// once; under a steady stream, one piece per flush delay at most (each a PUT on a priced store). Store-sync:
        /// always at once.
        /// </summary>
        public TimeSpan UntilDue(WalArchiverOptions options)
        {
            lock (_spools)
            {
                var spool = _spools.FirstOrDefault();
                if (spool is null) return IdleWake;
                var pending = spool.Filled - spool.Uploaded;
                if (spool.Complete || _ended) return TimeSpan.Zero;
                if (pending == 0) return IdleWake;
                if (owner.StoreSynchronous || (long)pending >= options.FlushBytes) return TimeSpan.Zero;
                if (_lastUploadTicks == 0) return TimeSpan.Zero;
                var left = options.FlushDelay - System.Diagnostics.Stopwatch.GetElapsedTime(_lastUploadTicks);
                return left > TimeSpan.Zero ? left : TimeSpan.Zero;
            }
        }

        public async Task FlushDueAsync(PhysicalReplicationConnection conn, WalArchiverOptions options, CancellationToken ct)
        {
            while (true)
            {
                Spool? spool;
                bool due;
                lock (_spools)
                {
                    spool = _spools.FirstOrDefault();
                    if (spool is null) return;
                    due = spool.Complete || _ended || spool.Filled > spool.Uploaded && UntilDue(options) == TimeSpan.Zero;
                    if (!due) return;
                }
                await FlushAsync(conn, spool, ct).ConfigureAwait(false);
                lock (_spools)
                {
                    if (!spool.Complete && !(_ended && spool.Uploaded == spool.Filled)) return;
                    if (spool.Complete && spool.Uploaded != spool.Segment.End) return;
                    _spools.Remove(spool);
                }
                spool.File.Dispose();
                System.IO.File.Delete(spool.Path);
            }
        }

        public async Task FlushAllAsync(PhysicalReplicationConnection conn, CancellationToken ct)
        {
            List<Spool> all;
            lock (_spools) all = _spools.ToList();
            foreach (var spool in all) await FlushAsync(conn, spool, ct).ConfigureAwait(false);
        }

        private async Task FlushAsync(PhysicalReplicationConnection conn, Spool spool, CancellationToken ct)
        {
            ulong from, to;
            bool whole;
            lock (_spools)
            {
                from = spool.Uploaded;
                to = spool.Filled;
                whole = spool.Complete && spool.FirstHeld == spool.Segment.Start;
            }
            var store = owner._store;
            var id = owner._instanceId;
            var synchronous = owner.StoreSynchronous;
            if (whole && synchronous && to > from)
            {
                // Commits wait for this tail: a small piece now, the whole 16 MiB segment right after.
                await PutPartAsync(store, id, spool, from, to, ct).ConfigureAwait(false);
                await ReportAsync(conn, spool, to, ct).ConfigureAwait(false);
            }
            if (whole)
            {
                await using (var stream = new FileStream(spool.Path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite))
                    await store.PutAsync(ArchiveLayout.Segment(id, systemId, spool.Segment), stream, ct).ConfigureAwait(false);
                // The whole segment is stored: its pieces are redundant.
                await store.DeletePrefixAsync(ArchiveLayout.SegmentParts(id, systemId, spool.Segment), ct).ConfigureAwait(false);
            }
            else if (to > from)
            {
                await PutPartAsync(store, id, spool, from, to, ct).ConfigureAwait(false);
            }
            else return;
            await ReportAsync(conn, spool, to, ct).ConfigureAwait(false);
        }

        private async Task PutPartAsync(IObjectStore store, string id, Spool spool, ulong from, ulong to, CancellationToken ct)
        {
            var bytes = new byte[to - from];
            RandomAccess.Read(spool.File, bytes, (long)(from - spool.Segment.Start));
            using var ms = new MemoryStream(bytes);
            await store.PutAsync(ArchiveLayout.Part(id, systemId, spool.Segment, from, to), ms, ct).ConfigureAwait(false);
        }

        /// <summary>Everything before <paramref name="to"/> is in the store: the slot may let go of it, and (store-sync) the server hears it now.</summary>
        private async Task ReportAsync(PhysicalReplicationConnection conn, Spool spool, ulong to, CancellationToken ct)
        {
            lock (_spools)
            {
                spool.Uploaded = to;
                _lastUploadTicks = System.Diagnostics.Stopwatch.GetTimestamp();
            }
            owner.Update(p => p with { Timeline = p.Timeline == 0 ? timeline : p.Timeline, ArchivedLsn = to, LastUpload = DateTimeOffset.UtcNow, Error = null });
            conn.SetReplicationStatus(new NpgsqlLogSequenceNumber(to));
            // Sent at once, not at Npgsql's next status interval (10 s): a store-synchronous leader's commits wait for it,
            // and the slot lets go of stored WAL as it goes (one message per upload, so only while WAL flows).
            await conn.SendStatusUpdate(ct).ConfigureAwait(false);
        }

        public void Dispose()
        {
            lock (_spools)
            {
                foreach (var s in _spools) s.File.Dispose();
                _spools.Clear();
            }
            _signal.Dispose();
        }
    }
}
