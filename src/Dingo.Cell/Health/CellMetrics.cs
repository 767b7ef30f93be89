using System.Collections.Concurrent;
using Dingo.Ha;
using Dingo.Model;
using Prometheus;

namespace Dingo.Health;

/// <summary>
/// A cell's Prometheus figures for its nodes, their HA loop and the backups they lead, in the cell's own registry (the
/// router adds its own to the same one). Each node's HA pass and each backup duty's publication push what they saw; the
/// figures are turned into series when Prometheus scrapes. A node or an instance not heard of for
/// <see cref="Stale"/> (removed, moved to another cell, no longer leading) drops out of every series, counters
/// included, so a cell that has hosted thousands of instances over its life does not export them all.
/// </summary>
public sealed class CellMetrics
{
    public static readonly TimeSpan Stale = TimeSpan.FromSeconds(60);

    private const string Instance = "service_instance";
    private const string Node = "node";

    private readonly Func<DateTimeOffset> _now;
    private readonly ConcurrentDictionary<(string Instance, string Node), NodeFigures> _nodes = new();
    private readonly ConcurrentDictionary<string, BackupFigures> _backups = new();

    private readonly Gauge _nodeInfo, _leader, _lagBytes, _lagSeconds, _timeline, _connections, _writable, _passInterval;
    private readonly Counter _restarts, _decisions, _promotions, _handovers, _failedPasses;
    private readonly Gauge _backlog, _archiveLag, _sinceUpload, _baseAge, _baseSize, _baseCount, _alarm, _drillOk, _drillAge, _drillDuration, _commitsWaiting, _commitWait;
    private readonly Histogram _restores;

    public CellMetrics(CollectorRegistry? registry = null, Func<DateTimeOffset>? now = null)
    {
        Registry = registry ?? Metrics.NewCustomRegistry();
        _now = now ?? (() => DateTimeOffset.UtcNow);
        var f = Metrics.WithCustomRegistry(Registry);
        string[] node = [Instance, Node];

        _nodeInfo = f.CreateGauge("dingo_node_info", "Each node of this cell: 1, labelled with its role (primary, replica, unknown) and state (running, starting, initialising, stopped).", [Instance, Node, "role", "state"]);
        _leader = f.CreateGauge("dingo_node_leader", "1 while the node holds its instance's leader key under a live lease, else 0.", node);
        _writable = f.CreateGauge("dingo_node_writable", "1 while the node's PostgreSQL answers and accepts writes (not in recovery), else 0.", node);
        _lagBytes = f.CreateGauge("dingo_node_replication_lag_bytes", "WAL the leader has written that this replica has not received or replayed (0 on a primary; absent when unknown).", node);
        _lagSeconds = f.CreateGauge("dingo_node_replication_lag_seconds", "Age of the last transaction this replica replayed while WAL is still to replay (0 when caught up or on a primary).", node);
        _timeline = f.CreateGauge("dingo_node_timeline", "The node's PostgreSQL timeline.", node);
        _passInterval = f.CreateGauge("dingo_node_pass_interval_seconds", "The wait before the node's next HA pass: dingo.ha.loop-wait, or dingo.ha.idle-loop-wait while the node is quiet (a healthy leader with no other member).", node);
        _connections = f.CreateGauge("dingo_node_connections", "Client backends connected to the node's PostgreSQL.", node);
        _restarts = f.CreateCounter("dingo_node_postgres_restarts_total", "Times the node's PostgreSQL was found not running after it had run.", node);
        _decisions = f.CreateCounter("dingo_ha_decisions_total", "HA passes of the node by the decision taken (lead, follow_leader, promote, demote, ...).", [Instance, Node, "decision"]);
        _failedPasses = f.CreateCounter("dingo_ha_failed_passes_total", "HA passes whose action failed (the decision's step threw or timed out).", node);
        _promotions = f.CreateCounter("dingo_ha_promotions_total", "Promotions of the node from replica to primary (a failover, or the receiving side of a switchover).", node);
        _handovers = f.CreateCounter("dingo_ha_switchovers_total", "Switchovers the node performed as the leader: stopped cleanly and handed its leader key to a replica.", node);

        string[] instance = [Instance];
        _backlog = f.CreateGauge("dingo_backup_archive_backlog_bytes", "WAL the leader still holds that the object store lacks (server position or slot, whichever is further behind).", instance);
        _archiveLag = f.CreateGauge("dingo_backup_archive_lag_bytes", "The leader's current WAL position minus the position archived in the object store.", instance);
        _sinceUpload = f.CreateGauge("dingo_backup_last_upload_age_seconds", "Seconds since WAL was last uploaded to the object store.", instance);
        _baseAge = f.CreateGauge("dingo_backup_base_backup_age_seconds", "Seconds since the latest base backup finished.", instance);
        _baseSize = f.CreateGauge("dingo_backup_base_backup_size_bytes", "Size of the latest base backup this cell took.", instance);
        _baseCount = f.CreateGauge("dingo_backup_base_backups", "Base backups of the instance in the object store, as the leading cell counts them (listed when it started leading, plus those it took).", instance);
        _alarm = f.CreateGauge("dingo_backup_alarm", "1 while the instance's backups raise an alarm (backlog over its limit, or archiving failing).", instance);
        _commitsWaiting = f.CreateGauge("dingo_commits_waiting", "Sessions of the leader whose commit waits for synchronous replication (with store-sync: for the object store); sampled every 2 s.", instance);
        _commitWait = f.CreateGauge("dingo_commit_wait_seconds", "How long the oldest commit counted by dingo_commits_waiting has waited (0 when none waits).", instance);
        _drillOk = f.CreateGauge("dingo_backup_drill_success", "1 when the latest restore drill restored and verified the latest backup, 0 when it failed.", instance);
        _drillAge = f.CreateGauge("dingo_backup_drill_age_seconds", "Seconds since the latest restore drill.", instance);
        _drillDuration = f.CreateGauge("dingo_backup_drill_duration_seconds", "How long the latest restore drill took.", instance);
        _restores = f.CreateHistogram("dingo_backup_restore_duration_seconds", "Time to prepare a restore from the object store (base backup and WAL fetched), by outcome.",
            new HistogramConfiguration { LabelNames = ["outcome"], Buckets = Histogram.ExponentialBuckets(0.25, 2, 12) });

        Registry.AddBeforeCollectCallback(Refresh);
    }

