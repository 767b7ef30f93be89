using Dingo.Config;
using Dingo.Model;
using Dingo.Security;
using Dingo.Store;

namespace Dingo.Postgres;

/// <summary>
/// The platform CA as etcd holds it (<c>tls/ca</c>): the certificate in clear, the private key as a
/// <see cref="Credentials"/> value, so it is sealed with the platform key like every password, re-sealed by
/// `dingo rotate-key`, and never stored in clear.
/// </summary>
public sealed record PlatformCaRecord
{
    public const string KeyName = "platform-ca";

    public required string Certificate { get; init; }
    /// <summary>Username <see cref="KeyName"/>, password the PKCS#8 PEM key: sealed by <see cref="CredentialsJsonConverter"/>.</summary>
    public required Credentials Key { get; init; }
    /// <summary>"generated" (by the first cell or broker that needed it) or "operator" (dingo.postgres.ca-cert-file).</summary>
    public required string Source { get; init; }
    public required DateTimeOffset CreatedAt { get; init; }
}

/// <summary>
/// Finds the platform CA: the operator's files when configured, else the one in etcd, else makes one and creates it
/// with create-if-absent, so two cells (or a cell and a broker) racing at the first start agree on the one that won.
/// A record that cannot be read (altered, key sealed with an unknown key, not a pair) is an error, never replaced:
/// replacing it would silently re-key every node and make every binding's CA wrong.
/// </summary>
public static class PlatformCaStore
{
    public static readonly TimeSpan CaValidity = TimeSpan.FromDays(3650);

    /// <exception cref="PlatformCaException">the stored CA cannot be used, or the operator's files cannot be read</exception>
    public static async Task<PlatformCa> GetOrCreateAsync(EtcdStore store, PostgresTlsSettings settings, CancellationToken ct)
    {
        var key = store.Keys.PlatformCa;
        if (settings.OperatorCa)
        {
            var given = FromFiles(settings);
            var stored = await store.GetAsync<PlatformCaRecord>(key, ct).ConfigureAwait(false);
            // etcd carries the certificate brokers hand out in bindings: it follows the operator's files.
            if (stored is null || stored.Value.Certificate != given.CertificatePem)
            {
                var record = Record(given, "operator");
                var written = stored is null
                    ? await store.CreateIfAbsentAsync(key, record, ct).ConfigureAwait(false)
                    : await store.CompareAndPutAsync(key, record, stored.ModRevision, ct).ConfigureAwait(false);
                if (!written) return await GetOrCreateAsync(store, settings, ct).ConfigureAwait(false);
            }
            return given;
        }
        for (var attempt = 0; attempt < 3; attempt++)
        {
            var stored = await store.GetAsync<PlatformCaRecord>(key, ct).ConfigureAwait(false);
            if (stored is not null) return Open(stored.Value, key);
            var fresh = PlatformCa.Create($"Dingo PostgreSQL platform CA {store.Keys.Root}", DateTimeOffset.UtcNow, CaValidity);
            if (await store.CreateIfAbsentAsync(key, Record(fresh, "generated"), ct).ConfigureAwait(false)) return fresh;
            fresh.Dispose(); // another process created it first: use theirs
        }
        throw new PlatformCaException($"etcd key {key} kept changing while the platform CA was read; trying again later");
    }

    /// <summary>Only the CA's certificate (what a broker hands out), or null when no CA exists yet.</summary>
    public static async Task<string?> CertificateAsync(EtcdStore store, CancellationToken ct) =>
        (await store.GetRawAsync(store.Keys.PlatformCa, ct).ConfigureAwait(false)) is { } raw
            ? System.Text.Json.JsonDocument.Parse(raw.Value).RootElement.GetProperty("certificate").GetString()
            : null;

    private static PlatformCaRecord Record(PlatformCa ca, string source) => new()
    {
        Certificate = ca.CertificatePem,
        Key = new Credentials(PlatformCaRecord.KeyName, ca.ExportKeyPem()),
        Source = source,
        CreatedAt = DateTimeOffset.UtcNow,
    };

    private static PlatformCa Open(PlatformCaRecord record, string key)
    {
        if (record.Key.Username != PlatformCaRecord.KeyName)
            throw new PlatformCaException($"etcd key {key} does not hold the platform CA's key (it names '{record.Key.Username}')");
        try
        {
            return PlatformCa.FromPem(record.Certificate, record.Key.Password);
        }
        catch (System.Security.Cryptography.CryptographicException ex)
        {
            throw new PlatformCaException($"the platform CA in etcd ({key}) cannot be used: {ex.Message}. Nodes keep the certificates they have; " +
                                          "restore the key from a backup, or delete it to have a new CA made (every node is then given a new certificate and every binding's CA changes)");
        }
    }

    private static PlatformCa FromFiles(PostgresTlsSettings settings)
    {
        try
        {
            return PlatformCa.FromPem(File.ReadAllText(settings.CaCertFile), File.ReadAllText(settings.CaKeyFile));
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or System.Security.Cryptography.CryptographicException)
        {
            throw new PlatformCaException($"the operator's CA (dingo.postgres.ca-cert-file {settings.CaCertFile}, ca-key-file {settings.CaKeyFile}) cannot be used: {ex.Message}");
        }
    }
}

public sealed class PlatformCaException(string message) : InvalidOperationException(message);
