using Dingo.Model;

namespace Dingo.Ha;

/// <summary>
/// What a node is, derived in one place from its last pass: the status its cell writes to etcd (which failover, the
/// routers, provisioning and the console read) and its health API both come from here. Its table is in
/// NodeConditionTests.
/// </summary>
/// <param name="Postgres">
/// What its PostgreSQL is doing: initialising (no data yet), running (answers), starting (a process, not answering yet),
/// stopped (no process). The health API's "state", as Patroni's: a failing pass (etcd away) does not take a running
/// node out of its checks.
/// </param>
/// <param name="ServerRole">What PostgreSQL itself says, as Patroni's "role": primary out of recovery, replica in it.</param>
/// <param name="Role">
/// The cluster's view, which the routers and failover decide on: primary while it holds the leader key or takes it
/// this pass (a promotion still in recovery included), replica when in recovery and not leading, unknown when it does
/// not answer or is writable without the key (neither a primary to route to nor a replica to read from).
/// </param>
/// <param name="PassFailed">its last HA pass failed.</param>
public readonly record struct NodeCondition(NodeState Postgres, NodeRole ServerRole, NodeRole Role, bool PassFailed)
{
    /// <summary>The state its status in etcd carries: failed while its passes fail, else its PostgreSQL's.</summary>
    public NodeState State => PassFailed ? NodeState.Failed : Postgres;

    /// <summary>PostgreSQL answers and is out of recovery: it accepts writes, key or not.</summary>
    public bool Writable => ServerRole == NodeRole.Primary;

    /// <param name="local">the pass's observation (null: no pass yet)</param>
    /// <param name="leading">holds the leader key, or takes it or promotes on this pass</param>
    /// <param name="passFailed">the pass failed</param>
    public static NodeCondition Of(LocalState? local, bool leading, bool passFailed)
    {
        if (local is null) return new(NodeState.Starting, NodeRole.Unknown, NodeRole.Unknown, passFailed);
        var postgres = !local.DataInitialised ? NodeState.Initialising
            : local.Answering ? NodeState.Running
            : local.Running ? NodeState.Starting
            : NodeState.Stopped;
        var serverRole = !local.Answering ? NodeRole.Unknown : local.InRecovery ? NodeRole.Replica : NodeRole.Primary;
        var role = !local.Answering ? NodeRole.Unknown
            : leading ? NodeRole.Primary
            : local.InRecovery ? NodeRole.Replica
            : NodeRole.Unknown;
        return new(postgres, serverRole, role, passFailed);
    }
}
