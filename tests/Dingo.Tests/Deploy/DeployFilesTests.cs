using System.Diagnostics;
using System.Text.RegularExpressions;
using Dingo.Config;
using Dingo.Store;
using Dingo.Tests.Support;
using Xunit.Abstractions;

namespace Dingo.Tests.Deploy;

/// <summary>
/// deploy/: the systemd units, their env files, the inventory and the example configuration an operator installs on
/// three hosts (docs/deploy.md). The units are checked by systemd's own verifier, every DINGO_* variable they name
/// against what src/ reads, the examples against the inventory and against DingoSettings, the installer against the
/// paths the units use, and the etcd unit's command line by running it on three simulated hosts.
/// </summary>
[SuiteCost(12)]
public sealed partial class DeployFilesTests(ITestOutputHelper output)
{
    private static readonly string Repo = TestPlatform.RepoRoot();
    private static readonly string[] UnitNames = ["dingo-etcd.service", "dingo-broker.service", "dingo-cell.service"];

    private static string DeployPath(params string[] parts) => Path.Combine([Repo, "deploy", .. parts]);
    private static string UnitPath(string name) => DeployPath("systemd", name);

    [Fact]
    public async Task Every_unit_passes_systemd_analyze_verify_and_the_verifier_catches_a_broken_unit()
    {
        var tool = FindExecutable("systemd-analyze")
                   ?? throw new Xunit.Sdk.XunitException("systemd-analyze is not installed, so the units cannot be checked: it comes with Debian's package `systemd` (apt-get install systemd)");
        var dir = Directory.CreateTempSubdirectory("dingo-units-");
        try
        {
            foreach (var name in UnitNames)
            {
                var text = await File.ReadAllTextAsync(UnitPath(name));
                // The units run /usr/bin/dotnet, where Microsoft's packages install it. A machine whose dotnet lives
                // elsewhere verifies them against its own dotnet: the only change, and only then.
                if (!File.Exists("/usr/bin/dotnet") && text.Contains("/usr/bin/dotnet ", StringComparison.Ordinal))
                {
                    var dotnet = FindExecutable("dotnet") ?? throw new Xunit.Sdk.XunitException("no dotnet in PATH to verify the units against");
                    output.WriteLine($"{name}: /usr/bin/dotnet is missing here; verifying with {dotnet}");
                    text = text.Replace("/usr/bin/dotnet ", dotnet + " ", StringComparison.Ordinal);
                }
                await File.WriteAllTextAsync(Path.Combine(dir.FullName, name), text);
            }
            var (code, findings) = await RunAsync(tool, ["verify", .. UnitNames.Select(n => Path.Combine(dir.FullName, n))]);
            output.WriteLine($"systemd-analyze verify: exit {code}{(findings.Length > 0 ? "\n" + findings : ", no findings")}");
            // verify exits 0 on warnings such as an unknown key or a bad time value: any output is a finding.
            Assert.True(code == 0 && findings.Length == 0, $"systemd-analyze verify found problems (exit {code}):\n{findings}");

            // The control: the same verifier, on a copy with a typo, must say so (a verifier that passes anything proves nothing).
            var broken = Path.Combine(dir.FullName, "dingo-broken.service");
            var cell = await File.ReadAllTextAsync(Path.Combine(dir.FullName, "dingo-cell.service"));
            Assert.Contains("TimeoutStopSec=70s", cell);
            await File.WriteAllTextAsync(broken, cell.Replace("TimeoutStopSec=70s", "TimeoutStopSec=seventy", StringComparison.Ordinal));
            var (_, complaint) = await RunAsync(tool, ["verify", broken]);
            Assert.Contains("seventy", complaint);
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    [Fact]
    public void Broker_and_cell_units_run_the_published_assemblies_with_arguments_their_programs_accept()
    {
        var broker = ExecStart(Unit(UnitPath("dingo-broker.service")));
        var cell = ExecStart(Unit(UnitPath("dingo-cell.service")));
        Assert.Equal("/usr/bin/dotnet", broker[0]);
        Assert.Equal("/usr/bin/dotnet", cell[0]);
        Assert.Equal($"/opt/dingo/broker/{typeof(Dingo.Broker.Program).Assembly.GetName().Name}.dll", broker[1]);
        Assert.Equal($"/opt/dingo/cell/{typeof(Dingo.Cell.Program).Assembly.GetName().Name}.dll", cell[1]);

        // Program.Main of each accepts `--config FILE` (and the cell `--seed ADDRESS`), nothing else. The cell gets no
        // --seed: it would replace DINGO_AKKA_SEEDS (both brokers and the cells) with whatever is on the command line.
        string[] expected = ["--config", "/opt/dingo/hocon/dingo.conf", "--config", "/etc/dingo/dingo.conf"];
        Assert.Equal(expected, broker[2..]);
        Assert.Equal(expected, cell[2..]);
    }

    [Fact]
    public void The_cell_unit_leaves_the_fencing_guard_alive_when_the_cell_process_dies()
    {
        // The guard runs in the cell's cgroup; only KillMode=process spares it (and process-runtime PostgreSQL) when the
        // cell crashes, so a primary whose lease lapses during the restart is still fenced (docs/ha.md).
        var killMode = Unit(UnitPath("dingo-cell.service")).Where(e => e.Section == "Service" && e.Key == "KillMode").Select(e => e.Value).ToList();
        Assert.Equal(["process"], killMode);
    }

    [Fact]
    public void Every_DINGO_variable_in_the_deploy_files_and_docs_is_one_the_code_reads()
    {
        var read = new HashSet<string>(StringComparer.Ordinal);
        foreach (var file in Directory.EnumerateFiles(Path.Combine(Repo, "src"), "*.cs", SearchOption.AllDirectories)
                     .Where(f => !f.Contains($"{Path.DirectorySeparatorChar}obj{Path.DirectorySeparatorChar}", StringComparison.Ordinal)
                                 && !f.Contains($"{Path.DirectorySeparatorChar}bin{Path.DirectorySeparatorChar}", StringComparison.Ordinal)))
        {
            foreach (Match m in EnvironmentRead().Matches(File.ReadAllText(file))) read.Add(m.Groups[1].Value);
        }
        // Settings of the scripts in deploy/ themselves, read as ${DINGO_X:-default}.
        foreach (var script in Directory.EnumerateFiles(Path.Combine(Repo, "deploy"), "*.sh", SearchOption.AllDirectories))
            foreach (Match m in ScriptRead().Matches(File.ReadAllText(script))) read.Add(m.Groups[1].Value);
        // The scan itself must see the reads it is there to see.
        Assert.Contains("DINGO_ETCD_ENDPOINTS", read);
        Assert.Contains("DINGO_CELL_ID", read);

        var files = Directory.EnumerateFiles(DeployPath("systemd"), "*", SearchOption.AllDirectories)
            .Append(DeployPath("inventory.example.ini")).Append(DeployPath("dingo.conf.example")).Append(DeployPath("install.sh"))
            .Append(Path.Combine(Repo, "docs", "deploy.md"))
            .ToList();
        var used = new Dictionary<string, SortedSet<string>>(StringComparer.Ordinal);
        foreach (var file in files)
        {
            foreach (Match m in DingoVariable().Matches(File.ReadAllText(file)))
            {
                if (!used.TryGetValue(m.Value, out var where)) used[m.Value] = where = new SortedSet<string>(StringComparer.Ordinal);
                where.Add(Path.GetRelativePath(Repo, file));
            }
        }
        output.WriteLine("named in deploy/ and docs/deploy.md: " + string.Join(", ", used.Keys.Order(StringComparer.Ordinal)));
        Assert.Contains("DINGO_CELL_ID", used.Keys);
        var unknown = used.Where(u => !read.Contains(u.Key)).Select(u => $"{u.Key} (in {string.Join(", ", u.Value)})").ToList();
        Assert.True(unknown.Count == 0,
            "variables named in deploy files that nothing in src/ reads (Env(\"…\") or GetEnvironmentVariable(\"…\")): " + string.Join("; ", unknown));
    }

    [Theory]
    [InlineData("dingo-broker.service")]
    [InlineData("dingo-cell.service")]
    public void Example_configuration_loads_with_the_units_environment(string unitName)
    {
        var unit = Unit(UnitPath(unitName));
        var env = UnitEnvironment(unit);
        var files = ConfigFiles(ExecStart(unit));
        var settings = DingoSettings.Load(files, env);
        var inventory = Inventory.Load(DeployPath("inventory.example.ini"));
        var host1 = inventory.Host("host-1");

        Assert.Equal(inventory.Shared["etcd_endpoints"].Split(','), settings.EtcdEndpoints);
        Assert.Equal(inventory.Shared["binding_host"], settings.Broker.BindingHost);
        Assert.Equal(int.Parse(inventory.Shared["broker_akka_port"], System.Globalization.CultureInfo.InvariantCulture), settings.Broker.AkkaPort);
        Assert.Equal("0.0.0.0", settings.Router.BindAddress);
        Assert.Equal("s3", settings.Backups!.Store.Kind);
        Assert.NotEqual("", settings.Backups.Store.S3Bucket);
        Assert.StartsWith("/var/lib/dingo/", settings.DataDir);
        Assert.Equal(host1["address"], settings.Akka.Hostname);
        Assert.Equal(inventory.Shared["akka_seeds"].Split(','), settings.Akka.SeedNodes);
        // Akka remoting is mutual TLS on a deployed platform: this host's certificate and the platform CA, seeds akka.ssl.tcp.
        Assert.True(settings.Akka.Tls.Enabled, "the deployed configuration leaves Akka remoting plain");
        Assert.Equal(("/etc/dingo/tls/akka.crt", "/etc/dingo/tls/akka.key", "/etc/dingo/tls/ca.crt"), (settings.Akka.Tls.Certificate, settings.Akka.Tls.Key, settings.Akka.Tls.Ca));
        Assert.All(settings.Akka.SeedNodes, seed => Assert.StartsWith("akka.ssl.tcp://dingo@", seed));
        // etcd over TLS with the client certificate deploy/certs.sh makes and install.sh puts in /etc/dingo/tls.
        Assert.All(settings.EtcdEndpoints, e => Assert.StartsWith("https://", e));
        Assert.Equal("/etc/dingo/tls/etcd-ca.pem", settings.EtcdTls.CaFile);
        Assert.Equal("/etc/dingo/tls/etcd-client.pem", settings.EtcdTls.CertFile);
        Assert.Equal("/etc/dingo/tls/etcd-client-key.pem", settings.EtcdTls.KeyFile);
        Assert.Equal("/etc/dingo/tls/broker-ca.pem", settings.Broker.TlsCaFile);
        if (unitName == "dingo-cell.service")
        {
            Assert.Equal(host1["cell_id"], settings.Cell.Id);
            Assert.Equal(host1["zone"], settings.Cell.Zone);
            Assert.Equal(host1["address"], settings.Cell.Address);
            Assert.Equal(int.Parse(inventory.Shared["cell_akka_port"], System.Globalization.CultureInfo.InvariantCulture), settings.Cell.AkkaPort);
            Assert.Equal("docker", settings.Cell.Runtime);
            Assert.Equal("/var/lib/dingo/cell", settings.DataDir);
        }
        else
        {
            Assert.Equal($"https://{host1["address"]}:{inventory.Shared["broker_port"]}", settings.Broker.Url);
            Assert.Equal("/etc/dingo/tls/broker.pem", settings.Broker.TlsCertFile);
            Assert.Equal("/etc/dingo/tls/broker-key.pem", settings.Broker.TlsKeyFile);
            Assert.NotEqual("", settings.Broker.Password);
            Assert.Equal("/var/lib/dingo/broker", settings.DataDir);
        }
    }

    [Fact]
    public void Inventory_names_three_hosts_each_with_an_etcd_member_a_cell_and_an_engine_and_the_examples_agree_with_it()
    {
        var inventory = Inventory.Load(DeployPath("inventory.example.ini"));
        var etcd = inventory.Group("etcd");
        Assert.Equal(3, etcd.Count);
        Assert.Equal(etcd, inventory.Group("cells"));
        Assert.Equal(etcd, inventory.Group("engines"));
        var brokers = inventory.Group("brokers");
        Assert.Equal(["host-1", "host-2"], brokers);
        var hosts = etcd.Select(inventory.Host).ToList();
        foreach (var key in new[] { "address", "etcd_name", "zone", "cell_id" })
            Assert.Equal(3, hosts.Select(h => h[key]).Distinct().Count());
        Assert.All(hosts, h => Assert.StartsWith("unix:///", h["engine"]));
        Assert.Equal(["10.0.0.11", "10.0.0.12", "10.0.0.13"], hosts.Select(h => h["address"]));
        Assert.Equal(["z1", "z2", "z3"], hosts.Select(h => h["zone"]));

        var initialCluster = string.Join(',', hosts.Select(h => $"{h["etcd_name"]}=https://{h["address"]}:2380"));
        Assert.Equal(initialCluster, inventory.Shared["etcd_initial_cluster"]);
        Assert.Equal(string.Join(',', hosts.Select(h => $"https://{h["address"]}:2379")), inventory.Shared["etcd_endpoints"]);
        var seeds = brokers.Select(b => $"akka.ssl.tcp://dingo@{inventory.Host(b)["address"]}:{inventory.Shared["broker_akka_port"]}")
            .Concat(hosts.Select(h => $"akka.ssl.tcp://dingo@{h["address"]}:{inventory.Shared["cell_akka_port"]}"));
        Assert.Equal(string.Join(',', seeds), inventory.Shared["akka_seeds"]);

        // The examples are host-1's files: every value must be the inventory's.
        var host1 = inventory.Host("host-1");
        var etcdEnv = EnvFile(DeployPath("systemd", "env", "dingo-etcd.env"));
        Assert.Equal(host1["etcd_name"], etcdEnv["MEMBER_NAME"]);
        Assert.Equal(host1["address"], etcdEnv["MEMBER_ADDRESS"]);
        Assert.Equal(initialCluster, etcdEnv["INITIAL_CLUSTER"]);
        Assert.Equal("new", etcdEnv["INITIAL_CLUSTER_STATE"]);
        var cellEnv = EnvFile(DeployPath("systemd", "env", "dingo-cell.env"));
        Assert.Equal(host1["cell_id"], cellEnv["DINGO_CELL_ID"]);
        Assert.Equal(host1["zone"], cellEnv["DINGO_CELL_ZONE"]);
        Assert.Equal(host1["address"], cellEnv["DINGO_CELL_ADDRESS"]);
        Assert.Equal(host1["address"], cellEnv["DINGO_AKKA_HOSTNAME"]);
        var brokerEnv = EnvFile(DeployPath("systemd", "env", "dingo-broker.env"));
        Assert.Equal(host1["address"], brokerEnv["DINGO_AKKA_HOSTNAME"]);
        Assert.Equal($"https://{host1["address"]}:{inventory.Shared["broker_port"]}", brokerEnv["DINGO_BROKER_URL"]);
        Assert.Equal(inventory.Shared["akka_seeds"], EnvFile(DeployPath("systemd", "env", "dingo.env"))["DINGO_AKKA_SEEDS"]);

        var conf = Akka.Configuration.ConfigurationFactory.ParseString(File.ReadAllText(DeployPath("dingo.conf.example")));
        Assert.Equal(host1["engine"], conf.GetString("dingo.cell.docker.endpoint"));
    }

    [Fact]
    public async Task Install_script_puts_every_file_the_units_name_where_they_look_and_never_overwrites_configuration()
    {
        var work = Directory.CreateTempSubdirectory("dingo-install-");
        try
        {
            // What `dotnet publish` makes, by name: the script copies folders, it does not look inside the assemblies.
            var published = Path.Combine(work.FullName, "out");
            foreach (var (folder, assembly) in new[] { ("broker", typeof(Dingo.Broker.Program).Assembly), ("cell", typeof(Dingo.Cell.Program).Assembly) })
            {
                Directory.CreateDirectory(Path.Combine(published, folder));
                File.Copy(assembly.Location, Path.Combine(published, folder, Path.GetFileName(assembly.Location)));
            }
            Directory.CreateDirectory(Path.Combine(published, "cli"));
            await File.WriteAllTextAsync(Path.Combine(published, "cli", "dingo.dll"), "stand-in for src/Dingo.Cli's output (AssemblyName dingo)");
            Assert.Contains("<AssemblyName>dingo</AssemblyName>", await File.ReadAllTextAsync(Path.Combine(Repo, "src", "Dingo.Cli", "Dingo.Cli.csproj")));

            // This host's TLS folder, as deploy/certs.sh makes it.
            var certs = Path.Combine(work.FullName, "certs");
            var (certsCode, certsText) = await RunAsync("/bin/bash", [DeployPath("certs.sh"), certs, "host-1=10.0.0.11", "host-2=10.0.0.12"]);
            Assert.True(certsCode == 0, $"certs.sh failed (exit {certsCode}): {certsText}");
            // One seal key for the platform: every host folder holds the same one, a key the processes accept.
            var sealKey = await File.ReadAllTextAsync(Path.Combine(certs, "seal.key"));
            Assert.Equal(sealKey, await File.ReadAllTextAsync(Path.Combine(certs, "host-1", "seal.key")));
            Assert.Equal(sealKey, await File.ReadAllTextAsync(Path.Combine(certs, "host-2", "seal.key")));
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(Path.Combine(certs, "host-1", "seal.key")));

            var root = Path.Combine(work.FullName, "root");
            var (code, text) = await RunAsync("/bin/bash", [DeployPath("install.sh"), published, Path.Combine(certs, "host-1")], new Dictionary<string, string> { ["DESTDIR"] = root });
            output.WriteLine(text);
            Assert.True(code == 0, $"install.sh failed (exit {code}): {text}");

            foreach (var name in UnitNames)
            {
                Assert.Equal(await File.ReadAllTextAsync(UnitPath(name)), await File.ReadAllTextAsync(Path.Combine(root, "etc", "systemd", "system", name)));
                var unit = Unit(UnitPath(name));
                foreach (var path in ExecStart(unit).Skip(1).Where(a => a.StartsWith("/opt/", StringComparison.Ordinal) || a.StartsWith("/etc/", StringComparison.Ordinal)))
                    Assert.True(File.Exists(root + path), $"{name} runs with {path}, which install.sh did not install");
                foreach (var envFile in Values(unit, "Service", "EnvironmentFile"))
                {
                    Assert.True(File.Exists(root + envFile), $"{name} reads {envFile}, which install.sh did not install");
                    Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(root + envFile));
                }
            }
            Assert.True(File.GetUnixFileMode(Path.Combine(root, "usr", "local", "bin", "dingo")).HasFlag(UnixFileMode.UserExecute));
            // Every TLS file a unit, an env file or the example configuration names is installed, readable by its owner only.
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute, File.GetUnixFileMode(Path.Combine(root, "etc", "dingo", "tls")));
            var named = TlsFilesNamed();
            Assert.Contains("/etc/dingo/tls/etcd-client-key.pem", named);
            foreach (var path in named)
            {
                Assert.True(File.Exists(root + path), $"{path} is named by deploy/ but install.sh did not install it");
                Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(root + path));
            }
            // The seal key where dingo.env's DINGO_SEAL_KEY_FILE names it: 0600 in a 0700 folder, and one the processes read.
            var env = await File.ReadAllTextAsync(Path.Combine(root, "etc", "dingo", "dingo.env"));
            Assert.Contains("DINGO_SEAL_KEY_FILE=/etc/dingo/keys/seal.key", env);
            Assert.Equal(sealKey, await File.ReadAllTextAsync(root + "/etc/dingo/keys/seal.key"));
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(root + "/etc/dingo/keys/seal.key"));
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute, File.GetUnixFileMode(root + "/etc/dingo/keys"));
            Assert.NotNull(Dingo.Security.SealKeyRing.Parse(await File.ReadAllTextAsync(root + "/etc/dingo/keys/seal.key"), "the installed seal key"));
            Assert.DoesNotContain("seal.key is missing", text, StringComparison.Ordinal);
            // They are the certificates they say: the member's names the host's address, the client's chains to etcd's CA.
            using (var member = System.Security.Cryptography.X509Certificates.X509Certificate2.CreateFromPem(File.ReadAllText(root + "/etc/dingo/tls/etcd-server.pem")))
                Assert.True(member.MatchesHostname("10.0.0.11"), "etcd-server.pem does not name host-1's address");
            using (var broker = System.Security.Cryptography.X509Certificates.X509Certificate2.CreateFromPem(File.ReadAllText(root + "/etc/dingo/tls/broker.pem")))
                Assert.True(broker.MatchesHostname("10.0.0.11"), "broker.pem does not name host-1's address");
            // Certificates and keys are read at start, as a process reads them (the key must be the certificate's).
            var client = new EtcdTlsSettings { CaFile = root + "/etc/dingo/tls/etcd-ca.pem", CertFile = root + "/etc/dingo/tls/etcd-client.pem", KeyFile = root + "/etc/dingo/tls/etcd-client-key.pem" };
            Assert.NotNull(EtcdClientTls.Load(client)!.Certificate);
            Assert.Throws<ArgumentException>(() => EtcdClientTls.Load(client with { KeyFile = root + "/etc/dingo/tls/broker-key.pem" }));

            // A second run (an upgrade) replaces the programs and leaves the host's configuration alone.
            var cellEnv = Path.Combine(root, "etc", "dingo", "dingo-cell.env");
            await File.WriteAllTextAsync(cellEnv, "DINGO_CELL_ID=cell-7\n");
            (code, text) = await RunAsync("/bin/bash", [DeployPath("install.sh"), published], new Dictionary<string, string> { ["DESTDIR"] = root });
            Assert.True(code == 0, $"install.sh failed the second time (exit {code}): {text}");
            Assert.Equal("DINGO_CELL_ID=cell-7\n", await File.ReadAllTextAsync(cellEnv));
            Assert.False(Directory.Exists(Path.Combine(root, "opt", "dingo", "cell.new")));
        }
        finally
        {
            work.Delete(recursive: true);
        }
    }

    [Fact]
    public async Task Etcd_unit_command_line_forms_a_three_member_cluster_that_serves_with_one_member_gone()
    {
        Assert.True(NetnsHosts.Supported(out var reason), "network namespaces unavailable: " + reason);
        Assert.True(File.Exists("/usr/bin/etcdctl"), "etcdctl is missing: apt-get install etcd-client (./dingo installs it)");
        var inventory = Inventory.Load(DeployPath("inventory.example.ini"));
        var members = inventory.Group("etcd").Select(inventory.Host).ToList();
        var unit = Unit(UnitPath("dingo-etcd.service"));
        var example = EnvFile(DeployPath("systemd", "env", "dingo-etcd.env"));
        var data = Directory.CreateTempSubdirectory("dingo-etcd-unit-");
        NetnsHosts? hosts = null;
        try
        {
            hosts = await NetnsHosts.CreateAsync(members.Count);
            // Each host's /etc/dingo/tls, made by deploy/certs.sh for the simulated addresses.
            var certs = Path.Combine(data.FullName, "certs");
            var (certsCode, certsText) = await RunAsync("/bin/bash", [DeployPath("certs.sh"), certs, .. members.Select((m, i) => $"{m["etcd_name"]}={hosts.HostAddress(i)}")]);
            Assert.True(certsCode == 0, $"certs.sh failed (exit {certsCode}): {certsText}");
            // Each simulated host stands for one inventory host: its address replaces the inventory's everywhere.
            string OnBridge(string value)
            {
                for (var i = 0; i < members.Count; i++) value = value.Replace(members[i]["address"], hosts.HostAddress(i), StringComparison.Ordinal);
                return value;
            }
            for (var i = 0; i < members.Count; i++)
            {
                // The env file of host i, as docs/deploy.md says to write it: host-1's example with this host's name and address.
                var env = example.ToDictionary(e => e.Key, e => OnBridge(e.Value));
                env["MEMBER_NAME"] = members[i]["etcd_name"];
                env["MEMBER_ADDRESS"] = hosts.HostAddress(i);
                var words = ExecStart(unit).Select(w => Expand(w, env)).ToList();
                // The one change to the command line: the data directory, /var/lib/dingo/etcd on a real host.
                var dataDir = words.IndexOf("--data-dir") + 1;
                Assert.Equal("/var/lib/dingo/etcd", words[dataDir]);
                words[dataDir] = Path.Combine(data.FullName, members[i]["etcd_name"]);
                // The other: /etc/dingo/tls of that host.
                words = words.Select(w => w.Replace("/etc/dingo/tls/", Path.Combine(certs, members[i]["etcd_name"]) + "/", StringComparison.Ordinal)).ToList();
                output.WriteLine($"host {i}: {string.Join(' ', words)}");
                hosts.Start(i, words[0], words.Skip(1));
            }

            var endpoints = members.Select((_, i) => $"https://{hosts.HostAddress(i)}:2379").ToList();
            var hostTls = Path.Combine(certs, members[0]["etcd_name"]);
            var tls = EtcdClientTls.Load(new EtcdTlsSettings
            {
                CaFile = Path.Combine(hostTls, "etcd-ca.pem"), CertFile = Path.Combine(hostTls, "etcd-client.pem"), KeyFile = Path.Combine(hostTls, "etcd-client-key.pem"),
            });
            await using (var store = new EtcdStore(endpoints, "/deploy-test", tls: tls))
            {
                await Eventually.UntilAsync(async () =>
                {
                    try { await store.PutStringAsync("/deploy-test/up", "yes", CancellationToken.None); return true; }
                    catch (Grpc.Core.RpcException) { return false; }
                }, TimeSpan.FromSeconds(60), "the three members elect a leader and accept a write");
            }
            var (code, list) = await RunAsync("/usr/bin/etcdctl", ["--endpoints", string.Join(',', endpoints), .. EtcdctlTls(hostTls), "member", "list"]);
            output.WriteLine(list);
            Assert.Equal(0, code);
            foreach (var member in members) Assert.Contains($", started, {member["etcd_name"]}, https://", list);
            // A client without a certificate gets nothing from any member.
            var (plainCode, plainText) = await RunAsync("/usr/bin/etcdctl", ["--endpoints", endpoints[1], "--cacert", Path.Combine(hostTls, "etcd-ca.pem"), "--dial-timeout", "2s", "--command-timeout", "3s", "get", "/deploy-test/up"]);
            output.WriteLine($"without a client certificate: exit {plainCode}: {plainText}");
            Assert.NotEqual(0, plainCode);
            Assert.DoesNotContain("yes", plainText);

            // host-1 goes away: a process that lists it first still reads and writes through the other two.
            await hosts.KillHostAsync(0);
            await using (var store = new EtcdStore(endpoints, "/deploy-test", tls: tls))
            {
                // A write may wait for the two members to elect a new leader when host-1 held the lead.
                var watch = Stopwatch.StartNew();
                await Eventually.UntilAsync(async () =>
                {
                    try { await store.PutStringAsync("/deploy-test/after", "host-1 gone", CancellationToken.None); return true; }
                    catch (Grpc.Core.RpcException) { return false; }
                }, TimeSpan.FromSeconds(15), "a write through the two remaining members");
                Assert.Equal("host-1 gone", await store.GetStringAsync("/deploy-test/after", CancellationToken.None));
                Assert.Equal("yes", await store.GetStringAsync("/deploy-test/up", CancellationToken.None));
                output.WriteLine($"write and reads with host-1 gone: {watch.ElapsedMilliseconds} ms");
            }
        }
        finally
        {
            if (hosts is not null) await hosts.DisposeAsync();
            data.Delete(recursive: true);
        }
    }

    [Fact]
    [Trait(Tier.Name, Tier.Fast)]
    public void The_etcd_unit_serves_clients_and_peers_over_tls_only_and_requires_certificates_of_its_ca_from_both()
    {
        var words = ExecStart(Unit(UnitPath("dingo-etcd.service")));
        string Flag(string name)
        {
            var at = words.IndexOf(name);
            Assert.True(at > 0 && at + 1 < words.Count, $"dingo-etcd.service has no {name}");
            return words[at + 1];
        }
        Assert.Contains("--client-cert-auth", words);
        Assert.Contains("--peer-client-cert-auth", words);
        Assert.Equal(Flag("--trusted-ca-file"), Flag("--peer-trusted-ca-file"));
        Assert.Equal("/etc/dingo/tls/etcd-ca.pem", Flag("--trusted-ca-file"));
        foreach (var name in new[] { "--cert-file", "--key-file", "--peer-cert-file", "--peer-key-file" })
            Assert.StartsWith("/etc/dingo/tls/etcd-server", Flag(name));
        foreach (var name in new[] { "--listen-peer-urls", "--initial-advertise-peer-urls", "--listen-client-urls", "--advertise-client-urls" })
            Assert.All(Flag(name).Split(','), url => Assert.StartsWith("https://", url));
        Assert.DoesNotContain(words, w => w.Contains("http://", StringComparison.Ordinal));
        Assert.All(EnvFile(DeployPath("systemd", "env", "dingo-etcd.env"))["INITIAL_CLUSTER"].Split(','), m => Assert.Contains("=https://", m));
        // Every TLS file deploy/ names is one deploy/certs.sh makes and install.sh installs.
        var certsScript = File.ReadAllText(DeployPath("certs.sh"));
        var installed = InstallScriptTlsFiles();
        foreach (var path in TlsFilesNamed())
        {
            Assert.Contains(Path.GetFileName(path), installed);
            // certs.sh writes NAME.pem and NAME-key.pem for each NAME it issues (or makes a CA of).
            var issued = Path.GetFileName(path).Replace("-key.pem", "", StringComparison.Ordinal).Replace(".pem", "", StringComparison.Ordinal);
            Assert.Matches($@"(issue [a-z-]+ ""\$dir\.new"" {issued} |ca {issued} )", certsScript);
        }
    }

    [Fact]
    [Trait(Tier.Name, Tier.Fast)]
    public void Three_hosts_runs_etcd_over_tls_with_client_certificates_and_brokers_on_https()
    {
        var script = File.ReadAllText(DeployPath("three-hosts.sh"));
        // The etcd command line, continuation lines joined.
        var etcd = Regex.Match(script.Replace("\\\n", " ", StringComparison.Ordinal), @"supervise ""\$h"" etcd /usr/bin/etcd [^\n]*").Value;
        Assert.NotEqual("", etcd);
        foreach (var flag in new[] { "--client-cert-auth", "--peer-client-cert-auth", "--trusted-ca-file", "--peer-trusted-ca-file", "--cert-file", "--key-file", "--peer-cert-file", "--peer-key-file" })
            Assert.Contains(flag + " ", etcd + " ");
        Assert.DoesNotContain("http://", etcd);
        Assert.Matches(@"ENDPOINTS=""https://[^""]*,https://[^""]*,https://[^""]*""", script);
        Assert.Matches(@"INITIAL=""host-1=https://[^""]*,host-2=https://[^""]*,host-3=https://[^""]*""", script);
        // Brokers and cells get the endpoints with the CA and client certificate; brokers serve HTTPS with theirs.
        foreach (var variable in new[] { "DINGO_ETCD_CA_FILE", "DINGO_ETCD_CERT_FILE", "DINGO_ETCD_KEY_FILE" })
            Assert.Matches($@"COMMON=\([^)]*{variable}=", script);
        Assert.Contains("DINGO_BROKER_URL=\"https://", script);
        Assert.Contains("DINGO_BROKER_CERT_FILE=", script);
        Assert.Contains("DINGO_BROKER_KEY_FILE=", script);
        Assert.Contains("deploy/certs.sh", script);
        // etcd's users on: the processes' certificate limited to the platform's prefix (deploy/etcd-auth.sh).
        Assert.Contains("deploy/etcd-auth.sh", script);
        Assert.DoesNotContain("http://", script);
    }

    /// <summary>Every /etc/dingo/tls/… path the units, env files and example configuration name.</summary>
    private static SortedSet<string> TlsFilesNamed()
    {
        var files = Directory.EnumerateFiles(DeployPath("systemd"), "*", SearchOption.AllDirectories).Append(DeployPath("dingo.conf.example"));
        var named = new SortedSet<string>(StringComparer.Ordinal);
        foreach (var file in files)
            foreach (Match m in TlsPath().Matches(File.ReadAllText(file))) named.Add(m.Value);
        return named;
    }

    /// <summary>The TLS_FILES install.sh copies from a host's certificate folder.</summary>
    private static string[] InstallScriptTlsFiles()
    {
        var line = Regex.Match(File.ReadAllText(DeployPath("install.sh")), @"TLS_FILES=\(([^)]*)\)");
        Assert.True(line.Success, "install.sh has no TLS_FILES=(…)");
        return line.Groups[1].Value.Split(' ', StringSplitOptions.RemoveEmptyEntries);
    }

    private static string[] EtcdctlTls(string folder) =>
        ["--cacert", Path.Combine(folder, "etcd-ca.pem"), "--cert", Path.Combine(folder, "etcd-client.pem"), "--key", Path.Combine(folder, "etcd-client-key.pem")];

    // ---- reading the files ----

    /// <summary>A unit file: (section, key, value) in order; continuation lines joined, comments dropped.</summary>
    private static List<(string Section, string Key, string Value)> Unit(string path)
    {
        var entries = new List<(string, string, string)>();
        var section = "";
        string? pending = null;
        foreach (var raw in File.ReadAllLines(path))
        {
            var line = pending is null ? raw.Trim() : pending + " " + raw.Trim();
            pending = null;
            if (line.EndsWith('\\'))
            {
                pending = line[..^1].TrimEnd();
                continue;
            }
            if (line.Length == 0 || line[0] is '#' or ';') continue;
            if (line[0] == '[') { section = line.Trim('[', ']'); continue; }
            var eq = line.IndexOf('=');
            Assert.True(eq > 0, $"{path}: not key=value: {line}");
            entries.Add((section, line[..eq].Trim(), line[(eq + 1)..].Trim()));
        }
        Assert.Null(pending);
        return entries;
    }

    private static IEnumerable<string> Values(List<(string Section, string Key, string Value)> unit, string section, string key) =>
        unit.Where(e => e.Section == section && e.Key == key).Select(e => e.Value);

    private static List<string> ExecStart(List<(string Section, string Key, string Value)> unit)
    {
        var line = Assert.Single(Values(unit, "Service", "ExecStart"));
        // The units quote nothing, so systemd's word splitting is whitespace.
        Assert.DoesNotContain('"', line);
        Assert.DoesNotContain('\'', line);
        return line.Split(' ', StringSplitOptions.RemoveEmptyEntries).ToList();
    }

    /// <summary>The environment systemd gives the unit: Environment= lines, then each EnvironmentFile (its example), later ones winning.</summary>
    private static Dictionary<string, string?> UnitEnvironment(List<(string Section, string Key, string Value)> unit)
    {
        var env = new Dictionary<string, string?>(StringComparer.Ordinal);
        foreach (var assignment in Values(unit, "Service", "Environment"))
        {
            var eq = assignment.IndexOf('=');
            env[assignment[..eq]] = assignment[(eq + 1)..];
        }
        foreach (var file in Values(unit, "Service", "EnvironmentFile"))
        {
            Assert.StartsWith("/etc/dingo/", file);
            foreach (var (k, v) in EnvFile(DeployPath("systemd", "env", Path.GetFileName(file)))) env[k] = v;
        }
        return env;
    }

    /// <summary>The --config files of a command line, /opt/dingo/hocon/dingo.conf and /etc/dingo/dingo.conf read from the checkout.</summary>
    private static List<string> ConfigFiles(List<string> execStart)
    {
        var files = new List<string>();
        for (var i = 2; i < execStart.Count; i += 2)
        {
            Assert.Equal("--config", execStart[i]);
            files.Add(execStart[i + 1] switch
            {
                "/opt/dingo/hocon/dingo.conf" => Path.Combine(Repo, "hocon", "dingo.conf"),
                "/etc/dingo/dingo.conf" => DeployPath("dingo.conf.example"),
                var other => throw new Xunit.Sdk.XunitException($"unexpected configuration file {other}"),
            });
        }
        return files;
    }

    private static Dictionary<string, string> EnvFile(string path)
    {
        var env = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var raw in File.ReadAllLines(path))
        {
            var line = raw.Trim();
            if (line.Length == 0 || line[0] is '#' or ';') continue;
            var eq = line.IndexOf('=');
            Assert.True(eq > 0, $"{path}: not KEY=VALUE: {line}");
            env[line[..eq]] = line[(eq + 1)..];
        }
        return env;
    }

    /// <summary>systemd's ${NAME} expansion; a name the environment lacks is an error here (systemd would make it empty).</summary>
    private static string Expand(string word, IReadOnlyDictionary<string, string> env) =>
        Reference().Replace(word, m => env.TryGetValue(m.Groups[1].Value, out var v)
            ? v
            : throw new Xunit.Sdk.XunitException($"${{{m.Groups[1].Value}}} is not set by the env file"));

    private sealed class Inventory
    {
        private readonly Dictionary<string, List<string>> _groups = new(StringComparer.Ordinal);
        private readonly Dictionary<string, Dictionary<string, string>> _hosts = new(StringComparer.Ordinal);
        public Dictionary<string, string> Shared { get; } = new(StringComparer.Ordinal);

        public List<string> Group(string name) => _groups.TryGetValue(name, out var hosts) ? hosts : throw new Xunit.Sdk.XunitException($"the inventory has no [{name}] group");
        public Dictionary<string, string> Host(string name) => _hosts.TryGetValue(name, out var vars) ? vars : throw new Xunit.Sdk.XunitException($"the inventory has no variables for {name}");

        /// <summary>Ansible's INI inventory: [group] lines `host key=value…`, and [group:vars] lines `key=value`.</summary>
        public static Inventory Load(string path)
        {
            var inventory = new Inventory();
            string? group = null;
            var vars = false;
            foreach (var raw in File.ReadAllLines(path))
            {
                var line = raw.Trim();
                if (line.Length == 0 || line[0] is '#' or ';') continue;
                if (line[0] == '[')
                {
                    var name = line.Trim('[', ']');
                    vars = name.EndsWith(":vars", StringComparison.Ordinal);
                    group = vars ? name[..^":vars".Length] : name;
                    if (!vars) inventory._groups[group] = new List<string>();
                    continue;
                }
                Assert.NotNull(group);
                if (vars)
                {
                    var eq = line.IndexOf('=');
                    inventory.Shared[line[..eq]] = line[(eq + 1)..];
                    continue;
                }
                var words = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                inventory._groups[group].Add(words[0]);
                if (!inventory._hosts.TryGetValue(words[0], out var hostVars)) inventory._hosts[words[0]] = hostVars = new Dictionary<string, string>(StringComparer.Ordinal);
                foreach (var pair in words.Skip(1))
                {
                    var eq = pair.IndexOf('=');
                    hostVars[pair[..eq]] = pair[(eq + 1)..];
                }
            }
            return inventory;
        }
    }

    // ---- running tools ----

    [Fact]
    public async Task Akka_certificate_script_issues_private_files_the_processes_load_and_keeps_what_exists()
    {
        Assert.NotNull(FindExecutable("openssl"));
        var script = await File.ReadAllTextAsync(DeployPath("akka-certs.sh"));
        // Private from creation: a umask before the first file, never a chmod after writing.
        Assert.Contains("umask 077", script);
        Assert.DoesNotMatch(new Regex(@"^[^#]*\bchmod\b", RegexOptions.Multiline), script);
        var work = Directory.CreateTempSubdirectory("dingo-akka-certs-");
        try
        {
            var dir = Path.Combine(work.FullName, "tls");
            var (code, text) = await RunAsync("/bin/bash", [DeployPath("akka-certs.sh"), dir, "host-1=10.0.0.11", "host-2=10.0.0.12"]);
            output.WriteLine(text);
            Assert.True(code == 0, $"akka-certs.sh failed (exit {code}): {text}");
            var files = Directory.EnumerateFiles(dir, "*", SearchOption.AllDirectories).Select(f => Path.GetRelativePath(dir, f)).Order(StringComparer.Ordinal).ToList();
            Assert.Equal(["ca.crt", "ca.key", "host-1/akka.crt", "host-1/akka.key", "host-2/akka.crt", "host-2/akka.key"], files);
            foreach (var file in files)
                Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(Path.Combine(dir, file)));
            foreach (var folder in new[] { dir, Path.Combine(dir, "host-1"), Path.Combine(dir, "host-2") })
                Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute, File.GetUnixFileMode(folder));

            // What a broker or cell loads with the example's settings; each host's certificate passes the other's check.
            AkkaTlsSettings Host(string name, string caDir) =>
                new() { Certificate = Path.Combine(dir, name, "akka.crt"), Key = Path.Combine(dir, name, "akka.key"), Ca = Path.Combine(caDir, "ca.crt") };
            using (var one = Dingo.Membership.AkkaTls.Load(Host("host-1", dir))!)
            using (var two = Dingo.Membership.AkkaTls.Load(Host("host-2", dir))!)
            {
                Assert.Null(one.ChainError(two.Certificate));
                var names = one.Certificate.Extensions.OfType<System.Security.Cryptography.X509Certificates.X509SubjectAlternativeNameExtension>().Single();
                Assert.Equal([System.Net.IPAddress.Parse("10.0.0.11")], names.EnumerateIPAddresses());
            }

            // A second run adds a host from the same CA and leaves existing certificates alone.
            var before = await File.ReadAllBytesAsync(Path.Combine(dir, "host-1", "akka.crt"));
            (code, text) = await RunAsync("/bin/bash", [DeployPath("akka-certs.sh"), dir, "host-1=10.0.0.11", "host-3=10.0.0.13"]);
            Assert.True(code == 0, $"akka-certs.sh failed the second time (exit {code}): {text}");
            Assert.Equal(before, await File.ReadAllBytesAsync(Path.Combine(dir, "host-1", "akka.crt")));
            using (Dingo.Membership.AkkaTls.Load(Host("host-3", dir))) { }

            // Another run's CA (another platform) does not vouch for these hosts.
            var other = Path.Combine(work.FullName, "other");
            (code, text) = await RunAsync("/bin/bash", [DeployPath("akka-certs.sh"), other, "x=10.0.0.99"]);
            Assert.True(code == 0, text);
            var foreign = Assert.Throws<ArgumentException>(() => Dingo.Membership.AkkaTls.Load(Host("host-1", other)));
            Assert.Contains("does not chain to the CA in dingo.akka.tls.ca", foreign.Message);

            (code, text) = await RunAsync("/bin/bash", [DeployPath("akka-certs.sh"), dir, "no-address"]);
            Assert.Equal(2, code);
            Assert.Contains("'no-address' is not NAME=ADDRESS", text);
        }
        finally
        {
            work.Delete(recursive: true);
        }
    }

    [Fact]
    [Trait(Tier.Name, Tier.Fast)]
    public void Three_hosts_script_runs_akka_remoting_over_tls_with_a_certificate_per_host()
    {
        var script = File.ReadAllText(DeployPath("three-hosts.sh"));
        Assert.Contains("\"$ROOT/deploy/akka-certs.sh\" \"$AKKA_TLS\" host-1=", script);
        var seeds = Regex.Match(script, "^SEEDS=\"([^\"]+)\"", RegexOptions.Multiline).Groups[1].Value.Split(',');
        Assert.Equal(5, seeds.Length);
        Assert.All(seeds, seed => Assert.StartsWith("akka.ssl.tcp://dingo@", seed));
        Assert.Contains("COMMON=(DINGO_AKKA_TLS_CA=\"$AKKA_TLS/ca.crt\"", script);
        // Every broker and cell is started with its own host's certificate and key.
        var starts = Regex.Matches(script, "^\\s*supervise \"\\$h\" (broker|cell) .*$", RegexOptions.Multiline);
        Assert.Equal(2, starts.Count);
        foreach (Match start in starts)
            Assert.Contains("DINGO_AKKA_TLS_CERTIFICATE=\"$AKKA_TLS/$h/akka.crt\" DINGO_AKKA_TLS_KEY=\"$AKKA_TLS/$h/akka.key\"", start.Value);
        // The certificates live in the state folder the script removes on exit (a folder apart from etcd's and the brokers').
        Assert.Contains("AKKA_TLS=\"$STATE/akka-tls\"", script);
    }

    private static string? FindExecutable(string name) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries)
        .Concat(["/usr/bin", "/bin", "/usr/sbin", "/sbin"])
        .Select(dir => Path.Combine(dir, name))
        .FirstOrDefault(File.Exists);

    private static async Task<(int Code, string Output)> RunAsync(string file, IEnumerable<string> args, IDictionary<string, string>? env = null)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        if (env is not null) foreach (var (k, v) in env) psi.Environment[k] = v;
        using var process = Process.Start(psi) ?? throw new InvalidOperationException($"could not start {file}");
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        await process.WaitForExitAsync(timeout.Token);
        return (process.ExitCode, (await stdout + await stderr).Trim());
    }

    [GeneratedRegex(@"(?:\bEnv|GetEnvironmentVariable)\(\s*""(DINGO_[A-Z0-9_]+)""")]
    private static partial Regex EnvironmentRead();

    // A name ends in a letter or digit: `DINGO_AKKA_*` in a shell pattern is no variable.
    [GeneratedRegex(@"\bDINGO_[A-Z0-9_]*[A-Z0-9]\b")]
    private static partial Regex DingoVariable();

    [GeneratedRegex(@"\$\{(DINGO_[A-Z0-9_]+):-")]
    private static partial Regex ScriptRead();

    [GeneratedRegex(@"/etc/dingo/tls/[A-Za-z0-9._-]+\.pem")]
    private static partial Regex TlsPath();

    [GeneratedRegex(@"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")]
    private static partial Regex Reference();
}
