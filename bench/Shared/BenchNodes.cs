using System.Net;
using System.Net.Sockets;
using Dingo.Backups;
using Dingo.Cells;
using Dingo.Model;
using Microsoft.Extensions.Logging;

namespace Dingo.Bench.Shared;

/// <summary>
/// PostgreSQL 15 nodes of the bench's own, run by Dingo's <see cref="LocalProcessRuntime"/> (pg_ctl, as the
/// `postgres` user when we are root) under a temporary folder, each on a free 127.0.0.1 port. Disposal removes every
/// node the runtime still knows (stopped by the PID in postmaster.pid) and deletes the folder.
/// </summary>
internal sealed class BenchNodes : IAsyncDisposable
{
    public const string PgBin = "/usr/lib/postgresql/15/bin";

    private BenchNodes(string root, LocalProcessRuntime runtime)
    {
        Root = root;
        Runtime = runtime;
    }

    /// <summary>The temporary folder: nodes/ holds the data directories, the rest is the bench's.</summary>
    public string Root { get; }

    public LocalProcessRuntime Runtime { get; }

    public static BenchNodes Create(string prefix, string sharedBuffers = "32MB")
    {
        // Not CreateTempSubdirectory: its 0700 would keep the postgres user out of the node folders below.
        var root = Path.Combine(Path.GetTempPath(), prefix + Guid.NewGuid().ToString("N")[..10]);
        Directory.CreateDirectory(root);
        var options = new LocalProcessRuntimeOptions(Path.Combine(root, "nodes"), PgBin) { SharedBuffers = sharedBuffers };
        return new BenchNodes(root, new LocalProcessRuntime(options, new StderrLogger<LocalProcessRuntime>(LogLevel.Warning)));
    }

    public async Task<NodeLaunchSpec> CreateAndStartAsync(string nodeId, string instanceId, Credentials superuser, CancellationToken ct)
    {
        var spec = new NodeLaunchSpec(nodeId, instanceId, "127.0.0.1", FreePort(), superuser);
        await Runtime.CreateAsync(spec, ct);
        await Runtime.StartAsync(spec, null, ct);
        await Sql.WaitServingAsync(spec, ct);
        return spec;
    }

    /// <summary>A new node from a prepared restore (base backup and WAL fetched from the store), started and serving.</summary>
    public async Task<NodeLaunchSpec> RestoreAsync(string nodeId, string instanceId, Credentials superuser, RestoreInput input, CancellationToken ct)
    {
        var spec = new NodeLaunchSpec(nodeId, instanceId, "127.0.0.1", FreePort(), superuser);
        await Runtime.RestoreAsync(spec, input, ct);
        await Runtime.StartAsync(spec, null, ct);
        await Sql.WaitServingAsync(spec, ct);
        return spec;
    }

    public async Task<int> PostmasterPidAsync(string nodeId, CancellationToken ct)
    {
        var node = (await Runtime.ListAsync(ct)).SingleOrDefault(n => n.NodeId == nodeId);
        return node?.Pid ?? throw new InvalidOperationException($"node {nodeId} has no running postmaster");
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            foreach (var node in await Runtime.ListAsync(CancellationToken.None))
            {
                using var limit = new CancellationTokenSource(TimeSpan.FromSeconds(60));
                try { await Runtime.RemoveAsync(node.NodeId, limit.Token); }
                catch (Exception ex) { Console.Error.WriteLine($"bench: could not remove node {node.NodeId}: {ex.Message}"); }
            }
        }
        finally
        {
            try { Directory.Delete(Root, recursive: true); }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                Console.Error.WriteLine($"bench: could not delete {Root}: {ex.Message}");
            }
        }
    }

    /// <summary>A 127.0.0.1 port nobody listens on now (the kernel's choice).</summary>
    public static int FreePort()
    {
        using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        socket.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        return ((IPEndPoint)socket.LocalEndPoint!).Port;
    }
}
