using System.Globalization;
using Dingo.Config;
using Dingo.Model;
using Dingo.Store;
using Spectre.Console;
using Spectre.Console.Rendering;

namespace Dingo.Cli;

/// <summary>
/// `dingo watch`: the platform live, redrawn in place every refresh — cells, instances with their nodes' roles, states and
/// lag, the WAL archive's backlog and alarms, and the latest events of every instance as they are recorded (an etcd
/// watch, so an event shows the moment it is written, without re-reading every instance's history each refresh).
/// Everything shown comes from etcd, as `dingo status` and `dingo events` read it; text from etcd is printed as text,
/// never as markup.
/// </summary>
public static class WatchCommand
{
    private const int EventsShown = 12;

    public static async Task<int> RunAsync(DingoSettings settings, TimeSpan every, bool once, IAnsiConsole console, CancellationToken ct)
    {
        // Not a terminal (a script, a log): as wide as a line may need, not the 80 columns Spectre assumes.
        if (Console.IsOutputRedirected) console.Profile.Width = 240;
        await using var store = EtcdStore.Connect(settings);
        var events = new LatestEvents(EventsShown);
        try
        {
            await events.FillAsync(store, ct);
        }
        catch (Grpc.Core.RpcException ex)
        {
            Console.Error.WriteLine($"dingo: cannot read etcd at {string.Join(",", settings.EtcdEndpoints)}: {ex.Status.Detail}. Is the platform up (./dingo up)?");
            return 1;
        }
        if (once)
        {
            console.Write(Frame(await StatusCommand.ReadAsync(store, ct), events.Snapshot(), null));
            return 0;
        }
        using var interrupt = new Interrupt(ct);
        ct = interrupt.Token;
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var watching = store.WatchPrefixAsync(store.Keys.AllEvents, changes =>
        {
            events.Add(changes);
            return Task.CompletedTask;
        }, stop.Token);
        try
        {
            await console.Live(new Text("reading etcd…")).AutoClear(false).StartAsync(async live =>
            {
                while (!ct.IsCancellationRequested)
                {
                    IRenderable frame;
                    try
                    {
                        frame = Frame(await StatusCommand.ReadAsync(store, ct), events.Snapshot(), every);
                    }
                    catch (Grpc.Core.RpcException ex)
                    {
                        frame = new Text($"{DateTime.UtcNow:HH:mm:ss} cannot read etcd: {ex.Status.Detail} (trying again in {every.TotalSeconds:0.#} s)");
                    }
                    catch (OperationCanceledException) when (ct.IsCancellationRequested)
                    {
                        return;
                    }
                    live.UpdateTarget(frame);
                    try { await Task.Delay(every, ct); }
                    catch (OperationCanceledException) { return; }
                }
            });
        }
        finally
        {
            await stop.CancelAsync();
            await watching;
        }
        return interrupt.Requested ? interrupt.ExitCode : 0;
    }

