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

    public string Bindings(string instanceId) => $"{Root}/bindings/{instanceId}/";
    public string Binding(string instanceId, string bindingId) => $"{Bindings(instanceId)}{bindingId}";

    public string AllNodes => $"{Root}/nodes/";
    public string Nodes(string instanceId) => $"{AllNodes}{instanceId}/";
    public string Node(string instanceId, string nodeId) => $"{Nodes(instanceId)}{nodeId}";

    public string Assignments(string cellId) => $"{Root}/assignments/{cellId}/";
    public string Assignment(string cellId, string nodeId) => $"{Assignments(cellId)}{nodeId}";

    public string AllStatus => $"{Root}/status/";
    public string Status(string nodeId) => $"{AllStatus}{nodeId}";

    public string Cells => $"{Root}/cells/";
    public string Cell(string cellId) => $"{Cells}{cellId}";

    public string Clusters => $"{Root}/clusters/";
    public string Leader(string instanceId) => $"{Clusters}{instanceId}/leader";

    public string Ports => $"{Root}/ports/";
    public string Port(int port) => $"{Ports}{port:D5}";
    public string PortCounter => $"{Root}/port-counter";

    public string NodePorts => $"{Root}/node-ports/";
    public string NodePort(int port) => $"{NodePorts}{port:D5}";
}
