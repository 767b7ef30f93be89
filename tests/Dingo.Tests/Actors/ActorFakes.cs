using System.Collections.Concurrent;
using Dingo.Cells;
using Dingo.Ha;
using Dingo.Model;
using Dingo.Routing;

namespace Dingo.Tests.Actors;

/// <summary>
/// A node's HA loop held in memory, for the actor tests: counts its passes and how many run at once, can hold a pass
/// until told (or until the actor cancels it), and records what the actor asked of it.
/// </summary>
internal sealed class FakeNodeLoop(NodeSpec spec) : INodeLoop
{
    private int _running;
    private int _maxRunning;
    private int _passes;
    private volatile TaskCompletionSource? _hold;

    public NodeSpec Spec { get; } = spec;
    public string Address => "127.0.0.1";
    public Action? PostgresExited { get; set; }
    public TimeSpan NextPassAfter { get; private set; } = TimeSpan.FromSeconds(30);
    /// <summary>The wait each pass asks for after it, by its number (1, 2, ...); 30 s when not set.</summary>
    public Func<int, TimeSpan>? Cadence { get; init; }
    public int Passes => Volatile.Read(ref _passes);
    public int MaxRunning => Volatile.Read(ref _maxRunning);
    public int Running => Volatile.Read(ref _running);
    public int Released;
    public int BackupsStopped;
    public int WatchStopped;
    /// <summary>Passes cancelled by the actor (it stopped).</summary>
    public int Cancelled;

    /// <summary>From now on, every pass waits until <see cref="Let"/> (or its cancellation).</summary>
    public void Hold() => _hold = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);

    public void Let()
    {
        var hold = _hold;
        _hold = null;
        hold?.TrySetResult();
    }

    public async Task<string> RunPassAsync(CancellationToken ct)
    {
        var now = Interlocked.Increment(ref _running);
        int max;
        while (now > (max = Volatile.Read(ref _maxRunning)) && Interlocked.CompareExchange(ref _maxRunning, now, max) != max) { }
        var number = Interlocked.Increment(ref _passes);
        NextPassAfter = Cadence?.Invoke(number) ?? TimeSpan.FromSeconds(30);
        try
        {
            if (_hold is { } hold) await hold.Task.WaitAsync(ct);
            return "no action: fake";
        }
        catch (OperationCanceledException)
        {
            Interlocked.Increment(ref Cancelled);
            throw;
        }
        finally { Interlocked.Decrement(ref _running); }
    }

    public NodeHealth Health() => new(Spec.NodeId, Spec.InstanceId, NodeState.Running, NodeRole.Primary, IsLeader: true, LagBytes: 0,
        Streaming: false, IsSyncStandby: false, WalLsn: 0, Timeline: 1, LeaderNodeId: Spec.NodeId, Decision: "no action: fake");

    /// <summary>The real health server, answering from this loop's fixed health.</summary>
    public INodeHealthApi HealthApi(System.Net.IPAddress address) =>
        new NodeHealthServer(address, Spec.ApiPort, Health, Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance);
    public void StopWatchingPostgres() => Interlocked.Increment(ref WatchStopped);

    public Task StopBackupsAsync()
    {
        Interlocked.Increment(ref BackupsStopped);
        return Task.CompletedTask;
    }

    public Task ReleaseOnShutdownAsync(CancellationToken ct)
    {
        Interlocked.Increment(ref Released);
        return Task.CompletedTask;
    }
}

/// <summary>A cell's passes held in memory: the nodes assigned to it are whatever the test sets.</summary>
internal sealed class FakeCellPasses : ICellPasses
{
    private volatile IReadOnlyList<NodeSpec> _desired = [];
    public ConcurrentQueue<IReadOnlySet<string>> Busy { get; } = new();

    public void Assign(params string[] nodeIds) =>
        _desired = nodeIds.Select(id => new NodeSpec { NodeId = id, InstanceId = "i-" + id, CellId = "cell-1", Port = 5432 }).ToList();

    public Task<CellPass> RunPassAsync(IReadOnlySet<string> busy, CancellationToken ct)
    {
        Busy.Enqueue(busy.ToHashSet());
        return Task.FromResult(new CellPass(_desired, $"{_desired.Count} node(s)"));
    }
}

/// <summary>What etcd would say to a router, held in memory.</summary>
internal sealed class FakeRouteSource : IRouteSource
{
    public volatile RouteInputs Inputs = new([], new Dictionary<string, RoutedCluster>());
    public int Reads;

    public Task<RouteInputs> ReadAsync(CancellationToken ct)
    {
        Interlocked.Increment(ref Reads);
        return Task.FromResult(Inputs);
    }
}

/// <summary>A router data path that only remembers what it was told.</summary>
internal sealed class FakeDataPath : IRouteDataPath
{
    private volatile IReadOnlyCollection<Route> _applied = [];
    public IReadOnlyCollection<Route> Applied => _applied;

    public Task ApplyAsync(IReadOnlyCollection<Route> routes, CancellationToken ct)
    {
        _applied = routes.ToList();
        return Task.CompletedTask;
    }

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}
