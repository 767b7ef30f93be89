using Dingo.Instances;
using Dingo.Tests.Support;

namespace Dingo.Tests.Instances;

/// <summary>When a cell is declared lost (<see cref="LostCells"/>), case by case. LostCellDutyTests runs it on real etcd with two brokers.</summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class LostCellsTests
{
    private static readonly DateTimeOffset T0 = new(2026, 12, 6, 3, 0, 0, TimeSpan.Zero);
    private static readonly TimeSpan Grace = TimeSpan.FromSeconds(60);

    private static IReadOnlyList<LostCellAction> Decide(string[] registered, string[] holding, (string Cell, int SecondsAgo)[] clocks, string[]? lost = null) =>
        LostCells.Decide(new LostCellInput(registered.ToHashSet(), holding.ToHashSet(),
            clocks.ToDictionary(c => c.Cell, c => T0.AddSeconds(-c.SecondsAgo)), (lost ?? []).ToHashSet(), T0, Grace));

    private static string Describe(IReadOnlyList<LostCellAction> actions) =>
        string.Join("; ", actions.Select(a => $"{a.GetType().Name} {a.Cell}"));

    [Theory]
    // registered | holding nodes | clocks (cell:seconds ago) | already lost || actions
    [InlineData("cell-1,cell-2", "cell-1,cell-2", "", "", "")]
    [InlineData("cell-1", "cell-1,cell-2", "", "", "StartClock cell-2")]
    [InlineData("cell-1", "cell-1,cell-2", "cell-2:59", "", "")]
    [InlineData("cell-1", "cell-1,cell-2", "cell-2:60", "", "DeclareLost cell-2")]
    [InlineData("cell-1", "cell-1,cell-2", "cell-2:600", "cell-2", "")]
    [InlineData("cell-1", "cell-1,cell-2", "", "cell-2", "")]
    [InlineData("cell-1,cell-2", "cell-1,cell-2", "cell-2:30", "", "StopClock cell-2")]
    [InlineData("cell-1", "cell-1", "cell-2:30", "", "StopClock cell-2")]
    [InlineData("cell-1", "cell-1,cell-2", "cell-2:-30", "", "")]
    [InlineData("", "cell-1,cell-2", "cell-1:61", "", "DeclareLost cell-1; StartClock cell-2")]
    [InlineData("cell-3", "", "", "", "")]
    public void A_cell_is_lost_only_after_holding_nodes_unregistered_for_the_whole_grace(string registered, string holding, string clocks, string lost, string expected)
    {
        static string[] List(string s) => s.Split(',', StringSplitOptions.RemoveEmptyEntries);
        var parsed = List(clocks).Select(c => c.Split(':')).Select(p => (p[0], int.Parse(p[1], System.Globalization.CultureInfo.InvariantCulture))).ToArray();
        var actions = Decide(List(registered), List(holding), parsed, List(lost));
        Assert.Equal(expected, string.Join("; ", actions.OrderBy(a => a.Cell, StringComparer.Ordinal).Select(a => $"{a.GetType().Name} {a.Cell}")));
    }

    [Fact]
    public void The_sentences_say_what_happens_and_why()
    {
        Assert.Equal("cell cell-2 holds nodes and is not registered: lost if it stays away for 60s",
            Assert.Single(Decide(["cell-1"], ["cell-1", "cell-2"], [])).Sentence);
        Assert.Equal("cell cell-2 has been gone for 75s (grace 60s): declaring it lost; its nodes will be replaced",
            Assert.Single(Decide(["cell-1"], ["cell-2"], [("cell-2", 75)])).Sentence);
        Assert.Equal("cell cell-2 is registered again", Assert.Single(Decide(["cell-2"], ["cell-2"], [("cell-2", 10)])).Sentence);
        Assert.Equal("cell cell-2 holds no node any more", Assert.Single(Decide([], [], [("cell-2", 10)])).Sentence);
        Assert.Equal("", Describe(Decide([], [], [])));
    }
}
