using System.Diagnostics;
using System.Text.Json.Nodes;
using Dingo.Tests.Support;

namespace Dingo.Tests.Security;

/// <summary>
/// Runs the real psql (libpq, OpenSSL) against a binding as an application would: host and port from the binding, the
/// CA from its `ca_certificate` written to a file named as sslrootcert.
/// </summary>
internal sealed class PsqlTls : IDisposable
{
    private readonly JsonObject _credentials;
    private readonly string _psql;

    public PsqlTls(JsonObject credentials, string postgresBin)
    {
        _credentials = credentials;
        _psql = Path.Combine(postgresBin, "psql");
        CaFile = Path.Combine(Path.GetTempPath(), $"dingo-ca-{Guid.NewGuid():N}.crt");
        File.WriteAllText(CaFile, (string)credentials["ca_certificate"]!);
    }

    public string CaFile { get; }

    /// <summary>psql -At -c SQL with the given sslmode (and this binding's CA as sslrootcert); exit code, output, errors.</summary>
    public async Task<(int Exit, string Out, string Err)> RunAsync(string sslmode, string sql, string? host = null)
    {
        var conninfo = $"host={host ?? (string)_credentials["host"]!} port={(int)_credentials["port"]!} dbname={(string)_credentials["database"]!} " +
                       $"user={(string)_credentials["username"]!} sslmode={sslmode} sslrootcert={CaFile} connect_timeout=5";
        var psi = new ProcessStartInfo(_psql) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var arg in new[] { "-X", "-q", "-At", "-d", conninfo, "-c", sql }) psi.ArgumentList.Add(arg);
        psi.Environment["PGPASSWORD"] = (string)_credentials["password"]!;
        using var process = Process.Start(psi)!;
        var output = process.StandardOutput.ReadToEndAsync();
        var errors = process.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(20));
        await process.WaitForExitAsync(timeout.Token);
        return (process.ExitCode, (await output).Trim(), (await errors).Trim());
    }

    /// <summary>This session's TLS as the server sees it ("t"), asserted; retried while the router has no primary (failover).</summary>
    public async Task AssertVerifiedTlsAsync(string what)
    {
        (int Exit, string Out, string Err) last = default;
        await Eventually.UntilAsync(async () =>
        {
            // A binding's session runs as the owner role, which may not see its own login's row in pg_stat_ssl: back to
            // the login role first.
            last = await RunAsync("verify-full", "SET ROLE NONE; SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()");
            return last.Exit == 0;
        }, TimeSpan.FromSeconds(30), $"psql with sslmode=verify-full through the router ({what})");
        // The last line is the SELECT's (a command tag may come before it).
        var answer = (last.Out ?? "").Split('\n', StringSplitOptions.TrimEntries).Last();
        Assert.True(answer == "t", $"{what}: psql said {last.Out?.ReplaceLineEndings(" | ")} / {last.Err}");
    }

    public void Dispose() => File.Delete(CaFile);
}
