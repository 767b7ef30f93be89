using System.Diagnostics;
using System.Net.Security;
using System.Net.Sockets;
using Akka.Actor;
using Akka.Configuration;
using Dingo.Config;
using Dingo.Membership;
using Dingo.Tests.Support;
using Xunit.Abstractions;

namespace Dingo.Tests.Security;

/// <summary>
/// A real broker and a real cell (BrokerApp and CellApp in this process, on the run's etcd; the cell has no nodes) whose
/// Akka remoting is mutual TLS with a test platform CA.
/// </summary>
public sealed class TlsBroker : IAsyncLifetime
{
    public TestCertificates PlatformCa { get; } = new("platform-ca");
    public TestCertificates OtherCa { get; } = new("other-ca");
    public TestPlatform Platform { get; private set; } = null!;

    public static string Hocon(AkkaTlsSettings tls) =>
        $$"""dingo.akka.tls { certificate = "{{tls.Certificate}}", key = "{{tls.Key}}", password-file = "{{tls.PasswordFile}}", ca = "{{tls.Ca}}" }""";

    public async Task InitializeAsync()
    {
        var settings = TestPlatform.NewSettings(extra: Hocon(PlatformCa.IssuePem("broker")));
        Platform = await TestPlatform.StartAsync(cells: 1, settings, ownsData: true);
    }

    public async Task DisposeAsync()
    {
        if (Platform is not null) await Platform.DisposeAsync();
        PlatformCa.Dispose();
        OtherCa.Dispose();
    }
}

/// <summary>
/// Akka remoting over mutual TLS against a real broker: a process with a certificate from the platform CA joins and
/// asks the console gateway (with the operator's credentials); one with another CA's certificate, with none, or
/// speaking plain TCP gets nothing; the gateway refuses wrong or missing credentials.
/// </summary>
[SuiteCost(13)]
public sealed class AkkaTlsTests(TlsBroker broker, ITestOutputHelper output) : IClassFixture<TlsBroker>
{
    private static readonly TimeSpan Refused = TimeSpan.FromSeconds(3);

    private TestPlatform Platform => broker.Platform;
    private Address Seed => Address.Parse(Platform.Seed);

    [Fact]
    public async Task Only_a_process_with_a_certificate_from_the_platform_CA_joins_the_cluster()
    {
        Assert.StartsWith("akka.ssl.tcp://dingo@127.0.0.1:", Platform.Seed);
        var watch = Stopwatch.StartNew();
        var member = Member(broker.PlatformCa.IssuePem("cell-member"));
        // Another CA's certificate, from a process that itself trusts both CAs: only the broker's check can stop it.
        var intruder = Member(broker.OtherCa.IssuePem("intruder", caFile: broker.OtherCa.BundleWith(broker.PlatformCa)));
        var plain = Member(tls: null);
        try
        {
            var memberUp = UpAsync(member, Seed);
            var intruderUp = UpAsync(intruder, Seed);
            var plainUp = UpAsync(plain, new Address("akka.tcp", "dingo", Seed.Host, Seed.Port));
            await memberUp.WaitAsync(TimeSpan.FromSeconds(20));
            output.WriteLine($"member Up after {watch.Elapsed.TotalSeconds:0.0}s");
            // Both had as long as the member and a few seconds more, retrying their joins all along.
            await Task.Delay(TimeSpan.FromSeconds(3));
            Assert.False(intruderUp.IsCompleted, "a process with another CA's certificate joined the cluster");
            Assert.False(plainUp.IsCompleted, "a process without TLS joined the cluster");

            // The broker, the real cell (its member system over TLS too) and the member: nobody else.
            var view = await ViewAsync(until: v => v.Members.Count(m => m.Status == "Up") >= 3);
            output.WriteLine(string.Join("; ", view.Members.Select(m => $"{m.Address} {string.Join(",", m.Roles)} {m.Status}")));
            Assert.Equal(3, view.Members.Count);
            Assert.All(view.Members, m => Assert.Equal("Up", m.Status));
            Assert.All(view.Members, m => Assert.StartsWith("akka.ssl.tcp://dingo@127.0.0.1:", m.Address));
            Assert.Contains(view.Members, m => m.Address == Platform.Seed && m.Roles.SequenceEqual(["broker"]));
            Assert.Contains(view.Members, m => m.Address == Akka.Cluster.Cluster.Get(member).SelfAddress.ToString());
            Assert.Equal(2, view.Members.Count(m => m.Roles.SequenceEqual(["cell"])));
        }
        finally
        {
            await Task.WhenAll(StopAsync(member), StopAsync(intruder), StopAsync(plain));
        }
    }