    public CollectorRegistry Registry { get; }

    /// <summary>What a node's HA pass saw and decided.</summary>
    public void Passed(NodeHealth health, PostgresObservation? pg, int restarts, HaAction action, string? failure)
    {
        var key = (health.InstanceId, health.NodeId);
        _nodes[key] = new NodeFigures(health, pg, restarts, _now()) { NextPass = _nodes.TryGetValue(key, out var last) ? last.NextPass : null };
        _decisions.WithLabels(health.InstanceId, health.NodeId, DecisionName(action)).Inc();
        if (failure is not null) { _failedPasses.WithLabels(health.InstanceId, health.NodeId).Inc(); return; }
        // A replica that takes the free leader key promotes in the same step; one that finds the key already its own
        // (an agent restarted mid-promotion) promotes with Promote. The role is the pass's observation, before the step.
        if (action is HaAction.Promote || action is HaAction.TakeLeadership && health.Role == NodeRole.Replica)
            _promotions.WithLabels(health.InstanceId, health.NodeId).Inc();
        if (action is HaAction.HandOver) _handovers.WithLabels(health.InstanceId, health.NodeId).Inc();
    }

    /// <summary>When the node's next pass runs (PassCadence), as its pass decided after reporting.</summary>
    public void Cadence(string instanceId, string nodeId, TimeSpan next)
    {
        if (_nodes.TryGetValue((instanceId, nodeId), out var figures)) _nodes[(instanceId, nodeId)] = figures with { NextPass = next };
    }

    /// <summary>What a leading node's backup duty published (every few seconds while it leads).</summary>
    /// <param name="archiveLagBytes">the server's WAL position minus the archived one (the state's backlog also counts the slot)</param>
    public void Backup(string instanceId, BackupState state, long archiveLagBytes, long? baseBackupBytes) =>
        _backups.AddOrUpdate(instanceId,
            _ => new BackupFigures(state, archiveLagBytes, baseBackupBytes, null, _now()),
            (_, old) => old with { State = state, ArchiveLagBytes = archiveLagBytes, BaseBackupBytes = baseBackupBytes ?? old.BaseBackupBytes, At = _now() });

    /// <summary>A restore drill's outcome, as the duty recorded it.</summary>
    public void Drill(string instanceId, DrillResult result) =>
        _backups.AddOrUpdate(instanceId,
            _ => new BackupFigures(null, 0, null, result, _now()),
            (_, old) => old with { Drill = result });

    /// <summary>A restore prepared (or failed) from the object store, and how long it took.</summary>
    public void Restored(TimeSpan took, bool ok) => _restores.WithLabels(ok ? "ok" : "failed").Observe(took.TotalSeconds);

