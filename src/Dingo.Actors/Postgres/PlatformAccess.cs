using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace Dingo.Postgres;

/// <summary>
/// Where the platform's own roles (the superuser and the replication role) may log in from: the platform's hosts
/// (every registered cell and broker) and the networks an operator lists. Binding roles log in from anywhere
/// (applications come through the routers). Turned into each node's pg_hba.conf by <see cref="Hba"/>.
/// </summary>
/// <param name="Networks">CIDRs, normalised and sorted, so two equal sets compare equal as text</param>
public sealed record PlatformAccess(IReadOnlyList<string> Networks)
{
    /// <summary>
    /// Only TLS logins over TCP (`dingo.postgres.require-tls`): every accepting line is `hostssl`, so a client without TLS
    /// finds none and is refused ("no pg_hba.conf entry … no encryption"). Local sockets stay as they are.
    /// </summary>
    public bool RequireTls { get; init; }

    /// <summary>The certificates nodes serve (null: none known yet, nodes start without TLS).</summary>
    public Dingo.Postgres.NodeTls? Tls { get; init; }

    /// <summary>Only local sockets and the node's own host: what a node gets before its cell has read etcd once.</summary>
    public static PlatformAccess LocalOnly { get; } = new([]);

    /// <summary>
    /// The platform's hosts as IP addresses (cells' registered addresses, brokers' hosts) plus operator networks
    /// (CIDR or a bare address). A loopback address stands for the whole loopback network: Linux connects from
    /// 127.0.0.1 to any 127.x address, so a platform on loopback is reached from there whatever it registered.
    /// </summary>
    public static PlatformAccess From(IEnumerable<string> hosts, IEnumerable<string> adminNetworks, bool requireTls = false, Dingo.Postgres.NodeTls? tls = null)
    {
        var set = new SortedSet<string>(StringComparer.Ordinal);
        foreach (var host in hosts)
        {
            if (!IPAddress.TryParse(host, out var ip)) continue; // names are resolved by the caller
            set.Add(HostNetwork(ip));
        }
        foreach (var network in adminNetworks) set.Add(IpNetworks.Parse(network));
        return new PlatformAccess(set.ToList()) { RequireTls = requireTls, Tls = tls };
    }

    private static string HostNetwork(IPAddress ip)
    {
        if (ip.IsIPv4MappedToIPv6) ip = ip.MapToIPv4();
        if (IPAddress.IsLoopback(ip)) return ip.AddressFamily == AddressFamily.InterNetworkV6 ? "::1/128" : "127.0.0.0/8";
        return ip.AddressFamily == AddressFamily.InterNetworkV6 ? $"{ip}/128" : $"{ip}/32";
    }

    /// <summary>
    /// The node's pg_hba.conf. The platform roles get SCRAM from the platform's networks and local sockets (over TCP with
    /// require-tls: also a client certificate of the platform CA), and an explicit reject anywhere else (before the catch-all line, which would otherwise take them); replication
    /// connections are only for them; every other role gets SCRAM from anywhere.
    /// </summary>
    /// <param name="ownAddress">the address the node listens on: its own host is always a platform host (the cell's
    /// agent connects from there), also before the cell has read the others from etcd</param>
    public string Hba(string superuser, string? ownAddress = null)
    {
        var networks = new SortedSet<string>(Networks, StringComparer.Ordinal);
        if (IPAddress.TryParse(ownAddress, out var own) && !own.Equals(IPAddress.Any) && !own.Equals(IPAddress.IPv6Any)) networks.Add(HostNetwork(own));
        var users = string.Join(',', new[] { superuser, DatabaseAdmin.ReplicationUserName }.Distinct(StringComparer.Ordinal).Select(QuoteRole));
        // The reject lines stay `host` (they match with TLS and without); only accepting lines need TLS.
        var accept = RequireTls ? "hostssl" : "host";
        // With TLS required and a CA known, the platform's roles also need a client certificate of the platform CA: a
        // router forwards every client from its cell's address, which is a platform host, so the address alone would let
        // anyone who learnt the superuser password log in through a router's public port. Applications never hold one.
        var platformAuth = RequireTls && Tls is not null ? "scram-sha-256 clientcert=verify-ca" : "scram-sha-256";
        var sb = new StringBuilder()
            .AppendLine("# Written by Dingo (platform access); rewritten when the platform's hosts change. Edits are overwritten.")
            .AppendLine("# The platform's roles log in only from its cells, brokers and listed networks; applications from anywhere.")
            .AppendLine(RequireTls ? "# dingo.postgres.require-tls: TCP logins only over TLS." : "# TLS offered, not required (dingo.postgres.require-tls = off).")
            .AppendLine("local all all scram-sha-256")
            .AppendLine("local replication all scram-sha-256");
        foreach (var network in networks)
        {
            sb.AppendLine(CultureInfo.InvariantCulture, $"{accept} all {users} {network} {platformAuth}");
            sb.AppendLine(CultureInfo.InvariantCulture, $"{accept} replication {users} {network} {platformAuth}");
        }
        return sb
            .AppendLine(CultureInfo.InvariantCulture, $"host all {users} 0.0.0.0/0 reject")
            .AppendLine(CultureInfo.InvariantCulture, $"host all {users} ::/0 reject")
            .AppendLine(CultureInfo.InvariantCulture, $"{accept} all all 0.0.0.0/0 scram-sha-256")
            .AppendLine(CultureInfo.InvariantCulture, $"{accept} all all ::/0 scram-sha-256")
            .ToString();
    }

    private static string QuoteRole(string role)
    {
        if (role.Length == 0 || role.Contains('"', StringComparison.Ordinal) || role.Any(char.IsWhiteSpace))
            throw new ArgumentException($"role name '{role}' cannot appear in pg_hba.conf");
        return $"\"{role}\"";
    }
}
