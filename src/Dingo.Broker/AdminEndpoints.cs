using System.Text.Json.Nodes;
using Dingo.Broker.Osb;
using Dingo.Model;
using Dingo.Store;
using Microsoft.AspNetCore.Mvc;

namespace Dingo.Broker;

/// <summary>
/// The operator's API, behind credentials of its own (dingo.broker.admin-username / admin-password; the OSB ones do
/// not open it): planned switchover, cell draining, recovery. Unlike the original's /admin endpoints, nothing here
/// returns a password.
/// </summary>
public static class AdminEndpoints
{
    public static void Map(WebApplication app)
    {
        app.MapPost("/admin/service_instances/{id}/switchover", async (string id, HttpRequest req, [FromServices] EtcdStore store, [FromServices] InstanceService instances, CancellationToken ct) =>
            (await SwitchoverAsync(id, req, store, instances, ct)).ToResult());
        app.MapPost("/admin/cells/{cell}/drain", async (string cell, [FromServices] EtcdStore store, [FromServices] InstanceService instances, CancellationToken ct) =>
            (await DrainAsync(cell, store, instances, ct)).ToResult());
        app.MapPost("/admin/service_instances/{id}/recreate", async (string id, [FromServices] Recovery recovery, [FromServices] InstanceService instances, CancellationToken ct) =>
        {
            var result = await recovery.RecreateAsync(id, ct);
            if (result.Status == 202) instances.Poke(id);
            return result.ToResult();
        });
        app.MapPost("/admin/rebuild", async ([FromServices] Recovery recovery, [FromServices] InstanceService instances, [FromServices] EtcdStore store, CancellationToken ct) =>
        {
            var result = await recovery.RebuildAsync(ct);
            foreach (var i in (await store.ListAsync<InstanceRecord>(store.Keys.Instances, ct))) instances.Poke(i.Value.Id);
            return result.ToResult();
        });
        app.MapGet("/admin/service_instances/{id}/backups", async (string id, [FromServices] Dingo.Backups.IObjectStore objects, [FromServices] EtcdStore store, CancellationToken ct) =>
            (await BackupsAsync(id, objects, store, ct)).ToResult());
        app.MapPost("/admin/service_instances/{id}/drill", async (string id, [FromServices] EtcdStore store, CancellationToken ct) =>
        {
            var instance = await store.GetAsync<InstanceRecord>(store.Keys.Instance(id), ct);
            if (instance is null || instance.Value.Desired != DesiredState.Present) return OsbResult.NotFound($"service instance {id} does not exist").ToResult();
            await store.PutAsync(store.Keys.DrillRequest(id), DateTimeOffset.UtcNow.ToString("O"), ct);
            return new OsbResult(202, new JsonObject { ["description"] = $"restore drill of {id} requested: its leader's cell restores the latest backup into a scratch node; see ./dingo backups {id}" }).ToResult();
        });
        app.MapGet("/admin/backups/check", async ([FromServices] Dingo.Backups.IObjectStore objects, CancellationToken ct) =>
        {
            var check = await objects.CheckAsync(ct);
            return new OsbResult(check.Ok ? 200 : 503, new JsonObject { ["ok"] = check.Ok, ["description"] = check.Detail }).ToResult();
        });
        app.MapDelete("/admin/cells/{cell}/drain", async (string cell, [FromServices] EtcdStore store, CancellationToken ct) =>
        {
            var removed = await store.DeleteAsync(store.Keys.DrainedCell(cell), ct);
            return (removed ? OsbResult.Ok(new JsonObject { ["description"] = $"{cell} takes new nodes again" })
                : OsbResult.NotFound($"{cell} is not being drained")).ToResult();
        });
        // Anything else under /admin: a clear 404 in the same error shape.
        app.Map("/admin/{**rest}", (HttpRequest req) => OsbResult.NotFound($"no such admin endpoint: {RequestLimits.ForLog(req.Method, 20)} {RequestLimits.ForLog(req.Path.Value)}").ToResult());
    }

