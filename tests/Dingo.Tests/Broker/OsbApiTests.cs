using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json.Nodes;
using Dingo.Model;
using Dingo.Tests.Support;

namespace Dingo.Tests.Broker;

/// <summary>A platform with a broker and no cells: provisions stay in progress, which is what these tests need.</summary>
public sealed class BrokerOnlyPlatform : IAsyncLifetime
{
    public TestPlatform Platform { get; private set; } = null!;
    public async Task InitializeAsync() => Platform = await TestPlatform.StartAsync(cells: 0);
    public async Task DisposeAsync() => await Platform.DisposeAsync();

    /// <summary>
    /// Every key a request could change, with its revision: what a refused request must leave as it was. Left out: the
    /// platform's own bookkeeping, written whatever a request does: Akka members (process liveness), and the lost-cell duty
    /// a broker takes at its first sweep (fresh253: taken between a test's two reads, the broker having just started).
    /// </summary>
    public async Task<string> EtcdDumpAsync()
    {
        var store = Platform.Store;
        return string.Join("\n", (await store.ListAsync<JsonNode>(Platform.Settings.EtcdPrefix + "/", CancellationToken.None))
            .Where(v => !v.Key.StartsWith(store.Keys.AkkaMembers, StringComparison.Ordinal) && v.Key != store.Keys.AkkaFounder
                        && v.Key != store.Keys.LostCellDuty)
            .Select(v => v.Key + "@" + v.ModRevision));
    }
}

/// <summary>Every status-code path of the OSB API, against the real broker over HTTP and real etcd.</summary>
public sealed class OsbApiTests(BrokerOnlyPlatform fixture) : IClassFixture<BrokerOnlyPlatform>
{
    private TestPlatform P => fixture.Platform;
    private static string NewId() => "i-" + Guid.NewGuid().ToString("N")[..10];
    private static readonly string Q = $"service_id={Catalog.ServiceId}&plan_id={Catalog.SoloPlanId}";

    /// <summary>Sends a request and asserts that it changed nothing in etcd.</summary>
    private async Task<(int, JsonObject)> RejectedAsync(HttpMethod method, string path, string? body = null)
    {
        var before = await fixture.EtcdDumpAsync();
        var result = await P.SendAsync(method, path, body);
        Assert.InRange(result.Item1, 400, 499);
        Assert.Equal(before, await fixture.EtcdDumpAsync());
        Assert.NotNull(result.Item2["error"]);
        Assert.False(string.IsNullOrWhiteSpace((string?)result.Item2["description"]));
        return result;
    }

    private async Task<HttpStatusCode> RawAsync(HttpMethod method, string path, string? auth, string? version, string? body = null)
    {
        using var http = new HttpClient { BaseAddress = new Uri(P.Settings.Broker.Url) };
        using var request = new HttpRequestMessage(method, path);
        if (auth is not null) request.Headers.Authorization = new AuthenticationHeaderValue("Basic", Convert.ToBase64String(Encoding.UTF8.GetBytes(auth)));
        if (version is not null) request.Headers.TryAddWithoutValidation("X-Broker-API-Version", version);
        if (body is not null) request.Content = new StringContent(body, Encoding.UTF8, "application/json");
        using var response = await http.SendAsync(request);
        var json = JsonNode.Parse(await response.Content.ReadAsStringAsync());
        if ((int)response.StatusCode >= 400) Assert.NotNull(json?["description"]);
        return response.StatusCode;
    }

    /// <summary>Waits until the instance actor has written its "no cell" sentence and rests.</summary>
    private async Task SettledAsync(string id)
    {
        for (var i = 0; i < 50; i++)
        {
            var (_, last) = await P.SendAsync(HttpMethod.Get, $"/v2/service_instances/{id}/last_operation");
            if (((string?)last["description"] ?? "").Contains("waiting for a cell")) return;
            await Task.Delay(100);
        }
        throw new TimeoutException($"instance {id} did not settle");
    }

