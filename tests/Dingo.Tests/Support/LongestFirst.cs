using Xunit;
using Xunit.Abstractions;

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
/// Starts the costliest test classes first. xUnit runs one class (collection) per runner thread (three: AssemblyInfo)
/// and takes the next in about this order when one ends; started late, a 4-minute class leaves the other threads idle
/// for minutes at the end of the run. Longest-first keeps them busy to nearly the end. Classes without a cost follow,
/// by name. The order is not strict: xUnit's scheduler let one 40-50 s class (a different one each time) start last
/// in fresh151-153, the only stretch of those runs with fewer than three classes at work (about 30 s).
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
            [Of(typeof(Ha.ThreeHostTests)), Of(typeof(Cells.DockerRuntimeTests)), Of(typeof(Ha.FenceGuardTests)),
             "A named collection", "Test collection for Dingo.Tests.NoSuchClass", Of(typeof(LongestFirstTests))],
            ordered);
    }
}
