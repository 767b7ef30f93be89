using System.Collections.Concurrent;
using System.Globalization;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json.Nodes;
using Dingo.Model;
using Dingo.Tests.Support;
using Xunit.Abstractions;

namespace Dingo.Tests.Broker;

/// <summary>
/// Ten thousand generated OSB and admin requests (odd and huge ids, wrong JSON types, truncated and oversized bodies,
/// unknown parameters, wrong API versions and credentials, every route and method) against a real broker on a real etcd
/// with no cells. None may get a 5xx or go unanswered, the broker must still answer afterwards, and no etcd key or port
/// may be left behind by a rejected request. The seed is printed; DINGO_FUZZ_SEED=N replays a run.
/// </summary>
[SuiteCost(8)]
public sealed class OsbFuzzTests(ITestOutputHelper output)
{
    private const int Requests = 10_000;
    private const int Concurrency = 16;
    private const int DefaultSeed = 20_170_117;

    /// <summary>The few ids a valid request may name, so some requests meet an instance that exists.</summary>
    private static readonly string[] Pool = ["fz-0", "fz-1", "fz-2", "fz-3"];

    private static readonly string[] OddIds =
    [
        "..", ".", ".hidden", "%2F", "a%2Fb", "%2E%2E", "%00", "a%00b", "%0A", "a%0D%0Ab", "%7F", "a b", "a+b", "%C3%BC", "%E6%97%A5%E6%9C%AC",
        "%F0%9F%90%98", "-", "_", "a:b", "a;b", "a,b", "%5C", "a%25b", "con", "a..b", "%27%22", "%3Cscript%3E", "%FF%FE",
    ];

    private sealed record FuzzRequest(int Index, HttpMethod Method, string Path, byte[]? Body, bool Chunked, string? Auth, string? Version, string? Identity)
    {
        public override string ToString() =>
            $"#{Index} {Method} {(Path.Length > 160 ? Path[..160] + "…" : Path)} auth={Auth?.Split(':')[0] ?? "none"} version={Version ?? "none"} body={(Body is null ? "none" : $"{Body.Length} B{(Chunked ? " chunked" : "")}: {Encoding.UTF8.GetString(Body, 0, Math.Min(Body.Length, 120))}")}";
    }

