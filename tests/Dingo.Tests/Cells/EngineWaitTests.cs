using Dingo.Cells;
using Dingo.Config;
using Dingo.Tests.Support;
using Microsoft.Extensions.Logging.Abstractions;

namespace Dingo.Tests.Cells;

/// <summary>
/// Which wait the Docker runtime asks for when a tool container runs: podman's own (libpod's, which looks every 50 ms)
/// where the engine has it, Docker's otherwise (podman 4.3's Docker-compatible wait looks without pause and kept a core
/// or two busy). Against an in-process engine that answers as podman or as Docker does; the real podman's side is in
/// DockerRuntimeTests.Waiting_for_a_tool_container_leaves_podman_idle.
/// </summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class EngineWaitTests : IDisposable
{
    private FakeEngine? _engine;

    public void Dispose() => _engine?.Dispose();

    private DockerRuntime Runtime(Func<string, string, (int, string, TimeSpan)> answer)
    {
        _engine = new FakeEngine(answer);
        return new DockerRuntime(new DockerRuntimeOptions("cell-1", _engine.Settings("/engine-wait")), NullLogger.Instance);
    }

    private List<string> Waits() => _engine!.Requests.Where(r => r.Contains("/wait", StringComparison.Ordinal)).ToList();

    [Fact]
    public async Task On_podman_the_exit_comes_from_libpods_wait_and_dockers_is_never_asked()
    {
        using var runtime = Runtime((_, path) => path.Contains("/libpod/", StringComparison.Ordinal) ? (200, "3\n", TimeSpan.Zero) : (500, """{"message":"unexpected"}""", TimeSpan.Zero));
        Assert.Equal(3, await runtime.WaitExitAsync("c1", "wait", CancellationToken.None));
        Assert.True(runtime.WaitsThroughLibpod);
        Assert.Equal(["POST /v4.0.0/libpod/containers/c1/wait?interval=50ms"], Waits());
    }

    [Theory]
    [InlineData(404, """{"message":"page not found"}""")]
    [InlineData(400, """{"message":"client version 4.0.0 is too new. Maximum supported API version is 1.43"}""")]
    public async Task On_docker_the_runtime_falls_back_to_dockers_wait_once_and_for_good(int status, string body)
    {
        using var runtime = Runtime((_, path) => path.Contains("/libpod/", StringComparison.Ordinal)
            ? (status, body, TimeSpan.Zero)
            : (200, """{"StatusCode":7}""", TimeSpan.Zero));
        Assert.Equal(7, await runtime.WaitExitAsync("c1", "wait", CancellationToken.None));
        Assert.Equal(7, await runtime.WaitExitAsync("c2", "wait", CancellationToken.None));
        Assert.False(runtime.WaitsThroughLibpod);
        var waits = Waits();
        Assert.Equal(3, waits.Count);
        Assert.StartsWith("POST /v4.0.0/libpod/containers/c1/wait", waits[0], StringComparison.Ordinal);
        Assert.Equal("POST /containers/c1/wait", waits[1]);
        Assert.Equal("POST /containers/c2/wait", waits[2]);
    }

    [Fact]
    public async Task A_container_podman_does_not_have_is_an_error_and_libpods_wait_is_still_asked_next_time()
    {
        using var runtime = Runtime((_, path) => path.Contains("/c1/", StringComparison.Ordinal)
            ? (404, """{"cause":"no such container","message":"no container with name or ID \"c1\" found: no such container","response":404}""", TimeSpan.Zero)
            : (200, "0", TimeSpan.Zero));
        var error = await Assert.ThrowsAsync<ContainerEngineException>(() => runtime.WaitExitAsync("c1", "wait", CancellationToken.None));
        Assert.Contains("no such container", error.Message, StringComparison.Ordinal);
        Assert.Equal(0, await runtime.WaitExitAsync("c2", "wait", CancellationToken.None));
        Assert.True(runtime.WaitsThroughLibpod);
        Assert.All(Waits(), w => Assert.Contains("/libpod/", w, StringComparison.Ordinal));
    }
}
