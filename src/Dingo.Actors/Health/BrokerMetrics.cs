using Dingo.Model;
using Dingo.Store;
using Prometheus;

namespace Dingo.Health;

/// <summary>
/// A broker's Prometheus figures: OSB and admin requests by route and status, their durations, operations by kind, plan
/// and outcome with their durations, and the platform's instances by plan and state against the quota. Instances are
/// counted from etcd when Prometheus scrapes, at most every <see cref="InstanceRefresh"/> (a scrape never waits on etcd
/// longer than <see cref="InstanceDeadline"/>; the last counts stay meanwhile, with their age).
/// </summary>
public sealed class BrokerMetrics
{
    public static readonly TimeSpan InstanceRefresh = TimeSpan.FromSeconds(15);
    public static readonly TimeSpan InstanceDeadline = TimeSpan.FromSeconds(3);

    private readonly EtcdStore? _store;
    private readonly Counter _requests;
    private readonly Histogram _requestSeconds, _operationSeconds;
    private readonly Gauge _instances, _quota, _countAge;
    private readonly SemaphoreSlim _counting = new(1, 1);
    private DateTimeOffset _countedAt = DateTimeOffset.MinValue;

    /// <param name="store">etcd, to count instances (null: no instance counts, as in tests of the request figures)</param>
    /// <param name="quota">dingo.broker.instance-quota (0: none)</param>
    public BrokerMetrics(EtcdStore? store, int quota, CollectorRegistry? registry = null)
    {
        _store = store;
        Registry = registry ?? Metrics.NewCustomRegistry();
        var f = Metrics.WithCustomRegistry(Registry);
        _requests = f.CreateCounter("dingo_broker_requests_total", "HTTP requests the broker answered, by route template, method and status code.", ["route", "method", "code"]);
        _requestSeconds = f.CreateHistogram("dingo_broker_request_duration_seconds", "Time to answer an HTTP request, by route template and method.",
            new HistogramConfiguration { LabelNames = ["route", "method"], Buckets = Histogram.ExponentialBuckets(0.005, 2, 12) });
        _operationSeconds = f.CreateHistogram("dingo_broker_operation_duration_seconds", "Time from an operation's request to its end, by kind (provision, update, deprovision), plan and outcome.",
            new HistogramConfiguration { LabelNames = ["kind", "plan", "outcome"], Buckets = Histogram.ExponentialBuckets(0.5, 2, 12) });
        _instances = f.CreateGauge("dingo_broker_instances", "Service instances by plan and state (ready, provisioning, updating, deprovisioning, failed).", ["plan", "state"]);
        _quota = f.CreateGauge("dingo_broker_instance_quota", "dingo.broker.instance-quota: the most instances the platform accepts (0: no limit).");
        _countAge = f.CreateGauge("dingo_broker_instances_count_age_seconds", "Age of the instance counts (they are refreshed from etcd at most every 15 s; a growing age means etcd did not answer).");
        _quota.Set(quota);
        if (store is not null) Registry.AddBeforeCollectCallback(CountInstancesAsync);
    }

    public CollectorRegistry Registry { get; }

    /// <summary>One answered request. <paramref name="route"/> is the endpoint's template (never the raw path: ids would make a series each).</summary>
    public void Request(string route, string method, int status, TimeSpan took)
    {
        _requests.WithLabels(route, method, status.ToString(System.Globalization.CultureInfo.InvariantCulture)).Inc();
        _requestSeconds.WithLabels(route, method).Observe(took.TotalSeconds);
    }

    /// <summary>An operation that ended (succeeded or failed), measured from its request.</summary>
    public void OperationFinished(OperationRecord operation, string? planId) =>
        _operationSeconds.WithLabels(operation.Kind.Wire(), Catalog.FindPlan(planId)?.Name ?? "unknown", operation.State.Wire())
            .Observe(Math.Max(0, (operation.UpdatedAt - operation.StartedAt).TotalSeconds));

    private async Task CountInstancesAsync(CancellationToken ct)
    {
        var now = DateTimeOffset.UtcNow;
        if (now - _countedAt >= InstanceRefresh && await _counting.WaitAsync(0, ct).ConfigureAwait(false))
        {
            try
            {
                using var deadline = CancellationTokenSource.CreateLinkedTokenSource(ct);
                deadline.CancelAfter(InstanceDeadline);
                var instances = await _store!.ListAsync<InstanceSummary>(_store.Keys.Instances, deadline.Token).ConfigureAwait(false);
                var operations = (await _store.ListAsync<OperationRecord>(_store.Keys.Operations, deadline.Token).ConfigureAwait(false))
                    .ToDictionary(o => o.Key[_store.Keys.Operations.Length..], o => o.Value, StringComparer.Ordinal);
                var counts = new Dictionary<(string Plan, string State), int>();
                foreach (var i in instances)
                {
                    var op = operations.GetValueOrDefault(i.Value.Id);
                    var state = i.Value.Desired == DesiredState.Absent ? "deprovisioning"
                        : op is null ? "ready"
                        : op.InProgress ? op.Kind switch { OperationKind.Provision => "provisioning", OperationKind.Update => "updating", _ => "deprovisioning" }
                        : op.State == OperationState.Failed ? "failed" : "ready";
                    var key = (Catalog.FindPlan(i.Value.PlanId)?.Name ?? "unknown", state);
                    counts[key] = counts.GetValueOrDefault(key) + 1;
                }
                foreach (var labels in _instances.GetAllLabelValues().ToList()) _instances.RemoveLabelled(labels);
                foreach (var ((plan, state), n) in counts) _instances.WithLabels(plan, state).Set(n);
                _countedAt = DateTimeOffset.UtcNow;
            }
            catch (Exception ex) when (ex is OperationCanceledException or Grpc.Core.RpcException or System.Text.Json.JsonException && !ct.IsCancellationRequested)
            {
                // etcd away or slow: the last counts stay, and their age says how old they are.
            }
            finally
            {
                _counting.Release();
            }
        }
        _countAge.Set(_countedAt == DateTimeOffset.MinValue ? -1 : Math.Max(0, (DateTimeOffset.UtcNow - _countedAt).TotalSeconds));
    }

    /// <summary>The fields of an instance record the counts need: its credentials are never read (nor decrypted) here.</summary>
    private sealed class InstanceSummary
    {
        public string Id { get; init; } = "";
        public string PlanId { get; init; } = "";
        public DesiredState Desired { get; init; } = DesiredState.Present;
    }
}
