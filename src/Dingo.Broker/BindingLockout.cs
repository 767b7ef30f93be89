using Dingo.Model;
using Dingo.Postgres;
using Dingo.Store;

namespace Dingo.Broker;

/// <summary>
/// What an unbind does in PostgreSQL: the binding's role stops logging in and its sessions end on every node of the
/// instance — the primary and each running replica (the read-only port leads there) — before the role is dropped.
/// Order matters: the lock-out is written on the primary first, and a replica's sessions are ended only once it has
/// replayed it, so no new session can start behind the termination. Run again after a failure, it finishes the job.
/// </summary>
public static class BindingLockout
{
    /// <summary>How long a replica may take to replay the lock-out before the unbind answers 503 (and keeps the binding).</summary>
    public static readonly TimeSpan ReplayPatience = TimeSpan.FromSeconds(10);

    /// <returns>null when done; otherwise why not (the binding must be kept, the caller answers 503)</returns>
    public static async Task<string?> RunAsync(EtcdStore store, InstanceRecord instance, LeaderRecord leader, string roleName, Action<string> log, CancellationToken ct)
    {
        string? lockedOutAt;
        try
        {
            lockedOutAt = await DatabaseAdmin.LockOutBindingRoleAsync(leader.Host, leader.Port, instance.Superuser, instance.Database, roleName, ct).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is Npgsql.NpgsqlException or TimeoutException)
        {
            return $"could not lock the binding's role out on the primary: {ex.Message}";
        }
        if (lockedOutAt is not null)
        {
            var statuses = await store.ListAsync<NodeStatus>(store.Keys.Statuses(instance.Id), ct).ConfigureAwait(false);
            var deadline = DateTime.UtcNow + ReplayPatience;
            // Nodes without a running status are down, or on a cell whose lease lapsed: no session runs on them through the platform.
            var others = statuses.Select(s => s.Value).Where(s => s.NodeId != leader.NodeId && s.State == NodeState.Running).ToList();
            var ended = await Task.WhenAll(others.Select(async node =>
            {
                try
                {
                    var n = await DatabaseAdmin.EndSessionsOnNodeAsync(node.Host, node.Port, instance.Superuser, roleName, lockedOutAt, deadline, ct).ConfigureAwait(false);
                    if (n > 0) log($"ended {n} session(s) of {roleName} on {node.NodeId}");
                    return null;
                }
                catch (Exception ex) when (ex is Npgsql.NpgsqlException or TimeoutException)
                {
                    return $"{node.NodeId}: {ex.Message}";
                }
            })).ConfigureAwait(false);
            if (ended.Where(e => e is not null).ToList() is { Count: > 0 } failures)
                return $"could not end the binding's sessions on every replica ({string.Join("; ", failures)})";
        }
        try
        {
            await DatabaseAdmin.DropBindingRoleAsync(leader.Host, leader.Port, instance.Superuser, instance.Database, roleName, ct).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is Npgsql.NpgsqlException or TimeoutException)
        {
            return $"could not drop the binding's role on the primary: {ex.Message}";
        }
        return null;
    }
}