    [Fact]
    public async Task Catalog_lists_the_three_plans_with_retrievable_instances_and_bindings()
    {
        var (status, body) = await P.SendAsync(HttpMethod.Get, "/v2/catalog");
        Assert.Equal(200, status);
        var service = body["services"]![0]!;
        Assert.Equal(Catalog.ServiceId, (string?)service["id"]);
        Assert.Equal("dingo-postgresql", (string?)service["name"]);
        Assert.True((bool)service["instances_retrievable"]!);
        Assert.True((bool)service["bindings_retrievable"]!);
        Assert.True((bool)service["bindable"]!);
        var plans = service["plans"]!.AsArray().Select(p => ((string?)p!["id"], (string?)p["name"])).ToList();
        Assert.Equal([(Catalog.SoloPlanId, "solo"), (Catalog.ClusterPlanId, "cluster"), (Catalog.ClusterHaPlanId, "cluster-ha")], plans);
        Assert.True((bool)service["plan_updateable"]!);
    }

    [Fact]
    public async Task The_catalog_is_shaped_by_the_requested_API_version()
    {
        async Task<JsonObject> CatalogAsync(string version)
        {
            using var http = new HttpClient { BaseAddress = new Uri(P.Settings.Broker.Url) };
            using var request = new HttpRequestMessage(HttpMethod.Get, "/v2/catalog");
            request.Headers.Authorization = new AuthenticationHeaderValue("Basic", Convert.ToBase64String(Encoding.UTF8.GetBytes($"{TestPlatform.Username}:{TestPlatform.Password}")));
            request.Headers.TryAddWithoutValidation("X-Broker-API-Version", version);
            using var response = await http.SendAsync(request);
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            return JsonNode.Parse(await response.Content.ReadAsStringAsync())!["services"]![0]!.AsObject();
        }

        // 2.13 defines neither the fetch endpoints' flags nor a plan's own plan_updateable, polling limit or maintenance info.
        var old = await CatalogAsync("2.13");
        Assert.False(old.ContainsKey("instances_retrievable"));
        foreach (var plan in old["plans"]!.AsArray().Select(p => p!.AsObject()))
        {
            Assert.False(plan.ContainsKey("plan_updateable"));
            Assert.False(plan.ContainsKey("maintenance_info"));
            Assert.False(plan.ContainsKey("maximum_polling_duration"));
            Assert.Equal("http://json-schema.org/draft-04/schema#", (string?)plan["schemas"]!["service_instance"]!["create"]!["parameters"]!["$schema"]);
        }
        var latest = await CatalogAsync("2.17");
        Assert.True((bool)latest["instances_retrievable"]!);
        foreach (var plan in latest["plans"]!.AsArray().Select(p => p!.AsObject()))
        {
            Assert.Equal(Product.Version, (string?)plan["maintenance_info"]!["version"]);
            Assert.Equal((int)(P.Settings.Broker.ProvisionTimeout + TimeSpan.FromMinutes(1)).TotalSeconds, (int)plan["maximum_polling_duration"]!);
        }
    }

    [Fact]
    public async Task A_provision_for_another_maintenance_version_gets_422_and_changes_nothing()
    {
        var id = NewId();
        var body = JsonNode.Parse(TestPlatform.ProvisionBody())!.AsObject();
        body["maintenance_info"] = new JsonObject { ["version"] = "0.0.1" };
        var (status, json) = await RejectedAsync(HttpMethod.Put, $"/v2/service_instances/{id}?accepts_incomplete=true", body.ToJsonString());
        Assert.Equal(422, status);
        Assert.Equal("MaintenanceInfoConflict", (string?)json["error"]);
        body["maintenance_info"] = new JsonObject { ["version"] = 5 };
        Assert.Equal(400, (await RejectedAsync(HttpMethod.Put, $"/v2/service_instances/{id}?accepts_incomplete=true", body.ToJsonString())).Item1);

        body["maintenance_info"] = new JsonObject { ["version"] = Product.Version };
        var (accepted, _) = await P.SendAsync(HttpMethod.Put, $"/v2/service_instances/{id}?accepts_incomplete=true", body.ToJsonString());
        Assert.Equal(202, accepted);
        var record = await P.Store.GetAsync<InstanceRecord>(P.Store.Keys.Instance(id), CancellationToken.None);
        Assert.Equal(Product.Version, record!.Value.MaintenanceVersion);
        // The accepted provision's actor writes its progress for a moment: let it rest, or the next test's check that a
        // rejected request changed nothing in etcd sees that write.
        await SettledAsync(id);
    }

