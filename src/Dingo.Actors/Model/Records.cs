using System.Text.Json;
using System.Text.Json.Serialization;

namespace Dingo.Model;

/// <summary>What the broker was asked for: one service instance, as stored in etcd.</summary>
public sealed record InstanceRecord
{
    public required string Id { get; init; }
    public required string ServiceId { get; init; }
    public required string PlanId { get; init; }
    public required string OrganizationGuid { get; init; }
    public required string SpaceGuid { get; init; }
    /// <summary>Provision/update parameters exactly as sent (compared byte-for-byte as canonical JSON).</summary>
    public string ParametersJson { get; init; } = "{}";
    public string ContextJson { get; init; } = "{}";
    public required int Port { get; init; }
    /// <summary>The instance's read-only port (balanced over healthy replicas); 0 for instances made before it existed.</summary>
    public int ReadOnlyPort { get; init; }
    public required int NodeCount { get; init; }
    public string Database { get; init; } = "dingo";
    public required Credentials Superuser { get; init; }
    /// <summary>The replication role replicas stream with: never handed to a binding.</summary>
    public Credentials? Replication { get; init; }
    /// <summary>present: keep it running; absent: tear it down.</summary>
    public DesiredState Desired { get; init; } = DesiredState.Present;
    public DateTimeOffset CreatedAt { get; init; }
    /// <summary>Set: the cluster's first node is restored from this instance's backups instead of initialised empty.</summary>
    public RestoreSource? Restore { get; init; }
    /// <summary>The product version (OSB `maintenance_info.version`) the instance was provisioned or last updated with; null before the field.</summary>
    public string? MaintenanceVersion { get; init; }
}

/// <param name="InstanceId">whose backups (this instance itself when recreating or rebuilding it)</param>
/// <param name="PointInTime">replay commits up to this moment; null: everything archived</param>
public sealed record RestoreSource(string InstanceId, DateTimeOffset? PointInTime);

/// <summary>An instance's backups as the leader's cell last saw them.</summary>
public sealed record BackupState
{
    public required string NodeId { get; init; }
    public ulong SystemId { get; init; }
    public uint Timeline { get; init; }
    public string ArchivedLsn { get; init; } = "0/0";
    public long BacklogBytes { get; init; }
    public DateTimeOffset? LastUpload { get; init; }
    /// <summary>Set while the archive lags too far behind, or the last attempt failed: what an operator must look at.</summary>
    public string? Alarm { get; init; }
    public string? LastBaseBackup { get; init; }
    public DateTimeOffset? LastBaseBackupAt { get; init; }
    public int BaseBackups { get; init; }
    public string? BaseBackupError { get; init; }
    /// <summary>Sessions whose commit waits for synchronous replication now (with store-sync: for the object store too).</summary>
    public int CommitsWaiting { get; init; }
    /// <summary>How long the oldest of them has waited, in seconds.</summary>
    public double CommitWaitSeconds { get; init; }
    public DateTimeOffset UpdatedAt { get; init; }
}

/// <summary>A restore drill's outcome: the latest backup restored into a scratch node and checked.</summary>
public sealed record DrillResult
{
    public required string InstanceId { get; init; }
    public required bool Ok { get; init; }
    public required string Detail { get; init; }
    public string? BaseBackup { get; init; }
    public double Seconds { get; init; }
    public DateTimeOffset At { get; init; }
}

/// <summary>
/// A login. Stored (etcd, the object store) with its password sealed by the platform key
/// (<see cref="Dingo.Security.CredentialsJsonConverter"/>); in memory, plain.
/// </summary>
[JsonConverter(typeof(Dingo.Security.CredentialsJsonConverter))]
public sealed record Credentials(string Username, string Password)
{
    // Never print a password, even by accident through a record's generated ToString.
    public override string ToString() => $"{Username}:***";
}

