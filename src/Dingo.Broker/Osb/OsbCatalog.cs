using System.Text.Json.Nodes;
using Dingo.Model;

namespace Dingo.Broker.Osb;

/// <summary>
/// The catalog (`GET /v2/catalog`), shaped by the API version the platform asked for: a field appears only from the
/// version that defines it, so an OSB 2.13 platform validating the answer against its own schema finds nothing it does
/// not know. Each plan carries JSON Schemas (draft-04, which every platform must read) of the parameters provision,
/// update and bind accept; `InstanceService` and `BindingService` refuse with a 400 what the schemas refuse
/// (`CatalogSchemaTests` checks both against the same table of requests).
/// </summary>
public static class OsbCatalog
{
    public const string SchemaDialect = "http://json-schema.org/draft-04/schema#";

    /// <summary>Parameters a provision accepts (`ValidateParameters` in InstanceService reads the same names).</summary>
    public static readonly IReadOnlyList<string> ProvisionParameters = ["cells", "node-count", "clone-from", "point-in-time", Dingo.Ha.SynchronousCommit.Parameter];
    /// <summary>Parameters an update accepts.</summary>
    public static readonly IReadOnlyList<string> UpdateParameters = ["cells", "node-count", Dingo.Ha.SynchronousCommit.Parameter];

    /// <param name="version">the request's X-Broker-API-Version</param>
    /// <param name="maximumPollingDuration">how long a platform should poll an operation: the broker's own operation
    /// timeout plus a margin, so the broker reports an operation failed before a platform gives up on it</param>
    public static JsonObject Json(OsbVersion version, TimeSpan maximumPollingDuration)
    {
        var service = new JsonObject
        {
            ["id"] = Catalog.ServiceId,
            ["name"] = Catalog.ServiceName,
            ["description"] = "Dedicated PostgreSQL 15, reachable at one address for life, backed by etcd-decided leadership",
            ["bindable"] = true,
        };
        // 2.14: fetching an instance and a binding.
        if (version.AtLeast(2, 14))
        {
            service["instances_retrievable"] = true;
            service["bindings_retrievable"] = true;
        }
        // 2.15: context updates (this broker does not act on them: a changed org or space name changes nothing here).
        if (version.AtLeast(2, 15)) service["allow_context_updates"] = false;
        service["plan_updateable"] = true;
        service["tags"] = new JsonArray("postgresql", "postgresql15", "relational");
        service["metadata"] = new JsonObject
        {
            ["displayName"] = "Dingo PostgreSQL",
            ["providerDisplayName"] = "Dingo",
            ["longDescription"] = "Each instance is a dedicated PostgreSQL cluster on Dingo cells, with a stable host:port through the routing mesh.",
        };
        service["plans"] = new JsonArray(Catalog.Plans.Select(p => (JsonNode)PlanJson(p, version, maximumPollingDuration)).ToArray());
        return new JsonObject { ["services"] = new JsonArray(service) };
    }

    private static JsonObject PlanJson(Plan p, OsbVersion version, TimeSpan maximumPollingDuration)
    {
        var plan = new JsonObject
        {
            ["id"] = p.Id,
            ["name"] = p.Name,
            ["description"] = p.Description,
            ["free"] = true,
            ["bindable"] = true,
            ["metadata"] = new JsonObject
            {
                ["displayName"] = p.Name,
                ["bullets"] = new JsonArray("PostgreSQL 15", $"{p.NodeCount} node(s)" + (p.NodeCount > 1 ? " in different zones" : ""),
                    p.Synchronous ? "Synchronous replication: no acknowledged commit lost" : p.NodeCount > 1 ? "Asynchronous replication, failover in seconds" : "Restarted in place when it fails",
                    "Dedicated login role per binding"),
            },
            ["schemas"] = Schemas(p),
        };
        // 2.15: a plan's own plan_updateable, the polling limit and maintenance information; 2.16: its description.
        if (version.AtLeast(2, 15))
        {
            plan["plan_updateable"] = true;
            plan["maximum_polling_duration"] = (int)Math.Ceiling(maximumPollingDuration.TotalSeconds);
            var maintenance = new JsonObject { ["version"] = Product.Version };
            if (version.AtLeast(2, 16))
                maintenance["description"] = $"Dingo {Product.Version}: nodes run on cells of this version. Applying it changes nothing in the database and costs no downtime.";
            plan["maintenance_info"] = maintenance;
        }
        return plan;
    }