    [Theory]
    [InlineData(null)]
    [InlineData("test-broker:wrong")]
    [InlineData("someone:test-broker-password-0123456789")]
    public async Task Wrong_or_missing_credentials_get_401(string? auth)
    {
        Assert.Equal(HttpStatusCode.Unauthorized, await RawAsync(HttpMethod.Get, "/v2/catalog", auth, "2.17"));
    }

    [Theory]
    [InlineData(null)]
    [InlineData("")]
    [InlineData("2.12")]
    [InlineData("2.18")]
    [InlineData("3.0")]
    [InlineData("banana")]
    public async Task Missing_or_unsupported_API_version_gets_412(string? version)
    {
        Assert.Equal(HttpStatusCode.PreconditionFailed, await RawAsync(HttpMethod.Get, "/v2/catalog", $"{TestPlatform.Username}:{TestPlatform.Password}", version));
    }

    [Theory]
    [InlineData("2.13")]
    [InlineData("2.14")]
    [InlineData("2.15")]
    [InlineData("2.16")]
    [InlineData("2.17")]
    public async Task Supported_API_versions_are_accepted(string version)
    {
        Assert.Equal(HttpStatusCode.OK, await RawAsync(HttpMethod.Get, "/v2/catalog", $"{TestPlatform.Username}:{TestPlatform.Password}", version));
    }

    [Fact]
    public async Task The_version_is_checked_before_the_body_is_read()
    {
        var before = await fixture.EtcdDumpAsync();
        var status = await RawAsync(HttpMethod.Put, $"/v2/service_instances/{NewId()}?accepts_incomplete=true",
            $"{TestPlatform.Username}:{TestPlatform.Password}", null, "{this is not json");
        Assert.Equal(HttpStatusCode.PreconditionFailed, status);
        Assert.Equal(before, await fixture.EtcdDumpAsync());
    }

    [Fact]
    public async Task Provision_without_accepts_incomplete_gets_422_AsyncRequired()
    {
        var (_, body) = await RejectedAsync(HttpMethod.Put, $"/v2/service_instances/{NewId()}", TestPlatform.ProvisionBody());
        Assert.Equal("AsyncRequired", (string?)body["error"]);
    }

    [Theory]
    [InlineData("service_id")]
    [InlineData("plan_id")]
    [InlineData("organization_guid")]
    [InlineData("space_guid")]
    public async Task Provision_missing_a_required_field_gets_400(string field)
    {
        var body = JsonNode.Parse(TestPlatform.ProvisionBody())!.AsObject();
        body.Remove(field);
        var (status, json) = await RejectedAsync(HttpMethod.Put, $"/v2/service_instances/{NewId()}?accepts_incomplete=true", body.ToJsonString());
        Assert.Equal(400, status);
        Assert.Contains(field, (string?)json["description"]);
    }

