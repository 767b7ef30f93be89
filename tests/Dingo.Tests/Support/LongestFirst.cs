using Xunit;
using Xunit.Abstractions;
using Xunit.Sdk;

namespace Dingo.Tests.Support;

/// <summary>
/// What a test class costs the suite, in seconds of wall time on the 2-core CI machine, fixtures included (measured
/// from a fresh-clone `./dingo test` log). Only <see cref="LongestFirst"/> reads it: it changes the order classes
/// start in, never what they check.
/// </summary>
[AttributeUsage(AttributeTargets.Class, AllowMultiple = false, Inherited = false)]
public sealed class SuiteCostAttribute(int seconds) : Attribute
{
    public int Seconds { get; } = seconds;
}

/// <summary>
/// Starts the costliest test classes first. On the 2-core CI machine three classes (collections) run at once
/// (AssemblyInfo); started late, a 4-minute class leaves the other threads idle for minutes at the end of the run.
/// Longest-first keeps them busy to nearly the end. Classes without a cost follow, by name.
/// </summary>
public sealed class LongestFirst : ITestCollectionOrderer
{
    private const string Prefix = "Test collection for ";

    public IEnumerable<ITestCollection> OrderTestCollections(IEnumerable<ITestCollection> testCollections) =>
        testCollections.OrderByDescending(Cost).ThenBy(c => c.DisplayName, StringComparer.Ordinal);

    internal static int Cost(ITestCollection collection)
    {
        if (!collection.DisplayName.StartsWith(Prefix, StringComparison.Ordinal)) return 0;
        var type = typeof(LongestFirst).Assembly.GetType(collection.DisplayName[Prefix.Length..], throwOnError: false);
        return type?.GetCustomAttributes(typeof(SuiteCostAttribute), inherit: false) is [SuiteCostAttribute cost, ..] ? cost.Seconds : 0;
    }
}

/// <summary>
/// xUnit's own runner, except that parallel collections start strictly in <see cref="LongestFirst"/>'s order: a fixed
/// number of workers (the assembly's MaxParallelThreads) each take the next collection when theirs ends. xUnit 2.9
/// starts every collection at once and lets them race for its semaphore, so the order was not kept: in fresh151-161 one
/// 40-80 s class (a different one each time) started last and ran alone for its length at the end of the run.
/// Only the order and the start change; each collection runs exactly as xUnit runs it. With parallelization
/// disabled (attribute or runner option) xUnit's own path runs.
/// </summary>
public sealed class StrictOrderFramework(IMessageSink diagnosticMessageSink) : XunitTestFramework(diagnosticMessageSink)
{
    protected override ITestFrameworkExecutor CreateExecutor(System.Reflection.AssemblyName assemblyName) =>
        new Executor(assemblyName, SourceInformationProvider, DiagnosticMessageSink);

    private sealed class Executor(System.Reflection.AssemblyName name, ISourceInformationProvider sources, IMessageSink diagnostics)
        : XunitTestFrameworkExecutor(name, sources, diagnostics)
    {
        // xUnit's executor has this shape (fire and forget; the runner reports through the sink).
#pragma warning disable VSTHRD100, CA2012
        protected override async void RunTestCases(IEnumerable<IXunitTestCase> testCases, IMessageSink executionMessageSink, ITestFrameworkExecutionOptions executionOptions)
        {
            using var runner = new Runner(TestAssembly, testCases, DiagnosticMessageSink, executionMessageSink, executionOptions);
            await runner.RunAsync();
        }
#pragma warning restore VSTHRD100, CA2012
    }

    /// <summary>
    /// Runs <paramref name="run"/> on each item with at most <paramref name="workers"/> at once, starting them strictly in
    /// list order: each worker takes the next item when its own ends. Once cancelled, no further item starts.
    /// </summary>
    internal static Task InOrderAsync<T>(IReadOnlyList<T> items, int workers, Func<T, Task> run, CancellationToken ct)
    {
        var next = -1;
        async Task WorkAsync()
        {
            int i;
            while (!ct.IsCancellationRequested && (i = Interlocked.Increment(ref next)) < items.Count)
                await run(items[i]);
        }
        return Task.WhenAll(Enumerable.Range(0, Math.Max(1, workers)).Select(_ => Task.Run(WorkAsync, CancellationToken.None)));
    }

