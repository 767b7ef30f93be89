using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Dingo.Backups;
using Dingo.Broker;
using Dingo.Broker.Osb;
using Dingo.Config;
using Dingo.Instances;
using Dingo.Model;
using Dingo.Store;
using Dingo.Tests.Support;
using Microsoft.Extensions.Logging.Abstractions;

namespace Dingo.Tests.Broker;

/// <summary>The pure rules: which ids are safe, what a log line may carry, which settings are refused.</summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class RequestLimitsTests
{
    [Theory]
    [InlineData("0b8c1a2e-6a3f-4f55-9a0e-3f2b1c4d5e6f")]
    [InlineData("i-1234567890")]
    [InlineData("cell-1")]
    [InlineData("a.b_c-d")]
    [InlineData("A")]
    public void Plain_ids_are_safe(string id) => Assert.Null(RequestLimits.IdProblem("service instance id", id));

    [Theory]
    [InlineData("")]
    [InlineData(".")]
    [InlineData("..")]
    [InlineData(".hidden")]
    [InlineData("a/b")]
    [InlineData("a%2Fb")]
    [InlineData("a\0b")]
    [InlineData("a\u0001b")]
    [InlineData("a b")]
    [InlineData("ü")]
    [InlineData("a\\b")]
    [InlineData("a:b")]
    public void Ids_that_could_split_or_escape_a_key_or_path_are_refused(string id) =>
        Assert.NotNull(RequestLimits.IdProblem("service instance id", id));

    [Fact]
    public void Ids_longer_than_128_characters_are_refused()
    {
        Assert.Null(RequestLimits.IdProblem("binding id", new string('a', 128)));
        Assert.Contains("at most 128", RequestLimits.IdProblem("binding id", new string('a', 129)));
    }

    [Fact]
    public void Log_text_has_control_characters_escaped_and_is_cut()
    {
        Assert.Equal("a\\u000ab\\u0000c", RequestLimits.ForLog("a\nb\0c"));
        var cut = RequestLimits.ForLog(new string('x', 10_000), 50);
        Assert.Equal(51, cut.Length);
        Assert.EndsWith("…", cut);
    }

    private static DingoSettings Load(string extra, Dictionary<string, string?>? env = null) =>
        DingoSettings.Load([Path.Combine(TestPlatform.RepoRoot(), "hocon", "dingo.conf")], env ?? new Dictionary<string, string?>(), extra);

    [Fact]
    public void Admin_credentials_and_clone_scope_come_from_hocon_and_the_environment()
    {
        var defaults = Load("");
        Assert.Equal(("dingo-admin", "", CloneScopes.Space), (defaults.Broker.AdminUsername, defaults.Broker.AdminPassword, defaults.Broker.CloneScope));
        var hocon = Load("dingo.broker { admin-username = ops, admin-password = s3cret, clone-scope = organization }");
        Assert.Equal(("ops", "s3cret", CloneScopes.Organization), (hocon.Broker.AdminUsername, hocon.Broker.AdminPassword, hocon.Broker.CloneScope));
        var env = Load("dingo.broker.admin-password = s3cret", new() { ["DINGO_BROKER_ADMIN_USERNAME"] = "root-ops", ["DINGO_BROKER_ADMIN_PASSWORD"] = "from-env" });
        Assert.Equal(("root-ops", "from-env"), (env.Broker.AdminUsername, env.Broker.AdminPassword));
        Assert.DoesNotContain("from-env", env.Broker.ToString());
    }

    [Theory]
    [InlineData("dingo.broker.clone-scope = everywhere", "clone-scope")]
    [InlineData("dingo.broker { username = dingo, admin-username = dingo, admin-password = x }", "admin-username must differ")]
    public void Unsafe_broker_settings_are_refused(string extra, string message) =>
        Assert.Contains(message, Assert.Throws<ArgumentException>(() => Load(extra)).Message);
}

/// <summary>Public ports and the instance record go into etcd together or not at all.</summary>
public sealed class PortReservationTests : IAsyncLifetime
{
    private EtcdStore _store = null!;
    public Task InitializeAsync() { _store = TestEtcd.NewStore(out _); return Task.CompletedTask; }
    public async Task DisposeAsync() { await _store.DeletePrefixAsync(_store.Keys.Root + "/", CancellationToken.None); await _store.DisposeAsync(); }

