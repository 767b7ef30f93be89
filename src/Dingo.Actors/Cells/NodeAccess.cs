using System.Collections.Concurrent;
using Dingo.Postgres;

namespace Dingo.Cells;

/// <summary>
/// The pg_hba.conf each node of a runtime should have, and what each running node was last given: both runtimes keep
/// their nodes' access current through this one book and differ only in how they write a file and reload.
/// </summary>
internal sealed class NodeAccess
{
    private PlatformAccess _access = PlatformAccess.LocalOnly;
    // The superuser and address a node was last started with; a node adopted after a restart gets the platform's
    // superuser (its cell's address is among the platform's hosts anyway).
    private readonly ConcurrentDictionary<string, (string Superuser, string Address)> _started = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, string> _applied = new(StringComparer.Ordinal);

    public PlatformAccess Current => Volatile.Read(ref _access);

    /// <summary>The pg_hba.conf for a node about to start (or be reconfigured): it reads this file as it starts.</summary>
    public string ForStart(string nodeId, string superuser, string listenAddress)
    {
        _started[nodeId] = (superuser, listenAddress);
        var hba = Current.Hba(superuser, listenAddress);
        _applied[nodeId] = hba;
        return hba;
    }

    /// <summary>Sets the access every node should have; true when it differs from before.</summary>
    public bool Set(PlatformAccess access)
    {
        var before = Interlocked.Exchange(ref _access, access);
        return !before.Networks.SequenceEqual(access.Networks, StringComparer.Ordinal);
    }

    /// <summary>The pg_hba.conf this running node should have, or null when it has it already.</summary>
    public string? Due(string nodeId)
    {
        var hba = _started.TryGetValue(nodeId, out var started) ? Current.Hba(started.Superuser, started.Address) : Current.Hba(DatabaseAdmin.SuperuserName);
        return _applied.TryGetValue(nodeId, out var applied) && applied == hba ? null : hba;
    }

    /// <summary>The node runs with this pg_hba.conf now (written and reloaded).</summary>
    public void Applied(string nodeId, string hba) => _applied[nodeId] = hba;

    /// <summary>The node stopped or went: whatever it had is no longer known to be loaded.</summary>
    public void Forget(string nodeId) => _applied.TryRemove(nodeId, out _);
}
