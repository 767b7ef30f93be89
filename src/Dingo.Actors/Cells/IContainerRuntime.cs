using Dingo.Backups;
using Dingo.Model;

namespace Dingo.Cells;

/// <summary>
/// Runs PostgreSQL nodes on one cell. The cell's reconcile logic drives this and never knows which
/// implementation it has (local processes now, Docker Engine API later). Every method is idempotent:
/// calling it again after a crash half-way through finishes the job or does nothing.
/// </summary>
public interface IContainerRuntime
{
    /// <summary>"process" or "docker": shown to operators.</summary>
    string Kind { get; }

    /// <summary>What keeps this runtime from working right now (engine unreachable, image missing), or null.</summary>
    string? Problem => null;

    /// <summary>Every node this runtime holds on this cell (data present), running or not.</summary>
    Task<IReadOnlyList<RuntimeNode>> ListAsync(CancellationToken cancellationToken);

    /// <summary>
    /// One node as <see cref="ListAsync"/> lists it, or null when this runtime holds nothing of it. A node's HA pass asks
    /// for its own node only: listing every node of the cell each pass made a pass's cost grow with the cell's nodes.
    /// </summary>
    async Task<RuntimeNode?> InspectAsync(string nodeId, CancellationToken cancellationToken) =>
        (await ListAsync(cancellationToken).ConfigureAwait(false)).FirstOrDefault(n => n.NodeId == nodeId);

    /// <summary>Initialises the node's data (initdb with the superuser and its password); resumes a half-made node.</summary>
    Task CreateAsync(NodeLaunchSpec spec, CancellationToken cancellationToken);

    /// <summary>
    /// Starts PostgreSQL on spec.ListenAddress:spec.Port; returns once the process is launched (not necessarily
    /// accepting). With a standby configuration it starts read-only (standby.signal) and streams from its
    /// primary, if one is named; without one it starts as a primary.
    /// </summary>
    Task StartAsync(NodeLaunchSpec spec, StandbyConfig? standby, CancellationToken cancellationToken);

    /// <summary>Points a running standby at another primary (or none); the caller reloads PostgreSQL's configuration.</summary>
    Task ConfigureStandbyAsync(NodeLaunchSpec spec, StandbyConfig standby, CancellationToken cancellationToken);

    /// <summary>Replaces the node's data with a base backup of the source (pg_basebackup); the node must be stopped.</summary>
    Task CloneAsync(NodeLaunchSpec spec, ReplicationSource source, CancellationToken cancellationToken);

    /// <summary>Stops the node and rewinds its data to the source's timeline (pg_rewind). Throws when it cannot.</summary>
    Task RewindAsync(NodeLaunchSpec spec, ReplicationSource source, CancellationToken cancellationToken);

    /// <summary>
    /// Replaces the node's data with a base backup and replays archived WAL up to the target time (or to the end),
    /// ending on a new timeline as a writable primary; the node is left stopped with initialised data. When nothing
    /// was committed after the target, recovery to the end gives the same data and is what happens. Where recovery
    /// ended is checked against <see cref="RestoreInput.Goal"/> first: short of it, this throws a
    /// <see cref="Dingo.Backups.RestoreException"/> with the reason and the node's data does not count as initialised.
    /// </summary>
    Task RestoreAsync(NodeLaunchSpec spec, RestoreInput input, CancellationToken cancellationToken);

    /// <summary>
    /// The PID (in this host's PID namespace) of the node's running postmaster, or null when it does not run: the
    /// fencing guard signals it, and every process under it, when a leader's deadline passes.
    /// </summary>
    Task<int?> PostmasterPidAsync(string nodeId, CancellationToken cancellationToken);

    /// <summary>
    /// Writes timeline history files into the node's pg_wal (mode 0600, owned by the PostgreSQL user; inside the container
    /// on Docker), each only where no file of that name is yet: a history file already there is never replaced. Called
    /// right before a promotion so PostgreSQL picks a timeline above every one the archive holds. Returns the names written.
    /// </summary>
    Task<IReadOnlyList<string>> AddTimelineHistoriesAsync(string nodeId, IReadOnlyList<TimelineHistoryFile> files, CancellationToken cancellationToken);

