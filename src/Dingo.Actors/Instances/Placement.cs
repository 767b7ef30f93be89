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
        var zones = withRoom.OrderBy(c => usedZones.Contains(c.Zone) ? 1 : 0); // unused availability zones first
        double Load(CellInfo c) => (double)load.GetValueOrDefault(c.Id) / c.Capacity;
        // A new instance's first node (firstNodes given) goes where fewest first nodes are for the cell's size, then by
        // load: it starts as the primary, takes the cell's warm pool entry, and its cell archives it; the instance's
        // other nodes then even out the load. With load first, a burst's 20 first nodes went 3, 8 and 9 to three cells
        // whose replicas had evened the load: two cells ran out of warm entries while the third kept four, and three
        // provisions waited 15-17 s for an initdb at the busiest moment (bench/Provision).
        var ordered = firstNodes is not null
            ? zones.ThenBy(c => (double)firstNodes.GetValueOrDefault(c.Id) / c.Capacity).ThenBy(Load)
            : zones.ThenBy(Load); // least loaded
        var best = ordered.ThenBy(c => c.Id, StringComparer.Ordinal).First();
        return PlacementResult.To(best);
    }
}

public sealed record PlacementResult(CellInfo? Cell, string? Reason)
{
    public static PlacementResult To(CellInfo cell) => new(cell, null);
    public static PlacementResult None(string reason) => new(null, reason);
}