    private sealed class Runner(ITestAssembly assembly, IEnumerable<IXunitTestCase> testCases, IMessageSink diagnostics, IMessageSink execution, ITestFrameworkExecutionOptions options)
        : XunitTestAssemblyRunner(assembly, testCases, diagnostics, execution, options)
    {
        protected override async Task<RunSummary> RunTestCollectionsAsync(IMessageBus messageBus, CancellationTokenSource cancellationTokenSource)
        {
            var behaviour = typeof(StrictOrderFramework).Assembly.GetCustomAttributes(typeof(CollectionBehaviorAttribute), inherit: false)
                .OfType<CollectionBehaviorAttribute>().FirstOrDefault();
            var disabled = ExecutionOptions.DisableParallelization() ?? behaviour?.DisableTestParallelization ?? false;
            var threads = ExecutionOptions.MaxParallelThreads() ?? behaviour?.MaxParallelThreads ?? 0;
            if (threads == 0) threads = Environment.ProcessorCount;
            if (disabled || threads < 1) return await base.RunTestCollectionsAsync(messageBus, cancellationTokenSource);

            var ordered = OrderTestCollections();
            // As xUnit does: a collection defined with DisableParallelization runs alone, after the others.
            static bool Alone(ITestCollection c) => c.CollectionDefinition?.GetCustomAttributes(typeof(CollectionDefinitionAttribute)).FirstOrDefault()
                ?.GetNamedArgument<bool>(nameof(CollectionDefinitionAttribute.DisableParallelization)) == true;
            var summary = new RunSummary();
            var gate = new object();
            await InOrderAsync(ordered.Where(c => !Alone(c.Item1)).ToList(), threads, async next =>
            {
                var one = await RunTestCollectionAsync(messageBus, next.Item1, next.Item2, cancellationTokenSource);
                lock (gate) summary.Aggregate(one);
            }, cancellationTokenSource.Token);
            foreach (var alone in ordered.Where(c => Alone(c.Item1)))
            {
                if (cancellationTokenSource.IsCancellationRequested) break;
                summary.Aggregate(await RunTestCollectionAsync(messageBus, alone.Item1, alone.Item2, cancellationTokenSource));
            }
            return summary;
        }
    }
}

[Trait(Tier.Name, Tier.Fast)]
public sealed class LongestFirstTests
{
    [Fact]
    public async Task Items_start_strictly_in_order_never_more_than_the_workers_at_once_the_next_as_one_ends()
    {
        // Three workers. Items 0-2 start together; item 3 takes the worker of item 1 (the first to end, at 0.8 s), item 4
        // that of item 2 (1.6 s), items 5 and 6 follow item 4 on its worker: ends at 0.8, 1.6, 1.8, 2.0, 2.2 (6), 2.4 (0),
        // 2.6 s (3), 200 ms apart at least. A free-for-all start or a hand-over out of order gives other ends.
        var lengths = new[] { 2400, 800, 1600, 1800, 200, 200, 200 };
        var started = new System.Collections.Concurrent.ConcurrentQueue<int>();
        var ended = new System.Collections.Concurrent.ConcurrentQueue<int>();
        var running = 0;
        var peak = 0;
        await StrictOrderFramework.InOrderAsync(Enumerable.Range(0, lengths.Length).ToList(), 3, async item =>
        {
            InterlockedMax(ref peak, Interlocked.Increment(ref running));
            started.Enqueue(item);
            await Task.Delay(lengths[item]);
            Interlocked.Decrement(ref running);
            ended.Enqueue(item);
        }, CancellationToken.None);

        Assert.Equal([0, 1, 2], started.Take(3).Order());
        Assert.Equal([3, 4, 5, 6], started.Skip(3));
        Assert.Equal(3, peak);
        Assert.Equal([1, 2, 4, 5, 6, 0, 3], ended);
    }

    [Fact]
    public async Task Once_cancelled_no_further_item_starts()
    {
        using var cts = new CancellationTokenSource();
        var ran = new System.Collections.Concurrent.ConcurrentBag<int>();
        // Two workers: item 2 starts when item 0 ends (20 ms) and cancels; item 1 ends 280 ms later and its worker stops.
        await StrictOrderFramework.InOrderAsync(Enumerable.Range(0, 10).ToList(), 2, async item =>
        {
            ran.Add(item);
            if (item == 2) await cts.CancelAsync();
            await Task.Delay(item == 1 ? 300 : 20);
        }, cts.Token);
        Assert.Equal([0, 1, 2], ran.Order());
    }

    private static void InterlockedMax(ref int target, int value)
    {
        int seen;
        while ((seen = Volatile.Read(ref target)) < value && Interlocked.CompareExchange(ref target, value, seen) != seen) { }
    }

    private static readonly ITestAssembly Assembly = new Xunit.Sdk.TestAssembly(Xunit.Sdk.Reflector.Wrap(typeof(LongestFirstTests).Assembly));

    [Fact]
    public void The_costliest_classes_start_first_and_the_rest_follow_by_name()
    {
        static string Of(Type t) => "Test collection for " + t.FullName;
        var given = new[]
        {
            Of(typeof(LongestFirstTests)), "Test collection for Dingo.Tests.NoSuchClass", Of(typeof(Ha.FenceGuardTests)),
            Of(typeof(Ha.ThreeHostTests)), Of(typeof(Cells.DockerRuntimeTests)), "A named collection",
        };
        var ordered = new LongestFirst().OrderTestCollections(given.Select(n => (ITestCollection)new Xunit.Sdk.TestCollection(Assembly, null, n))).Select(c => c.DisplayName);
        Assert.Equal(
            [Of(typeof(Cells.DockerRuntimeTests)), Of(typeof(Ha.ThreeHostTests)), Of(typeof(Ha.FenceGuardTests)),
             "A named collection", "Test collection for Dingo.Tests.NoSuchClass", Of(typeof(LongestFirstTests))],
            ordered);
    }
}
