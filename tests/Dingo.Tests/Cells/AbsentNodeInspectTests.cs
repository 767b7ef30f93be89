using Dingo.Cells;
using Dingo.Config;
using Dingo.Tests.Support;
using Microsoft.Extensions.Logging.Abstractions;

namespace Dingo.Tests.Cells;

/// <summary>
/// A node without a container yet (a replica waiting for its leader or for the cell's clone turn) is asked about by its
/// HA pass every second; each inspect was four calls into the engine. While the runtime has not touched the node (its
/// lock untaken), the answer is reused for a while; any change the runtime makes, and time, send the next one to the
/// engine again. A node with a container is always asked: it can stop by itself. The engine here answers from memory
/// (<see cref="FakeEngine"/>) and counts what it is asked.
/// </summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class AbsentNodeInspectTests : IDisposable
{
    private const string Platform = "/absent-node";
    private const string Waiting = "n-wait01";
    private const string Running = "n-run001";
    private readonly FakeEngine _engine;

    public AbsentNodeInspectTests()
    {
        var labels = $$"""{"dingo.platform":"{{Platform}}","dingo.cell":"cell-1","dingo.instance":"i-1","dingo.node":"NODE","dingo.kind":"node"}""";
        _engine = new FakeEngine((method, path) => (method, path) switch
        {
            ("GET", var p) when p.Contains($"/containers/dingo-{Running}/json", StringComparison.Ordinal) => (200,
                $$$"""{"Id":"c0ffee000001","Name":"/dingo-{{{Running}}}","Image":"sha256:1","State":{"Status":"running","Running":true,"ExitCode":0},"Config":{"Image":"localhost/dingo/postgres:15","Labels":{{{labels.Replace("NODE", Running, StringComparison.Ordinal)}}}}}""",
                TimeSpan.Zero),
            ("GET", var p) when p.Contains("/containers/dingo-", StringComparison.Ordinal) && p.EndsWith("/json", StringComparison.Ordinal) =>
                (404, """{"message":"no such container"}""", TimeSpan.Zero),
            ("GET", var p) when p.Contains($"/volumes/dingo-{Waiting}", StringComparison.Ordinal) => (200,
                $$$"""{"Name":"dingo-{{{Waiting}}}","Driver":"local","Mountpoint":"/x","Labels":{{{labels.Replace("NODE", Waiting, StringComparison.Ordinal)}}}}""", TimeSpan.Zero),
            ("GET", var p) when p.Contains("/containers/json", StringComparison.Ordinal) => (200, "[]", TimeSpan.Zero),
            _ => (404, """{"message":"not here"}""", TimeSpan.Zero),
        });
    }

    public void Dispose() => _engine.Dispose();

    private DockerRuntime Runtime(TimeSpan absentReuse)
    {
        return new DockerRuntime(new DockerRuntimeOptions("cell-1", _engine.Settings(Platform)) { AbsentReuse = absentReuse }, NullLogger.Instance);
    }

    [Fact]
    public async Task A_node_without_a_container_is_asked_again_only_after_a_change_of_the_runtime_or_a_while()
    {
        using var runtime = Runtime(TimeSpan.FromSeconds(30));
        var first = await runtime.InspectAsync(Waiting, CancellationToken.None);
        Assert.False(first!.Initialised);
        var asked = _engine.Requests.Count;
        Assert.True(asked >= 3, $"the first inspect asked the engine {asked} times");

        // Again, with nothing changed: the same answer, not asked.
        Assert.Equal(first, await runtime.InspectAsync(Waiting, CancellationToken.None));
        Assert.Equal(asked, _engine.Requests.Count);

        // While the runtime changes the node (its lock held), and after, the engine is asked.
        using (await runtime.Locks.LockAsync(Waiting, CancellationToken.None))
        {
            Assert.False((await runtime.InspectAsync(Waiting, CancellationToken.None))!.Initialised);
            Assert.Equal(2 * asked, _engine.Requests.Count);
        }
        Assert.False((await runtime.InspectAsync(Waiting, CancellationToken.None))!.Initialised);
        Assert.Equal(3 * asked, _engine.Requests.Count);
        Assert.False((await runtime.InspectAsync(Waiting, CancellationToken.None))!.Initialised);
        Assert.Equal(3 * asked, _engine.Requests.Count);

        // Another node's change is not this node's.
        using (await runtime.Locks.LockAsync("n-other1", CancellationToken.None)) { }
        Assert.False((await runtime.InspectAsync(Waiting, CancellationToken.None))!.Initialised);
        Assert.Equal(3 * asked, _engine.Requests.Count);
    }

    [Fact]
    public async Task The_answer_for_a_node_without_a_container_lasts_only_a_while_and_one_with_a_container_is_always_asked()
    {
        using var runtime = Runtime(TimeSpan.FromMilliseconds(300));
        await runtime.InspectAsync(Waiting, CancellationToken.None);
        var asked = _engine.Requests.Count;
        await Task.Delay(400);
        await runtime.InspectAsync(Waiting, CancellationToken.None);
        Assert.Equal(2 * asked, _engine.Requests.Count);

        var before = _engine.Requests.Count;
        Assert.True((await runtime.InspectAsync(Running, CancellationToken.None))!.Running);
        Assert.True((await runtime.InspectAsync(Running, CancellationToken.None))!.Running);
        Assert.Equal(2, _engine.Requests.Count - before);
    }
}
