using System.Globalization;
using Dingo.Config;
using Dingo.Instances;
using Dingo.Model;
using Dingo.Store;

namespace Dingo.Broker;

/// <summary>
/// Declares cells lost (<see cref="LostCells"/>), run by one broker at a time (issue 15): the broker holding the key
/// <c>duties/lost-cells</c> under its own lease. Each sweep renews the lease or tries to take the key; a broker that
/// stops gives it up at once (the lease revoked), one that dies loses it when the lease expires (<see cref="Ttl"/>), and
/// another broker's next sweep takes it. The clocks of missing cells live in etcd (<c>missing-cells/</c>), so a broker
/// that takes the duty over declares a cell lost when the first saw it missing plus the grace, not later.
/// </summary>
public sealed class LostCellDuty(EtcdStore store, DingoSettings settings, ILogger logger) : IAsyncDisposable
{
    /// <summary>How long the duty outlives a broker that died holding it.</summary>
    public static readonly TimeSpan Ttl = TimeSpan.FromSeconds(10);

    private readonly string _holder = $"{Environment.MachineName}/{Environment.ProcessId}/{Guid.NewGuid():N}";
    private long _lease;
    private bool _held;

    /// <summary>Whether this broker held the duty at its last sweep.</summary>
    public bool Held => _held;

    /// <summary>One sweep on its own: reads the nodes and the lost cells itself (<see cref="OperationSweeper"/> passes those it read).</summary>
    public async Task<bool> SweepAsync(CancellationToken ct)
    {
        var keys = store.Keys;
        var nodes = (await store.ListAsync<NodeSpec>(keys.AllNodes, ct).ConfigureAwait(false)).Select(n => n.Value).ToList();
        return await SweepAsync(nodes, await LostAsync(store, ct).ConfigureAwait(false), ct).ConfigureAwait(false);
    }

    /// <summary>The cells declared lost, as etcd holds them.</summary>
    public static async Task<HashSet<string>> LostAsync(EtcdStore store, CancellationToken ct) =>
        (await store.ListAsync<string>(store.Keys.LostCells, ct).ConfigureAwait(false)).Select(l => l.Key[store.Keys.LostCells.Length..]).ToHashSet(StringComparer.Ordinal);

    /// <summary>
    /// One sweep: takes or keeps the duty, and if held, decides and applies, adding the cells it declares lost to
    /// <paramref name="lost"/>. False when another broker holds it.
    /// </summary>
    /// <param name="nodes">every node spec, as the caller just read them</param>
    /// <param name="lost">the cells declared lost, as the caller just read them</param>
    public async Task<bool> SweepAsync(IReadOnlyList<NodeSpec> nodes, HashSet<string> lost, CancellationToken ct)
    {
        var held = await HoldAsync(ct).ConfigureAwait(false);
        if (held != _held)
            logger.LogInformation(held ? "this broker now runs the lost-cell duty" : "another broker runs the lost-cell duty now");
        _held = held;
        if (!held) return false;

        var keys = store.Keys;
        var registered = (await store.ListAsync<CellInfo>(keys.Cells, ct).ConfigureAwait(false)).Select(c => c.Value.Id).ToHashSet(StringComparer.Ordinal);
        var holding = nodes.Select(n => n.CellId).ToHashSet(StringComparer.Ordinal);
        var clocks = new Dictionary<string, DateTimeOffset>(StringComparer.Ordinal);
        foreach (var clock in await store.ListAsync<string>(keys.MissingCells, ct).ConfigureAwait(false))
        {
            // A clock that cannot be read starts again (the cell is then lost a grace later, never earlier).
            if (DateTimeOffset.TryParse(clock.Value, CultureInfo.InvariantCulture, DateTimeStyles.RoundtripKind, out var since)) clocks[clock.Key[keys.MissingCells.Length..]] = since;
        }
        var now = DateTimeOffset.UtcNow;
        foreach (var action in LostCells.Decide(new LostCellInput(registered, holding, clocks, lost, now, settings.Ha.LostCellGrace)))
        {
            switch (action)
            {
                case LostCellAction.StartClock start:
                    logger.LogInformation("{Sentence}", start.Sentence);
                    await store.PutAsync(keys.MissingCell(start.Cell), now.ToString("O", CultureInfo.InvariantCulture), ct).ConfigureAwait(false);
                    break;
                case LostCellAction.StopClock stop:
                    logger.LogInformation("{Sentence}", stop.Sentence);
                    await store.DeleteAsync(keys.MissingCell(stop.Cell), ct).ConfigureAwait(false);
                    break;
                case LostCellAction.DeclareLost declare:
                    logger.LogWarning("{Sentence}", declare.Sentence);
                    await store.PutAsync(keys.LostCell(declare.Cell), now.ToString("O", CultureInfo.InvariantCulture), ct).ConfigureAwait(false);
                    await store.DeleteAsync(keys.MissingCell(declare.Cell), ct).ConfigureAwait(false);
                    lost.Add(declare.Cell);
                    break;
            }
        }
        return true;
    }

    private async Task<bool> HoldAsync(CancellationToken ct)
    {
        var key = store.Keys.LostCellDuty;
        if (_lease != 0 && !await store.KeepAliveOnceAsync(_lease, ct).ConfigureAwait(false)) _lease = 0;
        if (_lease == 0) _lease = await store.GrantLeaseAsync(Ttl, ct).ConfigureAwait(false);
        if (await store.CreateIfAbsentAsync(key, _holder, ct, _lease).ConfigureAwait(false)) return true;
        var current = await store.GetAsync<string>(key, ct).ConfigureAwait(false);
        // Ours only under the lease alive now: a key of ours under a lease that expired is already gone.
        return current is { } c && c.Value == _holder && c.Lease == _lease;
    }

    /// <summary>Gives the duty up at once: the lease goes, and the key with it.</summary>
    public async ValueTask DisposeAsync()
    {
        var lease = Interlocked.Exchange(ref _lease, 0);
        if (lease == 0) return;
        try
        {
            using var deadline = new CancellationTokenSource(TimeSpan.FromSeconds(5));
            await store.RevokeLeaseAsync(lease, deadline.Token).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is not OutOfMemoryException)
        {
            logger.LogInformation("giving up the lost-cell duty: {Error}; it passes on when its lease expires", ex.Message);
        }
    }
}