    /// <summary>One picture of the platform (internal: tests render it).</summary>
    internal static IRenderable Frame(StatusCommand.StatusView view, IReadOnlyList<EventRecord> events, TimeSpan? every)
    {
        var header = new Text(every is { } period
            ? $"dingo watch  {DateTime.UtcNow:yyyy-MM-dd HH:mm:ss} UTC  (every {period.TotalSeconds:0.#} s; Ctrl-C leaves)"
            : $"dingo status  {DateTime.UtcNow:yyyy-MM-dd HH:mm:ss} UTC", new Style(decoration: Decoration.Bold));

        var cells = Table("CELLS", "cell", "zone", "runtime", "nodes", "problem");
        foreach (var c in view.Cells)
            cells.AddRow(Plain(c.Id), Plain(c.Zone), Plain(c.Runtime), Plain($"{c.Nodes}/{c.Capacity}"),
                Plain(string.Join("; ", new[] { c.Problem, c.Kept }.Where(p => p is not null)), c.Problem is null ? Style.Plain : new Style(Color.Red)));

        var instances = Table("INSTANCES", "instance", "port", "plan", "operation", "node", "cell", "role", "state", "lag");
        foreach (var i in view.Instances)
        {
            var name = i.Name is null ? i.Id : $"{i.Name} ({i.Id})";
            var operation = (i.Operation ?? "-") + (i.Deleting ? " (deleting)" : "");
            var port = i.Port.ToString(CultureInfo.InvariantCulture);
            if (i.Nodes.Count == 0) instances.AddRow(Plain(name), Plain(port), Plain(i.Plan), Plain(operation), Plain("-"), Plain("-"), Plain("-"), Plain("-"), Plain("-"));
            var first = true;
            foreach (var n in i.Nodes)
            {
                instances.AddRow(Plain(first ? name : ""), Plain(first ? port : ""), Plain(first ? i.Plan : ""), Plain(first ? operation : ""),
                    Plain(n.Node), Plain(n.CellGone ? n.Cell + " (gone)" : n.Cell), Plain(n.Role ?? "-", RoleStyle(n.Role)),
                    Plain(n.State, n.State == NodeState.Running.Wire() ? Style.Plain : new Style(Color.Yellow)),
                    Plain(n.LagBytes is { } lag ? Bytes(lag) : "-"));
                first = false;
            }
        }

        var backups = Table("BACKUPS", "instance", "archived", "backlog", "last upload", "base backup", "drill", "alarm");
        foreach (var b in view.Backups)
            backups.AddRow(Plain(b.Instance), Plain(b.ArchivedLsn ?? "-"), Plain(b.BacklogBytes is { } backlog ? Bytes(backlog) : "-"),
                Plain(b.LastUpload is { } up ? $"{Math.Max(0, (DateTimeOffset.UtcNow - up).TotalSeconds):0}s ago" : "-"),
                Plain(b.LastBaseBackupAt is { } at ? $"{at:yyyy-MM-dd HH:mm} ({b.BaseBackups})" : "-"),
                Plain(b.DrillAt is { } drill ? $"{(b.DrillOk == true ? "ok" : "FAILED")} {drill:MM-dd HH:mm}" : "-", b.DrillOk == false ? new Style(Color.Red) : Style.Plain),
                Plain(b.Alarm ?? "", new Style(Color.Red)));

        var latest = Table("LATEST EVENTS", "time (UTC)", "instance", "node", "kind", "what");
        foreach (var e in events)
            latest.AddRow(Plain(e.At.UtcDateTime.ToString("MM-dd HH:mm:ss", CultureInfo.InvariantCulture)), Plain(e.InstanceId), Plain(e.NodeId ?? "-"), Plain(e.Kind), Plain(e.Sentence));
        if (events.Count == 0) latest.AddRow(Plain("(none recorded)"), Plain(""), Plain(""), Plain(""), Plain(""));

        return new Rows(header, cells, instances, backups, latest);
    }

    private static Table Table(string title, params string[] columns)
    {
        var table = new Table { Border = TableBorder.Simple, Title = new TableTitle(title) };
        foreach (var c in columns) table.AddColumn(new TableColumn(new Text(c, new Style(decoration: Decoration.Bold))));
        return table;
    }

    private static Text Plain(string text, Style? style = null) => new(text, style ?? Style.Plain);

    private static Style RoleStyle(string? role) => role switch
    {
        "primary" => new Style(Color.Green, decoration: Decoration.Bold),
        "replica" => Style.Plain,
        _ => new Style(Color.Yellow),
    };

    private static string Bytes(long bytes) => bytes switch
    {
        < 1024 => $"{bytes} B",
        < 1024 * 1024 => $"{bytes / 1024.0:0.#} KiB",
        _ => $"{bytes / 1048576.0:0.#} MiB",
    };

    /// <summary>The newest events of every instance: read once, then kept up to date from an etcd watch. Thread-safe.</summary>
    internal sealed class LatestEvents(int keep)
    {
        private readonly Lock _gate = new();
        private readonly List<EventRecord> _events = [];

        public async Task FillAsync(EtcdStore store, CancellationToken ct)
        {
            var instances = await store.ListAsync<InstanceRecord>(store.Keys.Instances, ct);
            foreach (var instance in instances)
            {
                var recorded = await EventJournal.ReadAsync(store, instance.Value.Id, ct);
                Add(recorded.Skip(Math.Max(0, recorded.Count - keep)));
            }
        }

        public void Add(IReadOnlyList<WatchedChange> changes) =>
            Add(changes.Where(c => c.Created && c.Value is not null).Select(c =>
            {
                try { return Json.Deserialize<EventRecord>(c.Value!); }
                catch (System.Text.Json.JsonException) { return null; } // not an event as this console knows them
            }).OfType<EventRecord>());

        private void Add(IEnumerable<EventRecord> events)
        {
            lock (_gate)
            {
                // Stable: events recorded in the same instant keep the order they were written in.
                var ordered = _events.Concat(events).OrderBy(e => e.At).ToList();
                _events.Clear();
                _events.AddRange(ordered.Skip(Math.Max(0, ordered.Count - keep)));
            }
        }

        public IReadOnlyList<EventRecord> Snapshot()
        {
            lock (_gate) return [.. _events];
        }
    }
}
