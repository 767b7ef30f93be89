using System.Text.Json;
using Dingo.Config;
using Dingo.Model;
using Dingo.Store;

namespace Dingo.Cli;

/// <summary>`dingo status`: the original's leaders.sh and service_states.sh in one view, read from etcd.</summary>
public static class StatusCommand
{
    public static async Task<int> RunAsync(DingoSettings settings, TextWriter output, CancellationToken ct, bool json = false)
    {
        await using var store = EtcdStore.Connect(settings);
        try
        {
            if (json)
            {
                var view = await ReadAsync(store, ct);
                // The Akka section is a broker's view over Akka: text only (`dingo members --json` has it as JSON).
                output.WriteLine(JsonSerializer.Serialize(view, JsonOptions));
                return 0;
            }
            await WriteAsync(store, output, ct);
            // The cluster's own view comes from a broker over Akka; etcd alone is enough for everything above.
            await MembersCommand.WriteSectionAsync(settings, store, output, ct);
            return 0;
        }
        catch (Grpc.Core.RpcException ex)
        {
            Console.Error.WriteLine($"dingo: cannot read etcd at {string.Join(",", settings.EtcdEndpoints)}: {ex.Status.Detail}. Is the platform up (./dingo up)?");
            return 1;
        }
    }

    private static readonly JsonSerializerOptions JsonOptions = new(Json.Options) { WriteIndented = true };

    /// <summary>What `dingo status` shows, read once from etcd; printed as tables or as JSON.</summary>
    public sealed record StatusView(IReadOnlyList<CellRow> Cells, IReadOnlyList<InstanceRow> Instances, IReadOnlyList<BackupRow> Backups);
    public sealed record CellRow(string Id, string Zone, string Address, string Runtime, int Nodes, int Capacity, string? Problem, string? Kept);
    public sealed record InstanceRow(string Id, string? Name, int Port, string Plan, string? Operation, string? OperationDetail, bool Deleting, IReadOnlyList<NodeRow> Nodes);
    /// <param name="LagBytes">a replica's distance behind its primary, from their last reports (null: not a replica, or not known)</param>
    public sealed record NodeRow(string Node, string Cell, bool CellGone, string? Role, string State, string Detail, long? LagBytes = null);
    public sealed record BackupRow(string Instance, string? ArchivedLsn, uint? Timeline, long? BacklogBytes, DateTimeOffset? LastUpload,
        DateTimeOffset? LastBaseBackupAt, int? BaseBackups, bool? DrillOk, DateTimeOffset? DrillAt, string? Alarm);

    public static async Task<StatusView> ReadAsync(EtcdStore store, CancellationToken ct)
    {
        var keys = store.Keys;
        var cells = (await store.ListAsync<CellInfo>(keys.Cells, ct)).Select(c => c.Value).ToDictionary(c => c.Id);
        var instances = (await store.ListAsync<InstanceRecord>(keys.Instances, ct)).Select(i => i.Value).OrderBy(i => i.Port).ToList();
        var operations = (await store.ListAsync<OperationRecord>(keys.Operations, ct)).ToDictionary(o => o.Key[keys.Operations.Length..], o => o.Value);
        var nodes = (await store.ListAsync<NodeSpec>(keys.AllNodes, ct)).Select(n => n.Value).ToLookup(n => n.InstanceId);
        var statuses = (await store.ListAsync<NodeStatus>(keys.AllStatus, ct)).Select(s => s.Value).ToDictionary(s => s.NodeId);
        var leaders = await store.LeadersAsync(ct);
        var backups = (await store.ListAsync<BackupState>(keys.Backups, ct)).ToDictionary(b => b.Key[keys.Backups.Length..], b => b.Value);
        var drills = (await store.ListAsync<DrillResult>(keys.Drills, ct)).ToDictionary(d => d.Key[keys.Drills.Length..], d => d.Value);

        var load = nodes.SelectMany(g => g).GroupBy(n => n.CellId).ToDictionary(g => g.Key, g => g.Count());
        var cellRows = cells.Values.OrderBy(c => c.Id, StringComparer.Ordinal)
            .Select(c => new CellRow(c.Id, c.Zone, c.Address, c.Runtime, load.GetValueOrDefault(c.Id), c.Capacity, c.Problem, c.Kept)).ToList();
        var instanceRows = instances.Select(inst =>
        {
            operations.TryGetValue(inst.Id, out var o);
            leaders.TryGetValue(inst.Id, out var leader);
            var primaryLsn = leader is not null && statuses.TryGetValue(leader.NodeId, out var ls) && ls.Writable ? ls.Lsn : (long?)null;
            var nodeRows = nodes[inst.Id].OrderBy(n => n.NodeId, StringComparer.Ordinal).Select(n =>
            {
                statuses.TryGetValue(n.NodeId, out var st);
                var shown = NodeRoles.Shown(leader?.NodeId, n.NodeId, st);
                return new NodeRow(n.NodeId, n.CellId, !cells.ContainsKey(n.CellId), shown == NodeRole.Unknown ? null : shown.Wire(),
                    st?.State.Wire() ?? "unknown", st?.Detail ?? "no report from the cell",
                    st is { Writable: false, State: NodeState.Running } && primaryLsn is { } p && n.NodeId != leader?.NodeId ? Math.Max(0, p - st.Lsn) : null);
            }).ToList();
            return new InstanceRow(inst.Id, InstanceNames.Of(inst), inst.Port, Catalog.FindPlan(inst.PlanId)?.Name ?? inst.PlanId,
                o is null ? null : $"{o.Kind.Wire()} {o.State.Wire()}", o?.Description, inst.Desired == DesiredState.Absent, nodeRows);
        }).ToList();
        var backupRows = instances.Select(inst =>
        {
            drills.TryGetValue(inst.Id, out var d);
            if (!backups.TryGetValue(inst.Id, out var b))
                return new BackupRow(inst.Id, null, null, null, null, null, null, d?.Ok, d?.At, "no leader archives it yet");
            return new BackupRow(inst.Id, b.ArchivedLsn, b.Timeline, b.BacklogBytes, b.LastUpload, b.LastBaseBackupAt, b.BaseBackups, d?.Ok, d?.At,
                b.Alarm ?? (b.BaseBackupError is { } e ? $"base backup failing: {e}" : null));
        }).ToList();
        return new StatusView(cellRows, instanceRows, backupRows);
    }

