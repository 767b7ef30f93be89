using Dingo.Cells;
using Dingo.Config;
using Dingo.Health;
using Dingo.Model;
using Dingo.Store;
using Microsoft.Extensions.Logging;

namespace Dingo.Ha;

/// <summary>
/// What the pieces of one node's HA pass share (<see cref="NodeObserver"/> observes, <see cref="NodeActions"/> acts,
/// <see cref="LeaderLease"/> keeps the lease and fences, <see cref="NodeAgent"/> runs the pass and reports): the node and
/// what it talks to, and the few facts one piece learns and another acts on. All of it may be lost safely: an agent
/// that restarts reads it again, as its first pass does.
/// </summary>
internal sealed class AgentState(NodeSpec spec, EtcdStore store, IContainerRuntime runtime, DingoSettings settings, ILogger logger,
    EventJournal? events, Dingo.Backups.CellBackups? backups)
{
    public NodeSpec Spec { get; } = spec;
    public EtcdStore Store { get; } = store;
    public IContainerRuntime Runtime { get; } = runtime;
    public DingoSettings Settings { get; } = settings;
    public HaSettings Ha => Settings.Ha;
    public ILogger Logger { get; } = logger;
    public EventJournal? Events { get; } = events;
    public Keys K => Store.Keys;
    public string Address => Settings.Cell.Address;

    /// <summary>The cell's backups when enabled (null: disabled): the leader archives; a bootstrap may restore.</summary>
    public Dingo.Backups.CellBackups? Backups { get; } = backups is { Settings.Enabled: true } ? backups : null;
    /// <summary>The archive's timeline history files, fetched while a replica, added to pg_wal right before a promotion.</summary>
    public Dingo.Backups.TimelineHistories? Histories { get; } =
        backups is { Settings.Enabled: true } ? new Dingo.Backups.TimelineHistories(backups.Store, spec.InstanceId, logger) : null;

    /// <summary>The instance record the last read brought (null: none yet, or the instance is being deleted).</summary>
    public InstanceRecord? Record { get; set; }
    /// <summary>The last pass's observation, for the node's health API.</summary>
    public HaInput? LastInput { get; set; }
    /// <summary>The cluster's other node ids, as read by this pass's observation.</summary>
    public IReadOnlyList<string> Others { get; set; } = [];
    /// <summary>
    /// No other node could take the leader key over (as last read): there is none, or each one's last report says it has
    /// no data yet (a new cluster's replicas waiting to clone or cloning). A node that has not reported could.
    /// </summary>
    public bool NoneCouldTakeOver { get; set; }
    /// <summary>The other members' health APIs, from the last etcd read: whom a leader asks in failsafe mode.</summary>
    public IReadOnlyList<(string NodeId, string? Host, int ApiPort)> Peers { get; set; } = [];
    /// <summary>What PostgreSQL answered in the last pass (null: it did not), for the cell's metrics.</summary>
    public PostgresObservation? LastPg { get; set; }
    /// <summary>Times PostgreSQL was found no longer running after it had answered.</summary>
    public int Restarts { get; set; }

    /// <summary>The leader this node's PostgreSQL was last started or reconfigured to stream from.</summary>
    public string? Following { get; set; }
    public DateTime? NotStreamingSince { get; set; }
    public bool RewindFailed { get; set; }
    /// <summary>Roles and database prepared since PostgreSQL last started as this leader's.</summary>
    public bool Prepared { get; set; }
    /// <summary>The WAL position this leader last published (null: none since PostgreSQL last started).</summary>
    public long? LastOptime { get; set; }

    /// <summary>Started since it last answered: a start that ends with PostgreSQL gone again counts as failed.</summary>
    public bool AwaitingStart { get; set; }
    /// <summary>Starts in a row that failed (threw, or PostgreSQL exited before answering), and why the last did.</summary>
    public int FailedStarts { get; set; }
    public string? StartFailure { get; set; }

    /// <summary>The plan of the last pass replicates synchronously.</summary>
    public bool Synchronous { get; set; }
    /// <summary>The instance asked for store-synchronous commit, as this pass's record says (read once per pass).</summary>
    public bool StoreSync { get; set; }
    /// <summary>This node restored the cluster from a backup: its first base backup is taken at once.</summary>
    public bool Restored { get; set; }
    /// <summary>Restored from another instance's backups: its login roles must be disabled once this node leads.</summary>
    public bool ClonedFromOther { get; set; }

    /// <summary>The current pass's steps, timed: a pass slower than a quarter TTL says where its time went.</summary>
    public StepTimes Pass { get; set; } = new();
    /// <summary>How long this pass's asking of the members' WAL positions took (the step before taking the key).</summary>
    public TimeSpan PositionsTook { get; set; }

    /// <summary>PostgreSQL (re)started or went away: a leader prepares its roles and publishes its position afresh.</summary>
    public void ForgetLeading()
    {
        Prepared = false;
        LastOptime = null;
    }

    public void StartFailed(string why)
    {
        FailedStarts++;
        StartFailure = why;
        Logger.LogWarning("node {Node}: start #{Count} in a row failed: {Why}", Spec.NodeId, FailedStarts, why);
    }

    /// <summary>An etcd call failed or was cut short by the fencing deadline (not by the actor stopping).</summary>
    public static bool EtcdUnreachable(Exception ex, CancellationToken ct) =>
        ex is Grpc.Core.RpcException || (ex is OperationCanceledException && !ct.IsCancellationRequested);
}
