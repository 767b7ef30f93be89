using Dingo.Cells;
using Dingo.Model;
using Dingo.Postgres;
using Microsoft.Extensions.Logging;

namespace Dingo.Ha;

/// <summary>
/// The standby piece of a node's HA actions: starting PostgreSQL read-only (following a leader, or none yet), rewinding
/// it onto a new leader's timeline, and waiting for a PostgreSQL just started to answer. What it learns (a failed start,
/// a failed rewind, whom it follows) goes into <see cref="AgentState"/> for the next observation.
/// </summary>
internal sealed class StandbySteps(AgentState state)
{
    private string NodeId => state.Spec.NodeId;

    public static ReplicationSource Source(LeaderRecord leader, InstanceRecord record) =>
        new(leader.Host, leader.Port, record.Replication ?? throw new InvalidOperationException($"instance {record.Id} has no replication role: it cannot have replicas"));

    public StandbyConfig Standby(LeaderRecord? leader, InstanceRecord record) =>
        new(leader is null ? null : Source(leader, record), PostgresProbe.SlotName(NodeId), NodeId);

    /// <param name="leaderAfterCrash">this node leads and its PostgreSQL crashed: it is started in place, to be promoted</param>
    public async Task StartAsync(NodeLaunchSpec launch, LeaderRecord? leader, InstanceRecord record, CancellationToken ct, bool leaderAfterCrash = false)
    {
        try
        {
            await state.Runtime.StartAsync(launch, Standby(leader, record) with { LeaderAfterCrash = leaderAfterCrash }, ct).ConfigureAwait(false);
            state.AwaitingStart = true;
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            state.StartFailed(ex.Message);
            throw;
        }
        state.Following = leader?.NodeId;
        state.NotStreamingSince = DateTime.UtcNow;
        state.ForgetLeading();
    }

    public async Task TryRewindAsync(NodeLaunchSpec launch, LeaderRecord leader, InstanceRecord record, CancellationToken ct)
    {
        try
        {
            await state.Runtime.RewindAsync(launch, new ReplicationSource(leader.Host, leader.Port, record.Superuser), ct).ConfigureAwait(false);
            state.RewindFailed = false;
        }
        catch (InvalidOperationException ex)
        {
            state.RewindFailed = true;
            state.Logger.LogWarning("node {Node}: pg_rewind from {Leader} failed; it will be re-cloned: {Error}", NodeId, leader.NodeId, ex.Message);
        }
    }

    /// <summary>Polls PostgreSQL just started until it answers, for about a quarter of the TTL (an attempt may take longer).</summary>
    public async Task WaitUntilAnsweringAsync(PostgresProbe probe, CancellationToken ct)
    {
        var until = DateTime.UtcNow + state.Ha.Ttl / 4;
        while (DateTime.UtcNow < until)
        {
            try
            {
                await probe.ObserveAsync(ct).ConfigureAwait(false);
                return;
            }
            catch (Exception ex) when (ex is Npgsql.NpgsqlException or TimeoutException or System.Net.Sockets.SocketException)
            {
                await Task.Delay(50, ct).ConfigureAwait(false);
            }
        }
    }
}
