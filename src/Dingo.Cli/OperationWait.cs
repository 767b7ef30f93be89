using System.Diagnostics;
using System.Globalization;
using Dingo.Model;
using Dingo.Store;

namespace Dingo.Cli;

/// <summary>
/// `--wait`: once the broker has accepted an operation, follow it in etcd until it is done, printing a line (time since
/// the request, what is seen) whenever what is seen changes; past the limit, say what is still missing and exit 1.
/// </summary>
public static class OperationWait
{
    /// <param name="Failed">done, but not as asked (a drill that found a problem)</param>
    public sealed record Progress(bool Done, string Summary, bool Failed = false);

    public static readonly TimeSpan Every = TimeSpan.FromMilliseconds(500);

    public static async Task<int> UntilAsync(Func<CancellationToken, Task<Progress>> look, TimeSpan limit, TextWriter output, CancellationToken ct)
    {
        var waited = Stopwatch.StartNew();
        string? said = null;
        while (true)
        {
            Progress now;
            try { now = await look(ct); }
            catch (Grpc.Core.RpcException ex) { now = new Progress(false, $"cannot read etcd ({ex.Status.Detail}); trying again"); }
            if (now.Summary != said)
            {
                output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  {waited.Elapsed.TotalSeconds,6:0.0}s  {now.Summary}"));
                said = now.Summary;
            }
            if (now.Done)
            {
                output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{(now.Failed ? "failed" : "done")} after {waited.Elapsed.TotalSeconds:0.0}s"));
                return now.Failed ? 1 : 0;
            }
            if (waited.Elapsed > limit)
            {
                Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture, $"dingo: not done after {limit.TotalSeconds:0} s (it goes on; ./dingo status follows it): {now.Summary}"));
                return 1;
            }
            await Task.Delay(Every, ct);
        }
    }

    /// <summary>
    /// An instance serving as planned: a leader (other than <paramref name="notLeader"/>, and
    /// <paramref name="mustLead"/> when named) that accepts writes, and every other node running and streaming.
    /// </summary>
    public static async Task<Progress> InstanceAsync(EtcdStore store, string id, string? notLeader, string? mustLead, CancellationToken ct)
    {
        var record = (await store.GetAsync<InstanceRecord>(store.Keys.Instance(id), ct))?.Value;
        if (record is null) return new Progress(false, $"no instance {id} in etcd yet");
        var nodes = (await store.ListAsync<NodeSpec>(store.Keys.Nodes(id), ct)).Select(n => n.Value).OrderBy(n => n.NodeId, StringComparer.Ordinal).ToList();
        var statuses = (await store.ListAsync<NodeStatus>(store.Keys.Statuses(id), ct)).Select(s => s.Value).ToDictionary(s => s.NodeId);
        var leader = (await store.GetAsync<LeaderRecord>(store.Keys.Leader(id), ct))?.Value.NodeId;
        var shown = nodes.Select(n =>
        {
            statuses.TryGetValue(n.NodeId, out var st);
            return $"{n.NodeId} {NodeRoles.Shown(leader, n.NodeId, st).Wire()} {st?.State.Wire() ?? "unknown"}{(st is { Streaming: true } ? " streaming" : "")}";
        });
        var summary = $"leader {leader ?? "none"}: {string.Join(", ", shown)}";
        bool Serving(NodeSpec n) => statuses.TryGetValue(n.NodeId, out var st) && st.State == NodeState.Running && (n.NodeId == leader ? st.Writable : st.Streaming);
        var done = leader is not null && leader != notLeader && (mustLead is null || leader == mustLead)
            && nodes.Count == record.NodeCount && nodes.All(Serving);
        return new Progress(done, summary);
    }

    /// <summary>A drained cell: no node of any instance left on it.</summary>
    public static async Task<Progress> DrainedAsync(EtcdStore store, string cell, CancellationToken ct)
    {
        var left = (await store.ListAsync<NodeSpec>(store.Keys.AllNodes, ct)).Select(n => n.Value).Where(n => n.CellId == cell).ToList();
        return left.Count == 0
            ? new Progress(true, $"no node left on {cell}")
            : new Progress(false, $"{left.Count} node(s) left on {cell}: {string.Join(", ", left.Select(n => $"{n.NodeId} ({n.InstanceId})").Take(8))}");
    }

    /// <summary>A restore drill newer than the one recorded before the request (<paramref name="before"/>, null: none): done, failed if it found a problem.</summary>
    public static async Task<Progress> DrillAsync(EtcdStore store, string id, DateTimeOffset? before, CancellationToken ct)
    {
        var drill = (await store.GetAsync<DrillResult>(store.Keys.Drill(id), ct))?.Value;
        return drill is not null && (before is null || drill.At > before)
            ? new Progress(true, $"drill {(drill.Ok ? "ok" : "FAILED")} in {drill.Seconds:0.0}s: {drill.Detail}", Failed: !drill.Ok)
            : new Progress(false, "restoring the latest base backup into a scratch node");
    }

    /// <summary>After a rebuild: every instance in etcd serving.</summary>
    public static async Task<Progress> AllInstancesAsync(EtcdStore store, CancellationToken ct)
    {
        var ids = (await store.ListAsync<InstanceRecord>(store.Keys.Instances, ct)).Select(i => i.Value.Id).ToList();
        var waiting = new List<string>();
        foreach (var id in ids)
            if (!(await InstanceAsync(store, id, null, null, ct)).Done) waiting.Add(id);
        return new Progress(waiting.Count == 0, waiting.Count == 0
            ? $"{ids.Count} instance(s) serving"
            : $"{ids.Count - waiting.Count} of {ids.Count} instance(s) serving; waiting for {string.Join(", ", waiting.Take(8))}");
    }
}
