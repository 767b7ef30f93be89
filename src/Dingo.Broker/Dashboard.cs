using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Nodes;
using Dingo.Broker.Osb;
using Dingo.Config;
using Dingo.Model;
using Dingo.Store;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Mvc;

namespace Dingo.Broker;

/// <summary>
/// A page per instance, the OSB `dashboard_url` a provision answers with: the instance's nodes (role, state, timeline,
/// lag, connections), its backups and last drill, and its latest events, refreshed every two seconds.
/// <para>
/// Access is a per-instance secret in the URL (`?t=`), not the OSB credentials (Cloud Foundry shows the URL to the
/// space's developers, who hold no broker credentials) and not OSB's dashboard SSO (it needs a UAA client this platform
/// does not have). The secret is an HMAC of the instance id under a key derived (HKDF) from the instance's superuser
/// password, sealed in etcd: nothing more is stored, it lives as long as the instance, and only the brokers can make
/// it. A wrong secret, an unknown and a deleted instance all get the same 404, so the page does not tell whether an
/// id exists. The secret travels in the query, never in the path (paths are logged on errors); the page sends no
/// Referer, is never cached and shows no credential, connection string or host.
/// </para>
/// </summary>
public static class Dashboard
{
    private const string Salt = "dingo dashboard v1";
    private static readonly TimeSpan Refresh = TimeSpan.FromSeconds(2);

    /// <summary>The instance's dashboard secret: 18 bytes of HMAC-SHA256, base64url (24 characters).</summary>
    public static string Token(InstanceRecord instance)
    {
        ArgumentNullException.ThrowIfNull(instance);
        var key = HKDF.DeriveKey(HashAlgorithmName.SHA256, Encoding.UTF8.GetBytes(instance.Superuser.Password), 32,
            salt: Encoding.ASCII.GetBytes(Salt), info: Encoding.UTF8.GetBytes(instance.Id));
        var mac = HMACSHA256.HashData(key, Encoding.UTF8.GetBytes("dashboard " + instance.Id));
        return Convert.ToBase64String(mac, 0, 18).TrimEnd('=').Replace('+', '-').Replace('/', '_');
    }

    /// <summary>What a provision and a fetch answer as `dashboard_url`.</summary>
    public static string Url(BrokerSettings broker, InstanceRecord instance)
    {
        ArgumentNullException.ThrowIfNull(broker);
        ArgumentNullException.ThrowIfNull(instance);
        return $"{broker.DashboardBase}/dashboard/{Uri.EscapeDataString(instance.Id)}?t={Token(instance)}";
    }

    private static bool Opens(InstanceRecord instance, string? token) =>
        token is { Length: > 0 and <= 64 } && CryptographicOperations.FixedTimeEquals(Encoding.ASCII.GetBytes(Token(instance)), Encoding.ASCII.GetBytes(token));

    public static void Map(WebApplication app)
    {
        ArgumentNullException.ThrowIfNull(app);
        app.MapGet("/dashboard/{id}", async (string id, HttpContext context, [FromServices] EtcdStore store, CancellationToken ct) =>
        {
            Harden(context.Response);
            var instance = await AuthorizedAsync(store, id, context.Request.Query["t"], ct);
            if (instance is null) return NotFound();
            return Results.Content(Page, "text/html; charset=utf-8");
        });
        app.MapGet("/dashboard/{id}/state", async (string id, HttpContext context, [FromServices] EtcdStore store, CancellationToken ct) =>
        {
            Harden(context.Response);
            var instance = await AuthorizedAsync(store, id, context.Request.Query["t"], ct);
            if (instance is null) return NotFound();
            return Results.Text((await StateAsync(store, instance, ct)).ToJsonString(), "application/json");
        });
        app.MapGet("/dashboard-assets/dashboard.js", (HttpContext context) =>
        {
            Harden(context.Response);
            return Results.Text(Script, "text/javascript; charset=utf-8");
        });
        app.MapGet("/dashboard-assets/dashboard.css", (HttpContext context) =>
        {
            Harden(context.Response);
            return Results.Text(Style, "text/css; charset=utf-8");
        });
    }

    private static IResult NotFound() => Results.Text("no such dashboard\n", "text/plain; charset=utf-8", statusCode: 404);

    private static void Harden(HttpResponse response)
    {
        response.Headers.ContentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
        response.Headers["Referrer-Policy"] = "no-referrer";
        response.Headers.CacheControl = "no-store";
        response.Headers.XContentTypeOptions = "nosniff";
        response.Headers.XFrameOptions = "DENY";
    }

    private static async Task<InstanceRecord?> AuthorizedAsync(EtcdStore store, string id, string? token, CancellationToken ct)
    {
        if (!RequestLimits.IsSafeId(id)) return null;
        var record = await store.GetAsync<InstanceRecord>(store.Keys.Instance(id), ct);
        if (record is null || record.Value.Desired != DesiredState.Present) return null;
        return Opens(record.Value, token) ? record.Value : null;
    }

