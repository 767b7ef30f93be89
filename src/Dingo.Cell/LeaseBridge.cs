using Dingo.Config;
using Dingo.Ha;
using Dingo.Store;
using Microsoft.Extensions.Logging;

namespace Dingo.Cell;

/// <summary>
/// A cell process that starts where a previous agent died: nodes that led then (their guard is still armed) have their
/// leader lease renewed at once, and every loop-wait after, until each node's own HA loop has taken over (it writes the
/// arm file itself) — for at most <see cref="Limit"/>. Without it, a PostgreSQL whose agent was SIGKILLed and restarted
/// would be fenced while the new process is still starting its actors. Only a lease still behind that node's leader key
/// is renewed, and only while its postmaster is the one the guard was armed with; a process that hangs renews nothing,
/// so the guard still acts at the deadline.
/// </summary>
public static class LeaseBridge
{
    public static TimeSpan Limit(HaSettings ha) => ha.Ttl * 4;

    /// <summary>The first round, awaited (before the host is built); then the background rounds, as a task.</summary>
    public static async Task<Task> StartAsync(DingoSettings settings, ILogger logger, CancellationToken ct)
    {
        var guard = new FenceGuardDirectory(CellApp.GuardPath(settings), launch: null);
        var armed = guard.Armed()
            .Where(a => a.Arm is { Lease: not 0, InstanceId: not null } && a.Arm.Postmaster.Alive && Monotonic.NowNs() < a.Arm.DeadlineNs)
            .ToDictionary(a => a.NodeId, a => a.Arm);
        if (armed.Count == 0) return Task.CompletedTask;
        var store = EtcdStore.Connect(settings);
        var until = Monotonic.Add(Monotonic.NowNs(), Limit(settings.Ha));
        using (var first = CancellationTokenSource.CreateLinkedTokenSource(ct))
        {
            // Up to the latest moment a guard deadline can still be ahead (a fresh process's first gRPC call is slow).
            first.CancelAfter(FenceGuard.DeadlineAfterRenewal(settings.Ha.Ttl));
            await RoundAsync(store, guard, armed, settings, logger, first.Token).ConfigureAwait(false);
        }
        return Task.Run(async () =>
        {
            await using var _ = store;
            while (armed.Count > 0 && Monotonic.NowNs() < until && !ct.IsCancellationRequested)
            {
                try { await Task.Delay(settings.Ha.LoopWait, ct).ConfigureAwait(false); }
                catch (OperationCanceledException) { break; }
                using var round = CancellationTokenSource.CreateLinkedTokenSource(ct);
                round.CancelAfter(settings.Ha.Ttl / 2);
                await RoundAsync(store, guard, armed, settings, logger, round.Token).ConfigureAwait(false);
            }
        }, CancellationToken.None);
    }

    /// <summary>Renews every node still bridged; drops those whose HA loop has taken over or that can no longer be renewed.</summary>
    private static async Task RoundAsync(EtcdStore store, FenceGuardDirectory guard, Dictionary<string, GuardArm> armed, DingoSettings settings,
        ILogger logger, CancellationToken ct)
    {
        var renewed = await Task.WhenAll(armed.Select(async a => (a.Key, Arm: await RenewAsync(store, guard, a.Key, a.Value, settings, logger, ct).ConfigureAwait(false))))
            .ConfigureAwait(false);
        foreach (var (node, arm) in renewed)
        {
            if (arm is null) armed.Remove(node);
            else armed[node] = arm;
        }
    }

    /// <returns>the arming written, or null when this node is no longer the bridge's to renew</returns>
    private static async Task<GuardArm?> RenewAsync(EtcdStore store, FenceGuardDirectory guard, string node, GuardArm arm, DingoSettings settings,
        ILogger logger, CancellationToken ct)
    {
        // The node's HA loop writes the arm file itself once it runs: from then on it is its to renew.
        if (guard.Armed(node) != arm || !arm.Postmaster.Alive) return null;
        try
        {
            var key = await store.GetAsync<Model.LeaderRecord>(store.Keys.Leader(arm.InstanceId!), ct).ConfigureAwait(false);
            if (key is null || key.Value.NodeId != node || key.Lease != arm.Lease) return null;
            var sent = Monotonic.NowNs();
            if (!await store.KeepAliveOnceAsync(arm.Lease, ct).ConfigureAwait(false)) return null;
            var next = arm with { DeadlineNs = Monotonic.Add(sent, FenceGuard.DeadlineAfterRenewal(settings.Ha.Ttl)) };
            // Moved on only if nothing changed meanwhile (the guard may have acted, or the HA loop taken over).
            if (guard.Armed(node) != arm) return null;
            guard.Arm(node, next);
            return next;
        }
        catch (Exception ex) when (ex is Grpc.Core.RpcException or OperationCanceledException)
        {
            logger.LogWarning("node {Node}: could not renew its leader lease while the cell starts: {Error}", node, ex.Message);
            return arm;
        }
    }
}