    [Fact]
    public async Task A_transaction_etcd_refuses_as_too_large_leaves_no_port_and_no_counter()
    {
        var txn = new Txn().Absent(_store.Keys.Instance("big"));
        var ports = await new PortAllocator(_store).ReservePublicPortsAsync("big", [PortRole.Primary, PortRole.ReadOnly], 20000, 20009, txn, CancellationToken.None);
        Assert.Equal([20000, 20001], ports);
        // etcd's request limit is 1.5 MiB: this is what a provision with a huge context used to run into after taking its ports.
        txn.PutString(_store.Keys.Instance("big"), new string('x', 2 * 1024 * 1024));
        await Assert.ThrowsAsync<Grpc.Core.RpcException>(() => _store.TransactAsync(txn, CancellationToken.None));
        Assert.Empty(await _store.ListAsync<JsonNode>(_store.Keys.Ports, CancellationToken.None));
        Assert.Null(await _store.GetStringAsync(_store.Keys.PortCounter, CancellationToken.None));

        // The same claim, committed, takes both ports and moves the counter past them; the next one starts after them.
        var ok = new Txn();
        await new PortAllocator(_store).ReservePublicPortsAsync("small", [PortRole.Primary, PortRole.ReadOnly], 20000, 20009, ok, CancellationToken.None);
        Assert.True(await _store.TransactAsync(ok, CancellationToken.None));
        Assert.Equal(20002, (await _store.GetAsync<int>(_store.Keys.PortCounter, CancellationToken.None))!.Value);
        Assert.Equal(20002, await new PortAllocator(_store).AllocatePublicPortAsync("next", 20000, 20009, CancellationToken.None));
    }

    [Fact]
    public async Task A_claim_raced_by_another_allocation_fails_as_a_whole()
    {
        var txn = new Txn();
        await new PortAllocator(_store).ReservePublicPortsAsync("a", [PortRole.Primary], 21000, 21009, txn, CancellationToken.None);
        Assert.Equal(21000, await new PortAllocator(_store).AllocatePublicPortAsync("b", 21000, 21009, CancellationToken.None));
        Assert.False(await _store.TransactAsync(txn, CancellationToken.None));
        var owners = (await _store.ListAsync<PortRecord>(_store.Keys.Ports, CancellationToken.None)).Select(p => p.Value.InstanceId).ToList();
        Assert.Equal(["b"], owners);
    }
}

/// <summary>
/// Tenant isolation, input limits and the operator's credentials against a real broker on a real etcd (no cells:
/// provisions stay in progress).
/// </summary>
public sealed class BrokerHardeningTests(BrokerOnlyPlatform fixture) : IClassFixture<BrokerOnlyPlatform>
{
    private TestPlatform P => fixture.Platform;
    private static string NewId() => "h-" + Guid.NewGuid().ToString("N")[..10];

    private static string Provision(string org, string space, JsonObject? parameters = null, JsonObject? context = null) => new JsonObject
    {
        ["service_id"] = Catalog.ServiceId,
        ["plan_id"] = Catalog.SoloPlanId,
        ["organization_guid"] = org,
        ["space_guid"] = space,
        ["parameters"] = parameters ?? new JsonObject(),
        ["context"] = context ?? new JsonObject(),
    }.ToJsonString();

    /// <summary>Provisions (no cells: it stays in progress) and waits until its actor has said so and rests.</summary>
    private async Task ProvisionSettledAsync(string id, string body)
    {
        var (status, answer) = await P.SendAsync(HttpMethod.Put, $"/v2/service_instances/{id}?accepts_incomplete=true", body);
        Assert.True(status == 202, $"provision answered {status}: {answer.ToJsonString()}");
        await Eventually.UntilAsync(async () => ((string?)(await P.SendAsync(HttpMethod.Get, $"/v2/service_instances/{id}/last_operation")).Body["description"] ?? "").Contains("waiting for a cell"),
            TimeSpan.FromSeconds(15), $"instance {id} waiting for a cell");
    }

