using System.Text.Json;
using Dingo.Config;
using Dingo.Model;
using Dingo.Store;

namespace Dingo.Cli;

/// <summary>
/// `dingo events &lt;instance&gt; [--limit N] [--json]`: the instance's history from etcd, oldest first — role changes,
/// failovers and their reasons, fencing, rewinds, re-clones, operations, backups, restores and drills.
/// </summary>
public static class EventsCommand
{
    public const string Usage = "usage: dingo events <instance> [--limit N] [--json]";

    public static async Task<int> RunAsync(IReadOnlyList<string> args, DingoSettings settings, TextWriter output, CancellationToken ct)
    {
        var limit = 100;
        var json = false;
        var positional = new List<string>();
        for (var i = 0; i < args.Count; i++)
        {
            if (args[i] == "--limit" && i + 1 < args.Count && int.TryParse(args[i + 1], out var n) && n > 0) { limit = n; i++; }
            else if (args[i] == "--json") json = true;
            else if (args[i].StartsWith("--", StringComparison.Ordinal))
            {
                Console.Error.WriteLine($"dingo events: unknown option '{args[i]}'\n{Usage}");
                return 2;
            }
            else positional.Add(args[i]);
        }
        if (positional.Count != 1 || !IsId(positional[0]))
        {
            Console.Error.WriteLine(positional.Count == 1 ? $"dingo events: '{positional[0]}' is not an instance id\n{Usage}" : Usage);
            return 2;
        }
        var instanceId = positional[0];
        await using var store = EtcdStore.Connect(settings);
        IReadOnlyList<EventRecord> events;
        bool exists;
        try
        {
            events = await EventJournal.ReadAsync(store, instanceId, ct);
            exists = await store.GetRawAsync(store.Keys.Instance(instanceId), ct) is not null;
        }
        catch (Grpc.Core.RpcException ex)
        {
            Console.Error.WriteLine($"dingo: cannot read etcd at {string.Join(",", settings.EtcdEndpoints)}: {ex.Status.Detail}. Is the platform up (./dingo up)?");
            return 1;
        }
        if (events.Count == 0 && !exists)
        {
            Console.Error.WriteLine($"dingo events: no instance {instanceId} and no events recorded for it (events are kept {settings.Events.Retention.TotalDays:0.#} days)");
            return 1;
        }
        var shown = events.Skip(Math.Max(0, events.Count - limit)).ToList();
        if (json)
        {
            output.WriteLine(JsonSerializer.Serialize(shown, Json.Options));
            return 0;
        }
        if (shown.Count == 0)
        {
            output.WriteLine($"(no events recorded for {instanceId} yet)");
            return 0;
        }
        if (shown.Count < events.Count) output.WriteLine($"(the last {shown.Count} of {events.Count} events; --limit N shows more)");
        var rows = new List<string[]> { new[] { "TIME (UTC)", "NODE", "SOURCE", "KIND", "WHAT" } };
        foreach (var e in shown)
            rows.Add([e.At.UtcDateTime.ToString("yyyy-MM-dd HH:mm:ss.fff", System.Globalization.CultureInfo.InvariantCulture), e.NodeId ?? "-", e.Source ?? "-", e.Kind, e.Sentence]);
        var widths = Enumerable.Range(0, rows[0].Length).Select(i => rows.Max(r => r[i].Length)).ToArray();
        foreach (var row in rows)
            output.WriteLine(string.Join("  ", row.Select((cell, i) => i == row.Length - 1 ? cell : cell.PadRight(widths[i]))).TrimEnd());
        return 0;
    }

    private static bool IsId(string id) => id.Length is > 0 and <= 128 && id.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.');
}
