using System.Security.Cryptography.X509Certificates;
using Dingo.Config;
using Dingo.Postgres;
using Dingo.Security;
using Microsoft.Extensions.Logging;

namespace Dingo.Cell;

/// <summary>
/// What the cell's own HTTP ports (health, metrics) serve under dingo.postgres.require-tls: a certificate of the platform
/// CA for the cell's address (and loopback), issued in memory and never written, renewed when the CA changes or two
/// thirds of its life have passed — checked each time the platform's trust service reads the CA (at start, then once a
/// minute). The CA's public certificate is written beside the cell's data (<see cref="CaFile"/>) for
/// `Dingo.Cell.dll probe`, which checks the cell's certificate against it.
/// </summary>
internal sealed class CellTlsIdentity(DingoSettings settings, ILogger<CellTlsIdentity> logger) : IPlatformCaListener
{
    private sealed record Held(X509Certificate2 Certificate, NodeCertificate Issued);

    private volatile Held? _held;
    private string? _caWritten;

    /// <summary>The certificate to serve; null until the platform CA has been read.</summary>
    public X509Certificate2? Certificate => _held?.Certificate;

    /// <summary>The hosts the certificate names: the cell's address and loopback (the probe and an operator on the host).</summary>
    public IReadOnlyList<string> Hosts { get; } =
        new[] { settings.Cell.Address, "127.0.0.1", "::1", "localhost" }.Where(h => !string.IsNullOrWhiteSpace(h)).ToList();

    /// <summary>Where the cell writes the platform CA's certificate (public) for its probe.</summary>
    public static string CaFile(DingoSettings settings) =>
        Path.Combine(Path.GetFullPath(settings.DataDir), "cells", settings.Cell.Id, "platform-ca.crt");

    public void Trusted(PlatformCa ca)
    {
        ArgumentNullException.ThrowIfNull(ca);
        var now = DateTimeOffset.UtcNow;
        var held = _held;
        if (held is null || held.Issued.DueFor(Hosts, ca.Fingerprint, now))
        {
            var issued = ca.Issue($"cell {settings.Cell.Id}", Hosts, now, settings.Postgres.CertificateValidity);
            // The one replaced may be in a handshake right now: it is left to the collector, not disposed.
            _held = new Held(issued.WithKey(), issued);
            logger.LogInformation("cell HTTPS (health, metrics): {Certificate} of {Ca}", issued, ca);
        }
        if (_caWritten == ca.Fingerprint) return;
        var path = CaFile(settings);
        try
        {
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            var partial = path + ".partial";
            File.WriteAllText(partial, ca.CertificatePem);
            File.Move(partial, path, overwrite: true);
            _caWritten = ca.Fingerprint;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            logger.LogWarning("could not write the platform CA for the cell's probe to {Path}: {Error}", path, ex.Message);
        }
    }
}