    public static async Task WriteAsync(EtcdStore store, TextWriter output, CancellationToken ct)
    {
        var view = await ReadAsync(store, ct);
        output.WriteLine("CELLS");
        var cellRows = new List<string[]> { new[] { "CELL", "ZONE", "ADDRESS", "RUNTIME", "NODES", "PROBLEM" } };
        foreach (var c in view.Cells)
            cellRows.Add([c.Id, c.Zone, c.Address, c.Runtime, $"{c.Nodes}/{c.Capacity}", string.Join("; ", new[] { c.Problem, c.Kept }.Where(p => p is not null))]);
        WriteTable(output, cellRows);
        output.WriteLine();

        output.WriteLine("INSTANCES");
        var rows = new List<string[]> { new[] { "INSTANCE", "PORT", "PLAN", "OPERATION", "NODE", "CELL", "ROLE", "STATE", "DETAIL" } };
        foreach (var inst in view.Instances)
        {
            var op = (inst.Operation ?? "-") + (inst.Deleting ? " (deleting)" : "");
            var port = inst.Port.ToString(System.Globalization.CultureInfo.InvariantCulture);
            if (inst.Nodes.Count == 0) rows.Add([inst.Id, port, inst.Plan, op, "-", "-", "-", "-", inst.OperationDetail ?? ""]);
            foreach (var n in inst.Nodes)
                rows.Add([inst.Id, port, inst.Plan, op, n.Node, n.CellGone ? n.Cell + " (gone)" : n.Cell, n.Role ?? "-", n.State, n.Detail]);
        }
        if (rows.Count == 1) output.WriteLine("(no instances)");
        else WriteTable(output, rows);

        if (view.Instances.Count == 0) return;
        output.WriteLine();
        output.WriteLine("BACKUPS");
        var backupRows = new List<string[]> { new[] { "INSTANCE", "ARCHIVED", "TIMELINE", "BACKLOG", "LAST UPLOAD", "BASE BACKUP", "DRILL", "ALARM" } };
        foreach (var b in view.Backups)
        {
            var drill = b.DrillAt is { } at ? $"{(b.DrillOk == true ? "ok" : "FAILED")} {at:yyyy-MM-dd HH:mm}" : "-";
            if (b.ArchivedLsn is null)
            {
                backupRows.Add([b.Instance, "-", "-", "-", "-", "-", "-", b.Alarm ?? ""]);
                continue;
            }
            var age = b.LastUpload is { } up ? $"{(DateTimeOffset.UtcNow - up).TotalSeconds:0}s ago" : "-";
            backupRows.Add([b.Instance, b.ArchivedLsn, b.Timeline?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "-", $"{b.BacklogBytes / 1024} KiB", age,
                b.LastBaseBackupAt is { } last ? $"{last:yyyy-MM-dd HH:mm} ({b.BaseBackups})" : "none yet", drill, b.Alarm ?? ""]);
        }
        WriteTable(output, backupRows);
    }

    private static void WriteTable(TextWriter output, List<string[]> rows)
    {
        var widths = Enumerable.Range(0, rows[0].Length).Select(i => rows.Max(r => r[i].Length)).ToArray();
        foreach (var row in rows)
            output.WriteLine(string.Join("  ", row.Select((cell, i) => i == row.Length - 1 ? cell : cell.PadRight(widths[i]))).TrimEnd());
    }
}