    [Fact]
    public async Task Ten_thousand_generated_requests_get_no_5xx_and_leave_nothing_behind()
    {
        var seed = int.TryParse(Environment.GetEnvironmentVariable("DINGO_FUZZ_SEED"), NumberStyles.Integer, CultureInfo.InvariantCulture, out var s) ? s : DefaultSeed;
        output.WriteLine($"OSB fuzz seed {seed} (replay: DINGO_FUZZ_SEED={seed})");
        await using var platform = await TestPlatform.StartAsync(cells: 0);
        var keys = platform.Store.Keys;

        // Keys the platform writes by itself, whatever the requests: Akka membership (process liveness), and the lost-cell
        // duty's holder, which a broker's sweep takes every 2 s on its own schedule (fresh296: taken after the first dump
        // on a busy machine, and reported as a leak).
        bool PlatformOwn(string key) => key.StartsWith(keys.Root + "/akka/", StringComparison.Ordinal) || key == keys.LostCellDuty;
        async Task<Dictionary<string, string>> DumpAsync() =>
            (await platform.Store.ListAsync<JsonNode>(keys.Root + "/", CancellationToken.None))
                .Where(v => !PlatformOwn(v.Key)).ToDictionary(v => v.Key, v => v.Value?.ToJsonString() ?? "null");
        var before = await DumpAsync();

        var random = new Random(seed);
        var requests = Enumerable.Range(0, Requests).Select(i => Generate(i, random)).ToList();

        using var handler = new SocketsHttpHandler { MaxConnectionsPerServer = Concurrency, PooledConnectionLifetime = TimeSpan.FromMinutes(5) };
        using var http = new HttpClient(handler) { BaseAddress = new Uri(platform.Settings.Broker.Url), Timeout = TimeSpan.FromSeconds(20) };
        var failures = new ConcurrentQueue<string>();
        var accepted = new ConcurrentDictionary<string, bool>();
        var statuses = new ConcurrentDictionary<int, int>();
        var started = System.Diagnostics.Stopwatch.StartNew();
        await Parallel.ForEachAsync(requests, new ParallelOptions { MaxDegreeOfParallelism = Concurrency }, async (r, ct) =>
        {
            try
            {
                var status = await SendAsync(http, r, ct);
                statuses.AddOrUpdate(status, 1, (_, n) => n + 1);
                if (status >= 500) failures.Enqueue($"{status} for {r}");
                // A provision the broker took: cleaned up below, and its keys are not leftovers.
                if (r.Method == HttpMethod.Put && status is 200 or 201 or 202 && InstanceIdOf(r.Path) is { } id) accepted[id] = true;
            }
            catch (Exception ex) when (ex is HttpRequestException or TaskCanceledException or IOException)
            {
                // The broker may close a connection after refusing a body it will not read; it must still answer.
                if (ex is TaskCanceledException) failures.Enqueue($"no answer within 20 s for {r}");
            }
        });
        var elapsed = started.Elapsed;
        output.WriteLine($"{Requests} requests in {elapsed.TotalSeconds:0.0} s; statuses: {string.Join(", ", statuses.OrderBy(k => k.Key).Select(k => $"{k.Key}×{k.Value}"))}; provisions accepted: {string.Join(", ", accepted.Keys.Order())}");
        Assert.True(failures.IsEmpty, $"seed {seed}: {failures.Count} request(s) got a 5xx or no answer, e.g.\n{string.Join("\n", failures.Take(15))}");
        Assert.True(statuses.Where(k => k.Key is >= 400 and < 500).Sum(k => k.Value) > Requests / 2, "most generated requests are wrong and must be refused");

        // Still answering, with its credentials and over a fresh connection.
        var (catalog, _) = await platform.SendAsync(HttpMethod.Get, "/v2/catalog");
        Assert.Equal(200, catalog);

        // Deprovision whatever was accepted and wait for the deletions to finish.
        foreach (var id in (await platform.Store.ListAsync<JsonNode>(keys.Instances, CancellationToken.None)).Select(v => v.Key[keys.Instances.Length..]))
        {
            Assert.True(accepted.ContainsKey(id), $"seed {seed}: instance {id} exists though no provision of it was accepted");
            var (del, delBody) = await platform.SendAsync(HttpMethod.Delete, $"/v2/service_instances/{id}?accepts_incomplete=true&service_id={Catalog.ServiceId}&plan_id={Catalog.SoloPlanId}");
            Assert.True(del is 202 or 410, $"deprovision of {id}: {del} {delBody.ToJsonString()}");
        }
        // Polled as the platform polls last_operation; a timeout names what each instance is doing.
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while ((await platform.Store.ListAsync<JsonNode>(keys.Instances, CancellationToken.None)).Count > 0)
        {
            var operations = new List<string>();
            foreach (var id in accepted.Keys)
                if (await platform.Store.GetStringAsync(keys.Instance(id), CancellationToken.None) is { } record)
                    operations.Add($"{id}: {record} / {await platform.Store.GetStringAsync(keys.Operation(id), CancellationToken.None)}");
            foreach (var id in accepted.Keys) await platform.SendAsync(HttpMethod.Get, $"/v2/service_instances/{id}/last_operation");
            Assert.True(DateTime.UtcNow < deadline, $"seed {seed}: accepted instances not deleted within 60 s:\n{string.Join("\n", operations)}");
            await Task.Delay(200);
        }

        // Left: what was there before, and what a deleted instance keeps by design (its retired ports, the port counter,
        // its finished operation and tombstone, a drill request, its events). Anything else is a leak.
        var after = await DumpAsync();
        var leftovers = new List<string>();
        foreach (var (key, value) in after)
        {
            if (before.TryGetValue(key, out var was) && was == value) continue;
            if (key == keys.PortCounter && !accepted.IsEmpty) continue;
            if (key.StartsWith(keys.Ports, StringComparison.Ordinal))
            {
                var owner = (string?)JsonNode.Parse(value)?["instanceId"];
                if (owner is not null && accepted.ContainsKey(owner)) continue;
            }
            else if (accepted.Keys.Any(id => key.EndsWith("/" + id, StringComparison.Ordinal))) continue;
            // Its history too (docs/etcd-schema.md: kept after a deprovision until the events retention ends).
            else if (accepted.Keys.Any(id => key.StartsWith(keys.Events(id), StringComparison.Ordinal))) continue;
            leftovers.Add($"{key} = {(value.Length > 200 ? value[..200] : value)}");
        }
        Assert.True(leftovers.Count == 0, $"seed {seed}: keys left behind by rejected requests:\n{string.Join("\n", leftovers)}");
        Assert.True(elapsed < TimeSpan.FromSeconds(45), $"the run took {elapsed.TotalSeconds:0.0} s: it must stay well under a minute");
    }

