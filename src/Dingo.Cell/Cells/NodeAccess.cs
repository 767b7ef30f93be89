using System.Collections.Concurrent;
using Dingo.Postgres;
using Dingo.Security;

namespace Dingo.Cells;

/// <summary>
/// The pg_hba.conf and TLS certificate each node of a runtime should have, and what each running node was last given:
/// both runtimes keep their nodes' access current through this one book and differ only in how they write a file and
/// reload. A node's certificate is issued here and renewed when the hosts or the CA change or two thirds of its life
/// have passed.
/// </summary>
internal sealed class NodeAccess
{
    private PlatformAccess _access = PlatformAccess.LocalOnly;
    // The superuser and address a node was last started with; a node adopted after a restart gets the platform's
    // superuser (its cell's address is among the platform's hosts anyway).
    private readonly ConcurrentDictionary<string, (string Superuser, string Address)> _started = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, NodeAccessFiles> _applied = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, NodeCertificate> _certificates = new(StringComparer.Ordinal);
    // One client certificate for all nodes of this runtime (replication, pg_basebackup, pg_rewind), renewed like theirs.
    private NodeCertificate? _client;
    // The health APIs' certificates, loaded once per issued certificate (a replaced one is left to the collector: it may
    // be in a handshake).
    private readonly ConcurrentDictionary<string, (NodeCertificate Source, System.Security.Cryptography.X509Certificates.X509Certificate2 Certificate)> _loaded = new(StringComparer.Ordinal);

    public PlatformAccess Current => Volatile.Read(ref _access);

    /// <summary>The CA's certificate nodes verify their primary with, or null while no CA is known.</summary>
    public string? CaPem => Current.Tls?.Ca.CertificatePem;

    /// <summary>
    /// The client certificate this runtime's nodes present to other nodes as the platform's roles, or null while no CA
    /// is known. A new one when the CA changes or two thirds of its life have passed.
    /// </summary>
    public NodeCertificate? ClientCertificate()
    {
        if (Current.Tls is not { } tls) return null;
        var now = DateTimeOffset.UtcNow;
        var held = Volatile.Read(ref _client);
        if (held is not null && !held.DueFor([], tls.Ca.Fingerprint, now)) return held;
        var fresh = tls.Ca.IssueClient("dingo-cell", now, tls.Validity);
        // Two callers racing both issue one; either is valid, and the next call settles on the one kept.
        return Interlocked.CompareExchange(ref _client, fresh, held) == held ? fresh : Volatile.Read(ref _client)!;
    }

    /// <summary>The files for a node about to start (or be reconfigured): it reads them as it starts.</summary>
    public NodeAccessFiles ForStart(string nodeId, string superuser, string listenAddress)
    {
        _started[nodeId] = (superuser, listenAddress);
        var files = Expected(nodeId, superuser, listenAddress);
        _applied[nodeId] = files;
        return files;
    }

    /// <summary>Sets the access every node should have; true when it differs from before.</summary>
    public bool Set(PlatformAccess access)
    {
        var before = Interlocked.Exchange(ref _access, access);
        return !before.Networks.SequenceEqual(access.Networks, StringComparer.Ordinal) || before.RequireTls != access.RequireTls
               || (before.Tls is null ? access.Tls is not null : !before.Tls.SameAs(access.Tls));
    }

    /// <summary>
    /// The node's health API TLS: its current server certificate (with key) and whether plain HTTP is refused (require-tls
    /// with a CA known). Plain while the node has no certificate yet.
    /// </summary>
    public Dingo.Ha.HealthTls HealthApiTls(string nodeId)
    {
        var access = Current;
        if (access.Tls is null || !_certificates.TryGetValue(nodeId, out var issued)) return Dingo.Ha.HealthTls.Plain;
        var loaded = _loaded.AddOrUpdate(nodeId, _ => (issued, issued.WithKey()), (_, held) => held.Source == issued ? held : (issued, issued.WithKey()));
        return new Dingo.Ha.HealthTls(loaded.Certificate, access.RequireTls);
    }

    /// <summary>The files this running node should have, or null when it has them already.</summary>
    public NodeAccessFiles? Due(string nodeId)
    {
        var files = _started.TryGetValue(nodeId, out var started)
            ? Expected(nodeId, started.Superuser, started.Address)
            : Expected(nodeId, DatabaseAdmin.SuperuserName, "");
        return _applied.TryGetValue(nodeId, out var applied) && applied == files ? null : files;
    }

    /// <summary>The node runs with these files now (written and reloaded).</summary>
    public void Applied(string nodeId, NodeAccessFiles files) => _applied[nodeId] = files;

    /// <summary>The node stopped or went: whatever it had is no longer known to be loaded.</summary>
    public void Forget(string nodeId) => _applied.TryRemove(nodeId, out _);

    private NodeAccessFiles Expected(string nodeId, string superuser, string listenAddress)
    {
        var access = Current;
        var hba = access.Hba(superuser, listenAddress);
        if (access.Tls is not { } tls) return new NodeAccessFiles(hba, null);
        var hosts = tls.HostsOf(listenAddress);
        var now = DateTimeOffset.UtcNow;
        var certificate = _certificates.AddOrUpdate(nodeId,
            _ => tls.Ca.Issue(nodeId, hosts, now, tls.Validity),
            (_, held) => held.DueFor(hosts, tls.Ca.Fingerprint, now) ? tls.Ca.Issue(nodeId, hosts, now, tls.Validity) : held);
        var client = ClientCertificate()!;
        return new NodeAccessFiles(hba, new NodeTlsFiles(certificate.CertificatePem, certificate.KeyPem, tls.Ca.CertificatePem, client.CertificatePem, client.KeyPem));
    }
}

/// <summary>A node's pg_hba.conf and TLS files as they should be.</summary>
internal sealed record NodeAccessFiles(string Hba, NodeTlsFiles? Tls);