    private async Task<(int Status, JsonObject Body)> CloneAsync(string org, string space, string from)
    {
        var before = await fixture.EtcdDumpAsync();
        var result = await P.SendAsync(HttpMethod.Put, $"/v2/service_instances/{NewId()}?accepts_incomplete=true", Provision(org, space, new JsonObject { ["clone-from"] = from }));
        Assert.InRange(result.Item1, 400, 499);
        Assert.Equal(before, await fixture.EtcdDumpAsync());
        return result;
    }

    /// <summary>A deleted instance the cluster-data backup still holds (what `clone-from` and `recreate` start from).</summary>
    private async Task ArchiveDeletedAsync(string id, string org, string space, string name)
    {
        var record = new ClusterDataRecord
        {
            Instance = new InstanceRecord
            {
                Id = id, ServiceId = Catalog.ServiceId, PlanId = Catalog.SoloPlanId, OrganizationGuid = org, SpaceGuid = space,
                ContextJson = new JsonObject { ["instance_name"] = name }.ToJsonString(), Port = 1, NodeCount = 1,
                Superuser = new Credentials("dingo", "pw"), CreatedAt = DateTimeOffset.UtcNow, Desired = DesiredState.Absent,
            },
            DeletedAt = DateTimeOffset.UtcNow,
        };
        var objects = P.Settings.Backups!.Store.CreateStore();
        using var ms = new MemoryStream(JsonSerializer.SerializeToUtf8Bytes(record, Json.Options));
        await objects.PutAsync(ArchiveLayout.InstanceRecord(id), ms);
    }

    [Fact]
    public async Task Clone_from_another_spaces_live_or_deleted_instance_gets_the_same_400_as_one_that_never_existed()
    {
        var live = NewId();
        await ProvisionSettledAsync(live, Provision("org-a", "space-a", context: new JsonObject { ["instance_name"] = "orders" }));
        var deleted = NewId();
        await ArchiveDeletedAsync(deleted, "org-a", "space-a", "invoices");

        foreach (var (source, name) in new[] { (live, "orders"), (deleted, "invoices") })
        {
            // From the owner's space the source is found (and refused only because it has no backup yet).
            var (own, ownBody) = await CloneAsync("org-a", "space-a", source);
            Assert.Equal(422, own);
            Assert.Equal("NoBackup", (string?)ownBody["error"]);
            var (ownByName, _) = await CloneAsync("org-a", "space-a", name);
            Assert.Equal(422, ownByName);

            // From another space of the same organization, or another organization: exactly the "no such instance" answer.
            foreach (var (org, space) in new[] { ("org-a", "space-b"), ("org-b", "space-a"), ("org-b", "space-z") })
            {
                foreach (var reference in new[] { source, name })
                {
                    var unknown = reference == source ? NewId() : "no-such-name";
                    var (status, body) = await CloneAsync(org, space, reference);
                    var (nowhere, nowhereBody) = await CloneAsync(org, space, unknown);
                    Assert.Equal(400, status);
                    Assert.Equal(nowhere, status);
                    Assert.Equal((string?)nowhereBody["error"], (string?)body["error"]);
                    Assert.Equal(((string?)nowhereBody["description"])!.Replace(unknown, reference), (string?)body["description"]);
                }
            }
        }
    }

    [Fact]
    public async Task With_organization_scope_clone_from_reaches_other_spaces_of_the_organization_only()
    {
        var settings = P.Settings with { Broker = P.Settings.Broker with { CloneScope = CloneScopes.Organization } };
        var objects = settings.Backups!.Store.CreateStore();
        var recovery = new Recovery(P.Store, objects, settings, NullLogger<Recovery>.Instance);
        var deleted = NewId();
        await ArchiveDeletedAsync(deleted, "org-c", "space-c1", "ledger");

        var (_, sameSpace) = await recovery.ResolveCloneAsync(deleted, "org-c", "space-c1", null, CancellationToken.None);
        var (_, otherSpace) = await recovery.ResolveCloneAsync("ledger", "org-c", "space-c2", null, CancellationToken.None);
        var (_, otherOrg) = await recovery.ResolveCloneAsync(deleted, "org-d", "space-c1", null, CancellationToken.None);
        var (_, nowhere) = await recovery.ResolveCloneAsync("never-was", "org-d", "space-c1", null, CancellationToken.None);
        Assert.Equal("NoBackup", (string?)sameSpace!.Body["error"]);
        Assert.Equal("NoBackup", (string?)otherSpace!.Body["error"]);
        Assert.Equal(400, otherOrg!.Status);
        Assert.Equal(((string?)nowhere!.Body["description"])!.Replace("never-was", deleted), (string?)otherOrg.Body["description"]);

        // The default scope (space) refuses the neighbouring space.
        var (_, spaceScoped) = await new Recovery(P.Store, objects, P.Settings, NullLogger<Recovery>.Instance)
            .ResolveCloneAsync("ledger", "org-c", "space-c2", null, CancellationToken.None);
        Assert.Equal(400, spaceScoped!.Status);
    }