/// <summary>The last asynchronous operation on an instance, as OSB's last_operation reports it.</summary>
public sealed record OperationRecord
{
    public required string Id { get; init; }
    public required OperationKind Kind { get; init; }
    public required OperationState State { get; init; }
    public required string Description { get; init; }
    public DateTimeOffset StartedAt { get; init; }
    public DateTimeOffset UpdatedAt { get; init; }

    [JsonIgnore] public bool InProgress => State == OperationState.InProgress;
}

/// <summary>A binding: one dedicated login role in the instance's database.</summary>
public sealed record BindingRecord
{
    public required string Id { get; init; }
    public required string InstanceId { get; init; }
    public required string ServiceId { get; init; }
    public required string PlanId { get; init; }
    public string? AppGuid { get; init; }
    public string BindResourceJson { get; init; } = "{}";
    public string ParametersJson { get; init; } = "{}";
    public required Credentials Role { get; init; }
    /// <summary>creating: the role may not exist yet; ready: credentials were handed out.</summary>
    public BindingState State { get; init; } = BindingState.Creating;
    public DateTimeOffset CreatedAt { get; init; }
}

/// <summary>One PostgreSQL node the platform wants: written by the instance actor, read by its cell.</summary>
public sealed record NodeSpec
{
    public required string NodeId { get; init; }
    public required string InstanceId { get; init; }
    public required string CellId { get; init; }
    /// <summary>The port PostgreSQL listens on, on the cell's address.</summary>
    public required int Port { get; init; }
    /// <summary>The node's Patroni-compatible health API port (0: none).</summary>
    public int ApiPort { get; init; }
    public DateTimeOffset CreatedAt { get; init; }
}

/// <summary>What a cell observed about one of its nodes, on its last reconcile pass.</summary>
public sealed record NodeStatus
{
    public required string NodeId { get; init; }
    public required string InstanceId { get; init; }
    public required string CellId { get; init; }
    /// <summary>See <see cref="NodeCondition"/>.</summary>
    public required NodeState State { get; init; }
    public required string Detail { get; init; }
    public required string Host { get; init; }
    public required int Port { get; init; }
    public NodeRole Role { get; init; } = NodeRole.Unknown;
    public int Restarts { get; init; }
    /// <summary>Primary: current WAL position; replica: last WAL position received (bytes).</summary>
    public long Lsn { get; init; }
    public int Timeline { get; init; }
    /// <summary>Replica: its WAL receiver streams from the leader.</summary>
    public bool Streaming { get; init; }
    /// <summary>Replica: the node it was last configured to stream from (null: none, or not a replica).</summary>
    public string? Following { get; init; }
    /// <summary>PostgreSQL answers and is not in recovery: it accepts writes, whether or not it holds the key right now.</summary>
    public bool Writable { get; init; }
    /// <summary>The last sentence of the node's HA loop.</summary>
    public string Decision { get; init; } = "";
    /// <summary>Since when the node's passes keep failing (null: the last pass worked).</summary>
    public DateTimeOffset? FailingSince { get; init; }
    /// <summary>Client connections at the last probe (not the platform's own); refreshed with the heartbeat, never a write of its own.</summary>
    public int? Connections { get; init; }
    /// <summary>
    /// The node has no data yet (waiting to clone, cloning): it could not take the leader key if it were free. Reports
    /// written before the field read false, as could; written only when true.
    /// </summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    public bool NoData { get; init; }
    public DateTimeOffset UpdatedAt { get; init; }
}

/// <summary>
/// The role an operator's view shows for a node (`dingo status`, the instance dashboard): primary while it holds the
/// leader key, replica when its last report says so, unknown otherwise.
/// </summary>
public static class NodeRoles
{
    public static NodeRole Shown(string? leaderNodeId, string nodeId, NodeStatus? status) =>
        leaderNodeId == nodeId ? NodeRole.Primary : status?.Role == NodeRole.Replica ? NodeRole.Replica : NodeRole.Unknown;
}

