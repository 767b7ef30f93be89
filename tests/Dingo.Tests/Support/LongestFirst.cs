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
            var queue = new System.Collections.Concurrent.ConcurrentQueue<Tuple<ITestCollection, List<IXunitTestCase>>>(ordered.Where(c => !Alone(c.Item1)));
            var summary = new RunSummary();
            var gate = new object();
            async Task WorkAsync()
            {
                while (!cancellationTokenSource.IsCancellationRequested && queue.TryDequeue(out var next))
                {
                    var one = await Task.Run(() => RunTestCollectionAsync(messageBus, next.Item1, next.Item2, cancellationTokenSource));
                    lock (gate) summary.Aggregate(one);
                }
            }
            await Task.WhenAll(Enumerable.Range(0, threads).Select(_ => Task.Run(WorkAsync)));
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