    [Fact]
    public async Task A_binding_is_reached_only_through_its_own_instance()
    {
        var a = NewId();
        var b = NewId();
        foreach (var id in new[] { a, b }) await ProvisionSettledAsync(id, Provision("org-a", "space-a"));
        // Instance a's binding, as a finished bind leaves it (a bind needs a running primary, which this platform has not).
        var bindingKey = P.Store.Keys.Binding(a, "bind-1");
        await P.Store.PutAsync(bindingKey, new BindingRecord
        {
            Id = "bind-1", InstanceId = a, ServiceId = Catalog.ServiceId, PlanId = Catalog.SoloPlanId,
            Role = new Credentials("b_secret", "secret-password"), CreatedAt = DateTimeOffset.UtcNow, State = BindingState.Ready,
        }, CancellationToken.None);
        var before = await P.Store.GetAsync<BindingRecord>(bindingKey, CancellationToken.None);

        var (own, ownBody) = await P.SendAsync(HttpMethod.Get, $"/v2/service_instances/{a}/service_bindings/bind-1");
        Assert.Equal(200, own);
        Assert.Equal("b_secret", (string?)ownBody["credentials"]!["username"]);

        var (other, otherBody) = await P.SendAsync(HttpMethod.Get, $"/v2/service_instances/{b}/service_bindings/bind-1");
        var (never, neverBody) = await P.SendAsync(HttpMethod.Get, $"/v2/service_instances/{b}/service_bindings/bind-2");
        Assert.Equal(404, other);
        Assert.Equal(never, other);
        Assert.Equal(((string?)neverBody["description"])!.Replace("bind-2", "bind-1"), (string?)otherBody["description"]);
        Assert.DoesNotContain("secret", otherBody.ToJsonString());

        var (unbind, _) = await P.SendAsync(HttpMethod.Delete, $"/v2/service_instances/{b}/service_bindings/bind-1?service_id={Catalog.ServiceId}&plan_id={Catalog.SoloPlanId}");
        Assert.Equal(410, unbind);
        Assert.Equal(before!.ModRevision, (await P.Store.GetAsync<BindingRecord>(bindingKey, CancellationToken.None))!.ModRevision);
    }

    private async Task<(int Status, JsonObject Body)> RawAsync(HttpMethod method, string path, HttpContent? content, string? auth = null)
    {
        using var http = new HttpClient { BaseAddress = new Uri(P.Settings.Broker.Url) };
        using var request = new HttpRequestMessage(method, path) { Content = content };
        request.Headers.Authorization = new AuthenticationHeaderValue("Basic", Convert.ToBase64String(Encoding.UTF8.GetBytes(auth ?? $"{TestPlatform.Username}:{TestPlatform.Password}")));
        request.Headers.Add("X-Broker-API-Version", "2.17");
        using var response = await http.SendAsync(request);
        var text = await response.Content.ReadAsStringAsync();
        return ((int)response.StatusCode, text.Length == 0 ? new JsonObject() : JsonNode.Parse(text) as JsonObject ?? new JsonObject());
    }

    /// <summary>A body of unknown length (chunked), so only Kestrel's own limit can stop it.</summary>
    private sealed class ChunkedContent(byte[] bytes) : HttpContent
    {
        protected override Task SerializeToStreamAsync(Stream stream, TransportContext? context) => stream.WriteAsync(bytes).AsTask();
        protected override bool TryComputeLength(out long length) { length = -1; return false; }
    }