    [Fact]
    public async Task A_tls_client_without_a_certificate_is_cut_off_in_the_handshake()
    {
        using var tcp = new TcpClient();
        await tcp.ConnectAsync(Seed.Host!, Seed.Port!.Value);
        await using var ssl = new SslStream(tcp.GetStream(), leaveInnerStreamOpen: false, (_, _, _, _) => true);
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        var closed = false;
        try
        {
            await ssl.AuthenticateAsClientAsync(new SslClientAuthenticationOptions { TargetHost = Seed.Host! }, timeout.Token);
            // TLS 1.3: the server checks the client's (missing) certificate after the client's side of the handshake
            // is done; it then sends an alert and closes, which the first read sees.
            var buffer = new byte[1];
            closed = await ssl.ReadAsync(buffer, timeout.Token) == 0;
        }
        catch (Exception ex) when (ex is IOException or System.Security.Authentication.AuthenticationException)
        {
            output.WriteLine($"refused: {ex.GetType().Name}: {ex.Message}");
            closed = true;
        }
        Assert.False(timeout.IsCancellationRequested, "the broker kept a TLS connection without a client certificate open");
        Assert.True(closed);
    }

    [Fact]
    public async Task The_console_gateway_answers_the_operator_over_tls_and_refuses_everyone_else()
    {
        var tls = broker.PlatformCa.IssuePem("console");
        var right = new ConsoleAccess("127.0.0.1", new OperatorCredentials(TestPlatform.AdminUsername, TestPlatform.AdminPassword), tls);
        var view = await ViewAsync(right);
        Assert.Equal(Platform.Seed, view.Broker);
        Assert.Contains(view.Members, m => m.Address == Platform.Seed && m.Roles.Contains("broker"));

        var watch = Stopwatch.StartNew();
        var wrong = QueryAsync(right with { Credentials = new OperatorCredentials(TestPlatform.AdminUsername, "not-the-password") });
        var none = QueryAsync(right with { Credentials = new OperatorCredentials("", "") });
        var osb = QueryAsync(right with { Credentials = new OperatorCredentials(TestPlatform.Username, TestPlatform.Password) });
        var otherCa = QueryAsync(right with { Tls = broker.OtherCa.IssuePem("console-2", caFile: broker.OtherCa.BundleWith(broker.PlatformCa)) }, silent: true);
        var plain = QueryAsync(right with { Tls = new AkkaTlsSettings() }, new Address("akka.tcp", "dingo", Seed.Host, Seed.Port).ToString(), silent: true);
        await Task.WhenAll(wrong, none, osb, otherCa, plain);
        output.WriteLine($"refusals in {watch.Elapsed.TotalSeconds:0.0}s");

        Assert.Equal("the broker refused the console: wrong operator credentials (dingo.broker.admin-username / admin-password)", (await wrong).Message);
        Assert.StartsWith("the broker refused the console: the console gave no operator credentials", (await none).Message);
        Assert.StartsWith("the broker refused the console: wrong operator credentials", (await osb).Message);
        Assert.StartsWith("no broker answered within 3s", (await otherCa).Message);
        Assert.Contains("issued by the platform CA", (await otherCa).Message);
        Assert.StartsWith("no broker answered within 3s", (await plain).Message);
        foreach (var refusal in new[] { await wrong, await none, await osb })
            Assert.DoesNotContain(TestPlatform.AdminPassword, refusal.Message);
    }

    /// <summary>Asks and expects an error: a refusal comes back at once; silence takes <see cref="Refused"/> (3 s).</summary>
    private async Task<ClusterConsoleException> QueryAsync(ConsoleAccess access, string? address = null, bool silent = false) =>
        await Assert.ThrowsAsync<ClusterConsoleException>(() => ClusterConsole.QueryAsync(access, [address ?? Platform.Seed], silent ? Refused : TimeSpan.FromSeconds(15), CancellationToken.None));