    /// <summary>The instance id a provision's path names (as the broker's route decodes it), or null.</summary>
    private static string? InstanceIdOf(string path)
    {
        const string prefix = "/v2/service_instances/";
        if (!path.StartsWith(prefix, StringComparison.Ordinal)) return null;
        var rest = path[prefix.Length..];
        var end = rest.IndexOf('?', StringComparison.Ordinal);
        var segment = end < 0 ? rest : rest[..end];
        return segment.Contains('/', StringComparison.Ordinal) ? null : Uri.UnescapeDataString(segment);
    }

    private static async Task<int> SendAsync(HttpClient http, FuzzRequest r, CancellationToken ct)
    {
        // The path goes as written: percent escapes and all, the way a hostile client would send it.
        using var request = new HttpRequestMessage(r.Method, new Uri(r.Path, UriKind.Relative));
        if (r.Auth is not null) request.Headers.Authorization = new AuthenticationHeaderValue("Basic", Convert.ToBase64String(Encoding.UTF8.GetBytes(r.Auth)));
        if (r.Version is not null) request.Headers.TryAddWithoutValidation("X-Broker-API-Version", r.Version);
        if (r.Identity is not null) request.Headers.TryAddWithoutValidation("X-Broker-API-Originating-Identity", r.Identity);
        if (r.Body is not null)
        {
            request.Content = r.Chunked ? new ChunkedContent(r.Body) : new ByteArrayContent(r.Body);
            request.Content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
        }
        using var response = await http.SendAsync(request, ct);
        await response.Content.ReadAsByteArrayAsync(ct);
        return (int)response.StatusCode;
    }

    private sealed class ChunkedContent(byte[] bytes) : HttpContent
    {
        protected override Task SerializeToStreamAsync(Stream stream, System.Net.TransportContext? context) => stream.WriteAsync(bytes).AsTask();
        protected override bool TryComputeLength(out long length) { length = -1; return false; }
    }

    // ---- generation ----

    private static T Pick<T>(Random random, IReadOnlyList<T> items) => items[random.Next(items.Count)];

    private static string Id(Random random) => random.Next(10) switch
    {
        < 4 => Pick(random, Pool),
        4 => RandomGuid(random),
        5 => new string('x', Pick(random, new[] { 128, 129, 1000, 10_000 })),
        6 => Uri.EscapeDataString(RandomText(random, random.Next(1, 12))),
        _ => Pick(random, OddIds),
    };

    /// <summary>A GUID from the seeded generator, so a run replays exactly.</summary>
    private static string RandomGuid(Random random)
    {
        var bytes = new byte[16];
        random.NextBytes(bytes);
        return new Guid(bytes).ToString();
    }

