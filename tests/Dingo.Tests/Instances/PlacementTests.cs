using Dingo.Tests.Support;
using Dingo.Instances;
using Dingo.Model;

namespace Dingo.Tests.Instances;

[Trait(Tier.Name, Tier.Fast)]
public sealed class PlacementTests
{
    private static CellInfo Cell(string id, string zone, int capacity = 10) =>
        new() { Id = id, Zone = zone, Capacity = capacity, Address = "127.0.0.1", Runtime = "process" };

    private static readonly CellInfo[] ThreeCells = [Cell("cell-1", "z1"), Cell("cell-2", "z2"), Cell("cell-3", "z1")];

    public static TheoryData<string, string[], string[], string[]?, string?> Cases => new()
    {
        // story, load ("cell=n"), cells already used by this instance, allowed cells, expected cell (null = none)
        { "empty platform picks the first cell by id", [], [], null, "cell-1" },
        { "least loaded cell wins", ["cell-1=3", "cell-2=1", "cell-3=2"], [], null, "cell-2" },
        { "a second node avoids the zone it already uses", ["cell-2=5"], ["cell-1"], null, "cell-2" },
        { "a used zone is taken only when no other zone is left", [], ["cell-1", "cell-2"], null, "cell-3" },
        { "never two nodes of one instance on one cell", [], ["cell-1", "cell-2", "cell-3"], null, null },
        { "restricted to the requested cells", [], [], ["cell-3"], "cell-3" },
        { "requested cells that do not exist give no place", [], [], ["cell-9"], null },
        { "full cells are skipped", ["cell-1=10", "cell-2=10"], [], null, "cell-3" },
        { "all full gives no place", ["cell-1=10", "cell-2=10", "cell-3=10"], [], null, null },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void Chooses_a_cell(string story, string[] load, string[] used, string[]? allowed, string? expected)
    {
        var loads = load.Select(l => l.Split('=')).ToDictionary(p => p[0], p => int.Parse(p[1]));
        var result = Placement.Choose(ThreeCells, loads, used, allowed);
        Assert.True(expected == result.Cell?.Id, $"{story}: expected {expected ?? "none"}, got {result.Cell?.Id ?? "none"} ({result.Reason})");
        if (expected is null) Assert.False(string.IsNullOrWhiteSpace(result.Reason));
    }

    [Fact]
    public void No_registered_cell_says_so()
    {
        var result = Placement.Choose([], new Dictionary<string, int>(), [], null);
        Assert.Null(result.Cell);
        Assert.Equal("no cell is registered", result.Reason);
    }

    [Fact]
    public void A_cell_with_a_problem_takes_no_new_node_and_the_reason_names_it()
    {
        var sick = ThreeCells.Select(c => c.Id == "cell-1" ? c with { Problem = "disk nearly full" } : c).ToList();
        Assert.Equal("cell-2", Placement.Choose(sick, new Dictionary<string, int>(), [], null).Cell?.Id);

        var allSick = ThreeCells.Select(c => c with { Problem = $"engine of {c.Id} unreachable" }).ToList();
        var none = Placement.Choose(allSick, new Dictionary<string, int>(), [], null);
        Assert.Null(none.Cell);
        Assert.Contains("cell-3: engine of cell-3 unreachable", none.Reason, StringComparison.Ordinal);
    }
}
