using Dingo.Config;
using Dingo.Membership;
using Dingo.Tests.Support;

namespace Dingo.Tests.Security;

/// <summary>
/// The rules of Akka remoting over TLS and of the console gateway, without a server: which settings turn TLS on, the
/// errors an operator gets for a missing or wrong file (naming the setting), which certificates pass the platform-CA
/// check, and which credentials the gateway answers.
/// </summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class AkkaTlsRulesTests
{
    private static readonly string DefaultFile = Path.Combine(TestPlatform.RepoRoot(), "hocon", "dingo.conf");

    private static DingoSettings Load(string overrides = "", Dictionary<string, string?>? env = null) =>
        DingoSettings.Load([DefaultFile], env ?? new Dictionary<string, string?>(), overrides);

    [Fact]
    public async Task A_console_without_a_certificate_asking_brokers_on_tls_says_what_to_set_in_one_line()
    {
        var access = new ConsoleAccess("127.0.0.1", new OperatorCredentials("admin", "secret"), new AkkaTlsSettings());
        var refused = await Assert.ThrowsAsync<ClusterConsoleException>(() =>
            ClusterConsole.QueryAsync(access, ["akka.ssl.tcp://dingo@10.0.0.11:4053", "akka.ssl.tcp://dingo@10.0.0.12:4053"], TimeSpan.FromSeconds(5), CancellationToken.None));
        Assert.Contains("akka.ssl.tcp", refused.Message, StringComparison.Ordinal);
        Assert.Contains("DINGO_AKKA_TLS_CERTIFICATE", refused.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("\n", refused.Message, StringComparison.Ordinal);
        // A plain default seed beside them (what `./dingo status` lists with the etcd settings alone): the same line,
        // after the plain contact stays silent, never Akka's stack trace.
        var mixed = await Assert.ThrowsAsync<ClusterConsoleException>(() =>
            ClusterConsole.QueryAsync(access, ["akka.tcp://dingo@127.0.0.1:1", "akka.ssl.tcp://dingo@10.0.0.11:4053"], TimeSpan.FromSeconds(1), CancellationToken.None));
        Assert.StartsWith("no broker answered", mixed.Message, StringComparison.Ordinal);
        Assert.Contains("1 broker address(es) on akka.ssl.tcp were not asked", mixed.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Tls_is_off_by_default_and_on_when_a_certificate_is_named_in_hocon_or_the_environment()
    {
        var plain = Load();
        Assert.False(plain.Akka.Tls.Enabled);
        Assert.Equal("akka.tcp://dingo@10.0.0.1:4053", plain.Akka.MemberAddress("10.0.0.1", 4053));

        var hocon = Load("""dingo.akka.tls { certificate = "/etc/dingo/tls/akka.crt", key = "/etc/dingo/tls/akka.key", ca = "/etc/dingo/tls/ca.crt" }""");
        Assert.True(hocon.Akka.Tls.Enabled);
        Assert.Equal(("/etc/dingo/tls/akka.crt", "/etc/dingo/tls/akka.key", "", "/etc/dingo/tls/ca.crt"),
            (hocon.Akka.Tls.Certificate, hocon.Akka.Tls.Key, hocon.Akka.Tls.PasswordFile, hocon.Akka.Tls.Ca));
        Assert.Equal("akka.ssl.tcp://dingo@10.0.0.1:4053", hocon.Akka.MemberAddress("10.0.0.1", 4053));

        var env = Load(env: new Dictionary<string, string?>
        {
            ["DINGO_AKKA_TLS_CERTIFICATE"] = "/x/host.p12", ["DINGO_AKKA_TLS_PASSWORD_FILE"] = "/x/host.password", ["DINGO_AKKA_TLS_CA"] = "/x/ca.crt",
            ["DINGO_AKKA_SEEDS"] = "akka.ssl.tcp://dingo@10.0.0.11:4053",
        });
        Assert.Equal(("/x/host.p12", "/x/host.password", "/x/ca.crt"), (env.Akka.Tls.Certificate, env.Akka.Tls.PasswordFile, env.Akka.Tls.Ca));
        Assert.Equal(["akka.ssl.tcp://dingo@10.0.0.11:4053"], env.Akka.SeedNodes);
    }

    [Theory]
    [InlineData("""dingo.akka.tls.certificate = "/c.crt" """, "dingo.akka.tls.ca (DINGO_AKKA_TLS_CA) must name the platform CA")]
    [InlineData("""dingo.akka.tls.ca = "/ca.crt" """, "dingo.akka.tls.ca is set but dingo.akka.tls.certificate (DINGO_AKKA_TLS_CERTIFICATE) is empty")]
    [InlineData("dingo.akka.tls { certificate = \"/c.crt\", ca = \"/ca.crt\" }\ndingo.akka.seed-nodes = [\"akka.tcp://dingo@10.0.0.11:4053\"]", "with dingo.akka.tls on, members are akka.ssl.tcp://")]
    [InlineData("""dingo.akka.seed-nodes = ["akka.ssl.tcp://dingo@10.0.0.11:4053"]""", "akka.ssl.tcp:// needs dingo.akka.tls.certificate")]
    public void Inconsistent_tls_settings_are_refused_naming_the_setting(string overrides, string expected)
    {
        var error = Assert.Throws<ArgumentException>(() => Load(overrides));
        Assert.Contains(expected, error.Message);
    }

    [Fact]
    public void A_missing_file_is_refused_at_load_naming_the_setting_and_the_path()
    {
        using var ca = new TestCertificates("missing-ca");
        var good = ca.IssuePem("host-1");
        var cases = new (AkkaTlsSettings Settings, string Expected)[]
        {
            (good with { Certificate = "/nonexistent/akka.crt" }, "dingo.akka.tls.certificate (DINGO_AKKA_TLS_CERTIFICATE): /nonexistent/akka.crt does not exist"),
            (good with { Key = "/nonexistent/akka.key" }, "dingo.akka.tls.key (DINGO_AKKA_TLS_KEY): /nonexistent/akka.key does not exist"),
            (good with { Ca = "/nonexistent/ca.crt" }, "dingo.akka.tls.ca (DINGO_AKKA_TLS_CA): /nonexistent/ca.crt does not exist"),
            (good with { PasswordFile = "/nonexistent/pw" }, "dingo.akka.tls.password-file (DINGO_AKKA_TLS_PASSWORD_FILE): /nonexistent/pw does not exist"),
            (good with { Ca = ca.Folder }, "it is a folder"),
        };
        foreach (var (settings, expected) in cases)
        {
            var error = Assert.Throws<ArgumentException>(() => AkkaTls.Load(settings));
            Assert.Contains(expected, error.Message);
        }
        Assert.Null(AkkaTls.Load(new AkkaTlsSettings()));
    }

    [Fact]
    public void Pem_and_password_protected_pkcs12_certificates_load_and_a_wrong_password_or_another_CA_is_refused()
    {
        using var platform = new TestCertificates("platform-ca");
        using var other = new TestCertificates("other-ca");

        using (var pem = AkkaTls.Load(platform.IssuePem("host-1")))
        {
            Assert.NotNull(pem);
            Assert.True(pem.Certificate.HasPrivateKey);
            Assert.Equal("CN=host-1", pem.Certificate.Subject);
        }
        var p12 = platform.IssuePkcs12("host-2", "p12-password");
        using (var loaded = AkkaTls.Load(p12))
            Assert.True(loaded!.Certificate.HasPrivateKey);

        File.WriteAllText(p12.PasswordFile, "not-the-password");
        var wrong = Assert.Throws<ArgumentException>(() => AkkaTls.Load(p12));
        Assert.Contains("dingo.akka.tls.certificate", wrong.Message);
        Assert.Contains("dingo.akka.tls.password-file", wrong.Message);
        Assert.DoesNotContain("not-the-password", wrong.Message);

        // A host given another CA's certificate finds out at its own start, not from its peers' logs.
        var foreign = Assert.Throws<ArgumentException>(() => AkkaTls.Load(other.IssuePem("intruder", caFile: platform.CaFile)));
        Assert.Contains("does not chain to the CA in dingo.akka.tls.ca", foreign.Message);

        // The check peers get: only the platform CA's certificates pass, whatever the system trusts.
        using var tls = AkkaTls.Load(platform.IssuePem("host-3"))!;
        using var intruder = AkkaTls.Load(other.IssuePem("intruder-2"))!;
        using var sibling = AkkaTls.Load(platform.IssuePem("host-4"))!;
        Assert.Null(tls.ChainError(sibling.Certificate));
        Assert.NotNull(tls.ChainError(intruder.Certificate));
    }

    [Fact]
    public void The_console_gateway_answers_only_the_operator_credentials()
    {
        var operators = new OperatorCredentials("ops", "right-password");
        Assert.Null(operators.Refusal("ops", "right-password"));
        Assert.Contains("wrong operator credentials", operators.Refusal("ops", "wrong-password"));
        Assert.Contains("wrong operator credentials", operators.Refusal("other", "right-password"));
        Assert.Contains("wrong operator credentials", operators.Refusal("ops", "right-password "));
        Assert.Contains("gave no operator credentials", operators.Refusal("", ""));
        Assert.Contains("gave no operator credentials", operators.Refusal("ops", null));
        // No admin password configured: the gateway is closed, as /admin is.
        var closed = new OperatorCredentials("ops", "");
        Assert.Contains("console gateway is closed", closed.Refusal("ops", ""));
        Assert.Contains("console gateway is closed", closed.Refusal("ops", "anything"));
        // Akka logs undeliverable messages with ToString: the password never appears.
        Assert.DoesNotContain("right-password", operators.ToString());
        Assert.DoesNotContain("right-password", new ClusterViewRequest { Username = "ops", Password = "right-password" }.ToString());
    }

    [Fact]
    public void The_console_keeps_tls_handshake_failures_off_the_operators_screen_and_the_broker_keeps_them_in_its_log()
    {
        var failures = new Akka.Event.LogEvent[]
        {
            new Akka.Event.Error(new IOException("x"), "TcpClientHandler", typeof(AkkaTls), "TLS handshake failed on channel [a->b](Id=1)\nClient side"),
            new Akka.Event.Error(new IOException("x"), "TcpClientHandler", typeof(AkkaTls), "Error caught channel [a->b](Id=1)"),
            new Akka.Event.Warning("DotNettyTransport", typeof(AkkaTls), AkkaTls.RefusalPrefix + "127.0.0.1:4053: its certificate CN=x does not chain to the platform CA (untrusted root)"),
            new Akka.Event.Warning("TlsTransport", typeof(TlsTransport), TlsTransport.HandshakeFailedPrefix + "ssl.tcp://dingo@127.0.0.1:4053 failed: Received an unexpected EOF or 0 bytes from the transport stream."),
        };
        var console = new RemotingNoiseFilter(console: true);
        var brokerFilter = new RemotingNoiseFilter(console: false);
        foreach (var failure in failures)
        {
            Assert.Equal(Akka.Event.LogFilterDecision.Drop, console.ShouldKeepMessage(failure));
            Assert.Equal(Akka.Event.LogFilterDecision.Keep, brokerFilter.ShouldKeepMessage(failure));
        }
        Assert.Equal(Akka.Event.LogFilterDecision.Keep, console.ShouldKeepMessage(new Akka.Event.Error(null, "x", typeof(AkkaTls), "something else went wrong")));
    }
}