    /// <summary>Any characters: ASCII, control characters, unicode, lone surrogates avoided (they cannot be UTF-8).</summary>
    private static string RandomText(Random random, int length)
    {
        var sb = new StringBuilder(length);
        for (var i = 0; i < length; i++)
        {
            sb.Append(random.Next(6) switch
            {
                0 => (char)random.Next(0, 32),
                1 => Pick(random, new[] { '/', '.', '%', '\\', '"', '\'', '{', '}', '?', '#', '&', '=' }),
                2 => (char)random.Next(0x00A0, 0x2FFF),
                _ => (char)random.Next(0x20, 0x7F),
            });
        }
        return sb.ToString();
    }

    private static JsonNode? OddValue(Random random) => random.Next(12) switch
    {
        0 => null,
        1 => 42,
        2 => -1.5e300,
        3 => true,
        4 => new JsonArray(1, "two", null),
        5 => new JsonObject { ["nested"] = new JsonObject { ["deeper"] = "x" } },
        6 => "",
        7 => new string('v', 10_000),
        8 => RandomText(random, 40),
        9 => "🐘\u0000\u202e",
        10 => new string('w', 300),
        _ => "x",
    };

    private static JsonObject Parameters(Random random)
    {
        var p = new JsonObject();
        switch (random.Next(10))
        {
            case 0: break;
            case 1: p["colour"] = "red"; break;
            case 2: p["cells"] = random.Next(2) == 0 ? new JsonArray("cell-1", "../etc", "%2F") : new JsonArray(Enumerable.Range(0, 40).Select(i => (JsonNode)$"cell-{i}").ToArray()); break;
            case 3: p["node-count"] = OddValue(random); break;
            case 4: p["clone-from"] = random.Next(2) == 0 ? Pick(random, Pool) : OddValue(random); break;
            case 5: p["clone-from"] = "fz-1"; p["point-in-time"] = Pick(random, new[] { "yesterday", "2999-01-01T00:00:00Z", "2020-01-01T00:00:00", "2020-01-01T00:00:00Z" }); break;
            case 6: p["point-in-time"] = "2020-01-01T00:00:00Z"; break;
            case 7: p["pad"] = new string('p', 20 * 1024); break;
            case 8: p["node-count"] = random.Next(-2, 9); break;
            default: p[RandomText(random, 8)] = OddValue(random); break;
        }
        return p;
    }

    private static JsonObject ProvisionBody(Random random)
    {
        var body = new JsonObject
        {
            ["service_id"] = Catalog.ServiceId,
            ["plan_id"] = Pick(random, new[] { Catalog.SoloPlanId, Catalog.ClusterPlanId, Catalog.ClusterHaPlanId }),
            ["organization_guid"] = "org-fuzz",
            ["space_guid"] = "space-fuzz",
            ["context"] = new JsonObject { ["platform"] = "cloudfoundry", ["instance_name"] = "fuzz" },
        };
        // Nearly every body is wrong in one or more ways; a few are valid (and are deprovisioned afterwards).
        var defects = random.Next(100) < 3 ? 0 : random.Next(1, 4);
        for (var d = 0; d < defects; d++)
        {
            switch (random.Next(9))
            {
                case 0: body[Pick(random, new[] { "service_id", "plan_id", "organization_guid", "space_guid" })] = OddValue(random); break;
                case 1: body.Remove(Pick(random, new[] { "service_id", "plan_id", "organization_guid", "space_guid" })); break;
                case 2: body["parameters"] = Parameters(random); break;
                case 3: body["parameters"] = OddValue(random) ?? "null"; break;
                case 4: body["context"] = random.Next(2) == 0 ? OddValue(random) ?? "null" : new JsonObject { ["pad"] = new string('c', Pick(random, new[] { 17 * 1024, 60 * 1024 })) }; break;
                case 5: body[RandomText(random, 6)] = OddValue(random); break;
                case 6: body["maintenance_info"] = new JsonObject { ["version"] = OddValue(random) }; break;
                case 7: body["plan_id"] = RandomGuid(random); break;
                default: body["parameters"] = Parameters(random); break;
            }
        }
        return body;
    }

