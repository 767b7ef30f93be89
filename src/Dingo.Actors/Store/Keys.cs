namespace Dingo.Store;

/// <summary>
/// Every etcd key Dingo writes, in one place. docs/etcd-schema.md documents each; keep the two in step.
/// </summary>
public sealed class Keys(string root)
{
    public string Root { get; } = root.TrimEnd('/');

    public string Instances => $"{Root}/instances/";
    public string Instance(string id) => $"{Instances}{id}";

    public string Operations => $"{Root}/operations/";
    public string Operation(string id) => $"{Operations}{id}";

    public string AllBindings => $"{Root}/bindings/";
    public string Bindings(string instanceId) => $"{AllBindings}{instanceId}/";
    public string Binding(string instanceId, string bindingId) => $"{Bindings(instanceId)}{bindingId}";

    public string AllNodes => $"{Root}/nodes/";
    public string Nodes(string instanceId) => $"{AllNodes}{instanceId}/";
    public string Node(string instanceId, string nodeId) => $"{Nodes(instanceId)}{nodeId}";

    public string Assignments(string cellId) => $"{Root}/assignments/{cellId}/";
    public string Assignment(string cellId, string nodeId) => $"{Assignments(cellId)}{nodeId}";

    public string AllStatus => $"{Root}/status/";
    public string Statuses(string instanceId) => $"{AllStatus}{instanceId}/";
    public string Status(string instanceId, string nodeId) => $"{Statuses(instanceId)}{nodeId}";

    public string Cells => $"{Root}/cells/";
    public string Cell(string cellId) => $"{Cells}{cellId}";

    public string Clusters => $"{Root}/clusters/";
    public string Leader(string instanceId) => $"{Clusters}{instanceId}/leader";
    /// <summary>The leader's last WAL position, so candidates can judge their lag after it is gone.</summary>
    public string Optime(string instanceId) => $"{Clusters}{instanceId}/optime";
    /// <summary>Synchronous plans: the standbys that may hold acknowledged commits (only they may take over).</summary>
    public string Sync(string instanceId) => $"{Clusters}{instanceId}/sync";
    /// <summary>Who initialised the cluster's data (created once, so two nodes never initdb one cluster).</summary>
    public string Initialize(string instanceId) => $"{Clusters}{instanceId}/initialize";
    /// <summary>A planned switchover the leader carries out.</summary>
    public string Switchover(string instanceId) => $"{Clusters}{instanceId}/switchover";
    public string Cluster(string instanceId) => $"{Clusters}{instanceId}/";

    /// <summary>Cells gone for longer than the grace period: their nodes get replaced.</summary>
    public string LostCells => $"{Root}/lost-cells/";
    public string LostCell(string cellId) => $"{LostCells}{cellId}";
    /// <summary>Cells an operator drains: no new nodes, and their nodes move away.</summary>
    /// <summary>When a cell holding nodes was first seen unregistered (the lost-cell duty's clock; broker-written).</summary>
    public string MissingCells => $"{Root}/missing-cells/";
    public string MissingCell(string cellId) => $"{MissingCells}{cellId}";

    /// <summary>The broker that runs the lost-cell duty, under that broker's lease.</summary>
    public string LostCellDuty => $"{Root}/duties/lost-cells";

    public string DrainedCells => $"{Root}/drained-cells/";
    public string DrainedCell(string cellId) => $"{DrainedCells}{cellId}";

    /// <summary>Each instance's backup state as its leader's cell last reported it (archive position, base backups, alarm).</summary>
    public string Backups => $"{Root}/backups/";
    public string Backup(string instanceId) => $"{Backups}{instanceId}";
    /// <summary>Restore drills: requests and the last result per instance.</summary>
    public string Drills => $"{Root}/drills/";
    public string Drill(string instanceId) => $"{Drills}{instanceId}";
    /// <summary>An operator asked for a drill now; the leader's cell runs it and deletes this.</summary>
    public string DrillRequest(string instanceId) => $"{DrillRequests}{instanceId}";
    public string DrillRequests => $"{Root}/drill-requests/";

    /// <summary>Each instance's history (<see cref="Model.EventRecord"/>), oldest first: keys sort by time.</summary>
    public string AllEvents => $"{Root}/events/";
    public string Events(string instanceId) => $"{AllEvents}{instanceId}/";
    /// <summary>An event: its time in UTC ticks (19 digits, so keys sort by time) and a random suffix.</summary>
    public string Event(string instanceId, DateTimeOffset at, string suffix) => $"{Events(instanceId)}{at.UtcTicks:D19}-{suffix}";

    public string Ports => $"{Root}/ports/";
    public string Port(int port) => $"{Ports}{port:D5}";
    public string PortCounter => $"{Root}/port-counter";

    /// <summary>The layout version of every record under the root (<see cref="SchemaVersion"/>).</summary>
    public string Schema => $"{Root}/schema";

    /// <summary>Live Akka cluster members (brokers, cells), each under its own process's lease (<see cref="Model.AkkaMemberRecord"/>).</summary>
    public string AkkaMembers => $"{Root}/akka/members/";
    /// <summary>host:port of the member: one key per Akka address.</summary>
    public string AkkaMember(string hostPort) => $"{AkkaMembers}{hostPort}";
    /// <summary>Held (under a short lease) by the one broker allowed to found a new Akka cluster when none is alive.</summary>
    public string AkkaFounder => $"{Root}/akka/founder";

    /// <summary>Instances whose deletion finished (<see cref="Model.InstanceTombstone"/>): their nodes' data may go.</summary>
    public string DeletedInstances => $"{Root}/deleted-instances/";
    public string DeletedInstance(string instanceId) => $"{DeletedInstances}{instanceId}";
    /// <summary>Nodes removed from their instance (<see cref="Model.NodeTombstone"/>): their data may go once safe elsewhere.</summary>
    public string RemovedNodes => $"{Root}/removed-nodes/";
    public string RemovedNode(string nodeId) => $"{RemovedNodes}{nodeId}";
    /// <summary>A random id created once per platform: an etcd without it (empty, wiped) is not the one a cell's data came from.</summary>
    public string PlatformId => $"{Root}/platform-id";
    /// <summary>The platform CA for PostgreSQL TLS (<see cref="Security.PlatformCaRecord"/>): created once, its key sealed.</summary>
    public string PlatformCa => $"{Root}/tls/ca";

    public string NodePorts => $"{Root}/node-ports/";
    public string NodePort(int port) => $"{NodePorts}{port:D5}";
}
