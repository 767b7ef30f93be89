using System.Net.Http.Headers;
using System.Text;
using System.Text.Json.Nodes;
using Dingo.Config;
using Dingo.Store;

namespace Dingo.Cli;

/// <summary>`dingo switchover`, `drain`, `undrain`, `recreate`, `rebuild`, `drill`, `backups`, `store-check`: the broker's admin API from the terminal.</summary>
public static class AdminCommands
{
    /// <param name="json">print the broker's answer as it came (JSON), for scripts</param>
    /// <param name="wait">with --wait: follow the operation in etcd until it is done, for at most this long</param>
    public static async Task<int> RunAsync(string command, IReadOnlyList<string> args, DingoSettings settings, CancellationToken ct, bool json = false, TimeSpan? wait = null)
    {
        using var http = Client(settings);
        await using var store = wait is null ? null : EtcdStore.Connect(settings);
        try
        {
            // What the wait compares with, read before the request: the leader it moves away from, the last drill.
            string? leaderBefore = null;
            DateTimeOffset? drillBefore = null;
            if (store is not null && command is "switchover")
                leaderBefore = (await store.GetAsync<Dingo.Model.LeaderRecord>(store.Keys.Leader(args[0]), ct))?.Value.NodeId;
            if (store is not null && command is "drill")
                drillBefore = (await store.GetAsync<Dingo.Model.DrillResult>(store.Keys.Drill(args[0]), ct))?.Value.At;
            HttpResponseMessage response;
            switch (command)
            {
                case "switchover" when args.Count is 1 or 3 && (args.Count == 1 || args[1] == "--to"):
                    var body = args.Count == 3 ? new JsonObject { ["to"] = args[2] }.ToJsonString() : "{}";
                    response = await http.PostAsync($"/admin/service_instances/{Uri.EscapeDataString(args[0])}/switchover", new StringContent(body, Encoding.UTF8, "application/json"), ct);
                    break;
                case "drain" when args.Count == 1:
                    response = await http.PostAsync($"/admin/cells/{Uri.EscapeDataString(args[0])}/drain", null, ct);
                    break;
                case "undrain" when args.Count == 1:
                    response = await http.DeleteAsync($"/admin/cells/{Uri.EscapeDataString(args[0])}/drain", ct);
                    break;
                case "recreate" when args.Count == 1:
                    response = await http.PostAsync($"/admin/service_instances/{Uri.EscapeDataString(args[0])}/recreate", null, ct);
                    break;
                case "rebuild" when args.Count == 0:
                    response = await http.PostAsync("/admin/rebuild", null, ct);
                    break;
                case "drill" when args.Count == 1:
                    response = await http.PostAsync($"/admin/service_instances/{Uri.EscapeDataString(args[0])}/drill", null, ct);
                    break;
                case "backups" when args.Count == 1:
                    response = await http.GetAsync($"/admin/service_instances/{Uri.EscapeDataString(args[0])}/backups", ct);
                    break;
                case "store-check" when args.Count == 0:
                    response = await http.GetAsync("/admin/backups/check", ct);
                    break;
                default:
                    Console.Error.WriteLine("usage: dingo switchover <instance> [--to <node>] | drain <cell> | undrain <cell> | recreate <instance> | rebuild | backups <instance> | drill <instance> | store-check");
                    return 2;
            }
            var text = await response.Content.ReadAsStringAsync(ct);
            var description = (JsonNode.Parse(text) as JsonObject)?["description"]?.GetValue<string>() ?? text;
            if (response.IsSuccessStatusCode && json)
            {
                Console.WriteLine(text);
                return 0;
            }
            if (response.IsSuccessStatusCode)
            {
                Console.WriteLine(description);
                var answer = JsonNode.Parse(text) as JsonObject;
                if (answer?["base_backups"] is JsonArray backups)
                    foreach (var b in backups)
                        Console.WriteLine($"  base backup {b?["label"]}  finished {b?["finished_at"]}  timeline {b?["timeline"]}  {b?["start_lsn"]}..{b?["end_lsn"]}  {(long?)b?["bytes"] / 1048576} MiB  from {b?["source"]}");
                if (answer?["drill"] is JsonObject drill)
                    Console.WriteLine($"  last restore drill {drill["at"]}: {((bool?)drill["ok"] == true ? "OK" : "FAILED")}: {drill["detail"]}");
                if (answer?["instances"] is JsonArray rebuilt)
                    foreach (var i in rebuilt) Console.WriteLine($"  {i?["instance"]}: {i?["result"]}");
                if (store is not null && wait is { } limit)
                {
                    Func<CancellationToken, Task<OperationWait.Progress>> look = command switch
                    {
                        "switchover" => t => OperationWait.InstanceAsync(store, args[0], leaderBefore, args.Count == 3 ? args[2] : null, t),
                        "drain" => t => OperationWait.DrainedAsync(store, args[0], t),
                        "recreate" => t => OperationWait.InstanceAsync(store, args[0], null, null, t),
                        "drill" => t => OperationWait.DrillAsync(store, args[0], drillBefore, t),
                        "rebuild" => t => OperationWait.AllInstancesAsync(store, t),
                        _ => _ => Task.FromResult(new OperationWait.Progress(true, "nothing to wait for: it took effect at once")),
                    };
                    return await OperationWait.UntilAsync(look, limit, Console.Out, ct);
                }
                if (command is not ("backups" or "store-check")) Console.WriteLine("follow it with: ./dingo status (or --wait)");
                return 0;
            }
            Console.Error.WriteLine($"dingo: {(int)response.StatusCode}: {description}");
            return 1;
        }
        catch (Grpc.Core.RpcException ex)
        {
            Console.Error.WriteLine($"dingo: cannot read etcd at {string.Join(",", settings.EtcdEndpoints)}: {ex.Status.Detail}. Is the platform up (./dingo up)?");
            return 1;
        }
        catch (HttpRequestException ex)
        {
            Console.Error.WriteLine($"dingo: cannot reach the broker at {settings.Broker.Url}: {ex.Message}. Is the platform up (./dingo up)?");
            return 1;
        }
    }

    /// <summary>The admin API takes the operator's credentials, never the OSB ones: configured, or what `dingo up` generated.</summary>
    private static HttpClient Client(DingoSettings settings)
    {
        var (username, password) = Dingo.Membership.OperatorCredentials.Presented(settings);
        var http = BrokerHttp.Create(settings, TimeSpan.FromSeconds(30));
        http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Basic", Convert.ToBase64String(Encoding.UTF8.GetBytes($"{username}:{password}")));
        return http;
    }
}
