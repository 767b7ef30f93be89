namespace Dingo.Health;

/// <summary>What a node's PostgreSQL said about itself in one probe (the HA pass reads it; the cell's metrics show it).</summary>
/// <param name="ReplayLagSeconds">a replica with WAL still to replay: the age of the last transaction it replayed; else 0</param>
/// <param name="Connections">client backends connected, not counting the platform's own pooled ones (HA probe, backup duty)</param>
/// <param name="SynchronousStandbyNames">synchronous_standby_names as the server holds it now</param>
/// <param name="Slots">the server's physical replication slots, with whether each is active</param>
public sealed record PostgresObservation(bool InRecovery, long Lsn, int Timeline, bool Streaming, string? SenderHost, int? SenderPort,
    double ReplayLagSeconds = 0, int Connections = 0)
{
    public string? SynchronousStandbyNames { get; init; }
    public IReadOnlyDictionary<string, bool>? Slots { get; init; }
}