    [Fact]
    public async Task Bodies_over_64_KiB_get_413_in_OSB_shape_whether_announced_or_chunked_and_change_nothing()
    {
        var before = await fixture.EtcdDumpAsync();
        var huge = Provision("org-a", "space-a", context: new JsonObject { ["pad"] = new string('x', 100 * 1024) });
        var (announced, announcedBody) = await RawAsync(HttpMethod.Put, $"/v2/service_instances/{NewId()}?accepts_incomplete=true", new StringContent(huge, Encoding.UTF8, "application/json"));
        Assert.Equal(413, announced);
        Assert.Equal("PayloadTooLarge", (string?)announcedBody["error"]);
        var (chunked, chunkedBody) = await RawAsync(HttpMethod.Put, $"/v2/service_instances/{NewId()}?accepts_incomplete=true", new ChunkedContent(Encoding.UTF8.GetBytes(huge)));
        Assert.Equal(413, chunked);
        Assert.Equal("PayloadTooLarge", (string?)chunkedBody["error"]);
        Assert.Equal(before, await fixture.EtcdDumpAsync());
    }

    [Theory]
    [InlineData("context", 20 * 1024)]
    [InlineData("parameters", 20 * 1024)]
    [InlineData("space_guid", 300)]
    [InlineData("organization_guid", 300)]
    public async Task An_oversized_field_is_refused_before_any_port_is_taken(string field, int size)
    {
        var body = JsonNode.Parse(Provision("org-a", "space-a"))!.AsObject();
        body[field] = field is "context" or "parameters" ? new JsonObject { ["pad"] = new string('x', size) } : new string('s', size);
        var before = await fixture.EtcdDumpAsync();
        var (status, json) = await P.SendAsync(HttpMethod.Put, $"/v2/service_instances/{NewId()}?accepts_incomplete=true", body.ToJsonString());
        Assert.Equal(400, status);
        Assert.Contains(field, (string?)json["description"]);
        Assert.Equal(before, await fixture.EtcdDumpAsync());
    }

    [Theory]
    [InlineData("/v2/service_instances/{0}", "a%2Fb")]
    [InlineData("/v2/service_instances/{0}", "%C3%BC")]
    [InlineData("/v2/service_instances/{0}", ".hidden")]
    [InlineData("/v2/service_instances/{0}", "a%01b")]
    [InlineData("/v2/service_instances/ok-1/service_bindings/{0}", "%2E%2Ehidden")]
    [InlineData("/admin/service_instances/{0}/recreate", "a%2Fb")]
    [InlineData("/admin/cells/{0}/drain", "%2E%2E%2Fetc")]
    public async Task An_unsafe_id_gets_a_clear_400_and_changes_nothing(string template, string id)
    {
        var before = await fixture.EtcdDumpAsync();
        var path = string.Format(System.Globalization.CultureInfo.InvariantCulture, template, id);
        var method = path.StartsWith("/admin", StringComparison.Ordinal) ? HttpMethod.Post : HttpMethod.Put;
        var auth = path.StartsWith("/admin", StringComparison.Ordinal) ? $"{TestPlatform.AdminUsername}:{TestPlatform.AdminPassword}" : null;
        var (status, body) = await RawAsync(method, path + (method == HttpMethod.Put ? "?accepts_incomplete=true" : ""), new StringContent(Provision("o", "s"), Encoding.UTF8, "application/json"), auth);
        Assert.Equal(400, status);
        Assert.Contains(" id ", (string?)body["description"]);
        Assert.Equal(before, await fixture.EtcdDumpAsync());
    }

    [Fact]
    public async Task Id_of_129_characters_is_refused_and_128_accepted()
    {
        var (tooLong, body) = await P.SendAsync(HttpMethod.Get, $"/v2/service_instances/{new string('a', 129)}");
        Assert.Equal(400, tooLong);
        Assert.Contains("at most 128", (string?)body["description"]);
        Assert.Equal(404, (await P.SendAsync(HttpMethod.Get, $"/v2/service_instances/{new string('a', 128)}")).Status);
    }

