using Dingo.Model;

namespace Dingo.Instances;

/// <summary>Where a new node of an instance goes. Pure: the same inputs always give the same cell.</summary>
public static class Placement
{
    /// <param name="cells">cells alive now</param>
    /// <param name="load">nodes each cell holds now (all instances)</param>
    /// <param name="usedCells">cells already holding a node of this instance</param>
    /// <param name="allowedCells">the instance's `cells` parameter, or null for any</param>
    public static PlacementResult Choose(
        IReadOnlyList<CellInfo> cells,
        IReadOnlyDictionary<string, int> load,
        IReadOnlyCollection<string> usedCells,
        IReadOnlyCollection<string>? allowedCells,
        IReadOnlyDictionary<string, int>? firstNodes = null)
    {
        if (cells.Count == 0) return PlacementResult.None("no cell is registered");
        var candidates = cells
            .Where(c => allowedCells is null || allowedCells.Contains(c.Id))
            .Where(c => !usedCells.Contains(c.Id))
            .ToList();
        if (candidates.Count == 0)
        {
            return PlacementResult.None(allowedCells is null
                ? "every registered cell already holds a node of this instance"
                : $"none of the requested cells ({string.Join(", ", allowedCells)}) is registered and free of this instance");
        }
        var usedZones = cells.Where(c => usedCells.Contains(c.Id)).Select(c => c.Zone).ToHashSet();
        // A cell whose runtime does not work (engine unreachable, image missing, disk full) takes no new node.
        var working = candidates.Where(c => c.Problem is null).ToList();
        if (working.Count == 0)
            return PlacementResult.None($"every candidate cell has a problem ({string.Join("; ", candidates.Select(c => $"{c.Id}: {c.Problem}"))})");
        candidates = working;
        var withRoom = candidates.Where(c => load.GetValueOrDefault(c.Id) < c.Capacity).ToList();
        if (withRoom.Count == 0)
            return PlacementResult.None($"every candidate cell is full ({string.Join(", ", candidates.Select(c => $"{c.Id} {load.GetValueOrDefault(c.Id)}/{c.Capacity}"))})");
        var best = withRoom
            .OrderBy(c => usedZones.Contains(c.Zone) ? 1 : 0) // unused availability zones first
            .ThenBy(c => (double)load.GetValueOrDefault(c.Id) / c.Capacity) // least loaded
            // Among equally loaded cells, a new instance's first node goes where fewest first nodes are: that node starts as
            // the primary, takes the cell's warm pool entry, and its cell archives it. By load alone, one cell of three took
            // 8 of a burst's 20 first nodes (bench/Provision), more than its warm pool held.
            .ThenBy(c => firstNodes?.GetValueOrDefault(c.Id) ?? 0)
            .ThenBy(c => c.Id, StringComparer.Ordinal)
            .First();
        return PlacementResult.To(best);
    }
}

public sealed record PlacementResult(CellInfo? Cell, string? Reason)
{
    public static PlacementResult To(CellInfo cell) => new(cell, null);
    public static PlacementResult None(string reason) => new(null, reason);
}