    /// <summary>Stops PostgreSQL (fast shutdown), keeping the data.</summary>
    Task StopAsync(string nodeId, CancellationToken cancellationToken);

    /// <summary>
    /// Records which instance the node belongs to, so <see cref="ListAsync"/> names it after a restart (the cell must know
    /// a node's instance to ever judge its data safe to delete). Create, clone, restore and start record it themselves;
    /// the cell calls this for nodes made before the record existed.
    /// </summary>
    Task RecordInstanceAsync(string nodeId, string instanceId, CancellationToken cancellationToken);

    /// <summary>Stops PostgreSQL if it runs and deletes every byte of the node's data.</summary>
    Task RemoveAsync(string nodeId, CancellationToken cancellationToken);

    /// <summary>
    /// Who may log in as the platform's roles (<see cref="Dingo.Postgres.PlatformAccess"/>): every start writes it into the
    /// node's pg_hba.conf, and a call with a different value rewrites the pg_hba.conf of every running node and makes
    /// PostgreSQL reload it. A node whose rewrite failed is tried again on the next call.
    /// </summary>
    Task ApplyPlatformAccessAsync(Dingo.Postgres.PlatformAccess access, CancellationToken cancellationToken);

    /// <summary>The node's health API TLS: its certificate of the platform CA and whether plain HTTP is refused.</summary>
    Dingo.Ha.HealthTls HealthApiTls(string nodeId) => Dingo.Ha.HealthTls.Plain;

    /// <summary>
    /// No node is being made, started, cloned, restored or rewound here, none was within <paramref name="span"/>, and the
    /// host's CPUs are not saturated (dingo.cell.saturated-cpu-pressure): what can wait for it (the warm pool's fills, a
    /// new cluster's first base backup) waits for it.
    /// </summary>
    bool NodeWorkQuietFor(TimeSpan span) => true;

    /// <summary>
    /// Of that work, none an application may be waiting for (everything but a clone and a replica's start) is running
    /// here, and none was within <paramref name="span"/>: what a new asynchronous replica's clone waits for (CloneSettle).
    /// </summary>
    bool ServingWorkQuietFor(TimeSpan span) => true;
}

/// <param name="Initialised">initdb finished: the data directory is complete.</param>
/// <param name="Running">the postmaster process is alive (not a zombie).</param>
public sealed record RuntimeNode(string NodeId, bool Initialised, bool Running, int? Pid, string Detail)
{
    /// <summary>
    /// The node's instance as the runtime recorded it (the Docker runtime's labels, the process runtime's file beside the
    /// node's folder); null only for a node made before either recorded it.
    /// </summary>
    public string? InstanceId { get; init; }

    /// <summary>The node's container (Docker runtime): the same id after a cell restart proves it was adopted.</summary>
    public string? ContainerId { get; init; }
}

/// <summary>A timeline history file as PostgreSQL names it in pg_wal (TTTTTTTT.history).</summary>
public sealed record TimelineHistoryFile(uint Timeline, byte[] Content)
{
    public string Name => string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{Timeline:X8}.history");
}

public sealed record NodeLaunchSpec(string NodeId, string InstanceId, string ListenAddress, int Port, Credentials Superuser);

/// <summary>Where a node streams or copies WAL from, and as whom.</summary>
public sealed record ReplicationSource(string Host, int Port, Credentials Credentials);

/// <param name="Primary">the leader to stream from; null: read-only, waiting for a leader</param>
/// <param name="SlotName">replication slot on the primary (the primary creates it)</param>
public sealed record StandbyConfig(ReplicationSource? Primary, string SlotName, string ApplicationName)
{
    /// <summary>
    /// The leader's own PostgreSQL restarted after a crash, its writes waiting on the recovery: the data directory is
    /// flushed with one syncfs (<c>recovery_init_sync_method = syncfs</c>) instead of an fsync per file, which took most
    /// of the recovery (1.7 s of 2.0 under bench/Chaos). Only then: a clone's or restore's start would flush the whole
    /// file system for nothing urgent.
    /// </summary>
    public bool LeaderAfterCrash { get; init; }
}
