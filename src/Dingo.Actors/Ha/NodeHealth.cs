using System.Security.Cryptography.X509Certificates;
using Dingo.Model;

namespace Dingo.Ha;

/// <summary>What one PostgreSQL node reports about itself to health checkers.</summary>
/// <param name="NodeId">this node's id (Patroni's member name).</param>
/// <param name="InstanceId">the service instance (Patroni's scope).</param>
/// <param name="State">PostgreSQL's state (<see cref="NodeCondition.Postgres"/>).</param>
/// <param name="Role">PostgreSQL's own role (<see cref="NodeCondition.ServerRole"/>).</param>
/// <param name="IsLeader">holds the leader key in etcd right now.</param>
/// <param name="LagBytes">replicas: bytes behind the leader (null = unknown).</param>
/// <param name="Streaming">replicas: the WAL receiver is streaming.</param>
/// <param name="IsSyncStandby">a replica that is (or may be) synchronous.</param>
/// <param name="WalLsn">the primary's current WAL position, or a replica's received position, in bytes.</param>
/// <param name="Timeline">PostgreSQL's timeline, if known.</param>
/// <param name="LeaderNodeId">the node holding the leader key, if any.</param>
/// <param name="Decision">the last HA loop sentence.</param>
public sealed record NodeHealth(
    string NodeId,
    string InstanceId,
    NodeState State,
    NodeRole Role,
    bool IsLeader,
    long? LagBytes,
    bool Streaming,
    bool IsSyncStandby,
    long? WalLsn,
    int? Timeline,
    string? LeaderNodeId,
    string? Decision);

/// <summary>
/// How a node's health API speaks: with the node's certificate of the platform CA (null while the cell knows no CA: plain
/// HTTP only), and whether plain HTTP is refused (<c>dingo.postgres.require-tls</c> with a CA known).
/// </summary>
public sealed record HealthTls(X509Certificate2? Certificate, bool Required)
{
    public static HealthTls Plain { get; } = new(null, false);
}
