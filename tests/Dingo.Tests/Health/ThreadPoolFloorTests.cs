using System.Diagnostics;
using System.Text.Json.Nodes;
using Dingo.Tests.Support;

namespace Dingo.Tests.Health;

/// <summary>
/// Every process starts with a thread pool floor (Directory.Build.props, ThreadPoolMinThreads): a few workers blocked
/// on a busy disk must not hold up a cell's HA loops until the runtime adds workers one by one (fresh93: three base
/// backups' fsyncs left them queued for 5 s, and the fencing guard stopped four healthy primaries).
/// </summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class ThreadPoolFloorTests
{
    private const int Floor = 64;

    [Theory]
    [InlineData("Dingo.Cell")]
    [InlineData("Dingo.Broker")]
    [InlineData("dingo")]
    [InlineData("Dingo.Tests")]
    public void Each_program_starts_with_the_floor(string program)
    {
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(AppContext.BaseDirectory, program + ".runtimeconfig.json")))!;
        var min = config["runtimeOptions"]?["configProperties"]?["System.Threading.ThreadPool.MinThreads"];
        Assert.True(min is not null && (int)min >= Floor, $"{program}.runtimeconfig.json: System.Threading.ThreadPool.MinThreads is {min?.ToJsonString() ?? "unset"}, want at least {Floor}");
        // And idle workers sleep at once instead of spinning on sched_yield (Directory.Build.props: an idle platform's
        // cells spent 45% of a core with the runtime's default spin, 28% without).
        var spin = config["runtimeOptions"]?["configProperties"]?["System.Threading.ThreadPool.UnfairSemaphoreSpinLimit"];
        Assert.True(spin is not null && (int)spin == 0, $"{program}.runtimeconfig.json: System.Threading.ThreadPool.UnfairSemaphoreSpinLimit is {spin?.ToJsonString() ?? "unset"}, want 0");
    }

    private static Task<T> Shared<T>(Func<T> work) =>
        Task.Factory.StartNew(work, CancellationToken.None, TaskCreationOptions.PreferFairness, TaskScheduler.Default);

    private static Task Shared(Action work) =>
        Task.Factory.StartNew(work, CancellationToken.None, TaskCreationOptions.PreferFairness, TaskScheduler.Default);

    [Fact]
    public async Task Work_queued_while_many_workers_block_starts_at_once()
    {
        ThreadPool.GetMinThreads(out var workers, out _);
        Assert.True(workers >= Floor, $"this process's floor is {workers} workers");

        // Sixteen workers blocked for 2 s in a system call the runtime cannot see (a busy disk's fsync; Thread.Sleep here,
        // as the runtime adds workers early for its own waits): with one worker per core and nothing more, the next work
        // item waits for the blocked ones or for the runtime to add workers, about two a second.
        // Both go to the pool's shared queue, first in first out (PreferFairness), as a timer's continuation does: work
        // queued from a worker would go to that worker's own queue and run next, ahead of the blocked ones.
        var blocked = Enumerable.Range(0, 16).Select(_ => Shared(() => Thread.Sleep(TimeSpan.FromSeconds(2)))).ToList();
        var queued = Stopwatch.StartNew();
        var started = await Shared(() => queued.Elapsed);
        await Task.WhenAll(blocked);
        Assert.True(started < TimeSpan.FromSeconds(1), $"work queued behind 16 blocked workers started after {started.TotalMilliseconds:0} ms");
    }
}
