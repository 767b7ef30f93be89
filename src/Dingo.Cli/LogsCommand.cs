using Dingo.Cells;
using Dingo.Config;
using Dingo.Logging;
using Dingo.Model;
using Dingo.Store;
using Microsoft.Extensions.Logging.Abstractions;

namespace Dingo.Cli;

/// <summary>
/// `dingo logs &lt;instance&gt; [node] [--tail N] [-f]`: a node's PostgreSQL log, found through etcd (which cell holds the
/// node, and which runtime that cell runs): the container's output on a Docker cell, postgres.log on a process cell.
/// With -f it goes on printing each new line (every node's, prefixed with its id when there are several) until Ctrl-C.
/// </summary>
public static class LogsCommand
{
    private const int FollowReadLimit = 1024 * 1024;
    private static readonly TimeSpan FollowEvery = TimeSpan.FromMilliseconds(250);

    public static async Task<int> RunAsync(string instanceId, string? nodeId, int tail, bool follow, DingoSettings settings, TextWriter output, CancellationToken ct)
    {
        await using var store = EtcdStore.Connect(settings);
        List<NodeSpec> nodes;
        Dictionary<string, CellInfo> cells;
        try
        {
            nodes = (await store.ListAsync<NodeSpec>(store.Keys.Nodes(instanceId), ct)).Select(n => n.Value).OrderBy(n => n.NodeId, StringComparer.Ordinal).ToList();
            cells = (await store.ListAsync<CellInfo>(store.Keys.Cells, ct)).Select(c => c.Value).ToDictionary(c => c.Id);
        }
        catch (Grpc.Core.RpcException ex)
        {
            Console.Error.WriteLine($"dingo: cannot read etcd at {string.Join(",", settings.EtcdEndpoints)}: {ex.Status.Detail}. Is the platform up (./dingo up)?");
            return 1;
        }
        if (nodes.Count == 0)
        {
            Console.Error.WriteLine($"dingo: instance {instanceId} has no nodes (see ./dingo status)");
            return 1;
        }
        if (nodeId is not null)
        {
            nodes = nodes.Where(n => n.NodeId == nodeId).ToList();
            if (nodes.Count == 0)
            {
                Console.Error.WriteLine($"dingo: instance {instanceId} has no node {nodeId} (see ./dingo status)");
                return 1;
            }
        }
        // A cell that is gone is assumed to have run what this configuration runs.
        string RuntimeOf(NodeSpec node) => cells.TryGetValue(node.CellId, out var cell) ? cell.Runtime : settings.Cell.Runtime;
        if (follow)
        {
            using var interrupt = new Interrupt(ct);
            var code = await FollowAsync(nodes, RuntimeOf, tail, settings, output, interrupt.Token);
            return interrupt.Requested ? interrupt.ExitCode : code;
        }
        var failed = false;
        foreach (var node in nodes)
        {
            var runtime = RuntimeOf(node);
            if (nodes.Count > 1 || nodeId is null) output.WriteLine($"==> {node.NodeId} on {node.CellId} ({runtime}) <==");
            try
            {
                output.Write(await ReadAsync(settings, node, runtime, tail, ct));
            }
            catch (Exception ex) when (ex is ContainerEngineException or InvalidOperationException or IOException or UnauthorizedAccessException)
            {
                Console.Error.WriteLine($"dingo: no log for {node.NodeId} on {node.CellId}: {ex.Message}");
                failed = true;
            }
        }
        return failed ? 1 : 0;
    }

    private static async Task<string> ReadAsync(DingoSettings settings, NodeSpec node, string runtime, int tail, CancellationToken ct)
    {
        if (runtime == "docker")
        {
            using var docker = new DockerRuntime(new DockerRuntimeOptions(node.CellId, settings.Cell.Docker), NullLogger.Instance);
            return await docker.NodeLogsAsync(node.NodeId, tail, ct);
        }
        var (lines, _) = LogLines.Last(ProcessLog(settings, node), tail);
        return string.Join('\n', lines) + (lines.Count > 0 ? "\n" : "");
    }

    private static string ProcessLog(DingoSettings settings, NodeSpec node)
    {
        var log = Path.Combine(Path.GetFullPath(settings.DataDir), "cells", node.CellId, "nodes", node.NodeId, "postgres.log");
        return File.Exists(log) ? log : throw new IOException($"{log} does not exist (a process cell's log is on its own host)");
    }

    /// <summary>Every node's log at once, each line as it comes, until Ctrl-C (then 130) or every follower ended (1 if one failed).</summary>
    private static async Task<int> FollowAsync(List<NodeSpec> nodes, Func<NodeSpec, string> runtimeOf, int tail, DingoSettings settings, TextWriter output, CancellationToken ct)
    {
        var gate = new Lock();
        var failures = 0;
        async Task FollowOneAsync(NodeSpec node)
        {
            var prefix = nodes.Count > 1 ? $"{node.NodeId}| " : "";
            void Emit(string line)
            {
                lock (gate)
                {
                    output.WriteLine(prefix + line);
                    output.Flush();
                }
            }
            try
            {
                if (runtimeOf(node) == "docker")
                {
                    using var docker = new DockerRuntime(new DockerRuntimeOptions(node.CellId, settings.Cell.Docker), NullLogger.Instance);
                    await docker.FollowNodeLogsAsync(node.NodeId, tail, Emit, ct);
                    return;
                }
                var file = ProcessLog(settings, node);
                var (last, offset) = LogLines.Last(file, tail);
                foreach (var line in last) Emit(line);
                while (true)
                {
                    await Task.Delay(FollowEvery, ct);
                    // Rotated in place (copied away, then truncated): LogLines reads it again from its start.
                    if (!File.Exists(file)) continue;
                    (last, offset) = LogLines.Since(file, offset, FollowReadLimit);
                    foreach (var line in last) Emit(line);
                }
            }
            catch (Exception) when (ct.IsCancellationRequested)
            {
                // Stopped (Ctrl-C): whatever the read in flight threw on its way out is not a failure.
            }
            catch (Exception ex) when (ex is ContainerEngineException or InvalidOperationException or IOException or UnauthorizedAccessException or Docker.DotNet.DockerApiException)
            {
                Interlocked.Increment(ref failures);
                Console.Error.WriteLine($"dingo: no log for {node.NodeId} on {node.CellId}: {ex.Message}");
            }
        }
        await Task.WhenAll(nodes.Select(FollowOneAsync));
        return failures > 0 ? 1 : 0;
    }
}