    /// <summary>The decision's kind in snake case: Promote → promote, FollowLeader → follow_leader.</summary>
    internal static string DecisionName(HaAction action)
    {
        var name = action.GetType().Name;
        var sb = new System.Text.StringBuilder(name.Length + 4);
        for (var i = 0; i < name.Length; i++)
        {
            if (char.IsUpper(name[i]) && i > 0) sb.Append('_');
            sb.Append(char.ToLowerInvariant(name[i]));
        }
        return sb.ToString();
    }

    /// <summary>Turns the latest figures into series, just before a scrape reads them.</summary>
    private void Refresh()
    {
        var now = _now();
        foreach (var (key, figures) in _nodes)
            if (now - figures.At > Stale && _nodes.TryRemove(new KeyValuePair<(string, string), NodeFigures>(key, figures)))
                foreach (var counter in new[] { _restarts, _failedPasses, _promotions, _handovers }) counter.RemoveLabelled(key.Instance, key.Node);
        foreach (var labels in _decisions.GetAllLabelValues().ToList())
            if (!_nodes.ContainsKey((labels[0], labels[1]))) _decisions.RemoveLabelled(labels);
        foreach (var gauge in new[] { _nodeInfo, _leader, _writable, _lagBytes, _lagSeconds, _timeline, _connections, _passInterval }) Clear(gauge);

        foreach (var ((instance, node), figures) in _nodes)
        {
            var h = figures.Health;
            _nodeInfo.WithLabels(instance, node, h.Role.Wire(), h.State.Wire()).Set(1);
            _leader.WithLabels(instance, node).Set(h.IsLeader ? 1 : 0);
            _writable.WithLabels(instance, node).Set(figures.Pg is { InRecovery: false } ? 1 : 0);
            if (h.LagBytes is { } lag) _lagBytes.WithLabels(instance, node).Set(lag);
            if (figures.Pg is { } pg)
            {
                _lagSeconds.WithLabels(instance, node).Set(pg.ReplayLagSeconds);
                _connections.WithLabels(instance, node).Set(pg.Connections);
            }
            if (h.Timeline is { } timeline) _timeline.WithLabels(instance, node).Set(timeline);
            if (figures.NextPass is { } next) _passInterval.WithLabels(instance, node).Set(next.TotalSeconds);
            _restarts.WithLabels(instance, node).IncTo(figures.Restarts);
        }

        foreach (var (instance, figures) in _backups)
            if (now - figures.At > Stale) _backups.TryRemove(new KeyValuePair<string, BackupFigures>(instance, figures));
        foreach (var gauge in new[] { _backlog, _archiveLag, _sinceUpload, _baseAge, _baseSize, _baseCount, _alarm, _drillOk, _drillAge, _drillDuration, _commitsWaiting, _commitWait }) Clear(gauge);
        foreach (var (instance, figures) in _backups)
        {
            if (figures.State is { } s)
            {
                _backlog.WithLabels(instance).Set(s.BacklogBytes);
                _archiveLag.WithLabels(instance).Set(figures.ArchiveLagBytes);
                if (s.LastUpload is { } upload) _sinceUpload.WithLabels(instance).Set(Math.Max(0, (now - upload).TotalSeconds));
                if (s.LastBaseBackupAt is { } at) _baseAge.WithLabels(instance).Set(Math.Max(0, (now - at).TotalSeconds));
                _baseCount.WithLabels(instance).Set(s.BaseBackups);
                _alarm.WithLabels(instance).Set(s.Alarm is null ? 0 : 1);
                _commitsWaiting.WithLabels(instance).Set(s.CommitsWaiting);
                _commitWait.WithLabels(instance).Set(s.CommitWaitSeconds);
            }
            if (figures.BaseBackupBytes is { } bytes) _baseSize.WithLabels(instance).Set(bytes);
            if (figures.Drill is { } d)
            {
                _drillOk.WithLabels(instance).Set(d.Ok ? 1 : 0);
                _drillAge.WithLabels(instance).Set(Math.Max(0, (now - d.At).TotalSeconds));
                _drillDuration.WithLabels(instance).Set(d.Seconds);
            }
        }
    }

    private static void Clear(Gauge gauge)
    {
        foreach (var labels in gauge.GetAllLabelValues().ToList()) gauge.RemoveLabelled(labels);
    }

    private sealed record NodeFigures(NodeHealth Health, PostgresObservation? Pg, int Restarts, DateTimeOffset At)
    {
        public TimeSpan? NextPass { get; init; }
    }

    private sealed record BackupFigures(BackupState? State, long ArchiveLagBytes, long? BaseBackupBytes, DrillResult? Drill, DateTimeOffset At);
}