/// <summary>A cell's registration, kept alive under the cell's lease.</summary>
public sealed record CellInfo
{
    public required string Id { get; init; }
    public required string Zone { get; init; }
    public required int Capacity { get; init; }
    /// <summary>Address its nodes listen on and routers forward to.</summary>
    public required string Address { get; init; }
    public required string Runtime { get; init; }
    public DateTimeOffset StartedAt { get; init; }
    /// <summary>What keeps the cell from taking nodes (engine unreachable, image missing, disk full, another etcd); null when nothing.</summary>
    public string? Problem { get; init; }
    /// <summary>
    /// Data the cell keeps because etcd neither wants it nor says it may go (no record of its instance, no tombstone);
    /// an operator decides. Shown beside the problem; it does not stop the cell taking nodes. Null when none.
    /// </summary>
    public string? Kept { get; init; }
}

/// <summary>
/// An instance whose deletion finished: a cell that still holds one of its nodes (it was away meanwhile) may delete
/// that data. Kept for dingo.broker.tombstone-retention.
/// </summary>
public sealed record InstanceTombstone
{
    public required string InstanceId { get; init; }
    public DateTimeOffset DeletedAt { get; init; }
}

/// <summary>
/// A node removed from its instance (shrink, replacement of a node on a lost cell, drain, deletion): the cell named
/// may delete its data once the grace has passed and the data is safe elsewhere. Kept for dingo.broker.tombstone-retention.
/// </summary>
public sealed record NodeTombstone
{
    public required string NodeId { get; init; }
    public required string InstanceId { get; init; }
    public required string CellId { get; init; }
    /// <summary>Why it was removed, as the instance's decision said it.</summary>
    public required string Reason { get; init; }
    public DateTimeOffset RemovedAt { get; init; }
    /// <summary>Its WAL position as it last reported it before removal (null: no report then): the bar its data's safety is judged by when its own report is gone.</summary>
    public long? LastLsn { get; init; }
    /// <summary>The timeline <see cref="LastLsn"/> is on (null: no report, or a tombstone written before it was kept).</summary>
    public int? LastTimeline { get; init; }
}

/// <summary>
/// A member of the Akka cluster as it registered itself in etcd once Up, kept under its own process's lease: how a
/// restarting process finds the running cluster (and never founds a second one), and how the console finds a broker.
/// </summary>
public sealed record AkkaMemberRecord
{
    /// <summary>akka.tcp://dingo@host:port</summary>
    public required string Address { get; init; }
    public required IReadOnlyList<string> Roles { get; init; }
    public DateTimeOffset Since { get; init; }
}

/// <summary>Who is primary for an instance; held under the holder's lease.</summary>
public sealed record LeaderRecord
{
    public required string NodeId { get; init; }
    public required string Host { get; init; }
    public required int Port { get; init; }
    public DateTimeOffset Since { get; init; }
}

/// <summary>A public port owned by an instance for life; a retired port is never handed out again.</summary>
public sealed record PortRecord
{
    public required string InstanceId { get; init; }
    public required PortState State { get; init; }
    /// <summary>primary: connections go to the primary; read-only: balanced over healthy replicas.</summary>
    public PortRole Role { get; init; } = PortRole.Primary;
}

public static class Json
{
    public static readonly JsonSerializerOptions Options = new(JsonSerializerDefaults.Web)
    {
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
    };

    public static string Serialize<T>(T value) => JsonSerializer.Serialize(value, Options);

    public static T Deserialize<T>(string json) =>
        JsonSerializer.Deserialize<T>(json, Options) ?? throw new JsonException($"empty JSON for {typeof(T).Name}");
}

/// <summary>Synchronous plans: the standbys named in synchronous_standby_names (a superset is always in etcd).</summary>
public sealed record SyncState(IReadOnlyList<string> Standbys, string Leader);

/// <summary>A planned switchover: the leader hands over to Candidate (null: the best replica).</summary>
public sealed record SwitchoverRequest(string From, string? Candidate, DateTimeOffset RequestedAt)
{
    /// <summary>
    /// The replica the leader chose, written by the leader before it stops: once the key is free, only that replica may
    /// take it while it reports (null: the leader has not handed over yet).
    /// </summary>
    public string? HandedTo { get; init; }
}
