using Dingo.Cells;
using Dingo.Logging;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Dingo.Cell;

/// <summary>
/// The PostgreSQL logs of a Docker-runtime cell's nodes, shipped to the syslog receiver as a process cell's are (APP-NAME
/// postgres, PROCID the node id, the instance id in front of the line): one engine log stream followed per running node
/// container. Every few seconds the containers are listed again: a new or restarted container is followed, one gone is
/// let go. A follower that ends (the container stopped, the engine restarted) picks up from the second of its last line,
/// so a line may come twice at that boundary but none is skipped; what a node wrote before this cell started is not
/// shipped again. The engine keeps and rolls the logs themselves (<see cref="DockerRuntimeOptions.LogMaxBytes"/>).
/// </summary>
internal sealed class ContainerLogs(DockerRuntime runtime, SyslogSink sink, ILogger<ContainerLogs> logger) : BackgroundService
{
    private static readonly TimeSpan Every = TimeSpan.FromSeconds(5);

    private sealed class Following
    {
        public required string ContainerId { get; init; }
        public required CancellationTokenSource Stop { get; init; }
        public required Task Task { get; set; }
        /// <summary>When its last line came (null: none yet): where a new follower of the same container starts.</summary>
        public DateTimeOffset? LastLine { get; set; }
    }

    private readonly Dictionary<string, Following> _following = new(StringComparer.Ordinal);

    /// <summary>Lines shipped so far (tests and metrics read it).</summary>
    public long Shipped => Interlocked.Read(ref _shipped);
    private long _shipped;

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        try
        {
            while (!stoppingToken.IsCancellationRequested)
            {
                try { await PassAsync(stoppingToken).ConfigureAwait(false); }
                catch (Exception ex) when (ex is ContainerEngineException or InvalidOperationException && !stoppingToken.IsCancellationRequested)
                {
                    logger.LogWarning("PostgreSQL logs of the node containers: {Error}; trying again in {Seconds} s", ex.Message, Every.TotalSeconds);
                }
                try { await Task.Delay(Every, stoppingToken).ConfigureAwait(false); }
                catch (OperationCanceledException) { break; }
            }
        }
        finally
        {
            await StopAllAsync().ConfigureAwait(false);
        }
    }

    /// <summary>One look at the node containers: follow the new ones, let go of the gone (internal: tests drive it).</summary>
    internal async Task PassAsync(CancellationToken ct)
    {
        var running = (await runtime.ListAsync(ct).ConfigureAwait(false)).Where(n => n.Running && n.ContainerId is not null).ToList();
        var attaching = new List<Task>();
        foreach (var node in running)
        {
            if (_following.TryGetValue(node.NodeId, out var known) && known.ContainerId == node.ContainerId && !known.Task.IsCompleted) continue;
            var resumeFrom = known is not null && known.ContainerId == node.ContainerId ? known.LastLine : null;
            if (known is not null) await LetGoAsync(node.NodeId).ConfigureAwait(false);
            // A container seen for the first time: from now on (tail 0). The same container's follower again: from its last line.
            var following = new Following
            {
                ContainerId = node.ContainerId!, Stop = CancellationTokenSource.CreateLinkedTokenSource(ct), Task = Task.CompletedTask,
                LastLine = resumeFrom ?? DateTimeOffset.UtcNow,
            };
            var (nodeId, instanceId) = (node.NodeId, node.InstanceId);
            var attached = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            following.Task = Task.Run(async () =>
            {
                try
                {
                    await runtime.FollowNodeLogsAsync(nodeId, 0, line =>
                    {
                        following.LastLine = DateTimeOffset.UtcNow;
                        if (line.Length == 0) return;
                        NodeLogs.Ship(sink, nodeId, instanceId, line);
                        Interlocked.Increment(ref _shipped);
                    }, following.Stop.Token, since: resumeFrom, attached: () => attached.TrySetResult()).ConfigureAwait(false);
                }
                catch (OperationCanceledException) when (following.Stop.IsCancellationRequested) { }
                catch (Exception ex) when (!following.Stop.IsCancellationRequested)
                {
                    logger.LogInformation("PostgreSQL log of {Node}: the engine's stream ended ({Error}); followed again at the next look", nodeId, ex.Message);
                }
                finally { attached.TrySetResult(); }
            }, CancellationToken.None);
            _following[node.NodeId] = following;
            attaching.Add(attached.Task);
        }
        // A look ends once the engine streams the new followers' lines (all at once, bounded): a line logged after it is
        // shipped. Returning at once lost a line logged just after the look on a busy machine (fresh198: the stream,
        // from tail 0, was attached after that line).
        try { await Task.WhenAll(attaching).WaitAsync(TimeSpan.FromSeconds(5), ct).ConfigureAwait(false); }
        catch (TimeoutException) { }
        foreach (var gone in _following.Keys.Where(id => running.All(n => n.NodeId != id)).ToList())
            await LetGoAsync(gone).ConfigureAwait(false);
    }

    private async Task LetGoAsync(string nodeId)
    {
        if (!_following.Remove(nodeId, out var following)) return;
        await following.Stop.CancelAsync().ConfigureAwait(false);
        try { await following.Task.WaitAsync(TimeSpan.FromSeconds(5)).ConfigureAwait(false); }
        catch (TimeoutException) { logger.LogWarning("PostgreSQL log of {Node}: its follower did not stop within 5 s", nodeId); }
        following.Stop.Dispose();
    }

    internal async Task StopAllAsync()
    {
        foreach (var nodeId in _following.Keys.ToList()) await LetGoAsync(nodeId).ConfigureAwait(false);
    }

    public override void Dispose()
    {
        foreach (var following in _following.Values) following.Stop.Dispose();
        base.Dispose();
    }
}
