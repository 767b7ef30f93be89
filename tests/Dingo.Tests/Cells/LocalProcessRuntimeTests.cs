using Dingo.Cells;
using Xunit.Abstractions;

namespace Dingo.Tests.Cells;

/// <summary>The runtime contract on local PostgreSQL 15 processes, plus what is particular to them (folders, pids).</summary>
[Dingo.Tests.Support.SuiteCost(48)]
public sealed class LocalProcessRuntimeTests(ITestOutputHelper output) : ContainerRuntimeTests(output)
{
    private readonly string _dataRoot = Path.Combine("/tmp", "dingo-rt-" + Guid.NewGuid().ToString("N")[..12]);

    protected override IContainerRuntime NewRuntime() => new LocalProcessRuntime(new LocalProcessRuntimeOptions(_dataRoot), new OutputLogger(Output));

    protected override Task<string> IncarnationAsync(RuntimeNode node)
    {
        Assert.NotNull(node.Pid);
        Assert.Equal($"running as pid {node.Pid}", node.Detail);
        return Task.FromResult($"pid {node.Pid}");
    }

    protected override Task KillAsync(RuntimeNode node)
    {
        KillQuietly(node.Pid!.Value);
        return Task.CompletedTask;
    }

    protected override Task<bool> DataExistsAsync(string nodeId) => Task.FromResult(Directory.Exists(Path.Combine(_dataRoot, nodeId)));

    protected override Task<string> LogTailAsync(string nodeId)
    {
        var log = Path.Combine(_dataRoot, nodeId, "postgres.log");
        return Task.FromResult(File.Exists(log) ? string.Join('\n', File.ReadLines(log).TakeLast(20)) : "(no postgres.log)");
    }

    protected override Task CleanupAsync()
    {
        if (!Directory.Exists(_dataRoot)) return Task.CompletedTask;
        foreach (var dir in Directory.GetDirectories(_dataRoot))
        {
            // Whatever RemoveAsync missed: kill the postmaster named in postmaster.pid.
            var pidFile = Path.Combine(dir, "pgdata", "postmaster.pid");
            if (File.Exists(pidFile) && int.TryParse(File.ReadLines(pidFile).FirstOrDefault(), out var pid)) KillQuietly(pid);
        }
        try
        {
            Directory.Delete(_dataRoot, recursive: true);
        }
        catch (Exception e)
        {
            Output.WriteLine($"cleanup: could not delete {_dataRoot}: {e.Message}");
        }
        return Task.CompletedTask;
    }

    [Fact]
    public async Task Create_is_idempotent_and_redoes_a_half_made_node()
    {
        var spec = NewSpec("node-f");
        var nodeDir = Path.Combine(_dataRoot, spec.NodeId);
        await Runtime.CreateAsync(spec, Ct());
        var marker = Path.Combine(nodeDir, "initialised");
        var markerWritten = File.GetLastWriteTimeUtc(marker);
        var sentinel = Path.Combine(nodeDir, "pgdata", "sentinel");
        await File.WriteAllTextAsync(sentinel, "x");

        await Runtime.CreateAsync(spec, Ct());
        Assert.True(File.Exists(sentinel), "second CreateAsync touched a complete data directory");
        Assert.Equal(markerWritten, File.GetLastWriteTimeUtc(marker));

        // Half-made: data present but no marker, as if initdb died part-way.
        var half = NewSpec("node-g");
        var halfData = Path.Combine(_dataRoot, half.NodeId, "pgdata");
        Directory.CreateDirectory(halfData);
        await File.WriteAllTextAsync(Path.Combine(halfData, "junk"), "partial");
        Assert.False(Assert.Single(await Runtime.ListAsync(Ct()), n => n.NodeId == half.NodeId).Initialised);

        await Runtime.CreateAsync(half, Ct());
        Assert.False(File.Exists(Path.Combine(halfData, "junk")));
        Assert.True(File.Exists(Path.Combine(halfData, "PG_VERSION")));
        Assert.True(Assert.Single(await Runtime.ListAsync(Ct()), n => n.NodeId == half.NodeId).Initialised);

        await Runtime.StartAsync(half, null, Ct());
        await WaitUntilServingAsync(half);
        Assert.Equal(1, await ScalarAsync(half, "SELECT 1"));
    }

    /// <summary>
    /// A node whose port another process holds (bench/Chaos once handed a restarted cell's Akka port to a node): PostgreSQL
    /// exits at every start, and the node's detail says why instead of a bare "stopped".
    /// </summary>
    [Fact]
    public async Task A_node_that_cannot_start_says_why_in_its_detail()
    {
        var spec = NewSpec("node-p");
        using var squatter = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, spec.Port);
        squatter.Start();
        await Runtime.CreateAsync(spec, Ct());
        try { await Runtime.StartAsync(spec, null, Ct()); }
        catch (InvalidOperationException e) { Output.WriteLine($"start threw: {e.Message}"); }

        RuntimeNode? node = null;
        var deadline = DateTime.UtcNow.AddSeconds(15);
        while (DateTime.UtcNow < deadline)
        {
            node = Assert.Single(await Runtime.ListAsync(Ct()), n => n.NodeId == spec.NodeId);
            if (!node.Running) break;
            await Task.Delay(100);
        }
        Assert.NotNull(node);
        Assert.False(node.Running, $"PostgreSQL runs on a port another process holds: {node.Detail}");
        Assert.StartsWith("stopped: FATAL: could not create any TCP/IP sockets", node.Detail, StringComparison.Ordinal);
        Assert.Contains("Address already in use", node.Detail, StringComparison.Ordinal);

        // Once the port is free the same node starts, and its detail no longer carries the old failure.
        squatter.Stop();
        await Runtime.StartAsync(spec, null, Ct());
        await WaitUntilServingAsync(spec);
        await Runtime.StopAsync(spec.NodeId, Ct());
        Assert.Equal("stopped", Assert.Single(await Runtime.ListAsync(Ct()), n => n.NodeId == spec.NodeId).Detail);
    }

    private static void KillQuietly(int pid)
    {
        try
        {
            using var process = System.Diagnostics.Process.GetProcessById(pid);
            process.Kill(); // SIGKILL on Linux
        }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException or System.ComponentModel.Win32Exception)
        {
            // Already gone.
        }
    }
}