    [Theory]
    [InlineData("{\"service_id\":\"nope\",\"plan_id\":\"b96d0936-e423-11e5-accb-93d374e93368\",\"organization_guid\":\"o\",\"space_guid\":\"s\"}")]
    [InlineData("{\"service_id\":\"beb5973c-e1b2-11e5-a736-c7c0b526363d\",\"plan_id\":\"nope\",\"organization_guid\":\"o\",\"space_guid\":\"s\"}")]
    [InlineData("{not json")]
    [InlineData("[1,2]")]
    [InlineData("{\"service_id\":\"beb5973c-e1b2-11e5-a736-c7c0b526363d\",\"plan_id\":\"b96d0936-e423-11e5-accb-93d374e93368\",\"organization_guid\":\"o\",\"space_guid\":\"s\",\"parameters\":{\"colour\":\"red\"}}")]
    [InlineData("{\"service_id\":\"beb5973c-e1b2-11e5-a736-c7c0b526363d\",\"plan_id\":\"b96d0936-e423-11e5-accb-93d374e93368\",\"organization_guid\":\"o\",\"space_guid\":\"s\",\"parameters\":{\"cells\":\"cell-1\"}}")]
    [InlineData("{\"service_id\":\"beb5973c-e1b2-11e5-a736-c7c0b526363d\",\"plan_id\":\"6e0b4f8a-3c1d-4b7e-9a52-d1f0c2e8b7a4\",\"organization_guid\":\"o\",\"space_guid\":\"s\",\"parameters\":{\"cells\":[\"cell-1\",\"cell-2\"]}}")]
    [InlineData("{\"service_id\":\"beb5973c-e1b2-11e5-a736-c7c0b526363d\",\"plan_id\":\"6e0b4f8a-3c1d-4b7e-9a52-d1f0c2e8b7a4\",\"organization_guid\":\"o\",\"space_guid\":\"s\",\"parameters\":{\"node-count\":2}}")]
    [InlineData("{\"service_id\":\"beb5973c-e1b2-11e5-a736-c7c0b526363d\",\"plan_id\":\"1545e30e-6dc3-11e5-826a-6c4008a663f0\",\"organization_guid\":\"o\",\"space_guid\":\"s\",\"parameters\":{\"node-count\":\"three\"}}")]
    [InlineData("{\"service_id\":42,\"plan_id\":\"b96d0936-e423-11e5-accb-93d374e93368\",\"organization_guid\":\"o\",\"space_guid\":\"s\"}")]
    public async Task Provision_with_unknown_service_plan_parameters_or_bad_JSON_gets_400(string body)
    {
        var (status, _) = await RejectedAsync(HttpMethod.Put, $"/v2/service_instances/{NewId()}?accepts_incomplete=true", body);
        Assert.Equal(400, status);
    }

