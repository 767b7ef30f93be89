using System.Collections.Immutable;
using System.Net.Security;
using System.Reflection;
using System.Security.Cryptography.X509Certificates;
using Dingo.Security;
using Npgsql;
using Npgsql.Replication;

namespace Dingo.Postgres;

/// <summary>
/// How the platform's own Npgsql connections to its nodes (HA probes, role and database preparation, archiving, drills)
/// use TLS. Offered by default (<c>SSL Mode=Prefer</c>): TLS whenever the node serves it. With
/// <c>dingo.postgres.require-tls</c> the node serves TLS to everyone and asks the platform's roles for a client
/// certificate of the platform CA, and these connections require TLS too, with SCRAM channel binding (nobody on the path
/// can strip TLS or relay the login through a TLS session of his own), present this process's client certificate, and
/// accept only a node whose certificate chains to a platform CA this process trusts (docs/security.md).
/// <para>
/// The CA comes from etcd (<see cref="PlatformCaStore"/>): a cell or broker calls <see cref="Trust"/> each time it reads
/// it, and gets a client certificate of its own, issued in memory and never written anywhere. A process may trust several
/// CAs (a test process runs several platforms; a platform replacing its CA has both for a while): a node names the CA it
/// accepts clients of in its TLS handshake, and the certificate of that CA is presented.
/// </para>
/// </summary>
public static class PlatformConnectionTls
{
    /// <summary>PEM texts for libpq's sslrootcert, sslcert and sslkey files.</summary>
    public sealed record LibpqTlsPem(string CasPem, string CertificatePem, string KeyPem)
    {
        // Never print the key.
        public override string ToString() => "libpq TLS files";
    }

    /// <summary>How long a process's client certificate is valid; renewed after two thirds of it.</summary>
    public static readonly TimeSpan ClientValidity = TimeSpan.FromDays(30);

    private static volatile bool _required;
    private static readonly object Gate = new();
    private static ImmutableDictionary<string, ClientIdentity> _identities = ImmutableDictionary<string, ClientIdentity>.Empty.WithComparers(StringComparer.Ordinal);

    // Npgsql's replication connections take a connection string only; the NpgsqlConnection inside gets the same callback.
    private static readonly FieldInfo? ReplicationInner = typeof(ReplicationConnection)
        .GetFields(BindingFlags.NonPublic | BindingFlags.Instance)
        .SingleOrDefault(f => f.FieldType == typeof(NpgsqlConnection));

    /// <summary>Whether this process's connections require TLS (set once at start by the cell, broker and console).</summary>
    public static bool Required => _required;

    /// <summary>Called by a process's Main from its settings; in-process test platforms leave the default (offered).</summary>
    public static void Configure(bool requireTls) => _required = requireTls;

    /// <summary>Sets <paramref name="builder"/>'s TLS for a connection to a node.</summary>
    public static NpgsqlConnectionStringBuilder Apply(NpgsqlConnectionStringBuilder builder, bool required)
    {
        builder.SslMode = required ? SslMode.Require : SslMode.Prefer;
        builder.ChannelBinding = required ? ChannelBinding.Require : ChannelBinding.Prefer;
        return builder;
    }

    /// <summary>
    /// Trusts <paramref name="ca"/>'s nodes and holds a client certificate of it (a new one when none is held or two
    /// thirds of its life have passed). Cheap when nothing is due: cells and brokers call it each time they read the CA.
    /// </summary>
    public static void Trust(PlatformCa ca)
    {
        ArgumentNullException.ThrowIfNull(ca);
        var now = DateTimeOffset.UtcNow;
        if (_identities.TryGetValue(ca.Fingerprint, out var held) && !held.Due(now)) return;
        lock (Gate)
        {
            if (_identities.TryGetValue(ca.Fingerprint, out held) && !held.Due(now)) return;
            var issued = ca.IssueClient("dingo-platform", now, ClientValidity);
            var client = issued.WithKey();
            // The one replaced may be in a handshake right now: it is left to the collector, not disposed.
            _identities = _identities.SetItem(ca.Fingerprint, new ClientIdentity(ca.PublicCertificate(), client, issued.NotBefore, issued.NotAfter));
        }
    }

    /// <summary>Whether a node's certificate chains to a platform CA this process trusts.</summary>
    public static bool VerifiesNode(X509Certificate certificate) => _identities.Values.Any(i => i.Verifies(certificate));

    /// <summary>Whether this process holds a client certificate of the CA with this fingerprint.</summary>
    public static bool Trusts(string caFingerprint) => _identities.ContainsKey(caFingerprint);

    /// <summary>A connection to a node with this process's client certificates and, when TLS is required, its CA check.</summary>
    public static NpgsqlConnection Connection(NpgsqlConnectionStringBuilder builder)
    {
        ArgumentNullException.ThrowIfNull(builder);
        var connection = new NpgsqlConnection(builder.ConnectionString);
        Attach(connection, builder.SslMode == SslMode.Require);
        return connection;
    }

