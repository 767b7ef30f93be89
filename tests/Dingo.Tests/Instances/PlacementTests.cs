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

/// <summary>
/// Placements decided at one moment (a burst of provisions, each instance's pass on its own) against one store: each is
/// counted after the ones before it, so the first nodes spread over the cells instead of all taking the cell that was
/// least loaded when they read.
/// </summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class ConcurrentPlacementTests
{
    private static readonly CancellationToken None = CancellationToken.None;

    [Fact]
    public async Task First_nodes_placed_at_once_spread_evenly_over_equal_cells()
    {
        var store = new Dingo.Tests.Actors.InMemoryStore();
        var settings = Dingo.Config.DingoSettings.Load([Path.Combine(TestPlatform.RepoRoot(), "hocon", "dingo.conf")], new Dictionary<string, string?>());
        foreach (var (cell, zone) in new[] { ("cell-1", "z1"), ("cell-2", "z2"), ("cell-3", "z3") })
            await store.PutAsync(store.Keys.Cell(cell), new CellInfo { Id = cell, Zone = zone, Capacity = 20, Address = "127.0.0.1", Runtime = "process" }, None);
        var now = DateTimeOffset.UtcNow;
        var ids = Enumerable.Range(1, 9).Select(i => $"i-{i}").ToList();
        foreach (var id in ids)
        {
            await store.PutAsync(store.Keys.Instance(id), new InstanceRecord
            {
                Id = id, ServiceId = Catalog.ServiceId, PlanId = Catalog.SoloPlanId, OrganizationGuid = "o", SpaceGuid = "s",
                Port = 30001, NodeCount = 1, Superuser = new Credentials("dingo_admin", "pw"), CreatedAt = now,
            }, None);
            await store.PutAsync(store.Keys.Operation(id), new OperationRecord { Id = "op-1", Kind = OperationKind.Provision, State = OperationState.InProgress, Description = "accepted", StartedAt = now, UpdatedAt = now }, None);
        }
        // Every store call lets the other passes run, as etcd's round trips do: all nine read the counts before any places.
        store.BeforeCall = async (_, _) => await Task.Yield();
        var reconciler = new InstanceReconciler(store, settings, Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance);
        var decisions = await Task.WhenAll(ids.Select(id => Task.Run(() => reconciler.RunPassAsync(id, None))));
        Assert.All(decisions, d => Assert.IsType<InstanceDecision.PlaceNode>(d));
        var perCell = (await store.ListAsync<NodeSpec>(store.Keys.AllNodes, None)).GroupBy(n => n.Value.CellId).ToDictionary(g => g.Key, g => g.Count());
        Assert.Equal(new Dictionary<string, int> { ["cell-1"] = 3, ["cell-2"] = 3, ["cell-3"] = 3 }, perCell);
    }

    [Fact]
    public void A_first_node_goes_where_fewest_first_nodes_are_and_the_other_nodes_where_load_is_least()
    {
        CellInfo Cell(string id, int capacity = 10) => new() { Id = id, Zone = id, Capacity = capacity, Address = "127.0.0.1", Runtime = "process" };
        CellInfo[] cells = [Cell("cell-1"), Cell("cell-2"), Cell("cell-3")];
        var equal = new Dictionary<string, int> { ["cell-1"] = 4, ["cell-2"] = 4, ["cell-3"] = 4 };
        var firsts = new Dictionary<string, int> { ["cell-1"] = 3, ["cell-2"] = 1, ["cell-3"] = 2 };
        Assert.Equal("cell-2", Placement.Choose(cells, equal, [], null, firsts).Cell?.Id);
        Assert.Equal("cell-1", Placement.Choose(cells, equal, [], null).Cell?.Id); // a replica: by load, then id
        // The burst's cells (bench/Provision): replicas had evened the load, the first nodes stood 3, 8 and 9. The next
        // first node goes to the cell with 3, which still has warm entries, though it holds one node more.
        var burst = new Dictionary<string, int> { ["cell-1"] = 10, ["cell-2"] = 9, ["cell-3"] = 9 };
        var burstFirsts = new Dictionary<string, int> { ["cell-1"] = 3, ["cell-2"] = 8, ["cell-3"] = 9 };
        CellInfo[] big = [Cell("cell-1", 50), Cell("cell-2", 50), Cell("cell-3", 50)];
        Assert.Equal("cell-1", Placement.Choose(big, burst, [], null, burstFirsts).Cell?.Id);
        Assert.Equal("cell-2", Placement.Choose(big, burst, ["cell-1"], null).Cell?.Id); // its replica: least loaded
        // For the cell's size: a cell twice as large takes twice the first nodes before it counts as fuller.
        CellInfo[] sized = [Cell("cell-1", 20), Cell("cell-2", 10)];
        Assert.Equal("cell-1", Placement.Choose(sized, new Dictionary<string, int>(), [], null, new Dictionary<string, int> { ["cell-1"] = 3, ["cell-2"] = 2 }).Cell?.Id);
        // A full cell takes nothing, however few first nodes it holds.
        Assert.Equal("cell-2", Placement.Choose(cells, new Dictionary<string, int> { ["cell-1"] = 10, ["cell-2"] = 9, ["cell-3"] = 9 }, [], null, burstFirsts).Cell?.Id);
    }
}
