using Dingo.Cells;
using Dingo.Config;
using Dingo.Model;
using Dingo.Store;
using Microsoft.Extensions.Logging.Abstractions;

namespace Dingo.Cli;

/// <summary>
/// `dingo logs &lt;instance&gt; [node] [--tail N]`: a node's PostgreSQL log, found through etcd (which cell holds the node,
/// and which runtime that cell runs): the container's output on a Docker cell, postgres.log on a process cell.
/// </summary>
public static class LogsCommand
{
    public static async Task<int> RunAsync(IReadOnlyList<string> args, DingoSettings settings, TextWriter output, CancellationToken ct)
    {
        var tail = 200;
        var positional = new List<string>();
        for (var i = 0; i < args.Count; i++)
        {
            if (args[i] == "--tail" && i + 1 < args.Count && int.TryParse(args[i + 1], out var n) && n > 0) { tail = n; i++; }
            else positional.Add(args[i]);
        }
        if (positional.Count is < 1 or > 2)
        {
            Console.Error.WriteLine("usage: dingo logs <instance> [node] [--tail N]");
            return 2;
        }
        var instanceId = positional[0];
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
        if (positional.Count == 2)
        {
            nodes = nodes.Where(n => n.NodeId == positional[1]).ToList();
            if (nodes.Count == 0)
            {
                Console.Error.WriteLine($"dingo: instance {instanceId} has no node {positional[1]} (see ./dingo status)");
                return 1;
            }
        }
        var failed = false;
        foreach (var node in nodes)
        {
            // A cell that is gone is assumed to have run what this configuration runs.
            var runtime = cells.TryGetValue(node.CellId, out var cell) ? cell.Runtime : settings.Cell.Runtime;
            if (nodes.Count > 1 || positional.Count == 1) output.WriteLine($"==> {node.NodeId} on {node.CellId} ({runtime}) <==");
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
        var log = Path.Combine(Path.GetFullPath(settings.DataDir), "cells", node.CellId, "nodes", node.NodeId, "postgres.log");
        if (!File.Exists(log)) throw new IOException($"{log} does not exist (a process cell's log is on its own host)");
        var lines = new Queue<string>();
        await foreach (var line in File.ReadLinesAsync(log, ct))
        {
            lines.Enqueue(line);
            if (lines.Count > tail) lines.Dequeue();
        }
        return string.Join('\n', lines) + (lines.Count > 0 ? "\n" : "");
    }
}