    /// <summary>The broker's view, asked as the operator (the broker founds its cluster a moment after it starts).</summary>
    private async Task<ClusterView> ViewAsync(ConsoleAccess? access = null, Func<ClusterView, bool>? until = null)
    {
        access ??= new ConsoleAccess("127.0.0.1", new OperatorCredentials(TestPlatform.AdminUsername, TestPlatform.AdminPassword), broker.PlatformCa.IssuePem("console-view"));
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
        while (true)
        {
            try
            {
                var view = await ClusterConsole.QueryAsync(access, [Platform.Seed], TimeSpan.FromSeconds(5), CancellationToken.None);
                if (until is null || until(view) || DateTime.UtcNow > deadline) return view;
            }
            catch (ClusterConsoleException ex) when (DateTime.UtcNow < deadline && ex.Message.StartsWith("no broker answered", StringComparison.Ordinal))
            {
                output.WriteLine(ex.Message);
            }
            await Task.Delay(300);
        }
    }

    [Theory]
    [InlineData("Dingo.Broker.dll")]
    [InlineData("Dingo.Cell.dll")]
    public async Task A_process_whose_tls_file_is_missing_refuses_to_start_naming_the_setting(string program)
    {
        // The platform's own configuration (its certificate and CA exist), with this host's key missing.
        var psi = new ProcessStartInfo("dotnet") { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { Path.Combine(AppContext.BaseDirectory, program), "--config", Path.Combine(TestPlatform.RepoRoot(), "hocon", "dingo.conf"),
                     "--config", Path.Combine(Platform.Settings.DataDir, "test.conf") })
            psi.ArgumentList.Add(a);
        psi.Environment["DINGO_AKKA_TLS_KEY"] = "/nonexistent/akka.key";
        psi.Environment["DINGO_AKKA_PORT"] = "0";
        psi.Environment["DINGO_BROKER_URL"] = $"http://127.0.0.1:{FreePorts.One()}";
        using var process = Process.Start(psi)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        try { await process.WaitForExitAsync(timeout.Token); }
        catch (OperationCanceledException)
        {
            ProcessTree.Kill(process);
            throw new Xunit.Sdk.XunitException($"{program} with a missing key file was still running after 30 s");
        }
        var text = await stdout + await stderr;
        output.WriteLine(text);
        Assert.Equal(2, process.ExitCode);
        Assert.Contains("configuration error: dingo.akka.tls.key (DINGO_AKKA_TLS_KEY): /nonexistent/akka.key does not exist", text);
    }

    /// <summary>
    /// A cluster member system like a cell's (role cell), with TLS when <paramref name="tls"/> is given, and the
    /// product's remoting timings (AkkaDefaults.Remoting). With Akka's own (a 15 s connection timeout, passive connections) the
    /// member's join to a broker slow to answer on a loaded machine stayed pending, the member stashed the broker's
    /// association back meanwhile, the broker's 3 s handshake timed out twice, and the member was not Up within 20 s
    /// (fresh308).
    /// </summary>
    private static ActorSystem Member(AkkaTlsSettings? tls)
    {
        var loaded = tls is null ? null : AkkaTls.Load(tls);
        var config = ConfigurationFactory.ParseString($$"""
            {{(loaded is null ? "" : AkkaTls.Hocon)}}
            {{AkkaDefaults.Remoting}}
            akka.actor.provider = cluster
            akka.remote.dot-netty.tcp { hostname = "127.0.0.1", port = 0 }
            akka.cluster.roles = [cell]
            akka.loglevel = WARNING
            akka.stdout-loglevel = WARNING
            akka.log-dead-letters = off
            akka.coordinated-shutdown.run-by-clr-shutdown-hook = off
            """);
        var setup = BootstrapSetup.Create().WithConfig(config);
        if (loaded is null) return ActorSystem.Create("dingo", setup);
        var system = ActorSystem.Create("dingo", setup.And(loaded.Setup()));
        system.WhenTerminated.ContinueWith(_ => loaded.Dispose(), TaskScheduler.Default);
        return system;
    }

    private static Task UpAsync(ActorSystem system, Address seed)
    {
        var up = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var cluster = Akka.Cluster.Cluster.Get(system);
        cluster.RegisterOnMemberUp(() => up.TrySetResult());
        cluster.JoinSeedNodes([seed]);
        return up.Task;
    }

    private static async Task StopAsync(ActorSystem system)
    {
        var cluster = Akka.Cluster.Cluster.Get(system);
        if (cluster.SelfMember.Status == Akka.Cluster.MemberStatus.Up)
        {
            using var leave = new CancellationTokenSource(TimeSpan.FromSeconds(5));
            try { await cluster.LeaveAsync(leave.Token); }
            catch (OperationCanceledException) { }
        }
        await system.Terminate().WaitAsync(TimeSpan.FromSeconds(10));
    }
}
