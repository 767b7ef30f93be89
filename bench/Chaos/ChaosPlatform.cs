using System.Globalization;
using Dingo.Bench.Shared;
using Dingo.Config;
using Dingo.Model;
using Dingo.Store;
using Dingo.Tests.Ha;

namespace Dingo.Bench.Chaos;

/// <summary>One instance the bench keeps writing to through the router.</summary>
internal sealed record ChaosInstance(string Id, string Plan, Credentials Superuser, Writer Writer);

/// <summary>
/// The platform under fault, on one host (<see cref="OneHostPlatform"/>) or three (<see cref="ThreeHostPlatform"/>):
/// three cells as OS processes and one instance per plan with a writer committing a fresh value every 20 ms through
/// a router. What both have: the store, the instances, where a node's PostgreSQL runs, processes held stopped.
/// </summary>
internal abstract class ChaosPlatform(DingoSettings settings) : IAsyncDisposable
{
    public const int Cells = 3;
    protected const string HaSettings = "dingo.ha { ttl = 4s, loop-wait = 500ms, rewind-after = 4s, lost-cell-grace = 300s }";
    // A block of our own, 12000-13499: below the ephemeral range, away from the test platforms' blocks (FreePorts.Block)
    // and from the low ends `dingo up` allocates from (nodes from 10000, routes from 20000). Wide, because every
    // throwaway instance retires its ports for good. Never inside 30000-32759, where FreePorts hands out the etcd, broker,
    // health and Akka ports of the bench's processes: a cell restarted by a fault once drew the Akka port a node had been
    // given, and that node's PostgreSQL failed every start for minutes ("could not create any TCP/IP sockets").
    protected const string Ports = """
        dingo.router { port-range-first = 12000, port-range-last = 12499 }
        dingo.node-port-range-first = 13000
        dingo.node-port-range-last = 13499
        """;
    public static readonly TimeSpan WriteEvery = TimeSpan.FromMilliseconds(20);
    public static readonly TimeSpan AttemptLimit = TimeSpan.FromSeconds(5);

    private readonly List<int> _stopped = [];

    public DingoSettings Settings { get; } = settings;
    public abstract EtcdStore Store { get; }
    public List<ChaosInstance> Instances { get; } = [];

    public static int CellNumber(string cellId) => int.Parse(cellId["cell-".Length..], CultureInfo.InvariantCulture);

    /// <summary>The node holding the instance's leader key, and its spec.</summary>
    public async Task<NodeSpec> PrimaryAsync(string instanceId, CancellationToken ct)
    {
        var leader = await Store.GetAsync<LeaderRecord>(Store.Keys.Leader(instanceId), ct)
                     ?? throw new InvalidOperationException($"{instanceId} has no leader key");
        return await NodeAsync(instanceId, leader.Value.NodeId, ct);
    }

    public async Task<NodeSpec> NodeAsync(string instanceId, string nodeId, CancellationToken ct) =>
        (await Store.GetAsync<NodeSpec>(Store.Keys.Node(instanceId, nodeId), ct))?.Value
        ?? throw new InvalidOperationException($"{instanceId}: node {nodeId} has no spec");

    public async Task<IReadOnlyList<NodeSpec>> NodesAsync(string instanceId, CancellationToken ct) =>
        (await Store.ListAsync<NodeSpec>(Store.Keys.Nodes(instanceId), ct)).Select(n => n.Value).ToList();

    /// <summary>The node's data directory on the process runtime (as CellApp lays it out; one file system for every host).</summary>
    public string PgData(NodeSpec node) =>
        Path.Combine(Path.GetFullPath(Settings.DataDir), "cells", node.CellId, "nodes", node.NodeId, "pgdata");

    /// <summary>The node's postmaster PID from postmaster.pid, if that process runs.</summary>
    public int PostmasterPid(NodeSpec node)
    {
        var file = Path.Combine(PgData(node), "postmaster.pid");
        var first = File.Exists(file) ? File.ReadLines(file).FirstOrDefault() : null;
        if (int.TryParse(first, CultureInfo.InvariantCulture, out var pid) && Directory.Exists($"/proc/{pid}")) return pid;
        throw new InvalidOperationException($"node {node.NodeId} on {node.CellId} has no running postmaster");
    }

    /// <summary>SIGSTOP to processes, remembered so that they get SIGCONT even if the bench fails before it does.</summary>
    public IReadOnlyList<int> Stop(Func<IReadOnlyList<int>> stop)
    {
        lock (_stopped)
        {
            var pids = stop();
            _stopped.AddRange(pids);
            return pids;
        }
    }

    public void Continue(IReadOnlyList<int> pids)
    {
        lock (_stopped)
        {
            PostgresSignals.Continue(pids);
            foreach (var pid in pids) _stopped.Remove(pid);
        }
    }

    /// <summary>SIGCONT to whatever is still held stopped: nothing stays frozen while the platform is taken down.</summary>
    protected void ContinueAll()
    {
        lock (_stopped)
        {
            PostgresSignals.Continue(_stopped);
            _stopped.Clear();
        }
    }

    /// <summary>
    /// Stops the instance's writer. A writer that fails on its way out (seen: its last connection disposed while a
    /// cancelled read was still pending on it) has counted every commit already; it must not keep the rest of the
    /// run's ending, the summary or the teardown, from happening.
    /// </summary>
    public static async Task StopWriterAsync(ChaosInstance instance)
    {
        try { await instance.Writer.DisposeAsync(); }
        catch (Exception ex)
        {
            Console.Error.WriteLine($"bench: {instance.Id}'s writer failed while stopping ({ex.GetType().Name}: {ex.Message}); its counts stand");
        }
    }

    public abstract ValueTask DisposeAsync();
}
