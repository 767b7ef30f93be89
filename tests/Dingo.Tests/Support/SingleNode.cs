using Dingo.Cells;
using Dingo.Model;
using Dingo.Postgres;
using Xunit.Abstractions;

namespace Dingo.Tests.Support;

/// <summary>
/// One PostgreSQL 15 node on the local process runtime, in a folder of its own on 127.0.0.1, started and serving;
/// removed with its folder on dispose, also when the test failed.
/// </summary>
internal sealed class SingleNode : IAsyncDisposable
{
    private readonly ITestOutputHelper _output;
    private readonly string _root;

    private SingleNode(ITestOutputHelper output, string root, LocalProcessRuntime runtime, NodeLaunchSpec spec) =>
        (_output, _root, Runtime, Spec) = (output, root, runtime, spec);

    public LocalProcessRuntime Runtime { get; }
    public NodeLaunchSpec Spec { get; }
    public int Port => Spec.Port;
    public Credentials Superuser => Spec.Superuser;

    public static async Task<SingleNode> StartAsync(ITestOutputHelper output, string name)
    {
        var root = Path.Combine("/tmp", $"dingo-{name}-" + Guid.NewGuid().ToString("N")[..12]);
        var runtime = new LocalProcessRuntime(new LocalProcessRuntimeOptions(root), new TestOutputLogger<LocalProcessRuntime>(output));
        var spec = new NodeLaunchSpec("n-" + name, name, "127.0.0.1", FreePorts.One(),
            new Credentials(DatabaseAdmin.SuperuserName, "Pw" + Guid.NewGuid().ToString("N")));
        var node = new SingleNode(output, root, runtime, spec);
        try
        {
            await runtime.CreateAsync(spec, NodeSql.Ct());
            await runtime.StartAsync(spec, null, NodeSql.Ct());
            await NodeSql.WaitServingAsync(spec, spec.Superuser);
            return node;
        }
        catch
        {
            await node.DisposeAsync();
            throw;
        }
    }

    public async ValueTask DisposeAsync()
    {
        foreach (var n in await Runtime.ListAsync(CancellationToken.None))
        {
            try { await Runtime.RemoveAsync(n.NodeId, CancellationToken.None); }
            catch (Exception ex) { _output.WriteLine($"cleanup: {n.NodeId}: {ex.Message}"); }
        }
        try { if (Directory.Exists(_root)) Directory.Delete(_root, recursive: true); }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException) { _output.WriteLine($"cleanup: {ex.Message}"); }
    }
}
