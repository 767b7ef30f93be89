namespace Dingo.Model;

/// <summary>
/// One thing that happened to an instance, as an operator reads it the morning after: when, on which node and cell, what
/// kind, and the sentence of the component that did it (the HA loop's decision, an operation's outcome, a backup's).
/// Kept in etcd under <see cref="Store.Keys.Events"/> for the events retention; never holds a secret.
/// </summary>
public sealed record EventRecord
{
    public required DateTimeOffset At { get; init; }
    public required string InstanceId { get; init; }
    public string? NodeId { get; init; }
    /// <summary>The cell that saw it, or "broker".</summary>
    public string? Source { get; init; }
    public required string Kind { get; init; }
    public required string Sentence { get; init; }
}

/// <summary>The kinds of events besides the HA loop's own steps (which use their decision's name: promote, rewind, …).</summary>
public static class EventKind
{
    public const string Fenced = "fenced";
    /// <summary>A cell's fencing guard gave up the key of a leader whose PostgreSQL and cell agent had both died.</summary>
    public const string LeaderReleased = "leader_released";
    public const string PostgresRestarted = "postgres_restarted";
    public const string NodePlaced = "node_placed";
    public const string NodesReplaced = "nodes_replaced";
    public const string BaseBackup = "base_backup";
    public const string BaseBackupFailed = "base_backup_failed";
    public const string Drill = "drill";
    public const string DrillFailed = "drill_failed";
    public const string Restore = "restore";
    public const string RestoreFailed = "restore_failed";
    public const string BackupAlarm = "backup_alarm";

    /// <summary>An operation's end: provision_succeeded, update_failed, deprovision_succeeded, …</summary>
    public static string Operation(OperationKind kind, OperationState state) => $"{kind.Wire()}_{state.Wire().Replace(' ', '_')}";
}
