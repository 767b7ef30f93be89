using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using System.Xml.Linq;
using Dingo.Broker;
using Dingo.Broker.Osb;
using Dingo.Model;
using Dingo.Tests.Support;

namespace Dingo.Tests.Broker;

/// <summary>
/// The catalog without a server: each OSB version gets only the fields it defines, the maintenance version is the
/// product's, and the parameter schemas (read by a real JSON Schema draft-04 validator, NJsonSchema) accept and refuse
/// exactly what the broker's own checks accept and refuse.
/// </summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed partial class CatalogSchemaTests
{
    private static readonly TimeSpan Polling = TimeSpan.FromMinutes(6);

    // What each version's spec defines for the service offering and the plan objects (its release notes, checked
    // against each version's spec.md): 2.13 the base, 2.14 the fetch endpoints, 2.15 context updates, a plan's own
    // plan_updateable, the polling limit and maintenance info; 2.16 the maintenance description.
    private static readonly string[] Service213 = ["id", "name", "description", "tags", "requires", "bindable", "metadata", "dashboard_client", "plan_updateable", "plans"];
    private static readonly string[] Plan213 = ["id", "name", "description", "metadata", "free", "bindable", "schemas"];

    private static (HashSet<string> Service, HashSet<string> Plan, HashSet<string> Maintenance) Defined(OsbVersion v)
    {
        var service = new HashSet<string>(Service213);
        var plan = new HashSet<string>(Plan213);
        var maintenance = new HashSet<string>();
        if (v.AtLeast(2, 14)) service.UnionWith(["instances_retrievable", "bindings_retrievable"]);
        if (v.AtLeast(2, 15))
        {
            service.Add("allow_context_updates");
            plan.UnionWith(["plan_updateable", "maximum_polling_duration", "maintenance_info"]);
            maintenance.Add("version");
        }
        if (v.AtLeast(2, 16)) maintenance.Add("description");
        return (service, plan, maintenance);
    }

    [Theory]
    [InlineData("2.13")]
    [InlineData("2.14")]
    [InlineData("2.15")]
    [InlineData("2.16")]
    [InlineData("2.17")]
    public void Each_version_gets_only_the_fields_it_defines(string text)
    {
        var version = OsbVersion.Parse(text)!.Value;
        var (service, plan, maintenance) = Defined(version);
        var catalog = OsbCatalog.Json(version, Polling);
        var offering = Assert.Single(catalog["services"]!.AsArray())!.AsObject();
        Assert.All(offering.Select(kv => kv.Key), key => Assert.Contains(key, service));
        Assert.Equal(version.AtLeast(2, 14), offering.ContainsKey("bindings_retrievable"));
        var plans = offering["plans"]!.AsArray().Select(p => p!.AsObject()).ToList();
        Assert.Equal(Catalog.Plans.Select(p => p.Id), plans.Select(p => (string?)p["id"]));
        foreach (var p in plans)
        {
            Assert.All(p.Select(kv => kv.Key), key => Assert.Contains(key, plan));
            Assert.NotNull(p["schemas"]);
            if (!version.AtLeast(2, 15))
            {
                Assert.False(p.ContainsKey("plan_updateable"));
                Assert.False(p.ContainsKey("maintenance_info"));
                continue;
            }
            Assert.Equal(360, (int)p["maximum_polling_duration"]!);
            var info = p["maintenance_info"]!.AsObject();
            Assert.Equal(maintenance.Order(), info.Select(kv => kv.Key).Order());
            Assert.Equal(Product.Version, (string?)info["version"]);
        }
    }

    [Fact]
    public void The_maintenance_version_is_the_products_a_semantic_version_from_the_build_props()
    {
        Assert.Matches(SemVer(), Product.Version);
        var props = XDocument.Load(Path.Combine(TestPlatform.RepoRoot(), "Directory.Build.props"));
        var declared = props.Descendants("Version").Single().Value;
        Assert.Equal(declared, Product.Version);
    }

    [Theory]
    [InlineData("2.13", true)]
    [InlineData("2.17", true)]
    [InlineData("2.12", false)]
    [InlineData("2.18", false)]
    [InlineData("3.0", false)]
    public void Supported_versions_are_2_13_to_2_17(string text, bool supported) =>
        Assert.Equal(supported, OsbVersion.Parse(text)!.Value.Supported);

    [Theory]
    [InlineData("")]
    [InlineData("2")]
    [InlineData("2.")]
    [InlineData(".17")]
    [InlineData("2.17.1")]
    [InlineData("v2.17")]
    [InlineData("2.17 ")]
    [InlineData("99999999999.1")]
    public void Malformed_versions_do_not_parse(string text) => Assert.Null(OsbVersion.Parse(text));

    [Fact]
    public void Every_schema_is_draft_04_self_contained_and_small()
    {
        foreach (var plan in Catalog.Plans)
        {
            var schemas = OsbCatalog.Schemas(plan);
            foreach (var path in new[] { "service_instance.create", "service_instance.update", "service_binding.create" })
            {
                var parameters = Node(schemas, path)["parameters"]!;
                Assert.Equal(OsbCatalog.SchemaDialect, (string?)parameters["$schema"]);
                var text = parameters.ToJsonString();
                Assert.DoesNotContain("$ref", text, StringComparison.Ordinal);
                Assert.True(text.Length < 64 * 1024);
            }
            // The schemas name exactly the parameters the broker's checks know.
            Assert.Equal(OsbCatalog.ProvisionParameters.Order(), Node(schemas, "service_instance.create")["parameters"]!["properties"]!.AsObject().Select(kv => kv.Key).Order());
            Assert.Equal(OsbCatalog.UpdateParameters.Order(), Node(schemas, "service_instance.update")["parameters"]!["properties"]!.AsObject().Select(kv => kv.Key).Order());
        }
    }

    // Requests whose parameters the schema and the broker must judge alike (true: accepted). What the schema cannot say
    // — a point in time in the future, a clone source that exists in this space — the broker checks when it acts.
    public static TheoryData<string, string, string, bool> Cases() => new()
    {
        { "provision", "cluster-ha", """{}""", true },
        { "provision", "cluster-ha", """{"node-count": 3}""", true },
        { "provision", "cluster-ha", """{"node-count": 7}""", true },
        { "provision", "cluster-ha", """{"node-count": 2}""", false },
        { "provision", "cluster-ha", """{"node-count": 8}""", false },
        { "provision", "solo", """{"node-count": 1}""", true },
        { "provision", "solo", """{"node-count": 0}""", false },
        { "provision", "cluster", """{"node-count": "2"}""", false },
        { "provision", "cluster", """{"node-count": 2.5}""", false },
        { "provision", "cluster", """{"cells": ["cell-1", "cell-2"]}""", true },
        { "provision", "cluster", """{"cells": []}""", true },
        { "provision", "cluster", """{"cells": "cell-1"}""", false },
        { "provision", "cluster", """{"cells": [1, 2]}""", false },
        { "provision", "cluster", """{"cells": [".hidden", "cell-2"]}""", false },
        { "provision", "cluster", """{"cells": ["../etc", "cell-2"]}""", false },
        { "provision", "cluster", """{"cells": ["cell 1", "cell-2"]}""", false },
        { "provision", "cluster", "{\"cells\": [\"" + new string('c', 128) + "\"]}", true },
        { "provision", "cluster", "{\"cells\": [\"" + new string('c', 129) + "\"]}", false },
        { "provision", "cluster", "{\"cells\": [" + string.Join(',', Enumerable.Range(1, 16).Select(i => $"\"c{i}\"")) + "]}", true },
        { "provision", "cluster", "{\"cells\": [" + string.Join(',', Enumerable.Range(1, 17).Select(i => $"\"c{i}\"")) + "]}", false },
        { "provision", "solo", """{"clone-from": "my-db"}""", true },
        { "provision", "solo", """{"clone-from": ""}""", false },
        { "provision", "solo", """{"clone-from": "   "}""", false },
        { "provision", "solo", """{"clone-from": 7}""", false },
        { "provision", "solo", "{\"clone-from\": \"" + new string('x', 256) + "\"}", true },
        { "provision", "solo", "{\"clone-from\": \"" + new string('x', 257) + "\"}", false },
        { "provision", "solo", """{"clone-from": "my-db", "point-in-time": "2026-11-25T17:30:00Z"}""", true },
        { "provision", "solo", """{"clone-from": "my-db", "point-in-time": "2026-11-25T17:30:00+01:00"}""", true },
        { "provision", "solo", """{"clone-from": "my-db", "point-in-time": "yesterday"}""", false },
        { "provision", "solo", """{"clone-from": "my-db", "point-in-time": 1764091800}""", false },
        { "provision", "solo", """{"point-in-time": "2026-11-25T17:30:00Z"}""", false },
        { "provision", "solo", """{"size": "large"}""", false },
        { "provision", "solo", """{"node-count": 1, "shared_buffers": "1GB"}""", false },
        { "provision", "solo", """{"store-sync": true}""", true },
        { "provision", "cluster-ha", """{"store-sync": false, "node-count": 3}""", true },
        { "provision", "solo", """{"store-sync": "true"}""", false },
        { "provision", "solo", """{"store-sync": 1}""", false },
        { "provision", "solo", """{"store-sync": null}""", false },
        { "update", "cluster", """{"store-sync": true}""", true },
        { "update", "cluster", """{"store-sync": "yes"}""", false },
        { "update", "cluster", """{"node-count": 3}""", true },
        { "update", "cluster", """{"node-count": 1}""", false },
        { "update", "cluster", """{"cells": ["cell-1", "cell-3"]}""", true },
        { "update", "cluster", """{"clone-from": "my-db"}""", false },
        { "update", "cluster", """{"point-in-time": "2026-11-25T17:30:00Z"}""", false },
        { "bind", "cluster", """{}""", true },
        { "bind", "cluster", """{"role": "admin"}""", false },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task The_schema_and_the_broker_judge_parameters_alike(string request, string planName, string parameters, bool accepted)
    {
        var plan = Catalog.Plans.Single(p => p.Name == planName);
        var path = request switch { "provision" => "service_instance.create", "update" => "service_instance.update", _ => "service_binding.create" };
        var schema = await NJsonSchema.JsonSchema.FromJsonAsync(Node(OsbCatalog.Schemas(plan), path)["parameters"]!.ToJsonString());
        var schemaErrors = schema.Validate(parameters);
        Assert.True(accepted == (schemaErrors.Count == 0),
            $"schema: {(schemaErrors.Count == 0 ? "accepted" : string.Join("; ", schemaErrors.Select(e => $"{e.Path} {e.Kind}")))}");

        var canonical = CanonicalJson.Of(JsonNode.Parse(parameters));
        var refusal = request == "bind"
            ? BindingService.ValidateParameters(canonical)
            : InstanceService.ValidateParameters(canonical, plan, provisioning: request == "provision", Now);
        var broker = (string?)refusal?.Body["description"];
        Assert.True(accepted == (broker is null), $"broker: {broker ?? "accepted"}");
    }

    private static readonly DateTimeOffset Now = new(2026, 12, 6, 5, 0, 0, TimeSpan.Zero);

    [Theory]
    // a point in time the schema accepts; the broker refuses one after its own clock
    [InlineData("2026-12-06T04:59:59Z", true)]
    [InlineData("2026-12-06T05:00:00Z", true)]
    [InlineData("2026-12-06T05:00:01Z", false)]
    [InlineData("2026-12-06T06:00:00+01:00", true)]   // the same instant as 05:00Z
    [InlineData("2026-12-06T06:00:01+01:00", false)]
    public void A_point_in_time_after_now_is_refused(string pointInTime, bool accepted)
    {
        var parameters = CanonicalJson.Of(JsonNode.Parse($$"""{"clone-from": "my-db", "point-in-time": "{{pointInTime}}"}"""));
        var refusal = InstanceService.ValidateParameters(parameters, Catalog.Plans.Single(p => p.Name == "solo"), provisioning: true, Now);
        Assert.Equal(accepted, refusal is null);
        if (!accepted) Assert.Contains("is in the future", (string)refusal!.Body["description"]!, StringComparison.Ordinal);
    }

    private static JsonNode Node(JsonNode root, string dotted) =>
        dotted.Split('.').Aggregate(root, (node, key) => node[key] ?? throw new KeyNotFoundException(dotted));

    // semver.org's regular expression for a version without leading zeros, with optional pre-release and build parts.
    [GeneratedRegex(@"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")]
    private static partial Regex SemVer();
}
