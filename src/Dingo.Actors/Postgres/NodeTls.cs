using System.Globalization;
using System.Net;
using System.Text;
using Dingo.Config;
using Dingo.Security;

namespace Dingo.Postgres;

/// <summary>
/// The certificates a cell's nodes serve: issued by the platform CA for every host a client may use to reach a node
/// (the binding host and the routers' address, the cell's address, loopback), plus the node's own listen address.
/// </summary>
public sealed class NodeTls(PlatformCa ca, IReadOnlyList<string> hosts, TimeSpan validity)
{
    public PlatformCa Ca { get; } = ca;
    public IReadOnlyList<string> Hosts { get; } = hosts.Distinct(StringComparer.OrdinalIgnoreCase).Order(StringComparer.Ordinal).ToList();
    public TimeSpan Validity { get; } = validity;

    /// <summary>Same CA, hosts and validity: the nodes' certificates need not change.</summary>
    public bool SameAs(NodeTls? other) =>
        other is not null && other.Ca.Fingerprint == Ca.Fingerprint && other.Hosts.SequenceEqual(Hosts, StringComparer.Ordinal) && other.Validity == Validity;

    /// <summary>The hosts every node certificate of this cell names, from its settings.</summary>
    public static IReadOnlyList<string> HostsFor(DingoSettings settings)
    {
        var hosts = new List<string> { "127.0.0.1", "::1", "localhost", settings.Cell.Address, settings.Broker.BindingHost, settings.Router.BindAddress };
        hosts.AddRange(settings.Postgres.CertificateHosts);
        return hosts.Where(Nameable).ToList();
    }

    /// <summary>The hosts of one node's certificate: the cell's, and the address the node listens on.</summary>
    public IReadOnlyList<string> HostsOf(string listenAddress) =>
        Nameable(listenAddress) ? Hosts.Append(listenAddress).ToList() : Hosts;

    /// <summary>A wildcard listen or bind address (0.0.0.0, ::, *) is no name a client connects to.</summary>
    private static bool Nameable(string host) =>
        !string.IsNullOrWhiteSpace(host) && host != "*" && !(IPAddress.TryParse(host, out var ip) && (ip.Equals(IPAddress.Any) || ip.Equals(IPAddress.IPv6Any)));

    public override string ToString() => $"{Ca} for {string.Join(", ", Hosts)}";
}

/// <summary>
/// What a node reads for TLS: its certificate and key, the CA it verifies its primary with (replication,
/// pg_basebackup, pg_rewind), and the client certificate its cell's libpq tools and WAL receiver present as the
/// platform's replication or superuser role. The runtimes write the files and <see cref="Conf"/> where PostgreSQL reads them.
/// </summary>
public sealed record NodeTlsFiles(string CertificatePem, string KeyPem, string CaPem, string ClientCertificatePem, string ClientKeyPem)
{
    public const string CertFile = "server.crt";
    public const string KeyFile = "server.key";
    public const string CaFile = "root.crt";
    public const string ClientCertFile = "client.crt";
    public const string ClientKeyFile = "client.key";
    public const string ConfFile = "tls.conf";

    /// <summary>postgresql.conf lines for files in <paramref name="folder"/> (read again on a reload: no restart needed).</summary>
    public static string Conf(string folder) => new StringBuilder()
        .AppendLine("# Written by Dingo: the node's certificate of the platform CA (docs/security.md).")
        .AppendLine("ssl = on")
        .AppendLine(CultureInfo.InvariantCulture, $"ssl_cert_file = '{folder}/{CertFile}'")
        .AppendLine(CultureInfo.InvariantCulture, $"ssl_key_file = '{folder}/{KeyFile}'")
        .AppendLine(CultureInfo.InvariantCulture, $"ssl_ca_file = '{folder}/{CaFile}'")
        .AppendLine("ssl_min_protocol_version = 'TLSv1.2'")
        .ToString();

    /// <summary>
    /// libpq settings of a connection to another node of the platform, with the node's TLS files in <paramref name="folder"/>
    /// (null while no CA is known): TLS, the other node's certificate checked for its host, and this cell's client
    /// certificate presented (nodes with require-tls ask the platform's roles for one).
    /// </summary>
    public static string ClientConninfo(string? folder) => folder is null
        ? "sslmode=prefer"
        : $"sslmode=verify-full sslrootcert={folder}/{CaFile} sslcert={folder}/{ClientCertFile} sslkey={folder}/{ClientKeyFile}";

    // Never print the key.
    public override string ToString() => "node TLS files";
}
