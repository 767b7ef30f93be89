using Dingo.Cells;
using Dingo.Config;
using Dingo.Tests.Support;
using Microsoft.Extensions.Logging.Abstractions;

namespace Dingo.Tests.Cells;

/// <summary>
/// An engine that answers the cell's listing late, as podman does while it starts containers (it lists under every
/// container's lock), is busy, not unreachable: the cell reports no problem and so keeps taking new nodes. One that
/// does not answer within the listing's deadline is unreachable. The engine here is an in-process HTTP server on a Unix
/// socket that answers the Docker API's container listing after a delay (longer than the 2 s this deadline was).
/// </summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class SlowEngineTests : IDisposable
{
    private FakeEngine? _engine;

    public void Dispose() => _engine?.Dispose();

    /// <summary>Answers the container listing after <paramref name="delay"/> (podman's slow call), the volume listing at once: none of either.</summary>
    private void ServeSlowly(TimeSpan delay) => _engine = new FakeEngine((_, path) => path.Contains("/volumes", StringComparison.Ordinal)
        ? (200, """{"Volumes":[],"Warnings":[]}""", TimeSpan.Zero)
        : (200, "[]", delay));

    private DockerRuntime Runtime(TimeSpan? listingTimeout = null)
    {
        var options = new DockerRuntimeOptions("cell-1", _engine!.Settings("/slow-engine"));
        if (listingTimeout is { } t) options = options with { ListingTimeout = t };
        return new DockerRuntime(options, NullLogger.Instance);
    }

    [Fact]
    public async Task A_listing_answered_in_2_5_s_is_a_busy_engine_not_an_unreachable_one()
    {
        ServeSlowly(TimeSpan.FromSeconds(2.5));
        using var runtime = Runtime();
        Assert.Empty(await runtime.ListAsync(CancellationToken.None));
        Assert.Null(runtime.EngineProblem);
        Assert.Null(runtime.Problem);
    }

    [Fact]
    public async Task A_listing_not_answered_within_its_deadline_is_an_unreachable_engine()
    {
        ServeSlowly(TimeSpan.FromSeconds(2.5));
        using var runtime = Runtime(listingTimeout: TimeSpan.FromSeconds(1));
        var error = await Assert.ThrowsAsync<ContainerEngineException>(() => runtime.ListAsync(CancellationToken.None));
        Assert.Contains("is unreachable (could not list containers): no answer within 1s", error.Message, StringComparison.Ordinal);
        Assert.NotNull(runtime.Problem);
    }
}