    /// <summary>A replication connection to a node, set up as <see cref="Connection"/>.</summary>
    public static PhysicalReplicationConnection ReplicationConnection(NpgsqlConnectionStringBuilder builder)
    {
        ArgumentNullException.ThrowIfNull(builder);
        var replication = new PhysicalReplicationConnection(builder.ConnectionString);
        var inner = ReplicationInner?.GetValue(replication) as NpgsqlConnection
                    ?? throw new InvalidOperationException("this Npgsql's replication connection has no NpgsqlConnection inside to give the platform's client certificate");
        Attach(inner, builder.SslMode == SslMode.Require);
        return replication;
    }

    private static void Attach(NpgsqlConnection connection, bool required) =>
        connection.SslClientAuthenticationOptionsCallback = options => Configure(options, required);

    /// <summary>The client side of a node's TLS handshake: the certificate for the CA the node asks for; the node's own
    /// certificate checked against the trusted CAs when TLS is required (offered, anything goes, as before).</summary>
    internal static void Configure(SslClientAuthenticationOptions options, bool required)
    {
        var identities = _identities;
        if (identities.Count > 0)
        {
            var certificates = new X509CertificateCollection();
            foreach (var identity in identities.Values) certificates.Add(identity.Client);
            options.ClientCertificates = certificates;
            options.LocalCertificateSelectionCallback = (_, _, _, remote, issuers) => Select(identities, issuers, remote);
        }
        if (required)
            options.RemoteCertificateValidationCallback = (_, certificate, _, _) =>
                certificate is not null && identities.Values.Any(i => i.Verifies(certificate));
    }

    /// <summary>The client certificate of the CA the server names (PostgreSQL names its ssl_ca_file), else of the CA its
    /// own certificate chains to; null when none fits (the server then refuses the platform's roles, and says so).</summary>
    internal static X509Certificate2? Select(ImmutableDictionary<string, ClientIdentity> identities, string[] issuers, X509Certificate? remote)
    {
        foreach (var issuer in issuers)
        {
            var name = new X500DistinguishedName(issuer).Name;
            var named = identities.Values.Where(i => i.Ca.SubjectName.Name == name).ToList();
            if (named.Count == 0) continue;
            // Two CAs of one name (a CA re-issued under the same subject): the one the node's certificate chains to, else
            // the one trusted last.
            if (named.Count > 1 && remote is not null && named.FirstOrDefault(i => i.Verifies(remote)) is { } signer) return signer.Client;
            return named.MaxBy(i => i.TrustedAt)!.Client;
        }
        if (remote is not null && identities.Values.FirstOrDefault(i => i.Verifies(remote)) is { } chained) return chained.Client;
        return identities.Count == 1 ? identities.Values.Single().Client : null;
    }

    internal static ImmutableDictionary<string, ClientIdentity> Identities => _identities;

    /// <summary>
    /// What a libpq tool this process runs itself (the backup duty's pg_basebackup) needs to log in as the platform where
    /// TLS is required: every trusted CA (PEM, to verify the node) and the client certificate and key (PEM) of the
    /// platform's CA. libpq presents one certificate whatever the node asks for, and a node that verifies a certificate of
    /// a CA it does not know refuses the login ("tlsv1 alert unknown ca"): a test process running several platforms,
    /// each with its CA, presented the CA trusted last, another platform's (fresh208). Null while that CA is not trusted,
    /// or none is named (a platform without a CA yet). The key is for a file created 0600 and deleted after the run.
    /// </summary>
    /// <param name="caFingerprint">SHA-256 of the certificate of the CA of the node's platform (etcd's
    /// <see cref="Dingo.Postgres.PlatformCaStore"/>)</param>
    public static LibpqTlsPem? Libpq(string? caFingerprint)
    {
        var identities = _identities;
        if (caFingerprint is null || identities.GetValueOrDefault(caFingerprint) is not { } newest) return null;
        var cas = string.Concat(identities.Values.OrderBy(i => i.TrustedAt).Select(i => i.Ca.ExportCertificatePem() + "\n"));
        using var key = newest.Client.GetECDsaPrivateKey()
                        ?? throw new InvalidOperationException("the platform's client certificate has no ECDSA key to hand to libpq");
        return new LibpqTlsPem(cas, newest.Client.ExportCertificatePem() + "\n", key.ExportPkcs8PrivateKeyPem() + "\n");
    }

    internal sealed record ClientIdentity(X509Certificate2 Ca, X509Certificate2 Client, DateTimeOffset NotBefore, DateTimeOffset NotAfter)
    {
        public long TrustedAt { get; } = System.Diagnostics.Stopwatch.GetTimestamp();

        public bool Due(DateTimeOffset now) => now >= NotBefore + (NotAfter - NotBefore) * 2 / 3;

        /// <summary>Whether <paramref name="certificate"/> chains to this CA alone (the system's roots play no part).</summary>
        public bool Verifies(X509Certificate certificate)
        {
            using var leaf = X509CertificateLoader.LoadCertificate(certificate.GetRawCertData());
            return PlatformCa.Chains(Ca, leaf);
        }

        public override string ToString() => $"client certificate of {Ca.Subject} until {NotAfter:yyyy-MM-dd}";
    }
}