    [Fact]
    public async Task Provision_is_asynchronous_resends_get_202_and_conflicts_get_409()
    {
        var id = NewId();
        var (status, body) = await P.SendAsync(HttpMethod.Put, $"/v2/service_instances/{id}?accepts_incomplete=true", TestPlatform.ProvisionBody());
        Assert.Equal(202, status);
        var operation = (string?)body["operation"];
        Assert.False(string.IsNullOrEmpty(operation));

        var (again, againBody) = await P.SendAsync(HttpMethod.Put, $"/v2/service_instances/{id}?accepts_incomplete=true", TestPlatform.ProvisionBody());
        Assert.Equal(202, again);
        Assert.Equal(operation, (string?)againBody["operation"]);

        // With no cell registered, last_operation says why it waits; fetch says it is not there yet.
        // (Waiting for that sentence also lets the actor settle before the checks that nothing changes.)
        JsonObject last = new();
        for (var i = 0; i < 50 && !((string?)last["description"] ?? "").Contains("waiting for a cell"); i++)
        {
            (var lastStatus, last) = await P.SendAsync(HttpMethod.Get, $"/v2/service_instances/{id}/last_operation?operation={operation}");
            Assert.Equal(200, lastStatus);
            Assert.Equal("in progress", (string?)last["state"]);
            await Task.Delay(100);
        }
        Assert.Contains("waiting for a cell: no cell is registered", (string?)last["description"]);
        var other = JsonNode.Parse(TestPlatform.ProvisionBody())!.AsObject();
        other["space_guid"] = "another-space";
        var (conflict, _) = await RejectedAsync(HttpMethod.Put, $"/v2/service_instances/{id}?accepts_incomplete=true", other.ToJsonString());
        Assert.Equal(409, conflict);
        // The id is taken: other attributes are a conflict even when they are invalid (OSB answers 409 before judging them).
        var invalid = JsonNode.Parse(TestPlatform.ProvisionBody())!.AsObject();
        invalid["parameters"] = new JsonObject { ["colour"] = "red" };
        Assert.Equal(409, (await RejectedAsync(HttpMethod.Put, $"/v2/service_instances/{id}?accepts_incomplete=true", invalid.ToJsonString())).Item1);
        invalid["plan_id"] = "no-such-plan";
        Assert.Equal(409, (await RejectedAsync(HttpMethod.Put, $"/v2/service_instances/{id}?accepts_incomplete=true", invalid.ToJsonString())).Item1);

        var (fetch, _) = await P.SendAsync(HttpMethod.Get, $"/v2/service_instances/{id}");
        Assert.Equal(404, fetch);

        // Binding before the instance is ready: 422, and nothing stored.
        var bind = new JsonObject { ["service_id"] = Catalog.ServiceId, ["plan_id"] = Catalog.SoloPlanId }.ToJsonString();
        var (bindStatus, bindBody) = await RejectedAsync(HttpMethod.Put, $"/v2/service_instances/{id}/service_bindings/b1", bind);
        Assert.Equal(422, bindStatus);
        Assert.Equal("ConcurrencyError", (string?)bindBody["error"]);

        // Update while provisioning: 422 ConcurrencyError.
        var (updateStatus, _) = await RejectedAsync(HttpMethod.Patch, $"/v2/service_instances/{id}?accepts_incomplete=true",
            new JsonObject { ["service_id"] = Catalog.ServiceId }.ToJsonString());
        Assert.Equal(422, updateStatus);

        // Deprovision during provisioning stops it cleanly: 202, re-sent 202 with the same operation, then succeeded.
        var (del, delBody) = await P.SendAsync(HttpMethod.Delete, $"/v2/service_instances/{id}?accepts_incomplete=true&{Q}");
        Assert.Equal(202, del);
        var final = await P.WaitForOperationAsync(id, TimeSpan.FromSeconds(30));
        Assert.Equal("succeeded", (string?)final["state"]);
        var (gone, _) = await P.SendAsync(HttpMethod.Delete, $"/v2/service_instances/{id}?accepts_incomplete=true&{Q}");
        Assert.Equal(410, gone);
        Assert.Null(await P.Store.GetAsync<InstanceRecord>(P.Store.Keys.Instance(id), CancellationToken.None));
        _ = delBody;
    }

    [Fact]
    public async Task Last_operation_and_fetch_of_an_unknown_instance_get_404()
    {
        var id = NewId();
        var (last, lastBody) = await P.SendAsync(HttpMethod.Get, $"/v2/service_instances/{id}/last_operation");
        Assert.Equal(404, last);
        Assert.NotNull(lastBody["description"]);
        var (fetch, _) = await P.SendAsync(HttpMethod.Get, $"/v2/service_instances/{id}");
        Assert.Equal(404, fetch);
        var (binding, _) = await P.SendAsync(HttpMethod.Get, $"/v2/service_instances/{id}/service_bindings/b1");
        Assert.Equal(404, binding);
    }

    [Fact]
    public async Task Deprovision_paths_410_400_422()
    {
        var id = NewId();
        var (gone, _) = await RejectedAsync(HttpMethod.Delete, $"/v2/service_instances/{id}?accepts_incomplete=true&{Q}");
        Assert.Equal(410, gone);
        var (missing, _) = await RejectedAsync(HttpMethod.Delete, $"/v2/service_instances/{id}?accepts_incomplete=true&plan_id={Catalog.SoloPlanId}");
        Assert.Equal(400, missing);
        var (created, _) = await P.SendAsync(HttpMethod.Put, $"/v2/service_instances/{id}?accepts_incomplete=true", TestPlatform.ProvisionBody());
        Assert.Equal(202, created);
        await SettledAsync(id);
        var (sync, syncBody) = await RejectedAsync(HttpMethod.Delete, $"/v2/service_instances/{id}?{Q}");
        Assert.Equal(422, sync);
        Assert.Equal("AsyncRequired", (string?)syncBody["error"]);
        var (del, _) = await P.SendAsync(HttpMethod.Delete, $"/v2/service_instances/{id}?accepts_incomplete=true&{Q}");
        Assert.Equal(202, del);
        await P.WaitForOperationAsync(id, TimeSpan.FromSeconds(30));
    }

