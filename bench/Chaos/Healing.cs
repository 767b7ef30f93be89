using Dingo.Model;

namespace Dingo.Bench.Chaos;

/// <summary>
/// Whether the platform has healed from a fault: for every instance, every placed node answers straight and runs
/// (its status reported after the fault and saying running), exactly one is writable and holds the leader key, every
/// other streams from it, and the instance's writer commits steadily again.
/// </summary>
internal static class Healing
{
    /// <summary>Steady writes: this many acknowledged commits in the last second, the newest this recent.</summary>
    private const int SteadyCommits = 5;
    private static readonly TimeSpan SteadyNewest = TimeSpan.FromMilliseconds(300);

    /// <returns>null when healed; otherwise what is still wrong, for the log</returns>
    public static async Task<string?> WhatIsWrongAsync(ChaosPlatform platform, SplitSampler sampler, DateTime since, CancellationToken ct)
    {
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(ct);
        limit.CancelAfter(TimeSpan.FromSeconds(1));
        var store = platform.Store;
        foreach (var instance in platform.Instances)
        {
            var sample = sampler.Latest(instance.Id);
            if (sample is null || sample.At <= since) return $"{instance.Id}: no sample since the fault";
            IReadOnlyList<NodeSpec> placed;
            IReadOnlyList<NodeStatus> statuses;
            LeaderRecord? leader;
            try
            {
                placed = await platform.NodesAsync(instance.Id, limit.Token).WaitAsync(limit.Token);
                statuses = (await store.ListAsync<NodeStatus>(store.Keys.Statuses(instance.Id), limit.Token).WaitAsync(limit.Token)).Select(s => s.Value).ToList();
                leader = (await store.GetAsync<LeaderRecord>(store.Keys.Leader(instance.Id), limit.Token).WaitAsync(limit.Token))?.Value;
            }
            catch (Exception ex) when (ex is Grpc.Core.RpcException or OperationCanceledException or TimeoutException && !ct.IsCancellationRequested)
            {
                return $"etcd did not answer ({ex.GetType().Name})";
            }
            if (leader is null) return $"{instance.Id}: no leader key";
            var answers = new List<NodeAnswer>();
            foreach (var node in placed)
            {
                if (sample.Nodes.FirstOrDefault(a => a.NodeId == node.NodeId) is not { } answer) return $"{instance.Id}: {node.NodeId} not sampled yet";
                if (!answer.Answered) return $"{instance.Id}: {node.NodeId} does not answer";
                var status = statuses.FirstOrDefault(s => s.NodeId == node.NodeId);
                if (status is null || status.UpdatedAt.UtcDateTime <= since) return $"{instance.Id}: {node.NodeId} has reported no status since the fault";
                if (status.State != NodeState.Running) return $"{instance.Id}: {node.NodeId} is {status.State.Wire()} ({status.Detail})";
                answers.Add(answer);
            }
            var writable = answers.Where(a => a.Writable).ToList();
            if (writable.Count != 1) return $"{instance.Id}: {writable.Count} writable nodes";
            var primary = writable[0];
            if (primary.NodeId != leader.NodeId) return $"{instance.Id}: writable {primary.NodeId} does not hold the leader key ({leader.NodeId} does)";
            if (answers.FirstOrDefault(a => a != primary && !(a.Streaming && a.SenderPort == primary.Port)) is { } lagging)
                return $"{instance.Id}: {lagging.NodeId} does not stream from {primary.NodeId}";
            if (!Steady(instance, DateTime.UtcNow)) return $"{instance.Id}: writes not steady";
        }
        return null;
    }

    /// <summary>Looks at the writer's newest attempts only (a bounded look-back, whatever the run's length).</summary>
    private static bool Steady(ChaosInstance instance, DateTime now)
    {
        var writer = instance.Writer;
        var newest = Interlocked.Read(ref writer.Attempts);
        var recent = 0;
        DateTime? last = null;
        for (var n = newest; n > 0 && n > newest - 200; n--)
        {
            if (!writer.Acknowledged.TryGetValue(n, out var at)) continue;
            if (last is null || at > last) last = at;
            if (now - at <= TimeSpan.FromSeconds(1)) recent++;
        }
        return recent >= SteadyCommits && last is { } l && now - l <= SteadyNewest;
    }
}
