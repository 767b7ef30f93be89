using System.Net;
using Dingo.Ha;
using Dingo.Health;
using Dingo.Model;
using Dingo.Routing;
using Dingo.Tests.Support;
using Microsoft.Extensions.Logging.Abstractions;

namespace Dingo.Tests.Health;

/// <summary>
/// The metrics' own rules, in process: names and labels, series that follow roles, figures that go stale and drop out,
/// counters that survive a refresh. PlannedOperationsTests scrapes them from a real platform and runs promtool on them.
/// </summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class MetricsRulesTests
{
    private static NodeHealth Health(string instance, string node, string role, bool leader, long? lag = 0) =>
        new(node, instance, NodeState.Running, WireNames.TryParseWire<NodeRole>(role, out var r) ? r : throw new ArgumentException(role), leader, lag,
            role == "replica", false, 1000, 3, leader ? node : "n-other", "leading");

    private static async Task<string> ExportAsync(Prometheus.CollectorRegistry registry)
    {
        using var buffer = new MemoryStream();
        await registry.CollectAndExportAsTextAsync(buffer);
        return System.Text.Encoding.UTF8.GetString(buffer.ToArray());
    }

    [Fact]
    public async Task A_node_shows_its_current_role_only_and_its_decisions_by_kind()
    {
        var metrics = new CellMetrics();
        var pg = new PostgresObservation(false, 1000, 3, false, null, null, 0, 4);
        metrics.Passed(Health("i-1", "n-1", "replica", false, 100), pg with { InRecovery = true, ReplayLagSeconds = 1.5 }, 0, new HaAction.FollowLeader(null!, "following"), null);
        metrics.Passed(Health("i-1", "n-1", "replica", false), pg with { InRecovery = true }, 0, new HaAction.TakeLeadership("taking the key"), null);
        metrics.Passed(Health("i-1", "n-1", "primary", true), pg, 0, new HaAction.TakeLeadership("taking the key after a restart"), null);
        metrics.Passed(Health("i-1", "n-1", "primary", true), pg, 1, new HaAction.Lead("leading"), null);

        var text = await ExportAsync(metrics.Registry);
        Assert.Equal(1, MetricsText.Value(text, "dingo_node_info", ("service_instance", "i-1"), ("node", "n-1"), ("role", "primary"), ("state", "running")));
        Assert.Null(MetricsText.Value(text, "dingo_node_info", ("role", "replica")));
        Assert.Equal(1, MetricsText.Value(text, "dingo_node_leader", ("node", "n-1")));
        Assert.Equal(1, MetricsText.Value(text, "dingo_node_writable", ("node", "n-1")));
        Assert.Equal(4, MetricsText.Value(text, "dingo_node_connections", ("node", "n-1")));
        Assert.Equal(1, MetricsText.Value(text, "dingo_ha_promotions_total", ("node", "n-1")));
        Assert.Equal(1, MetricsText.Value(text, "dingo_ha_decisions_total", ("decision", "follow_leader")));
        Assert.Equal(1, MetricsText.Value(text, "dingo_ha_decisions_total", ("decision", "lead")));
        Assert.Equal(1, MetricsText.Value(text, "dingo_node_postgres_restarts_total", ("node", "n-1")));
        Assert.Equal(3, MetricsText.Value(text, "dingo_node_timeline", ("node", "n-1")));
    }

    [Fact]
    public async Task A_node_and_an_instance_not_heard_of_for_a_minute_drop_out_of_every_series()
    {
        var now = DateTimeOffset.UtcNow;
        var metrics = new CellMetrics(now: () => now);
        var pg = new PostgresObservation(false, 1000, 3, false, null, null);
        metrics.Passed(Health("i-1", "n-gone", "primary", true), pg, 2, new HaAction.HandOver("n-2", "switching over"), null);
        metrics.Backup("i-1", new BackupState { NodeId = "n-gone", BacklogBytes = 42, LastUpload = now }, 40, 1 << 20);
        var before = await ExportAsync(metrics.Registry);
        Assert.Equal(1, MetricsText.Value(before, "dingo_ha_switchovers_total", ("node", "n-gone")));
        Assert.Equal(42, MetricsText.Value(before, "dingo_backup_archive_backlog_bytes", ("service_instance", "i-1")));
        Assert.Equal(40, MetricsText.Value(before, "dingo_backup_archive_lag_bytes", ("service_instance", "i-1")));
        Assert.Equal(1 << 20, MetricsText.Value(before, "dingo_backup_base_backup_size_bytes", ("service_instance", "i-1")));

        now += CellMetrics.Stale + TimeSpan.FromSeconds(1);
        var after = await ExportAsync(metrics.Registry);
        Assert.DoesNotContain("n-gone", after, StringComparison.Ordinal);
        Assert.DoesNotContain("i-1", after, StringComparison.Ordinal);
    }

    [Fact]
    public void Decision_kinds_are_snake_case()
    {
        Assert.Equal("follow_leader", CellMetrics.DecisionName(new HaAction.FollowLeader(null!, "x")));
        Assert.Equal("release_stale_key", CellMetrics.DecisionName(new HaAction.ReleaseStaleKey("x")));
        Assert.Equal("wait", CellMetrics.DecisionName(new HaAction.Wait("x")));
    }

    [Fact]
    public async Task The_router_labels_instances_service_instance_and_counts_from_its_own_figures()
    {
        var router = new TcpRouter(IPAddress.Loopback, NullLogger.Instance);
        var metrics = new RouterMetrics(router);
        metrics.Publish([new Route(40001, "i-7", new IPEndPoint(IPAddress.Loopback, 1))], new Dictionary<string, DateTime> { ["i-7"] = DateTime.UtcNow.AddSeconds(-5) });
        var text = await metrics.RenderAsync(CancellationToken.None);
        Assert.Equal(0, MetricsText.Value(text, "dingo_router_open_connections", ("service_instance", "i-7"), ("port", "40001"), ("role", "primary")));
        Assert.True(MetricsText.Value(text, "dingo_router_leaderless_seconds", ("service_instance", "i-7")) >= 5);
        Assert.Equal(0, MetricsText.Value(text, "dingo_router_refused_connections_total", ("reason", "no_leader")));
        Assert.DoesNotContain("{instance=", text, StringComparison.Ordinal);
    }

    [Fact]
    public void The_patroni_compatible_metrics_use_patronis_names_and_escape_labels()
    {
        var text = System.Text.Encoding.UTF8.GetString(NodeHealthServer.PatroniMetrics(Health("i-\"q\"\\", "n-1", "primary", true)));
        Assert.Equal(1, MetricsText.Value(text, "patroni_primary", ("name", "n-1")));
        Assert.Equal(0, MetricsText.Value(text, "patroni_replica", ("name", "n-1")));
        Assert.Equal(3, MetricsText.Value(text, "patroni_postgres_timeline", ("name", "n-1")));
        Assert.Contains("scope=\"i-\\\"q\\\"\\\\\"", text, StringComparison.Ordinal);
    }

    [Fact]
    public async Task The_broker_counts_requests_by_route_template_and_operations_by_kind_plan_and_outcome()
    {
        var metrics = new BrokerMetrics(store: null, quota: 10);
        metrics.Request("/v2/service_instances/{id}", "PUT", 202, TimeSpan.FromMilliseconds(30));
        var now = DateTimeOffset.UtcNow;
        metrics.OperationFinished(new OperationRecord { Id = "o", Kind = OperationKind.Provision, State = OperationState.Succeeded, Description = "", StartedAt = now.AddSeconds(-3), UpdatedAt = now },
            Catalog.ClusterPlanId);
        var text = await ExportAsync(metrics.Registry);
        Assert.Equal(1, MetricsText.Value(text, "dingo_broker_requests_total", ("route", "/v2/service_instances/{id}"), ("method", "PUT"), ("code", "202")));
        Assert.Equal(1, MetricsText.Value(text, "dingo_broker_operation_duration_seconds_count", ("kind", "provision"), ("plan", "cluster"), ("outcome", "succeeded")));
        Assert.Equal(3, MetricsText.Value(text, "dingo_broker_operation_duration_seconds_sum", ("kind", "provision")));
        Assert.Equal(10, MetricsText.Value(text, "dingo_broker_instance_quota"));
    }
}