    [Fact]
    public async Task Update_paths_422_and_404()
    {
        var body = new JsonObject { ["service_id"] = Catalog.ServiceId, ["parameters"] = new JsonObject() }.ToJsonString();
        var (unknown, _) = await RejectedAsync(HttpMethod.Patch, $"/v2/service_instances/{NewId()}?accepts_incomplete=true", body);
        Assert.Equal(404, unknown);
        var (sync, syncBody) = await RejectedAsync(HttpMethod.Patch, $"/v2/service_instances/{NewId()}", body);
        Assert.Equal(422, sync);
        Assert.Equal("AsyncRequired", (string?)syncBody["error"]);
        var (noService, _) = await RejectedAsync(HttpMethod.Patch, $"/v2/service_instances/{NewId()}?accepts_incomplete=true", "{}");
        Assert.Equal(400, noService);
    }

    [Fact]
    public async Task Bind_and_unbind_paths_on_unknown_things()
    {
        var bind = new JsonObject { ["service_id"] = Catalog.ServiceId, ["plan_id"] = Catalog.SoloPlanId }.ToJsonString();
        var (unknownInstance, _) = await RejectedAsync(HttpMethod.Put, $"/v2/service_instances/{NewId()}/service_bindings/b1", bind);
        Assert.Equal(404, unknownInstance);
        var (noIds, _) = await RejectedAsync(HttpMethod.Put, $"/v2/service_instances/{NewId()}/service_bindings/b1", "{}");
        Assert.Equal(400, noIds);
        var (unbindUnknown, _) = await RejectedAsync(HttpMethod.Delete, $"/v2/service_instances/{NewId()}/service_bindings/b1?{Q}");
        Assert.Equal(410, unbindUnknown);
        var (unbindNoParams, _) = await RejectedAsync(HttpMethod.Delete, $"/v2/service_instances/{NewId()}/service_bindings/b1");
        Assert.Equal(400, unbindNoParams);
    }
}

/// <summary>The instance quota refuses provisioning past the limit with a clear error and changes nothing.</summary>
public sealed class QuotaTests
{
    [Fact]
    public async Task Provisioning_over_the_quota_is_refused_and_stores_nothing()
    {
        await using var platform = await TestPlatform.StartAsync(cells: 0, TestPlatform.NewSettings(quota: 2), ownsData: true);
        for (var i = 0; i < 2; i++)
        {
            var (ok, _) = await platform.SendAsync(HttpMethod.Put, $"/v2/service_instances/q-{i}?accepts_incomplete=true", TestPlatform.ProvisionBody());
            Assert.Equal(202, ok);
        }
        // Every key but the Akka member registry (process liveness, not request state).
        async Task<int> CountAsync() => (await platform.Store.ListAsync<JsonNode>(platform.Settings.EtcdPrefix + "/", CancellationToken.None))
            .Count(v => !v.Key.StartsWith(platform.Settings.EtcdPrefix + "/akka/", StringComparison.Ordinal));
        var before = await CountAsync();
        var (status, body) = await platform.SendAsync(HttpMethod.Put, "/v2/service_instances/q-2?accepts_incomplete=true", TestPlatform.ProvisionBody());
        Assert.Equal(422, status);
        Assert.Equal("QuotaExceeded", (string?)body["error"]);
        Assert.Contains("quota of 2", (string?)body["description"]);
        Assert.Equal(before, await CountAsync());

        // Deleting one frees a place.
        var (del, _) = await platform.SendAsync(HttpMethod.Delete, $"/v2/service_instances/q-0?accepts_incomplete=true&service_id={Catalog.ServiceId}&plan_id={Catalog.SoloPlanId}");
        Assert.Equal(202, del);
        await platform.WaitForOperationAsync("q-0", TimeSpan.FromSeconds(30));
        var (now, _) = await platform.SendAsync(HttpMethod.Put, "/v2/service_instances/q-2?accepts_incomplete=true", TestPlatform.ProvisionBody());
        Assert.Equal(202, now);
    }
}