    [Theory]
    [InlineData("{\"service_id\":\"x\",\"service_id\":\"y\"}")]
    [InlineData("{\"service_id\":")]
    [InlineData("")]
    [InlineData("null")]
    [InlineData("{\"parameters\":[]}")]
    [InlineData("{\"context\":\"space\"}")]
    public async Task Malformed_or_mistyped_bodies_get_400(string body)
    {
        var before = await fixture.EtcdDumpAsync();
        var (status, json) = await P.SendAsync(HttpMethod.Put, $"/v2/service_instances/{NewId()}?accepts_incomplete=true", body);
        Assert.Equal(400, status);
        Assert.NotNull(json["description"]);
        Assert.Equal(before, await fixture.EtcdDumpAsync());
    }

    [Fact]
    public async Task Admin_API_takes_the_operators_credentials_only_and_they_do_not_open_OSB()
    {
        var osb = $"{TestPlatform.Username}:{TestPlatform.Password}";
        var admin = $"{TestPlatform.AdminUsername}:{TestPlatform.AdminPassword}";
        Assert.Equal(200, (await RawAsync(HttpMethod.Get, "/admin/backups/check", null, admin)).Status);
        var (osbOnAdmin, osbOnAdminBody) = await RawAsync(HttpMethod.Get, "/admin/backups/check", null, osb);
        Assert.Equal(403, osbOnAdmin);
        Assert.Contains("do not open the admin API", (string?)osbOnAdminBody["description"]);
        Assert.Equal(401, (await RawAsync(HttpMethod.Get, "/admin/backups/check", null, $"{TestPlatform.AdminUsername}:wrong")).Status);
        Assert.Equal(401, (await RawAsync(HttpMethod.Post, "/admin/rebuild", null, $"{TestPlatform.Username}:wrong")).Status);

        Assert.Equal(200, (await RawAsync(HttpMethod.Get, "/v2/catalog", null, osb)).Status);
        Assert.Equal(403, (await RawAsync(HttpMethod.Get, "/v2/catalog", null, admin)).Status);

        // The console's admin commands: configured credentials, or the file `dingo up` keeps.
        var settings = P.Settings with { DataDir = Directory.CreateTempSubdirectory("dingo-cli-").FullName };
        try
        {
            Assert.Equal(0, await Dingo.Cli.AdminCommands.RunAsync("store-check", [], settings, CancellationToken.None));
            var unset = settings with { Broker = settings.Broker with { AdminPassword = "" } };
            Assert.Equal(1, await Dingo.Cli.AdminCommands.RunAsync("store-check", [], unset, CancellationToken.None));
            await File.WriteAllTextAsync(Path.Combine(settings.DataDir, Dingo.Cli.Platform.AdminCredentialsFile), TestPlatform.AdminPassword);
            Assert.Equal(0, await Dingo.Cli.AdminCommands.RunAsync("store-check", [], unset, CancellationToken.None));
        }
        finally
        {
            Directory.Delete(settings.DataDir, recursive: true);
        }
    }
}

/// <summary>A broker with no admin password keeps /admin closed to everyone, the OSB credentials included.</summary>
public sealed class ClosedAdminApiTests
{
    [Fact]
    public async Task Without_an_admin_password_every_admin_request_is_refused()
    {
        await using var platform = await TestPlatform.StartAsync(cells: 0, TestPlatform.NewSettings(extra: "dingo.broker.admin-password = \"\""), ownsData: true);
        Assert.Equal("", platform.Settings.Broker.AdminPassword);
        using var http = new HttpClient { BaseAddress = new Uri(platform.Settings.Broker.Url) };
        foreach (var auth in new[] { $"{TestPlatform.Username}:{TestPlatform.Password}", $"{TestPlatform.AdminUsername}:", $"{TestPlatform.AdminUsername}:{TestPlatform.AdminPassword}" })
        {
            using var request = new HttpRequestMessage(HttpMethod.Post, "/admin/rebuild");
            request.Headers.Authorization = new AuthenticationHeaderValue("Basic", Convert.ToBase64String(Encoding.UTF8.GetBytes(auth)));
            using var response = await http.SendAsync(request);
            Assert.InRange((int)response.StatusCode, 401, 403);
        }
        Assert.Equal(HttpStatusCode.OK, (await platform.Http.GetAsync("/v2/catalog")).StatusCode);
    }
}
