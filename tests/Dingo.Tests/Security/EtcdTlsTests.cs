using System.Security.Authentication;
using Dingo.Config;
using Dingo.Store;
using Dingo.Tests.Support;
using Grpc.Core;
using Xunit.Abstractions;

namespace Dingo.Tests.Security;

/// <summary>
/// etcd over TLS with client certificates against a real etcd (--client-cert-auth, <see cref="TestEtcdTls"/>): our store
/// works with the platform's certificate; etcd refuses a client without one or with one from another CA; our client
/// refuses a server whose certificate another CA signed or that does not name the host it connected to.
/// </summary>
public sealed class EtcdTlsTests(ITestOutputHelper output)
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(10);

    [Fact]
    public async Task The_store_reads_writes_swaps_and_leases_over_tls_with_the_client_certificate()
    {
        await using var store = TestEtcdTls.NewStore(out var prefix);
        using var cts = new CancellationTokenSource(Bound);
        Assert.True(await store.CreateIfAbsentAsync($"{prefix}/a", "one", cts.Token));
        Assert.False(await store.CreateIfAbsentAsync($"{prefix}/a", "two", cts.Token));
        var read = await store.GetAsync<string>($"{prefix}/a", cts.Token);
        Assert.Equal("one", read!.Value);
        Assert.True(await store.CompareAndPutAsync($"{prefix}/a", "three", read.ModRevision, cts.Token));
        var lease = await store.GrantLeaseAsync(TimeSpan.FromSeconds(5), cts.Token);
        Assert.True(await store.CreateIfAbsentAsync($"{prefix}/leased", "x", cts.Token, lease));
        Assert.Equal(lease, (await store.GetAsync<string>($"{prefix}/leased", cts.Token))!.Lease);
        await store.RevokeLeaseAsync(lease, cts.Token);
        Assert.Null(await store.GetStringAsync($"{prefix}/leased", cts.Token));
        Assert.StartsWith("https://", store.Endpoints[0]);
    }

    [Fact]
    public async Task Etcd_refuses_a_client_without_a_certificate_and_it_writes_nothing()
    {
        var server = TestEtcdTls.Instance;
        var caOnly = new EtcdTlsSettings { CaFile = server.Ca.CaFile };
        await AssertRefusedByEtcdAsync(caOnly, "no client certificate", "didn't provide a certificate");
    }

    [Fact]
    public async Task Etcd_refuses_a_client_certificate_from_another_ca_and_it_writes_nothing()
    {
        // The foreign certificate is presented (our client never leaves it out), with the same common name "dingo".
        await AssertRefusedByEtcdAsync(TestEtcdTls.Instance.ForeignClient, "a certificate from another CA", "signed by unknown authority");
    }

    [Fact]
    public async Task Our_client_refuses_a_server_certificate_another_ca_signed_even_with_a_valid_client_certificate()
    {
        var server = TestEtcdTls.Instance;
        // Trusts only the foreign CA: etcd's real certificate (our CA) must not be accepted, nor the system's store asked.
        var trustsOther = new EtcdTlsSettings { CaFile = server.Foreign.CaFile, CertFile = server.Client.CertFile, KeyFile = server.Client.KeyFile };
        var error = await AssertCallFailsAsync(server.ClientUrl, trustsOther);
        Assert.True(HasAuthenticationFailure(error), $"expected a certificate validation failure, got: {Describe(error)}");
    }

    [Fact]
    public async Task Our_client_refuses_a_server_certificate_that_does_not_name_the_host_it_connected_to()
    {
        var server = TestEtcdTls.Instance;
        // etcd's certificate names 127.0.0.1 and etcd.dingo.test; "localhost" reaches the same listener under a name it lacks.
        var error = await AssertCallFailsAsync($"https://localhost:{server.Port}", server.Client);
        Assert.True(HasAuthenticationFailure(error), $"expected a host name mismatch, got: {Describe(error)}");
    }

    [Fact]
    public async Task Settings_with_https_endpoints_need_a_ca_and_every_tls_file_is_read_at_start_naming_its_setting()
    {
        var server = TestEtcdTls.Instance;
        var noCa = Assert.Throws<ArgumentException>(() => new EtcdStore([server.ClientUrl], "/x"));
        Assert.Contains("dingo.etcd.tls.ca-file", noCa.Message);

        var missing = Assert.Throws<ArgumentException>(() => EtcdClientTls.Load(server.Client with { CertFile = "/nonexistent/dingo.pem" }));
        Assert.Contains("dingo.etcd.tls.cert-file", missing.Message);
        Assert.Contains("/nonexistent/dingo.pem", missing.Message);

        // A key that is not the certificate's: the error names the key's setting and never quotes the key.
        var wrongKey = Assert.Throws<ArgumentException>(() => EtcdClientTls.Load(server.Client with { KeyFile = server.ForeignClient.KeyFile }));
        Assert.Contains("dingo.etcd.tls.key-file", wrongKey.Message);
        var keyText = await File.ReadAllTextAsync(server.ForeignClient.KeyFile);
        var keyBody = keyText.Split('\n')[1];
        Assert.DoesNotContain(keyBody, wrongKey.Message);
        Assert.DoesNotContain("PRIVATE KEY", wrongKey.Message);

        // A CA file holding no certificate (here: a key).
        var notACa = Assert.Throws<ArgumentException>(() => EtcdClientTls.Load(server.Client with { CaFile = server.Client.KeyFile }));
        Assert.Contains("dingo.etcd.tls.ca-file", notACa.Message);
        Assert.DoesNotContain("PRIVATE KEY", notACa.Message);
    }

    [Fact]
    public async Task With_etcd_users_on_the_platforms_certificate_reaches_its_prefix_only()
    {
        var (server, process) = TestEtcdTls.StartOwn();
        try
        {
            var (rootCert, rootKey) = server.Ca.IssueClient("root");
            var (code, text) = await RunAsync("/bin/bash", Path.Combine(TestPlatform.RepoRoot(), "deploy", "etcd-auth.sh"), server.ClientUrl, server.Ca.CaFile, rootCert, rootKey, "/dingo");
            output.WriteLine(text);
            Assert.True(code == 0, $"etcd-auth.sh failed (exit {code}): {text}");
            // Idempotent: a second run keeps what exists.
            Assert.Equal(0, (await RunAsync("/bin/bash", Path.Combine(TestPlatform.RepoRoot(), "deploy", "etcd-auth.sh"), server.ClientUrl, server.Ca.CaFile, rootCert, rootKey, "/dingo")).Code);

            using var cts = new CancellationTokenSource(Bound);
            // CN=dingo: everything Dingo does, under /dingo/.
            await using (var dingo = new EtcdStore([server.ClientUrl], "/dingo", tls: EtcdClientTls.Load(server.Client)))
            {
                // A watch on its prefix sees its writes (cells and brokers watch etcd).
                var seen = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
                using var stopWatch = CancellationTokenSource.CreateLinkedTokenSource(cts.Token);
                var watch = dingo.WatchPrefixAsync("/dingo/instances/", changes =>
                {
                    foreach (var change in changes) seen.TrySetResult(change.Key);
                    return Task.CompletedTask;
                }, stopWatch.Token);
                // Written until seen: the watch may register after a first write.
                for (var i = 0; !seen.Task.IsCompleted; i++)
                {
                    await dingo.PutStringAsync("/dingo/instances/watched", i.ToString(System.Globalization.CultureInfo.InvariantCulture), cts.Token);
                    await Task.WhenAny(seen.Task, Task.Delay(200, cts.Token));
                }
                Assert.Equal("/dingo/instances/watched", await seen.Task);
                await stopWatch.CancelAsync();
                await watch;
                Assert.True(await dingo.CreateIfAbsentAsync("/dingo/instances/a", "one", cts.Token));
                var lease = await dingo.GrantLeaseAsync(TimeSpan.FromSeconds(5), cts.Token);
                Assert.True(await dingo.CreateIfAbsentAsync("/dingo/cells/c", "x", cts.Token, lease));
                Assert.Single(await dingo.ListAsync<string>("/dingo/cells/", cts.Token));
                await dingo.RevokeLeaseAsync(lease, cts.Token);
                // Outside its prefix (another platform's, or a look-alike prefix): denied, reading and writing.
                var write = await Assert.ThrowsAsync<RpcException>(() => dingo.PutStringAsync("/other/x", "no", cts.Token));
                Assert.Equal(StatusCode.PermissionDenied, write.StatusCode);
                var lookAlike = await Assert.ThrowsAsync<RpcException>(() => dingo.PutStringAsync("/dingo-other/x", "no", cts.Token));
                Assert.Equal(StatusCode.PermissionDenied, lookAlike.StatusCode);
            }
            // A valid certificate of etcd's CA whose name is no user gets nothing.
            var (strangerCert, strangerKey) = server.Ca.IssueClient("stranger");
            await using (var stranger = new EtcdStore([server.ClientUrl], "/dingo", tls: EtcdClientTls.Load(server.Client with { CertFile = strangerCert, KeyFile = strangerKey })))
            {
                var read = await Assert.ThrowsAsync<RpcException>(() => stranger.GetStringAsync("/dingo/instances/a", cts.Token));
                Assert.Equal(StatusCode.PermissionDenied, read.StatusCode);
            }
            // root reads everything, and sees that nothing was written outside /dingo/.
            await using var root = new EtcdStore([server.ClientUrl], "/", tls: EtcdClientTls.Load(server.Client with { CertFile = rootCert, KeyFile = rootKey }));
            Assert.Equal("\"one\"", await root.GetStringAsync("/dingo/instances/a", cts.Token));
            Assert.Null(await root.GetStringAsync("/other/x", cts.Token));
            Assert.Null(await root.GetStringAsync("/dingo-other/x", cts.Token));
        }
        finally
        {
            process.Kill();
            await process.WaitForExitAsync();
        }
    }

    private static async Task<(int Code, string Text)> RunAsync(string file, params string[] args)
    {
        var psi = new System.Diagnostics.ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var process = System.Diagnostics.Process.Start(psi)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        await process.WaitForExitAsync(timeout.Token);
        return (process.ExitCode, (await stdout + await stderr).Trim());
    }

    private async Task AssertRefusedByEtcdAsync(EtcdTlsSettings tls, string what, string reason)
    {
        var server = TestEtcdTls.Instance;
        var key = $"/t-{Guid.NewGuid():N}/refused";
        var before = server.Log.Count;
        await using (var refused = new EtcdStore([server.ClientUrl], "/refused", tls: EtcdClientTls.Load(tls)))
        {
            using var cts = new CancellationTokenSource(Bound);
            await Assert.ThrowsAsync<RpcException>(() => refused.PutStringAsync(key, "should not be written", cts.Token));
        }
        await using var store = TestEtcdTls.NewStore(out _);
        Assert.Null(await store.GetStringAsync(key, CancellationToken.None));
        // etcd itself says it turned the connection away (not a client that never got there).
        bool Rejected(string line) => line.Contains("rejected connection", StringComparison.Ordinal) && line.Contains(reason, StringComparison.Ordinal);
        await Eventually.UntilAsync(() => Task.FromResult(server.Log.Skip(before).Any(Rejected)),
            TimeSpan.FromSeconds(5), $"etcd logs that it rejected a client with {what} ({reason})");
        output.WriteLine($"{what}: {server.Log.Skip(before).First(Rejected)}");
    }

    private async Task<RpcException> AssertCallFailsAsync(string url, EtcdTlsSettings tls)
    {
        await using var store = new EtcdStore([url], "/refused", tls: EtcdClientTls.Load(tls));
        using var cts = new CancellationTokenSource(Bound);
        var error = await Assert.ThrowsAsync<RpcException>(() => store.GetStringAsync("/refused/x", cts.Token));
        output.WriteLine(Describe(error));
        return error;
    }

    private static bool HasAuthenticationFailure(Exception? error)
    {
        for (var e = error; e is not null; e = e.InnerException ?? (e as RpcException)?.Status.DebugException)
            if (e is AuthenticationException) return true;
        return false;
    }

    private static string Describe(Exception? error)
    {
        var parts = new List<string>();
        for (var e = error; e is not null; e = e.InnerException ?? (e as RpcException)?.Status.DebugException)
            parts.Add($"{e.GetType().Name}: {e.Message}");
        return string.Join(" <- ", parts);
    }
}