    /// <summary>What the page shows, read from etcd: no password, no connection string, no host.</summary>
    public static async Task<JsonObject> StateAsync(EtcdStore store, InstanceRecord instance, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(store);
        ArgumentNullException.ThrowIfNull(instance);
        var keys = store.Keys;
        var id = instance.Id;
        var leader = (await store.GetAsync<LeaderRecord>(keys.Leader(id), ct))?.Value;
        var specs = (await store.ListAsync<NodeSpec>(keys.Nodes(id), ct)).Select(n => n.Value).OrderBy(n => n.NodeId, StringComparer.Ordinal).ToList();
        var statuses = (await store.ListAsync<NodeStatus>(keys.Statuses(id), ct)).Select(s => s.Value).ToDictionary(s => s.NodeId, StringComparer.Ordinal);
        var operation = (await store.GetAsync<OperationRecord>(keys.Operation(id), ct))?.Value;
        var backup = (await store.GetAsync<BackupState>(keys.Backup(id), ct))?.Value;
        var drill = (await store.GetAsync<DrillResult>(keys.Drill(id), ct))?.Value;
        var events = await EventJournal.ReadAsync(store, id, ct);

        var primaryLsn = leader is not null && statuses.TryGetValue(leader.NodeId, out var primaryStatus) ? primaryStatus.Lsn : (long?)null;
        var nodes = new JsonArray();
        foreach (var spec in specs)
        {
            statuses.TryGetValue(spec.NodeId, out var s);
            var role = NodeRoles.Shown(leader?.NodeId, spec.NodeId, s);
            nodes.Add(new JsonObject
            {
                ["id"] = spec.NodeId,
                ["cell"] = spec.CellId,
                ["role"] = role.Wire(),
                ["state"] = s?.State.Wire() ?? "unknown",
                ["timeline"] = s?.Timeline,
                ["lagBytes"] = role == NodeRole.Replica && primaryLsn is { } p && s is not null ? Math.Max(0, p - s.Lsn) : null,
                ["streaming"] = role == NodeRole.Replica ? s?.Streaming : null,
                ["connections"] = s?.Connections,
                ["detail"] = s?.Detail ?? "no report from the cell yet",
                ["updatedAt"] = s?.UpdatedAt,
            });
        }
        var plan = Catalog.FindPlan(instance.PlanId);
        return new JsonObject
        {
            ["instance"] = new JsonObject
            {
                ["id"] = id,
                ["name"] = InstanceNames.Of(instance),
                ["plan"] = plan?.Name ?? instance.PlanId,
                ["port"] = instance.Port,
                ["readOnlyPort"] = instance.ReadOnlyPort,
            },
            ["operation"] = operation is null ? null : new JsonObject
            {
                ["kind"] = operation.Kind.Wire(),
                ["state"] = operation.State.Wire(),
                ["description"] = operation.Description,
            },
            ["primary"] = leader?.NodeId,
            ["nodes"] = nodes,
            ["backups"] = backup is null ? null : new JsonObject
            {
                ["archivedLsn"] = backup.ArchivedLsn,
                ["timeline"] = backup.Timeline,
                ["backlogBytes"] = backup.BacklogBytes,
                ["lastUpload"] = backup.LastUpload,
                ["baseBackups"] = backup.BaseBackups,
                ["lastBaseBackupAt"] = backup.LastBaseBackupAt,
                ["alarm"] = backup.Alarm ?? backup.BaseBackupError,
            },
            ["drill"] = drill is null ? null : new JsonObject
            {
                ["ok"] = drill.Ok,
                ["at"] = drill.At,
                ["seconds"] = drill.Seconds,
                ["detail"] = drill.Detail,
            },
            ["events"] = new JsonArray(events.TakeLast(50).Reverse().Select(e => (JsonNode)new JsonObject
            {
                ["at"] = e.At,
                ["node"] = e.NodeId,
                ["kind"] = e.Kind,
                ["sentence"] = e.Sentence,
            }).ToArray()),
            ["refreshSeconds"] = Refresh.TotalSeconds,
            ["at"] = DateTimeOffset.UtcNow,
        };
    }

    private const string Page = """
        <!DOCTYPE html>
        <html lang="en">
        <head>
        <meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <meta name="referrer" content="no-referrer">
        <title>Dingo PostgreSQL</title>
        <link rel="stylesheet" href="/dashboard-assets/dashboard.css">
        <script src="/dashboard-assets/dashboard.js" defer></script>
        </head>
        <body>
        <header><h1 id="title">Dingo PostgreSQL</h1><p id="summary">loading…</p><p id="problem" hidden></p></header>
        <section><h2>Nodes</h2>
        <table id="nodes"><thead><tr><th>node</th><th>cell</th><th>role</th><th>state</th><th>timeline</th><th>lag</th><th>streaming</th><th>connections</th><th>last step</th></tr></thead><tbody></tbody></table>
        <p>Primary: <strong id="primary">–</strong></p></section>
        <section><h2>Backups</h2><dl id="backups"></dl></section>
        <section><h2>Events</h2>
        <table id="events"><thead><tr><th>time (UTC)</th><th>node</th><th>kind</th><th>what happened</th></tr></thead><tbody></tbody></table></section>
        <footer id="updated"></footer>
        </body>
        </html>
        """;

