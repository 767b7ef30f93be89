using System.Collections.Concurrent;
using Dingo.Cells;
using Dingo.Tests.Support;
using Microsoft.Extensions.Logging.Abstractions;

namespace Dingo.Tests.Cells;

/// <summary>
/// When a node container's start allowance ends (<see cref="StartAllowance"/>), against an engine stand-in; the real
/// engine's side is DockerRuntimeTests.A_node_starts_at_its_allowance_and_runs_at_its_plans_ceiling_after_it.
/// </summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class StartAllowanceTests
{
    private sealed class Engine
    {
        public readonly ConcurrentQueue<(string Id, double Cpus)> Set = new();
        public volatile bool Failing;
        public volatile string? RunningSince;

        public Task SetAsync(string id, double cpus, CancellationToken ct)
        {
            if (Failing) throw new ContainerEngineException("engine unreachable (test)");
            Set.Enqueue((id, cpus));
            return Task.CompletedTask;
        }

        public Task<string?> StartedAsync(string id, CancellationToken ct) => Task.FromResult(RunningSince);
    }

    private static async Task Until(Func<bool> condition, string what)
    {
        var waited = System.Diagnostics.Stopwatch.StartNew();
        while (!condition())
        {
            if (waited.Elapsed > TimeSpan.FromSeconds(20)) Assert.Fail($"not within 20 s: {what}");
            await Task.Delay(20);
        }
    }

    private static string Now(TimeSpan offset = default) => (DateTimeOffset.UtcNow + offset).ToString("O");

    [Fact]
    public async Task A_start_is_brought_to_its_ceiling_once_its_window_passed_and_only_once()
    {
        var engine = new Engine();
        using var allowance = new StartAllowance(TimeSpan.FromMilliseconds(300), engine.SetAsync, engine.StartedAsync, NullLogger.Instance);
        var started = Now();
        var watch = System.Diagnostics.Stopwatch.StartNew();
        allowance.Observe("n1", "c1", started, ceiling: 0.5, configuredCpus: 1);
        Assert.Equal(1, allowance.Pending);
        await Until(() => !engine.Set.IsEmpty, "the ceiling set");
        Assert.True(watch.Elapsed >= TimeSpan.FromMilliseconds(250), $"set after {watch.ElapsedMilliseconds} ms, inside the window");
        Assert.Equal(("c1", 0.5), Assert.Single(engine.Set));
        await Until(() => allowance.Pending == 0, "nothing pending");

        // Later looks at the same start ask nothing; a new start of the container is brought down again.
        allowance.Observe("n1", "c1", started, 0.5, 1);
        Assert.Equal(0, allowance.Pending);
        allowance.Observe("n1", "c1", Now(), 0.5, 1);
        await Until(() => engine.Set.Count == 2, "the new start's ceiling set");
    }

    /// <summary>A plan allowing the allowance or more is made at its own ceiling; start-cpus = 0 makes every plan so.</summary>
    [Theory]
    [InlineData(0.5, 1, 1)]
    [InlineData(1, 1, 1)]
    [InlineData(2, 1, 2)]
    [InlineData(0.5, 0, 0.5)]
    [InlineData(0.5, 1.5, 1.5)]
    public void A_container_is_made_with_the_allowance_only_when_its_plan_allows_less(double planCpus, double startCpus, double made) =>
        Assert.Equal(made, DockerRuntime.MadeCpus(new Dingo.Model.NodeLimits(256L * 1024 * 1024, planCpus), startCpus));

    [Fact]
    public void A_container_made_at_its_ceiling_needs_nothing()
    {
        var engine = new Engine();
        using var allowance = new StartAllowance(TimeSpan.FromMilliseconds(10), engine.SetAsync, engine.StartedAsync, NullLogger.Instance);
        allowance.Observe("n1", "c1", Now(), ceiling: 1, configuredCpus: 1);
        allowance.Observe("n2", "c2", Now(), ceiling: 2, configuredCpus: 1);
        allowance.Observe("n3", "c3", null, ceiling: 0.5, configuredCpus: 1);
        Assert.Equal(0, allowance.Pending);
    }

    /// <summary>A cell that died inside a window: its successor sees a start long past and sets the ceiling at once.</summary>
    [Fact]
    public async Task A_start_long_past_is_brought_down_at_once()
    {
        var engine = new Engine();
        using var allowance = new StartAllowance(TimeSpan.FromMinutes(10), engine.SetAsync, engine.StartedAsync, NullLogger.Instance);
        allowance.Observe("n1", "c1", Now(TimeSpan.FromHours(-1)), 0.5, 1);
        await Until(() => !engine.Set.IsEmpty, "the ceiling set");
    }

    [Fact]
    public async Task An_engine_that_fails_is_asked_again_until_it_sets_the_ceiling()
    {
        var engine = new Engine { Failing = true };
        var started = Now(TimeSpan.FromMinutes(-1));
        engine.RunningSince = started;
        using var allowance = new StartAllowance(TimeSpan.FromSeconds(1), engine.SetAsync, engine.StartedAsync, NullLogger.Instance);
        allowance.Observe("n1", "c1", started, 0.5, 1);
        await Task.Delay(300);
        Assert.Equal(1, allowance.Pending); // still to do
        engine.Failing = false;
        await Until(() => !engine.Set.IsEmpty, "the ceiling set after the engine came back");
        await Until(() => allowance.Pending == 0, "nothing pending");
    }

    /// <summary>A pass still inspecting a node as the cell stops: its look after the stop is taken and let go, not thrown.</summary>
    [Fact]
    public void A_look_after_the_stop_is_let_go()
    {
        var engine = new Engine();
        var allowance = new StartAllowance(TimeSpan.FromMilliseconds(10), engine.SetAsync, engine.StartedAsync, NullLogger.Instance);
        allowance.Observe("n1", "c1", Now(), 0.5, 1);
        allowance.Dispose();
        allowance.Observe("n2", "c2", Now(), 0.5, 1);
        Assert.DoesNotContain(engine.Set, s => s.Id == "c2");
    }

    /// <summary>A container stopped or removed before its ceiling was set: its next start is observed anew, nothing is retried.</summary>
    [Fact]
    public async Task A_container_no_longer_running_that_start_is_let_go()
    {
        var engine = new Engine { Failing = true, RunningSince = null };
        using var allowance = new StartAllowance(TimeSpan.FromSeconds(1), engine.SetAsync, engine.StartedAsync, NullLogger.Instance);
        allowance.Observe("n1", "c1", Now(TimeSpan.FromMinutes(-1)), 0.5, 1);
        await Until(() => allowance.Pending == 0, "the stopped container let go");
        Assert.Empty(engine.Set);
    }
}