    private static JsonObject BindBody(Random random)
    {
        var body = new JsonObject { ["service_id"] = Catalog.ServiceId, ["plan_id"] = Catalog.SoloPlanId };
        switch (random.Next(6))
        {
            case 0: body["app_guid"] = OddValue(random); break;
            case 1: body["bind_resource"] = OddValue(random); break;
            case 2: body["parameters"] = new JsonObject { ["x"] = 1 }; break;
            case 3: body["service_id"] = OddValue(random); break;
            case 4: body["context"] = new JsonObject { ["space_guid"] = "another" }; break;
            default: body["app_guid"] = "app-1"; break;
        }
        return body;
    }

    private static byte[]? Body(Random random, Func<Random, JsonObject> valid)
    {
        var json = valid(random).ToJsonString();
        return random.Next(14) switch
        {
            0 => null,
            1 => [],
            2 => Encoding.UTF8.GetBytes(json[..random.Next(json.Length)]),               // truncated
            3 => Encoding.UTF8.GetBytes("[" + json + "]"),                               // not an object
            4 => Encoding.UTF8.GetBytes(Pick(random, new[] { "null", "42", "\"s\"", "true", "{}", "{\"a\":1,\"a\":2}", "{\"service_id\":\"x\",\"service_id\":\"y\"}" })),
            5 => Encoding.UTF8.GetBytes(new string('[', 5000) + new string(']', 5000)),  // deep nesting
            6 => [0xFF, 0xFE, 0x7B, 0x22, 0xC3, 0x28, 0x22, 0x7D],                        // not UTF-8
            7 => Encoding.UTF8.GetBytes("{\"pad\":\"" + new string('z', 70 * 1024) + "\"}"), // over the body limit
            8 => Encoding.UTF8.GetBytes(json.Replace("\"", "'", StringComparison.Ordinal)),
            _ => Encoding.UTF8.GetBytes(json),
        };
    }

    private static string Query(Random random)
    {
        var parts = new List<string>();
        if (random.Next(4) != 0) parts.Add("accepts_incomplete=" + Pick(random, new[] { "true", "true", "false", "TRUE", "yes", "" }));
        if (random.Next(3) != 0) parts.Add("service_id=" + Pick(random, new[] { Catalog.ServiceId, Catalog.ServiceId, "nope", new string('s', 3000), "%00" }));
        if (random.Next(3) != 0) parts.Add("plan_id=" + Pick(random, new[] { Catalog.SoloPlanId, Catalog.SoloPlanId, "", "%FF" }));
        if (random.Next(8) == 0) parts.Add("operation=" + Uri.EscapeDataString(RandomText(random, 10)));
        if (random.Next(10) == 0) parts.Add(Uri.EscapeDataString(RandomText(random, 5)) + "=" + Uri.EscapeDataString(RandomText(random, 5)));
        return parts.Count == 0 ? "" : "?" + string.Join("&", parts);
    }