    // Built with textContent only: nothing the platform stores is ever parsed as HTML.
    private const string Script = """
        "use strict";
        (function () {
          const parts = location.pathname.split("/");
          const id = decodeURIComponent(parts[parts.length - 1]);
          const token = new URLSearchParams(location.search).get("t") || "";
          const stateUrl = "/dashboard/" + encodeURIComponent(id) + "/state?t=" + encodeURIComponent(token);
          const $ = (sel) => document.querySelector(sel);
          function cell(row, text, cls) {
            const td = document.createElement("td");
            td.textContent = text === null || text === undefined ? "–" : String(text);
            if (cls) td.className = cls;
            row.appendChild(td);
          }
          function bytes(n) {
            if (n === null || n === undefined) return "–";
            const units = ["B", "KiB", "MiB", "GiB", "TiB"];
            let i = 0;
            while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
            return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
          }
          function when(t) { return t ? new Date(t).toISOString().replace("T", " ").slice(0, 19) : "–"; }
          function ago(t) { return t ? Math.max(0, Math.round((Date.now() - new Date(t).getTime()) / 1000)) + " s ago" : "–"; }
          function render(s) {
            const i = s.instance;
            $("#title").textContent = (i.name ? i.name + " · " : "") + "Dingo PostgreSQL";
            const op = s.operation ? " · last operation: " + s.operation.kind + " " + s.operation.state : "";
            $("#summary").textContent = "instance " + i.id + " · plan " + i.plan + " · port " + i.port + (i.readOnlyPort ? " (read-only " + i.readOnlyPort + ")" : "") + op;
            $("#primary").textContent = s.primary || "none (no leader right now)";
            const nodes = $("#nodes tbody");
            nodes.replaceChildren();
            for (const n of s.nodes) {
              const row = document.createElement("tr");
              row.dataset.node = n.id;
              row.dataset.role = n.role;
              cell(row, n.id); cell(row, n.cell); cell(row, n.role, "role-" + n.role); cell(row, n.state);
              cell(row, n.timeline); cell(row, n.role === "replica" ? bytes(n.lagBytes) : null);
              cell(row, n.streaming === null || n.streaming === undefined ? null : (n.streaming ? "yes" : "no"));
              cell(row, n.connections); cell(row, n.detail);
              nodes.appendChild(row);
            }
            const b = $("#backups");
            b.replaceChildren();
            const add = (k, v) => { const dt = document.createElement("dt"); dt.textContent = k; const dd = document.createElement("dd"); dd.textContent = v; b.append(dt, dd); };
            if (s.backups) {
              add("archived up to", s.backups.archivedLsn + " (timeline " + s.backups.timeline + ")");
              add("backlog", bytes(s.backups.backlogBytes));
              add("last upload", ago(s.backups.lastUpload));
              add("base backups", s.backups.baseBackups + (s.backups.lastBaseBackupAt ? ", last " + when(s.backups.lastBaseBackupAt) : ""));
              if (s.backups.alarm) add("alarm", s.backups.alarm);
            } else add("archiving", "not yet: no primary archives this instance yet");
            if (s.drill) add("last restore drill", (s.drill.ok ? "ok" : "FAILED") + " " + when(s.drill.at) + " (" + s.drill.seconds.toFixed(1) + " s): " + s.drill.detail);
            const events = $("#events tbody");
            events.replaceChildren();
            for (const e of s.events) {
              const row = document.createElement("tr");
              cell(row, when(e.at)); cell(row, e.node); cell(row, e.kind); cell(row, e.sentence);
              events.appendChild(row);
            }
            $("#updated").textContent = "updated " + when(s.at) + " UTC · every " + s.refreshSeconds + " s";
            $("#problem").hidden = true;
          }
          async function refresh() {
            try {
              const r = await fetch(stateUrl, { cache: "no-store", referrerPolicy: "no-referrer" });
              if (!r.ok) throw new Error(r.status === 404 ? "this dashboard does not exist (or its instance was deleted)" : "the broker answered " + r.status);
              render(await r.json());
            } catch (err) {
              $("#problem").textContent = "cannot refresh: " + err.message;
              $("#problem").hidden = false;
            }
          }
          refresh();
          setInterval(refresh, 2000);
        })();
        """;

    private const string Style = """
        body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #1d2330; }
        h1 { font-size: 1.4rem; margin: 0 0 .25rem; }
        h2 { font-size: 1.05rem; margin: 1.5rem 0 .5rem; }
        table { border-collapse: collapse; width: 100%; }
        th, td { text-align: left; padding: .3rem .6rem; border-bottom: 1px solid #dde1e8; vertical-align: top; }
        th { font-weight: 600; background: #f3f5f8; }
        .role-primary { font-weight: 700; color: #0b6b2f; }
        .role-replica { color: #1d4f91; }
        dl { display: grid; grid-template-columns: max-content auto; gap: .2rem 1rem; }
        dt { font-weight: 600; }
        dd { margin: 0; }
        #problem { color: #9b1c1c; font-weight: 600; }
        footer { margin-top: 1.5rem; color: #6b7280; font-size: 12px; }
        """;
}
