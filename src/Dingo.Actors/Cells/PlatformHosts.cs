using System.Net;
using System.Net.Sockets;
using Dingo.Model;
using Dingo.Postgres;
using Microsoft.Extensions.Logging;

namespace Dingo.Cells;

/// <summary>
/// The platform's hosts as etcd lists them — every registered cell (<c>cells/</c>) and every broker
/// (<c>akka/members/</c> with the broker role) — plus this cell itself and the operator's admin networks: who may log in
/// as an instance's superuser or replication role (<see cref="PlatformAccess"/>). A host stays allowed for a grace after
/// it was last listed, so a lease that lapses for a moment does not lock a replica out of its primary.
/// </summary>
public sealed class PlatformHosts(string ownAddress, IReadOnlyList<string> adminNetworks, TimeSpan grace, ILogger logger)
{
    private readonly Dictionary<string, DateTimeOffset> _lastListed = new(StringComparer.Ordinal);
    private readonly HashSet<string> _unresolvable = new(StringComparer.Ordinal);

    /// <summary>Who may log in, from the cells and Akka members etcd lists (a cell pass reads them in its one read).</summary>
    public async Task<PlatformAccess> FromAsync(IEnumerable<CellInfo> cells, IEnumerable<AkkaMemberRecord> members, CancellationToken ct)
    {
        var now = DateTimeOffset.UtcNow;
        var hosts = new List<string> { ownAddress };
        hosts.AddRange(cells.Select(c => c.Address));
        foreach (var member in members)
            if (member.Roles.Contains("broker") && HostOf(member.Address) is { } host)
                hosts.AddRange(await ResolveAsync(host, ct).ConfigureAwait(false));
        foreach (var host in hosts) _lastListed[host] = now;
        foreach (var gone in _lastListed.Where(h => now - h.Value > grace).Select(h => h.Key).ToList()) _lastListed.Remove(gone);
        return PlatformAccess.From(_lastListed.Keys, adminNetworks);
    }

    /// <summary>The host of akka.tcp://dingo@HOST:PORT (an IPv6 host in brackets), or null.</summary>
    public static string? HostOf(string akkaAddress)
    {
        var at = akkaAddress.LastIndexOf('@');
        var colon = akkaAddress.LastIndexOf(':');
        if (at < 0 || colon <= at + 1) return null;
        return akkaAddress[(at + 1)..colon].Trim('[', ']');
    }

    private async Task<IEnumerable<string>> ResolveAsync(string host, CancellationToken ct)
    {
        if (IPAddress.TryParse(host, out _)) return [host];
        try
        {
            var addresses = await Dns.GetHostAddressesAsync(host, ct).ConfigureAwait(false);
            _unresolvable.Remove(host);
            return addresses.Select(a => a.ToString());
        }
        catch (SocketException ex)
        {
            // Its host keeps whatever grace it has left; the broker cannot reach the nodes from a name nobody resolves.
            if (_unresolvable.Add(host)) logger.LogWarning("broker host {Host} does not resolve ({Error}): not allowed to log in as the platform's roles", host, ex.Message);
            return [];
        }
    }
}