    private static FuzzRequest Generate(int index, Random random)
    {
        var methods = new[] { HttpMethod.Get, HttpMethod.Put, HttpMethod.Patch, HttpMethod.Delete, HttpMethod.Post, HttpMethod.Head, HttpMethod.Options };
        var osb = $"{TestPlatform.Username}:{TestPlatform.Password}";
        var admin = $"{TestPlatform.AdminUsername}:{TestPlatform.AdminPassword}";
        var id = Id(random);
        var bid = Id(random);
        var route = random.Next(16);
        var (method, path, body) = route switch
        {
            0 => (HttpMethod.Get, "/v2/catalog", (byte[]?)null),
            1 or 2 or 3 => (HttpMethod.Put, $"/v2/service_instances/{id}", Body(random, ProvisionBody)),
            4 => (HttpMethod.Patch, $"/v2/service_instances/{id}", Body(random, r => { var b = ProvisionBody(r); b.Remove("organization_guid"); return b; })),
            5 => (HttpMethod.Delete, $"/v2/service_instances/{id}", null),
            6 => (HttpMethod.Get, $"/v2/service_instances/{id}", null),
            7 => (HttpMethod.Get, $"/v2/service_instances/{id}/last_operation", null),
            8 => (HttpMethod.Put, $"/v2/service_instances/{id}/service_bindings/{bid}", Body(random, BindBody)),
            9 => (Pick(random, new[] { HttpMethod.Get, HttpMethod.Delete }), $"/v2/service_instances/{id}/service_bindings/{bid}", null),
            10 => (HttpMethod.Get, $"/v2/service_instances/{id}/service_bindings/{bid}/last_operation", null),
            11 => (HttpMethod.Post, $"/admin/service_instances/{id}/{Pick(random, new[] { "switchover", "recreate", "drill" })}",
                random.Next(2) == 0 ? Encoding.UTF8.GetBytes(new JsonObject { ["to"] = OddValue(random) }.ToJsonString()) : Body(random, BindBody)),
            12 => (Pick(random, new[] { HttpMethod.Post, HttpMethod.Delete }), $"/admin/cells/{id}/drain", null),
            13 => (Pick(random, new[] { HttpMethod.Get, HttpMethod.Post }), Pick(random, new[] { $"/admin/service_instances/{id}/backups", "/admin/backups/check", "/admin/rebuild" }), null),
            14 => (HttpMethod.Get, Pick(random, new[] { "/healthz", "/", "/v2", "/v2/", "/v2/nothing/here", "/admin", "/admin/nothing", $"/v2/service_instances/{id}/{bid}/x/y" }), null),
            _ => (HttpMethod.Get, $"/v2/service_instances/{id}", null),
        };
        // Sometimes any method on the route, to meet every "no such endpoint" path.
        if (random.Next(8) == 0) method = Pick(random, methods);
        // Rebuilding from the object store is the one admin action a valid request may start; with no base backup it
        // restores nothing, but it lists every record: keep it rare.
        if (path == "/admin/rebuild" && random.Next(4) != 0) method = HttpMethod.Get;
        var isAdmin = path.StartsWith("/admin", StringComparison.Ordinal);
        var auth = random.Next(12) switch
        {
            0 => null,
            1 => $"{TestPlatform.Username}:wrong",
            2 => isAdmin ? osb : admin,               // the other API's credentials
            3 => RandomText(random, 12),
            _ => isAdmin ? admin : osb,
        };
        var version = random.Next(12) switch
        {
            0 => null,
            1 => Pick(random, new[] { "2.12", "2.18", "3.0", "banana", "", "2.17.1", "２.１７" }),
            2 => Pick(random, new[] { "2.13", "2.14", "2.15", "2.16" }),
            _ => "2.17",
        };
        var identity = random.Next(10) == 0
            ? "cloudfoundry " + Convert.ToBase64String(Encoding.UTF8.GetBytes(new JsonObject { ["user_id"] = RandomText(random, 30) }.ToJsonString()))
            : random.Next(20) == 0 ? RandomText(random, 50).Replace("\r", "", StringComparison.Ordinal).Replace("\n", "", StringComparison.Ordinal) : null;
        if (identity is not null && identity.Any(c => c < 0x20 && c != '\t' || c >= 0x7F)) identity = "garbled-identity";
        if (method == HttpMethod.Get || method == HttpMethod.Head || method == HttpMethod.Options) body = random.Next(10) == 0 ? body : null;
        var chunked = body is not null && random.Next(5) == 0;
        return new FuzzRequest(index, method, path + Query(random), body, chunked, auth, version, identity);
    }
}
