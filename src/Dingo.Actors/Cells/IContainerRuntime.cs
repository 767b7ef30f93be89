using Dingo.Model;

namespace Dingo.Cells;

/// <summary>
/// Runs PostgreSQL nodes on one cell. The cell's reconcile logic drives this and never knows which
/// implementation it has (local processes now, Docker Engine API later). Every method is idempotent:
/// calling it again after a crash half-way through finishes the job or does nothing.
/// </summary>
public interface IContainerRuntime
{
    /// <summary>"process" or "docker": shown to operators.</summary>
    string Kind { get; }

    /// <summary>Every node this runtime holds on this cell (data present), running or not.</summary>
    Task<IReadOnlyList<RuntimeNode>> ListAsync(CancellationToken cancellationToken);

    /// <summary>Initialises the node's data (initdb with the superuser and its password); resumes a half-made node.</summary>
    Task CreateAsync(NodeLaunchSpec spec, CancellationToken cancellationToken);

    /// <summary>Starts PostgreSQL on spec.ListenAddress:spec.Port; returns once the process is launched (not necessarily accepting).</summary>
    Task StartAsync(NodeLaunchSpec spec, CancellationToken cancellationToken);

    /// <summary>Stops PostgreSQL (fast shutdown), keeping the data.</summary>
    Task StopAsync(string nodeId, CancellationToken cancellationToken);

    /// <summary>Stops PostgreSQL if it runs and deletes every byte of the node's data.</summary>
    Task RemoveAsync(string nodeId, CancellationToken cancellationToken);
}

/// <param name="Initialised">initdb finished: the data directory is complete.</param>
/// <param name="Running">the postmaster process is alive (not a zombie).</param>
public sealed record RuntimeNode(string NodeId, bool Initialised, bool Running, int? Pid, string Detail);

public sealed record NodeLaunchSpec(string NodeId, string InstanceId, string ListenAddress, int Port, Credentials Superuser);
