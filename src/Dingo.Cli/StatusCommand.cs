using Dingo.Config;
using Dingo.Model;
using Dingo.Store;

namespace Dingo.Cli;

/// <summary>`dingo status`: the original's leaders.sh and service_states.sh in one view, read from etcd.</summary>
public static class StatusCommand
{
    public static async Task<int> RunAsync(DingoSettings settings, TextWriter output, CancellationToken ct)
    {
        await using var store = EtcdStore.Connect(settings);
        try
        {
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

    public static async Task WriteAsync(EtcdStore store, TextWriter output, CancellationToken ct)
    {
        var keys = store.Keys;
        var cells = (await store.ListAsync<CellInfo>(keys.Cells, ct)).Select(c => c.Value).ToDictionary(c => c.Id);
        var instances = await store.ListAsync<InstanceRecord>(keys.Instances, ct);
        var operations = (await store.ListAsync<OperationRecord>(keys.Operations, ct)).ToDictionary(o => o.Key[keys.Operations.Length..], o => o.Value);
        var nodes = (await store.ListAsync<NodeSpec>(keys.AllNodes, ct)).Select(n => n.Value).ToLookup(n => n.InstanceId);
        var statuses = (await store.ListAsync<NodeStatus>(keys.AllStatus, ct)).Select(s => s.Value).ToDictionary(s => s.NodeId);
        var leaders = await store.LeadersAsync(ct);

        output.WriteLine("CELLS");
        var cellRows = new List<string[]> { new[] { "CELL", "ZONE", "ADDRESS", "RUNTIME", "NODES", "PROBLEM" } };
        var load = nodes.SelectMany(g => g).GroupBy(n => n.CellId).ToDictionary(g => g.Key, g => g.Count());
        foreach (var c in cells.Values.OrderBy(c => c.Id, StringComparer.Ordinal))
            cellRows.Add([c.Id, c.Zone, c.Address, c.Runtime, $"{load.GetValueOrDefault(c.Id)}/{c.Capacity}", string.Join("; ", new[] { c.Problem, c.Kept }.Where(p => p is not null))]);
        WriteTable(output, cellRows);
        output.WriteLine();

        output.WriteLine("INSTANCES");
        var rows = new List<string[]> { new[] { "INSTANCE", "PORT", "PLAN", "OPERATION", "NODE", "CELL", "ROLE", "STATE", "DETAIL" } };
        foreach (var inst in instances.Select(i => i.Value).OrderBy(i => i.Port))
        {
            var plan = Catalog.FindPlan(inst.PlanId)?.Name ?? inst.PlanId;
            var op = operations.TryGetValue(inst.Id, out var o) ? $"{o.Kind} {o.State}" : "-";
            if (inst.Desired == DesiredState.Absent) op += " (deleting)";
            leaders.TryGetValue(inst.Id, out var leader);
            var instNodes = nodes[inst.Id].OrderBy(n => n.NodeId, StringComparer.Ordinal).ToList();
            if (instNodes.Count == 0) rows.Add([inst.Id, inst.Port.ToString(), plan, op, "-", "-", "-", "-", o?.Description ?? ""]);
            foreach (var n in instNodes)
            {
                statuses.TryGetValue(n.NodeId, out var st);
                var shown = NodeRoles.Shown(leader?.NodeId, n.NodeId, st);
                var role = shown == NodeRoles.Unknown ? "-" : shown;
                var cell = cells.ContainsKey(n.CellId) ? n.CellId : n.CellId + " (gone)";
                rows.Add([inst.Id, inst.Port.ToString(), plan, op, n.NodeId, cell, role, st?.State ?? "unknown", st?.Detail ?? "no report from the cell"]);
            }
        }
        if (rows.Count == 1) output.WriteLine("(no instances)");
        else WriteTable(output, rows);

        var backups = (await store.ListAsync<BackupState>(keys.Backups, ct)).ToDictionary(b => b.Key[keys.Backups.Length..], b => b.Value);
        var drills = (await store.ListAsync<DrillResult>(keys.Drills, ct)).ToDictionary(d => d.Key[keys.Drills.Length..], d => d.Value);
        if (instances.Count == 0) return;
        output.WriteLine();
        output.WriteLine("BACKUPS");
        var backupRows = new List<string[]> { new[] { "INSTANCE", "ARCHIVED", "TIMELINE", "BACKLOG", "LAST UPLOAD", "BASE BACKUP", "DRILL", "ALARM" } };
        foreach (var inst in instances.Select(i => i.Value).OrderBy(i => i.Port))
        {
            if (!backups.TryGetValue(inst.Id, out var b))
            {
                backupRows.Add([inst.Id, "-", "-", "-", "-", "-", "-", "no leader archives it yet"]);
                continue;
            }
            var drill = drills.TryGetValue(inst.Id, out var d) ? $"{(d.Ok ? "ok" : "FAILED")} {d.At:yyyy-MM-dd HH:mm}" : "-";
            var age = b.LastUpload is { } up ? $"{(DateTimeOffset.UtcNow - up).TotalSeconds:0}s ago" : "-";
            var alarm = b.Alarm ?? (b.BaseBackupError is { } e ? $"base backup failing: {e}" : "");
            backupRows.Add([inst.Id, b.ArchivedLsn, b.Timeline.ToString(System.Globalization.CultureInfo.InvariantCulture), $"{b.BacklogBytes / 1024} KiB", age,
                b.LastBaseBackupAt is { } at ? $"{at:yyyy-MM-dd HH:mm} ({b.BaseBackups})" : "none yet", drill, alarm]);
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
