namespace Dingo.Instances;

/// <summary>What the lost-cell decision looks at, read from etcd in one sweep.</summary>
/// <param name="Registered">cells with a registration (their lease alive)</param>
/// <param name="Holding">cells some node spec names</param>
/// <param name="MissingSince">when each missing cell was first seen missing, as etcd keeps it (a broker taking the duty over goes on from there)</param>
/// <param name="Lost">cells declared lost already</param>
/// <param name="Grace">`dingo.ha.lost-cell-grace`</param>
public sealed record LostCellInput(
    IReadOnlySet<string> Registered,
    IReadOnlySet<string> Holding,
    IReadOnlyDictionary<string, DateTimeOffset> MissingSince,
    IReadOnlySet<string> Lost,
    DateTimeOffset Now,
    TimeSpan Grace);

/// <summary>One step of the lost-cell duty, with the sentence the log shows.</summary>
public abstract record LostCellAction(string Cell, string Sentence)
{
    /// <summary>A cell holding nodes is not registered: its clock starts (kept in etcd).</summary>
    public sealed record StartClock(string Cell, string Sentence) : LostCellAction(Cell, Sentence);
    /// <summary>A cell with a clock is registered again, or holds no node any more: its clock goes.</summary>
    public sealed record StopClock(string Cell, string Sentence) : LostCellAction(Cell, Sentence);
    /// <summary>A cell has been missing for the grace period: declared lost, its nodes get replaced.</summary>
    public sealed record DeclareLost(string Cell, string Sentence) : LostCellAction(Cell, Sentence);
}

/// <summary>
/// When a cell is declared lost (issue 15): a pure decision, run by the one broker holding the lost-cell duty. A cell is
/// declared lost once it has held nodes without a registration for the whole grace period, counted from the first
/// sweep that saw it missing (etcd keeps that moment, so a broker that takes the duty over does not start again); a
/// cell registered again stops its clock. A lost cell stays lost until it registers again (the cell removes its key).
/// </summary>
public static class LostCells
{
    public static IReadOnlyList<LostCellAction> Decide(LostCellInput input)
    {
        var actions = new List<LostCellAction>();
        foreach (var cell in input.MissingSince.Keys.Order(StringComparer.Ordinal))
        {
            if (input.Registered.Contains(cell)) actions.Add(new LostCellAction.StopClock(cell, $"cell {cell} is registered again"));
            else if (!input.Holding.Contains(cell)) actions.Add(new LostCellAction.StopClock(cell, $"cell {cell} holds no node any more"));
        }
        foreach (var cell in input.Holding.Where(c => !input.Registered.Contains(c)).Order(StringComparer.Ordinal))
        {
            if (input.Lost.Contains(cell)) continue;
            if (!input.MissingSince.TryGetValue(cell, out var since))
            {
                actions.Add(new LostCellAction.StartClock(cell,
                    $"cell {cell} holds nodes and is not registered: lost if it stays away for {input.Grace.TotalSeconds:0}s"));
                continue;
            }
            // A clock ahead of this broker's (another broker started it, the clocks differ) counts as just started.
            var gone = input.Now - since;
            if (gone >= input.Grace)
                actions.Add(new LostCellAction.DeclareLost(cell,
                    $"cell {cell} has been gone for {gone.TotalSeconds:0}s (grace {input.Grace.TotalSeconds:0}s): declaring it lost; its nodes will be replaced"));
        }
        return actions;
    }
}