    private static async Task<OsbResult> BackupsAsync(string id, Dingo.Backups.IObjectStore objects, EtcdStore store, CancellationToken ct)
    {
        var list = await new Dingo.Backups.BaseBackups(objects, Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance).ListAsync(id, ct);
        var state = await store.GetAsync<BackupState>(store.Keys.Backup(id), ct);
        var drill = await store.GetAsync<DrillResult>(store.Keys.Drill(id), ct);
        if (list.Count == 0 && state is null) return OsbResult.NotFound($"no backups of instance {id}");
        var backups = new JsonArray();
        foreach (var b in list)
            backups.Add(new JsonObject { ["label"] = b.Label, ["finished_at"] = b.FinishedAt.ToString("O"), ["timeline"] = b.Timeline, ["start_lsn"] = b.StartLsn, ["end_lsn"] = b.EndLsn, ["bytes"] = b.Bytes, ["source"] = b.Source });
        var s = state?.Value;
        var last = list.LastOrDefault();
        return OsbResult.Ok(new JsonObject
        {
            ["description"] = s is null ? $"{list.Count} base backup(s); no leader archives right now"
                : $"{list.Count} base backup(s), newest {last?.FinishedAt:O}; WAL archived to {s.ArchivedLsn} on timeline {s.Timeline} by {s.NodeId}, backlog {s.BacklogBytes} B{(s.Alarm is null ? "" : $"; ALARM: {s.Alarm}")}",
            ["base_backups"] = backups,
            ["archive"] = s is null ? null : JsonNode.Parse(Json.Serialize(s)),
            ["drill"] = drill is null ? null : JsonNode.Parse(Json.Serialize(drill.Value)),
        });
    }

    private static async Task<OsbResult> SwitchoverAsync(string id, HttpRequest req, EtcdStore store, InstanceService instances, CancellationToken ct)
    {
        string? to = null;
        if (req.ContentLength is > 0)
        {
            var (body, error) = await RequestBody.ReadAsync(req, ct);
            if (body is null) return error!;
            to = body.String("to", out var bad);
            if (bad is not null) return bad;
        }
        var keys = store.Keys;
        var instance = await store.GetAsync<InstanceRecord>(keys.Instance(id), ct);
        if (instance is null || instance.Value.Desired != DesiredState.Present) return OsbResult.NotFound($"service instance {id} does not exist");
        var leader = await store.GetAsync<LeaderRecord>(keys.Leader(id), ct);
        if (leader is null) return OsbResult.Error(409, "NoLeader", $"service instance {id} has no primary right now: nothing to switch over");
        var nodes = (await store.ListAsync<NodeSpec>(keys.Nodes(id), ct)).Select(n => n.Value.NodeId).ToList();
        if (to is not null && !nodes.Contains(to)) return OsbResult.BadRequest($"{to} is not a node of {id}; its nodes are {string.Join(", ", nodes)}");
        if (to == leader.Value.NodeId) return OsbResult.BadRequest($"{to} is already the primary of {id}");
        if (nodes.Count < 2) return OsbResult.Error(409, "NoReplica", $"service instance {id} has no replica to switch over to");
        await store.PutAsync(keys.Switchover(id), new SwitchoverRequest(leader.Value.NodeId, to, DateTimeOffset.UtcNow), ct);
        instances.Poke(id);
        return new OsbResult(202, new JsonObject
        {
            ["description"] = $"switchover of {id} from {leader.Value.NodeId} to {to ?? "the best replica"} requested",
            ["from"] = leader.Value.NodeId,
            ["to"] = to,
        });
    }

    private static async Task<OsbResult> DrainAsync(string cell, EtcdStore store, InstanceService instances, CancellationToken ct)
    {
        var keys = store.Keys;
        var cells = (await store.ListAsync<CellInfo>(keys.Cells, ct)).Select(c => c.Value.Id).ToList();
        var nodes = (await store.ListAsync<NodeSpec>(keys.AllNodes, ct)).Select(n => n.Value).Where(n => n.CellId == cell).ToList();
        if (!cells.Contains(cell) && nodes.Count == 0) return OsbResult.NotFound($"no cell {cell} is registered or holds nodes");
        await store.PutAsync(keys.DrainedCell(cell), DateTimeOffset.UtcNow.ToString("O"), ct);
        var leaders = await store.LeadersAsync(ct);
        var switching = new List<string>();
        foreach (var node in nodes)
        {
            // Primaries on the cell hand over first, to the best replica, with no acknowledged write lost.
            if (leaders.TryGetValue(node.InstanceId, out var leader) && leader.NodeId == node.NodeId)
            {
                await store.PutAsync(keys.Switchover(node.InstanceId), new SwitchoverRequest(node.NodeId, null, DateTimeOffset.UtcNow), ct);
                switching.Add(node.InstanceId);
            }
            instances.Poke(node.InstanceId);
        }
        return new OsbResult(202, new JsonObject
        {
            ["description"] = $"draining {cell}: {switching.Count} primary(ies) switch over, then {nodes.Count} node(s) move to other cells",
            ["nodes"] = nodes.Count,
            ["switchovers"] = switching.Count,
        });
    }
}