    /// <summary>The plan's parameter schemas: what provision, update and bind accept, and nothing else.</summary>
    public static JsonObject Schemas(Plan plan) => new()
    {
        ["service_instance"] = new JsonObject
        {
            ["create"] = new JsonObject { ["parameters"] = InstanceParameters(plan, provisioning: true) },
            ["update"] = new JsonObject { ["parameters"] = InstanceParameters(plan, provisioning: false) },
        },
        ["service_binding"] = new JsonObject
        {
            ["create"] = new JsonObject
            {
                ["parameters"] = new JsonObject
                {
                    ["$schema"] = SchemaDialect,
                    ["description"] = "A binding takes no parameters: each is its own login role with the same rights.",
                    ["type"] = "object",
                    ["properties"] = new JsonObject(),
                    ["additionalProperties"] = false,
                },
            },
        },
    };

    private static JsonObject InstanceParameters(Plan plan, bool provisioning)
    {
        var properties = new JsonObject
        {
            ["node-count"] = new JsonObject
            {
                ["description"] = $"How many PostgreSQL nodes, one per cell ({plan.Name}: {plan.NodeCount} unless given).",
                ["type"] = "integer",
                ["minimum"] = plan.MinNodes,
                ["maximum"] = Catalog.MaxNodes,
            },
            ["cells"] = new JsonObject
            {
                ["description"] = "Cell ids to place the nodes on, at least one per node (an operator's choice; placement decides otherwise).",
                ["type"] = "array",
                ["maxItems"] = RequestLimits.MaxCells,
                ["items"] = new JsonObject
                {
                    ["type"] = "string",
                    // RequestLimits.IdProblem: letters, digits, '-', '_', '.', not starting with '.', at most 128.
                    ["pattern"] = $"^[A-Za-z0-9_-][A-Za-z0-9._-]{{0,{RequestLimits.MaxIdLength - 1}}}$",
                },
            },
            [Dingo.Ha.SynchronousCommit.Parameter] = new JsonObject
            {
                ["description"] = "Store-synchronous commit: a commit is acknowledged only once its WAL is in the object store (recovery point 0 even if every node and disk is lost; "
                                  + "each commit waits for one upload, and a store that is down makes commits wait). With replicas, one of them must hold it too.",
                ["type"] = "boolean",
            },
        };
        if (provisioning)
        {
            properties["clone-from"] = new JsonObject
            {
                ["description"] = "Start as a copy of another instance of this space (its name or id, live or deleted), from its backups.",
                ["type"] = "string",
                ["minLength"] = 1,
                ["maxLength"] = RequestLimits.MaxStringLength,
                ["pattern"] = "\\S",
            };
            properties["point-in-time"] = new JsonObject
            {
                ["description"] = "With clone-from: the copy holds exactly the commits made before this moment (RFC 3339 with a time zone, not in the future).",
                ["type"] = "string",
                ["format"] = "date-time",
            };
        }
        var schema = new JsonObject
        {
            ["$schema"] = SchemaDialect,
            ["type"] = "object",
            ["properties"] = properties,
            ["additionalProperties"] = false,
        };
        // point-in-time needs clone-from: written as anyOf (without it, or with both) rather than draft-04's
        // `dependencies`, which some validators skip (NJsonSchema does).
        if (provisioning)
            schema["anyOf"] = new JsonArray(
                new JsonObject { ["not"] = new JsonObject { ["required"] = new JsonArray("point-in-time") } },
                new JsonObject { ["required"] = new JsonArray("clone-from") });
        return schema;
    }
}
