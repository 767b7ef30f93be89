using Dingo.Model;

namespace Dingo.Cells;

/// <summary>What etcd says of the instance an unwanted node belongs to.</summary>
public enum InstanceRecordState
{
    /// <summary>The record is there and the instance is wanted.</summary>
    Present,
    /// <summary>The record is there with desired = absent: a deprovision is under way.</summary>
    MarkedAbsent,
    /// <summary>No record.</summary>
    Missing,
}

/// <summary>Whether an unwanted node's data is held elsewhere (<see cref="CellReconciler"/> checks the leader and the archive).</summary>
/// <param name="Sentence">how it is safe, or why not</param>
public sealed record Safety(bool Safe, string Sentence);

/// <summary>
/// Everything the decision about one unwanted node's data (a node this cell holds that etcd no longer assigns to it)
/// looks at, read from etcd and the runtime in one pass.
/// </summary>
/// <param name="EtcdMismatch">null: the etcd this cell placed its data from; else how it differs</param>
/// <param name="InstanceId">the node's instance, as the runtime recorded it beside the data; null: not known</param>
/// <param name="NodeTombstone">etcd's record that the node was removed from its instance; null: none</param>
/// <param name="UnwantedSince">when this cell first saw the node unwanted (the grace runs from there)</param>
/// <param name="Safety">null: not checked yet (checked only once everything else allows deletion)</param>
public sealed record OrphanFacts(
    string NodeId,
    string CellId,
    string? EtcdMismatch,
    string? InstanceId,
    InstanceRecordState Instance,
    InstanceTombstone? InstanceTombstone,
    NodeTombstone? NodeTombstone,
    DateTimeOffset UnwantedSince,
    TimeSpan Grace,
    DateTimeOffset Now,
    Safety? Safety);

public enum OrphanAction
{
    /// <summary>Stop it and delete every byte of its data.</summary>
    Remove,
    /// <summary>Keep the data; stop PostgreSQL if it runs (an unwanted node has no HA loop, so it must not serve).</summary>
    Keep,
    /// <summary>Everything allows deletion but safety: check whether the data is held elsewhere, then decide again.</summary>
    CheckSafety,
}

/// <param name="Unexplained">kept because etcd neither wants the node nor says it may go: an operator decides (CellInfo.Kept)</param>
public sealed record OrphanVerdict(OrphanAction Action, string Sentence, bool Unexplained = false);

/// <summary>
/// The cell deletes a node's data only on a positive instruction from the etcd it placed that data from: its instance
/// marked absent or deleted (a tombstone), or the node removed from its instance (a tombstone naming this cell) and,
/// after the grace, its data safe elsewhere. A missing record is never an instruction: an empty, restored or
/// wrong-prefix etcd has no records at all. Pure; the cell carries the verdict out.
/// </summary>
public static class OrphanData
{
    public static OrphanVerdict Decide(OrphanFacts f)
    {
        if (f.EtcdMismatch is not null) return new(OrphanAction.Keep, $"kept: {f.EtcdMismatch}");
        if (f.InstanceId is not { } instance)
            return new(OrphanAction.Keep, "kept: the runtime does not know which instance it belongs to, so nothing in etcd can say it may go", Unexplained: true);

        if (f.Instance == InstanceRecordState.MarkedAbsent)
            return new(OrphanAction.Remove, $"instance {instance} is being deleted");
        if (f.Instance == InstanceRecordState.Missing && f.InstanceTombstone is { } deleted)
            return new(OrphanAction.Remove, $"instance {instance} was deleted at {deleted.DeletedAt:yyyy-MM-dd HH:mm:ss}Z");

        if (f.NodeTombstone is not { } removed)
            return new(OrphanAction.Keep, f.Instance == InstanceRecordState.Missing
                ? $"kept: etcd has no record of instance {instance} and no tombstone for it or this node"
                : $"kept: instance {instance} no longer lists it, but etcd holds no removal of it", Unexplained: true);
        if (removed.CellId != f.CellId)
            return new(OrphanAction.Keep, $"kept: etcd's removal of {f.NodeId} names cell {removed.CellId}, not this cell", Unexplained: true);

        var until = f.UnwantedSince + f.Grace;
        if (f.Now < until)
            return new(OrphanAction.Keep, $"removed from instance {instance} ({removed.Reason}); data kept until {until:HH:mm:ss} (dingo.cell.orphan-grace)");
        return f.Safety switch
        {
            null => new(OrphanAction.CheckSafety, "removed and past the grace: checking its data is safe elsewhere"),
            { Safe: false } s => new(OrphanAction.Keep, $"removed from instance {instance} ({removed.Reason}), but its data is kept: {s.Sentence}"),
            { } s => new(OrphanAction.Remove, $"removed from instance {instance} ({removed.Reason}) and past the grace; {s.Sentence}"),
        };
    }
}
