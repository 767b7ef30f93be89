using Akka.Configuration;

namespace Dingo.Config;

/// <summary>Settings from hocon/dingo.conf, later HOCON files, and environment variables (in that order).</summary>
public sealed record DingoSettings
{
    public required string DataDir { get; init; }
    public required IReadOnlyList<string> EtcdEndpoints { get; init; }
    public required string EtcdPrefix { get; init; }
    /// <summary>PEM files for etcd over TLS with a client certificate (`dingo.etcd.tls`); empty for plain HTTP.</summary>
    public EtcdTlsSettings EtcdTls { get; init; } = new();
    public required BrokerSettings Broker { get; init; }
    public required RouterSettings Router { get; init; }
    public required CellSettings Cell { get; init; }
    public required int NodePortFirst { get; init; }
    public required int NodePortLast { get; init; }
    public required HaSettings Ha { get; init; }
    /// <summary>Where WAL archives and base backups go (`dingo.backups`). Null only for settings built by hand.</summary>
    public Dingo.Config.BackupSettings? Backups { get; init; }
    /// <summary>Akka.NET remoting and cluster membership across hosts (`dingo.akka`).</summary>
    public AkkaSettings Akka { get; init; } = new();
    /// <summary>Where the platform's seal keys come from (`dingo.security.seal-key-file`, DINGO_SEAL_KEYS, DINGO_SEAL_KEY_FILE).</summary>
    public Dingo.Security.SealSettings Seal { get; init; } = new();
    /// <summary>`dingo.postgres`: TLS of every PostgreSQL hop (the platform CA, node certificates, require-tls).</summary>
    public PostgresTlsSettings Postgres { get; init; } = new();
    /// <summary>`dingo.events`: how long and how many of each instance's events etcd keeps.</summary>
    public EventSettings Events { get; init; } = new();
    /// <summary>`dingo.logging`: the console log's format (text or json).</summary>
    public LogSettings Logging { get; init; } = new();

    /// <summary>Loads the layered configuration. Throws with the file and key named when a value is wrong.</summary>
    public static DingoSettings Load(IEnumerable<string> files, IReadOnlyDictionary<string, string?>? environment = null, string? overrides = null)
    {
        Akka.Configuration.Config config = ConfigurationFactory.Empty;
        if (!string.IsNullOrWhiteSpace(overrides)) config = ConfigurationFactory.ParseString(overrides);
        foreach (var file in files.Reverse())
        {
            if (!File.Exists(file)) throw new FileNotFoundException($"configuration file {file} does not exist", file);
            config = config.WithFallback(ConfigurationFactory.ParseString(File.ReadAllText(file)));
        }
        return FromConfig(config, environment ?? EnvironmentVariables());
    }

    public static IReadOnlyDictionary<string, string?> EnvironmentVariables() =>
        System.Environment.GetEnvironmentVariables().Cast<System.Collections.DictionaryEntry>()
            .ToDictionary(e => (string)e.Key, e => (string?)e.Value);

    public static DingoSettings FromConfig(Akka.Configuration.Config config, IReadOnlyDictionary<string, string?> env)
    {
        var d = config.GetConfig("dingo") ?? throw new ArgumentException("configuration has no `dingo` section");
        string? Env(string name) => env.TryGetValue(name, out var v) && !string.IsNullOrWhiteSpace(v) ? v : null;

        var endpoints = Env("DINGO_ETCD_ENDPOINTS")?.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                        ?? d.GetStringList("etcd.endpoints").ToArray();
        var dataDir = Env("DINGO_DATA_DIR") ?? d.GetString("data-dir", ".dingo");
        var settings = new DingoSettings
        {
            DataDir = dataDir,
            EtcdEndpoints = endpoints,
            EtcdPrefix = d.GetString("etcd.prefix", "/dingo"),
            EtcdTls = new EtcdTlsSettings
            {
                CaFile = Env("DINGO_ETCD_CA_FILE") ?? d.GetString("etcd.tls.ca-file", ""),
                CertFile = Env("DINGO_ETCD_CERT_FILE") ?? d.GetString("etcd.tls.cert-file", ""),
                KeyFile = Env("DINGO_ETCD_KEY_FILE") ?? d.GetString("etcd.tls.key-file", ""),
            },
            Broker = new BrokerSettings
            {
                Url = Env("DINGO_BROKER_URL") ?? d.GetString("broker.url", "http://127.0.0.1:8080"),
                PublicUrl = Env("DINGO_BROKER_PUBLIC_URL") ?? d.GetString("broker.public-url", ""),
                Username = Env("DINGO_BROKER_USERNAME") ?? d.GetString("broker.username", "dingo"),
                Password = Env("DINGO_BROKER_PASSWORD") ?? d.GetString("broker.password", ""),
                AdminUsername = Env("DINGO_BROKER_ADMIN_USERNAME") ?? d.GetString("broker.admin-username", "dingo-admin"),
                AdminPassword = Env("DINGO_BROKER_ADMIN_PASSWORD") ?? d.GetString("broker.admin-password", ""),
                CloneScope = d.GetString("broker.clone-scope", CloneScopes.Space),
                InstanceQuota = d.GetInt("broker.instance-quota", 10),
                BindingHost = Env("DINGO_BINDING_HOST") ?? d.GetString("broker.binding-host", "127.0.0.1"),
                DeletedOperationRetention = d.GetTimeSpan("broker.deleted-operation-retention", TimeSpan.FromHours(1)),
                TombstoneRetention = d.GetTimeSpan("broker.tombstone-retention", TimeSpan.FromDays(7)),
                ProvisionTimeout = d.GetTimeSpan("broker.provision-timeout", TimeSpan.FromMinutes(5)),
                ProvisionFailureGrace = d.GetTimeSpan("broker.provision-failure-grace", BrokerSettings.DefaultProvisionFailureGrace),
                AkkaPort = int.TryParse(Env("DINGO_AKKA_PORT"), out var brokerAkka) ? brokerAkka : d.GetInt("broker.akka-port", 4053),
                TlsCertFile = Env("DINGO_BROKER_CERT_FILE") ?? d.GetString("broker.tls.cert-file", ""),
                TlsKeyFile = Env("DINGO_BROKER_KEY_FILE") ?? d.GetString("broker.tls.key-file", ""),
                TlsCaFile = Env("DINGO_BROKER_CA_FILE") ?? d.GetString("broker.tls.ca-file", ""),
            },
            Router = new RouterSettings
            {
                PortFirst = d.GetInt("router.port-range-first", 20000),
                PortLast = d.GetInt("router.port-range-last", 29999),
                BindAddress = d.GetString("router.bind-address", "127.0.0.1"),
                LeaderWait = d.GetTimeSpan("router.leader-wait", TimeSpan.FromSeconds(5)),
                MaxConnectionsPerInstance = d.GetInt("router.max-connections-per-instance", 500),
                ReadOnlyMaxLag = d.GetByteSize("router.read-only-max-lag") ?? 16 * 1024 * 1024,
                MetricsPort = d.GetInt("router.metrics-port", 0),
                Mode = d.GetString("router.mode", "auto"),
            },
            Cell = new CellSettings
            {
                Id = Env("DINGO_CELL_ID") ?? d.GetString("cell.id", "cell-1"),
                Zone = Env("DINGO_CELL_ZONE") ?? d.GetString("cell.zone", "z1"),
                Capacity = d.GetInt("cell.capacity", 50),
                Address = Env("DINGO_CELL_ADDRESS") ?? d.GetString("cell.address", "127.0.0.1"),
                Runtime = d.GetString("cell.runtime", "process"),
                ReconcileInterval = d.GetTimeSpan("cell.reconcile-interval", TimeSpan.FromSeconds(1)),
                LeaseTtl = d.GetTimeSpan("cell.lease-ttl", TimeSpan.FromSeconds(10)),
                PostgresBin = d.GetString("cell.postgres-bin", "/usr/lib/postgresql/15/bin"),
                RunAsUser = d.GetString("cell.run-as-user", "postgres"),
                AkkaPort = int.TryParse(Env("DINGO_AKKA_PORT"), out var cellAkka) ? cellAkka : d.GetInt("cell.akka-port", 0),
                HealthPort = int.TryParse(Env("DINGO_CELL_HEALTH_PORT"), out var cellHealth) ? cellHealth : d.GetInt("cell.health-port", 8090),
                OrphanGrace = d.GetTimeSpan("cell.orphan-grace", TimeSpan.FromMinutes(10)),
                MinFreeDisk = d.GetByteSize("cell.min-free-disk") ?? 1024L * 1024 * 1024,
                WarmPool = d.GetInt("cell.warm-pool", 2),
                CloneSettle = d.GetTimeSpan("cell.clone-settle", TimeSpan.FromSeconds(5)),
                SaturatedCpuPressure = d.GetDouble("cell.saturated-cpu-pressure", 50),
                AdminNetworks = Env("DINGO_CELL_ADMIN_NETWORKS")?.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                                ?? (d.HasPath("cell.admin-networks") ? d.GetStringList("cell.admin-networks")?.ToArray() : null) ?? [],
                Docker = DockerSettings.FromConfig(d, env),
            },
            NodePortFirst = d.GetInt("node-port-range-first", 10000),
            NodePortLast = d.GetInt("node-port-range-last", 19999),
            Ha = new HaSettings
            {
                Ttl = d.GetTimeSpan("ha.ttl", TimeSpan.FromSeconds(4)),
                LoopWait = d.GetTimeSpan("ha.loop-wait", TimeSpan.FromMilliseconds(500)),
                IdleLoopWait = d.GetTimeSpan("ha.idle-loop-wait", TimeSpan.FromSeconds(10)),
                MaximumLagOnFailover = d.GetByteSize("ha.maximum-lag-on-failover") ?? 1024 * 1024,
                RewindAfter = d.GetTimeSpan("ha.rewind-after", TimeSpan.FromSeconds(8)),
                LostCellGrace = d.GetTimeSpan("ha.lost-cell-grace", TimeSpan.FromSeconds(60)),
                FailsafeFor = d.GetTimeSpan("ha.failsafe-for", TimeSpan.FromSeconds(12)),
                ReleaseDeadLeaderAfter = d.GetTimeSpan("ha.release-dead-leader-after", TimeSpan.FromSeconds(2)),
            },
            Backups = Dingo.Config.BackupSettings.FromConfig(d, env, dataDir),
            Seal = Dingo.Security.SealSettings.FromConfig(d, env),
            Postgres = PostgresTlsSettings.FromConfig(d, env),
            Logging = LogSettings.FromConfig(d, env),
            Events = new EventSettings
            {
                Retention = d.GetTimeSpan("events.retention", TimeSpan.FromDays(7)),
                PerInstance = d.GetInt("events.per-instance", 500),
            },
            Akka = new AkkaSettings
            {
                Hostname = Env("DINGO_AKKA_HOSTNAME") ?? d.GetString("akka.hostname", "127.0.0.1"),
                SeedNodes = Env("DINGO_AKKA_SEEDS")?.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                            ?? d.GetStringList("akka.seed-nodes")?.ToArray() ?? [],
                Tls = new AkkaTlsSettings
                {
                    Certificate = Env("DINGO_AKKA_TLS_CERTIFICATE") ?? d.GetString("akka.tls.certificate", ""),
                    Key = Env("DINGO_AKKA_TLS_KEY") ?? d.GetString("akka.tls.key", ""),
                    PasswordFile = Env("DINGO_AKKA_TLS_PASSWORD_FILE") ?? d.GetString("akka.tls.password-file", ""),
                    Ca = Env("DINGO_AKKA_TLS_CA") ?? d.GetString("akka.tls.ca", ""),
                },
            },
        };
        settings.Validate();
        return settings;
    }

    /// <summary>
    /// Reads every PEM file these settings name for this process (etcd's CA and client certificate, the broker's CA; the
    /// broker's certificate when <paramref name="broker"/>), so a file that cannot be used stops a process at start, the setting
    /// named, rather than at its first etcd call or connection.
    /// </summary>
    public void CheckTlsFiles(bool broker = false)
    {
        Dingo.Config.EtcdClientTls.Load(EtcdTls);
        if (broker && Broker.TlsCertFile.Length > 0) Broker.LoadServerCertificate(out _).Dispose();
        if (Broker.TlsCaFile.Length > 0) Dingo.Security.PemTls.LoadCertificates(Broker.TlsCaFile, "dingo.broker.tls.ca-file");
    }

    private void Validate()
    {
        if (EtcdEndpoints.Count == 0) throw new ArgumentException("dingo.etcd.endpoints: at least one etcd endpoint is required");
        if (Events.Retention < TimeSpan.FromMinutes(1)) throw new ArgumentException($"dingo.events.retention must be a minute or more: got {Events.Retention}");
        if (Events.PerInstance < 10) throw new ArgumentException($"dingo.events.per-instance must be 10 or more: got {Events.PerInstance}");
        if (!EtcdPrefix.StartsWith('/')) throw new ArgumentException($"dingo.etcd.prefix must start with '/': got '{EtcdPrefix}'");
        EtcdTls.Validate(EtcdEndpoints);
        if (Router.PortFirst < 1024 || Router.PortLast > 65535 || Router.PortFirst > Router.PortLast)
            throw new ArgumentException($"dingo.router.port-range: {Router.PortFirst}-{Router.PortLast} is not a valid range within 1024-65535");
        if (NodePortFirst < 1024 || NodePortLast > 65535 || NodePortFirst > NodePortLast)
            throw new ArgumentException($"dingo.node-port-range: {NodePortFirst}-{NodePortLast} is not a valid range within 1024-65535");
        if (Router.PortFirst <= NodePortLast && NodePortFirst <= Router.PortLast)
            throw new ArgumentException("dingo.router.port-range and dingo.node-port-range overlap: instance and node ports would collide");
        if (Broker.CloneScope is not (CloneScopes.Space or CloneScopes.Organization))
            throw new ArgumentException($"dingo.broker.clone-scope must be \"space\" or \"organization\": got \"{Broker.CloneScope}\"");
        if (Broker.AdminPassword.Length > 0 && Broker.AdminUsername == Broker.Username)
            throw new ArgumentException($"dingo.broker.admin-username must differ from dingo.broker.username (both \"{Broker.Username}\"): the OSB credentials must not open the admin API");
        if (Broker.InstanceQuota < 0) throw new ArgumentException("dingo.broker.instance-quota must be 0 (no limit) or more");
        if (Broker.ProvisionFailureGrace <= TimeSpan.Zero || Broker.ProvisionFailureGrace >= Broker.ProvisionTimeout)
            throw new ArgumentException($"dingo.broker.provision-failure-grace must be positive and under dingo.broker.provision-timeout ({Broker.ProvisionTimeout}): got {Broker.ProvisionFailureGrace}");
        if (Router.Mode is not ("auto" or "userspace" or "kernel")) throw new ArgumentException($"dingo.router.mode must be \"auto\", \"userspace\" or \"kernel\": got \"{Router.Mode}\"");
        if (Ha.Ttl < TimeSpan.FromSeconds(2)) throw new ArgumentException($"dingo.ha.ttl must be at least 2s: got {Ha.Ttl.TotalSeconds}s");
        if (Ha.LoopWait <= TimeSpan.Zero || Ha.LoopWait * 3 > Ha.Ttl)
            throw new ArgumentException($"dingo.ha.loop-wait ({Ha.LoopWait.TotalMilliseconds}ms) must be positive and at most a third of dingo.ha.ttl ({Ha.Ttl.TotalSeconds}s), so a leader renews in time");
        if (Ha.IdleLoopWait < Ha.LoopWait || Ha.IdleLoopWait > TimeSpan.FromMinutes(1))
            throw new ArgumentException($"dingo.ha.idle-loop-wait ({Ha.IdleLoopWait.TotalMilliseconds}ms) must be between dingo.ha.loop-wait ({Ha.LoopWait.TotalMilliseconds}ms, which turns it off) and 60s");
        // Longer and the guard's own deadline (3/4 ttl after the last renewal) would come first: the key would be left to expire.
        if (Ha.ReleaseDeadLeaderAfter < TimeSpan.Zero || Ha.ReleaseDeadLeaderAfter > Ha.Ttl / 2)
            throw new ArgumentException($"dingo.ha.release-dead-leader-after ({Ha.ReleaseDeadLeaderAfter.TotalMilliseconds}ms) must be between 0s and half of dingo.ha.ttl ({Ha.Ttl.TotalSeconds}s)");
        Akka.Tls.Validate();
        foreach (var seed in Akka.SeedNodes)
            if (!seed.StartsWith(Akka.Protocol + "://dingo@", StringComparison.Ordinal))
                throw new ArgumentException($"dingo.akka.seed-nodes: '{seed}' is not an address of this cluster ({Akka.Protocol}://dingo@HOST:PORT" +
                    (Akka.Tls.Enabled ? ": with dingo.akka.tls on, members are akka.ssl.tcp://)" : ": akka.ssl.tcp:// needs dingo.akka.tls.certificate)"));
        if (!Uri.TryCreate(Broker.Url, UriKind.Absolute, out var brokerUrl)) throw new ArgumentException($"dingo.broker.url '{Broker.Url}' is not an absolute URL");
        Broker.ValidateTls(brokerUrl);
        if (Broker.PublicUrl.Length > 0 && !(Uri.TryCreate(Broker.PublicUrl, UriKind.Absolute, out var publicUrl) && publicUrl.Scheme is "http" or "https"))
            throw new ArgumentException($"dingo.broker.public-url '{Broker.PublicUrl}' is not an absolute http(s) URL");
        if (Cell.Runtime is not ("process" or "docker")) throw new ArgumentException($"dingo.cell.runtime must be \"process\" or \"docker\": got \"{Cell.Runtime}\"");
        if (Cell.OrphanGrace < TimeSpan.Zero) throw new ArgumentException("dingo.cell.orphan-grace must not be negative");
        if (Cell.MinFreeDisk < 0) throw new ArgumentException("dingo.cell.min-free-disk must not be negative");
        if (Cell.WarmPool is < 0 or > 50) throw new ArgumentException($"dingo.cell.warm-pool must be between 0 and 50: got {Cell.WarmPool}");
        if (Cell.CloneSettle < TimeSpan.Zero || Cell.CloneSettle > TimeSpan.FromSeconds(30))
            throw new ArgumentException($"dingo.cell.clone-settle must be from 0 to 30s: got {Cell.CloneSettle}");
        if (Cell.SaturatedCpuPressure is < 0 or > 100 || double.IsNaN(Cell.SaturatedCpuPressure))
            throw new ArgumentException($"dingo.cell.saturated-cpu-pressure must be a percentage from 0 to 100: got {Cell.SaturatedCpuPressure}");
        foreach (var network in Cell.AdminNetworks)
        {
            try { IpNetworks.Parse(network); }
            catch (ArgumentException ex) { throw new ArgumentException($"dingo.cell.admin-networks: {ex.Message}", ex); }
        }
        if (Broker.TombstoneRetention <= Cell.OrphanGrace)
            throw new ArgumentException($"dingo.broker.tombstone-retention ({Broker.TombstoneRetention}) must be longer than dingo.cell.orphan-grace ({Cell.OrphanGrace}): a removed node's data may only go after the grace, while its tombstone still says so");
        if (Cell.Runtime == "docker") Cell.Docker.Validate();
        Postgres.Validate();
    }
}

public sealed record BrokerSettings
{
    /// <summary>How long a node may keep failing before a provision is reported failed, unless dingo.broker.provision-failure-grace says otherwise.</summary>
    public static readonly TimeSpan DefaultProvisionFailureGrace = TimeSpan.FromSeconds(30);

    public required string Url { get; init; }
    /// <summary>
    /// The address people reach this broker by, for the dashboard URLs it hands out (OSB `dashboard_url`): a load
    /// balancer's, say. Empty: <see cref="Url"/>.
    /// </summary>
    public string PublicUrl { get; init; } = "";
    public string DashboardBase => (PublicUrl.Length > 0 ? PublicUrl : Url).TrimEnd('/');
    public required string Username { get; init; }
    public required string Password { get; init; }
    /// <summary>Basic-auth credentials of the operator's /admin API, apart from the OSB ones; an empty password closes /admin.</summary>
    public string AdminUsername { get; init; } = "dingo-admin";
    public string AdminPassword { get; init; } = "";
    /// <summary>Which instances `clone-from` may reach: those of the requester's space (default) or organization.</summary>
    public string CloneScope { get; init; } = CloneScopes.Space;
    public required int InstanceQuota { get; init; }
    public required string BindingHost { get; init; }
    public required TimeSpan DeletedOperationRetention { get; init; }
    /// <summary>How long etcd keeps a deleted instance's or removed node's tombstone: a cell away longer keeps that data and says so.</summary>
    public TimeSpan TombstoneRetention { get; init; } = TimeSpan.FromDays(7);
    public required TimeSpan ProvisionTimeout { get; init; }
    /// <summary>How long a node of a provision may keep failing (retrying meanwhile) before the provision is reported failed.</summary>
    public TimeSpan ProvisionFailureGrace { get; init; } = BrokerSettings.DefaultProvisionFailureGrace;
    public required int AkkaPort { get; init; }
    /// <summary>PEM certificate (leaf first, then intermediates) and key the broker serves HTTPS with; empty: plain HTTP.</summary>
    public string TlsCertFile { get; init; } = "";
    public string TlsKeyFile { get; init; } = "";
    /// <summary>For clients of the broker (the console): the CA its certificate must chain to; empty: the system's store.</summary>
    public string TlsCaFile { get; init; } = "";

    /// <summary>The broker's HTTPS certificate with its key, and its intermediates in <paramref name="chain"/>.</summary>
    public System.Security.Cryptography.X509Certificates.X509Certificate2 LoadServerCertificate(
        out System.Security.Cryptography.X509Certificates.X509Certificate2Collection chain) =>
        Dingo.Security.PemTls.LoadCertificateWithKey(TlsCertFile, TlsKeyFile, "dingo.broker.tls.cert-file", "dingo.broker.tls.key-file", out chain);

    internal void ValidateTls(Uri url)
    {
        if ((TlsCertFile.Length > 0) != (TlsKeyFile.Length > 0))
            throw new ArgumentException("dingo.broker.tls.cert-file and dingo.broker.tls.key-file (DINGO_BROKER_CERT_FILE, DINGO_BROKER_KEY_FILE) go together");
        if (TlsCertFile.Length > 0 && url.Scheme != Uri.UriSchemeHttps)
            throw new ArgumentException($"dingo.broker.url must be https:// when dingo.broker.tls.cert-file is set (the broker serves HTTPS only): got '{Url}'");
        if (url.Scheme is not ("http" or "https"))
            throw new ArgumentException($"dingo.broker.url must be http:// or https://: got '{Url}'");
    }

    public override string ToString() => $"BrokerSettings {{ Url = {Url}, Username = {Username}, Password = ***, AdminUsername = {AdminUsername}, AdminPassword = *** }}";
}

/// <summary>Values of `dingo.broker.clone-scope`.</summary>
public static class CloneScopes
{
    public const string Space = "space";
    public const string Organization = "organization";
}

public sealed record RouterSettings
{
    public required int PortFirst { get; init; }
    public required int PortLast { get; init; }
    public required string BindAddress { get; init; }
    public required TimeSpan LeaderWait { get; init; }
    public required int MaxConnectionsPerInstance { get; init; }
    public required long ReadOnlyMaxLag { get; init; }
    public required int MetricsPort { get; init; }
    /// <summary>userspace: every byte through the .NET proxy; kernel: nftables DNAT for primary ports, user space for the rest; auto: kernel when available.</summary>
    public required string Mode { get; init; }
}

public sealed record CellSettings
{
    public required string Id { get; init; }
    public required string Zone { get; init; }
    public required int Capacity { get; init; }
    public required string Address { get; init; }
    public required string Runtime { get; init; }
    public required TimeSpan ReconcileInterval { get; init; }
    public required TimeSpan LeaseTtl { get; init; }
    public required string PostgresBin { get; init; }
    public required string RunAsUser { get; init; }
    public required int AkkaPort { get; init; }
    /// <summary>The cell's own HTTP port on its address: /healthz, /readyz, /metrics (0: none).</summary>
    public int HealthPort { get; init; } = 8090;
    /// <summary>A node etcd no longer wants while its instance still exists is stopped at once and its data deleted after this.</summary>
    public TimeSpan OrphanGrace { get; init; } = TimeSpan.FromMinutes(10);
    /// <summary>Below this much free space where the cell keeps its data, the cell reports a problem and takes no new node.</summary>
    public long MinFreeDisk { get; init; } = 1024L * 1024 * 1024;
    /// <summary>Initialised, never-started data directories kept ready for new clusters' first nodes (process runtime; 0: none).</summary>
    public int WarmPool { get; init; } = 2;
    /// <summary>
    /// A new replica of an asynchronous cluster clones once its cell has started no primary for this long (at most
    /// CloneSettle.MostWait later; zero: at once). docs/ha.md, "A new replica's clone".
    /// </summary>
    public TimeSpan CloneSettle { get; init; } = TimeSpan.FromSeconds(5);
    /// <summary>
    /// Work that can wait (warm pool fills, new clusters' first base backups, new asynchronous replicas' clones) also
    /// waits while the host's CPU pressure (Linux PSI, `some avg10`) is at least this percent, within each one's longest
    /// wait; 0 turns the check off.
    /// </summary>
    public double SaturatedCpuPressure { get; init; } = 50;
    /// <summary>`dingo.cell.docker`: used when Runtime is "docker".</summary>
    public DockerSettings Docker { get; init; } = new();
    /// <summary>
    /// Networks (CIDR or address) beside the platform's own hosts from which an instance's superuser and replication
    /// role may log in: an operator's bastion, say. Empty by default.
    /// </summary>
    public IReadOnlyList<string> AdminNetworks { get; init; } = [];
}

/// <summary>How a cell with the Docker runtime reaches its engine and what it runs (`dingo.cell.docker`).</summary>
public sealed record DockerSettings
{
    /// <summary>unix:///path/to/socket, or tcp://host:port (TLS when a client certificate is configured).</summary>
    public string Endpoint { get; init; } = "unix:///var/run/docker.sock";
    /// <summary>The PostgreSQL node image (deploy/images).</summary>
    public string Image { get; init; } = "localhost/dingo/postgres:15";
    /// <summary>missing: pull the image when the engine lacks it; never: only use what is there.</summary>
    public string Pull { get; init; } = "missing";
    /// <summary>uid:gid PostgreSQL runs as inside the image (999:999 in postgres:15 and the local image).</summary>
    public string User { get; init; } = "999:999";
    /// <summary>Label value separating platforms that share one engine; empty: the etcd prefix.</summary>
    public string Platform { get; init; } = "";
    /// <summary>How long a fast shutdown may take before the engine kills the container.</summary>
    public TimeSpan StopTimeout { get; init; } = TimeSpan.FromSeconds(30);
    /// <summary>
    /// CPUs a node container may use for <see cref="StartCpusFor"/> after each start (crash recovery, the claim's single-user
    /// step, the first sessions), when its plan allows fewer; then the plan's ceiling. 0: always the plan's ceiling.
    /// </summary>
    public double StartCpus { get; init; } = 1;
    /// <summary>How long after a node container's start <see cref="StartCpus"/> holds.</summary>
    public TimeSpan StartCpusFor { get; init; } = TimeSpan.FromSeconds(10);
    /// <summary>PEM files for TCP with TLS: the CA that signed the engine's certificate, and this cell's client certificate and key.</summary>
    public string TlsCa { get; init; } = "";
    public string TlsCert { get; init; } = "";
    public string TlsKey { get; init; } = "";

    public static DockerSettings FromConfig(Akka.Configuration.Config d, IReadOnlyDictionary<string, string?> env)
    {
        string? Env(string name) => env.TryGetValue(name, out var v) && !string.IsNullOrWhiteSpace(v) ? v : null;
        var etcdPrefix = d.GetString("etcd.prefix", "/dingo");
        return new DockerSettings
        {
            Endpoint = Env("DINGO_DOCKER_ENDPOINT") ?? d.GetString("cell.docker.endpoint", "unix:///var/run/docker.sock"),
            Image = Env("DINGO_DOCKER_IMAGE") ?? d.GetString("cell.docker.image", "localhost/dingo/postgres:15"),
            Pull = d.GetString("cell.docker.pull", "missing"),
            User = d.GetString("cell.docker.user", "999:999"),
            Platform = d.GetString("cell.docker.platform", "") is { Length: > 0 } platform ? platform : etcdPrefix,
            StopTimeout = d.GetTimeSpan("cell.docker.stop-timeout", TimeSpan.FromSeconds(30)),
            StartCpus = d.GetDouble("cell.docker.start-cpus", 1),
            StartCpusFor = d.GetTimeSpan("cell.docker.start-cpus-for", TimeSpan.FromSeconds(10)),
            TlsCa = d.GetString("cell.docker.tls.ca", ""),
            TlsCert = d.GetString("cell.docker.tls.cert", ""),
            TlsKey = d.GetString("cell.docker.tls.key", ""),
        };
    }

    public void Validate()
    {
        if (!Uri.TryCreate(Endpoint, UriKind.Absolute, out var uri) || uri.Scheme is not ("unix" or "tcp"))
            throw new ArgumentException($"dingo.cell.docker.endpoint must be unix:///path or tcp://host:port: got \"{Endpoint}\"");
        if (string.IsNullOrWhiteSpace(Image)) throw new ArgumentException("dingo.cell.docker.image must name an image");
        if (Pull is not ("missing" or "never")) throw new ArgumentException($"dingo.cell.docker.pull must be \"missing\" or \"never\": got \"{Pull}\"");
        var ids = User.Split(':');
        if (ids.Length != 2 || !ids.All(i => uint.TryParse(i, out var n) && n > 0))
            throw new ArgumentException($"dingo.cell.docker.user must be uid:gid of an unprivileged user (e.g. 999:999): got \"{User}\"");
        if ((TlsCert.Length > 0) != (TlsKey.Length > 0))
            throw new ArgumentException("dingo.cell.docker.tls: cert and key go together");
        if (TlsCert.Length > 0 && uri.Scheme != "tcp")
            throw new ArgumentException("dingo.cell.docker.tls applies to tcp:// endpoints only");
        foreach (var (key, file) in new[] { ("ca", TlsCa), ("cert", TlsCert), ("key", TlsKey) })
            if (file.Length > 0 && !File.Exists(file)) throw new ArgumentException($"dingo.cell.docker.tls.{key}: {file} does not exist");
        if (StopTimeout < TimeSpan.FromSeconds(1)) throw new ArgumentException("dingo.cell.docker.stop-timeout must be at least 1s");
        if (!double.IsFinite(StartCpus) || StartCpus is < 0 or > 1024)
            throw new ArgumentException($"dingo.cell.docker.start-cpus must be 0 (off) or a number of CPUs up to 1024: got {StartCpus}");
        if (StartCpusFor < TimeSpan.FromSeconds(1) || StartCpusFor > TimeSpan.FromMinutes(10))
            throw new ArgumentException($"dingo.cell.docker.start-cpus-for must be between 1s and 10m: got {StartCpusFor}");
    }

    /// <summary>Uid and gid from <see cref="User"/>.</summary>
    public (int Uid, int Gid) UserIds()
    {
        var ids = User.Split(':');
        return (int.Parse(ids[0], System.Globalization.CultureInfo.InvariantCulture), int.Parse(ids[1], System.Globalization.CultureInfo.InvariantCulture));
    }
}

/// <summary>
/// `dingo.etcd.tls`: PEM files of the CA that signed etcd's server certificates (trusted alone, not the system's store)
/// and of this process's client certificate and key (etcd's --client-cert-auth).
/// </summary>
public sealed record EtcdTlsSettings
{
    public string CaFile { get; init; } = "";
    public string CertFile { get; init; } = "";
    public string KeyFile { get; init; } = "";

    public bool Configured => CaFile.Length > 0 || CertFile.Length > 0 || KeyFile.Length > 0;

    /// <summary>Plain http:// (or no scheme) for every endpoint, or https:// for every one with a CA; never a mix.</summary>
    internal void Validate(IReadOnlyList<string> endpoints)
    {
        var https = endpoints.Count(e => e.StartsWith("https://", StringComparison.OrdinalIgnoreCase));
        if (https > 0 && https < endpoints.Count)
            throw new ArgumentException($"dingo.etcd.endpoints mixes https:// and plain endpoints ({string.Join(",", endpoints)}): every member is reached the same way");
        if ((CertFile.Length > 0) != (KeyFile.Length > 0))
            throw new ArgumentException("dingo.etcd.tls.cert-file and dingo.etcd.tls.key-file (DINGO_ETCD_CERT_FILE, DINGO_ETCD_KEY_FILE) go together");
        if (https > 0 && CaFile.Length == 0)
            throw new ArgumentException("dingo.etcd.tls.ca-file (DINGO_ETCD_CA_FILE) is required for https:// etcd endpoints: the CA that signed etcd's server certificates, trusted instead of the system's store");
        if (https == 0 && Configured)
            throw new ArgumentException($"dingo.etcd.tls is set but dingo.etcd.endpoints are not https:// ({string.Join(",", endpoints)}): the certificates would not be used");
    }
}

/// <summary>
/// TLS of PostgreSQL (`dingo.postgres`, docs/security.md): nodes always offer TLS with a certificate of the platform CA;
/// with <see cref="RequireTls"/> they refuse every TCP login without it (clients, replication, the platform's own).
/// </summary>
/// <summary>`dingo.events`: each instance's history in etcd (docs/operator-guide.md, "Events").</summary>
public sealed record EventSettings
{
    /// <summary>An event lives at least this long (and at most an hour longer: events share an hourly lease).</summary>
    public TimeSpan Retention { get; init; } = TimeSpan.FromDays(7);
    /// <summary>The most events kept per instance; the oldest go first.</summary>
    public int PerInstance { get; init; } = 500;
}

public sealed record PostgresTlsSettings
{
    /// <summary>pg_hba gives only `hostssl` lines: a client without TLS finds no line and is refused.</summary>
    public bool RequireTls { get; init; }
    /// <summary>An operator's CA (PEM certificate and unencrypted key) instead of one the platform generates; both or neither.</summary>
    public string CaCertFile { get; init; } = "";
    public string CaKeyFile { get; init; } = "";
    /// <summary>Further names or addresses clients reach nodes by (a load balancer's), added to every node certificate.</summary>
    public IReadOnlyList<string> CertificateHosts { get; init; } = [];
    /// <summary>How long a node certificate is valid; it is renewed after two thirds of it.</summary>
    public TimeSpan CertificateValidity { get; init; } = TimeSpan.FromDays(90);

    public bool OperatorCa => CaCertFile.Length > 0;

    public static PostgresTlsSettings FromConfig(Akka.Configuration.Config d, IReadOnlyDictionary<string, string?> env)
    {
        string? Env(string name) => env.TryGetValue(name, out var v) && !string.IsNullOrWhiteSpace(v) ? v : null;
        var require = Env("DINGO_POSTGRES_REQUIRE_TLS") is { } text
            ? text.Trim().ToLowerInvariant() switch
            {
                "on" or "true" or "yes" or "1" => true,
                "off" or "false" or "no" or "0" => false,
                _ => throw new ArgumentException($"DINGO_POSTGRES_REQUIRE_TLS must be on or off: got \"{text}\""),
            }
            : d.GetBoolean("postgres.require-tls", false);
        return new PostgresTlsSettings
        {
            RequireTls = require,
            CaCertFile = Env("DINGO_POSTGRES_CA_CERT_FILE") ?? d.GetString("postgres.ca-cert-file", ""),
            CaKeyFile = Env("DINGO_POSTGRES_CA_KEY_FILE") ?? d.GetString("postgres.ca-key-file", ""),
            CertificateHosts = Env("DINGO_POSTGRES_CERTIFICATE_HOSTS")?.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                               ?? (d.HasPath("postgres.certificate-hosts") ? d.GetStringList("postgres.certificate-hosts")?.ToArray() : null) ?? [],
            CertificateValidity = d.GetTimeSpan("postgres.certificate-validity", TimeSpan.FromDays(90)),
        };
    }

    internal void Validate()
    {
        if ((CaCertFile.Length > 0) != (CaKeyFile.Length > 0))
            throw new ArgumentException("dingo.postgres.ca-cert-file and ca-key-file go together (an operator's CA needs both)");
        foreach (var (key, file) in new[] { ("ca-cert-file", CaCertFile), ("ca-key-file", CaKeyFile) })
            if (file.Length > 0 && !File.Exists(file)) throw new ArgumentException($"dingo.postgres.{key}: {file} does not exist");
        if (CertificateValidity < TimeSpan.FromHours(1))
            throw new ArgumentException($"dingo.postgres.certificate-validity must be at least 1h: got {CertificateValidity}");
    }
}

public sealed record AkkaSettings
{
    /// <summary>The address Akka remoting binds and other members reach this process at.</summary>
    public string Hostname { get; init; } = "127.0.0.1";
    /// <summary>Members to join (akka.tcp://dingo@host:port); a broker with none seeds a cluster of its own.</summary>
    public IReadOnlyList<string> SeedNodes { get; init; } = [];
    /// <summary>Mutual TLS on remoting (`dingo.akka.tls`); off when no certificate is named.</summary>
    public AkkaTlsSettings Tls { get; init; } = new();

    /// <summary>The protocol of this cluster's addresses: akka.ssl.tcp with TLS, akka.tcp without.</summary>
    public string Protocol => Tls.Enabled ? "akka.ssl.tcp" : "akka.tcp";

    /// <summary>The address of a member of this cluster (system `dingo`) at host:port.</summary>
    public string MemberAddress(string host, int port) => $"{Protocol}://dingo@{host}:{port.ToString(System.Globalization.CultureInfo.InvariantCulture)}";
}

/// <summary>
/// Akka remoting over mutual TLS (`dingo.akka.tls`): every broker, cell and console presents a certificate issued by
/// the platform's CA and accepts only peers whose certificate chains to it (src/Dingo.Actors/Membership/AkkaTls.cs).
/// </summary>
public sealed record AkkaTlsSettings
{
    /// <summary>This process's certificate: PKCS#12 (.p12/.pfx, with its key) or PEM (key in <see cref="Key"/> or in the same file). Empty: TLS off.</summary>
    public string Certificate { get; init; } = "";
    /// <summary>The PEM private key of a PEM certificate (empty: in the certificate file).</summary>
    public string Key { get; init; } = "";
    /// <summary>A file holding the PKCS#12 password (or an encrypted PEM key's); empty: none.</summary>
    public string PasswordFile { get; init; } = "";
    /// <summary>PEM file of the platform CA certificate(s): a peer's certificate must chain to one of them.</summary>
    public string Ca { get; init; } = "";

    public bool Enabled => Certificate.Length > 0;

    internal void Validate()
    {
        if (Enabled)
        {
            if (Ca.Length == 0)
                throw new ArgumentException("dingo.akka.tls.ca (DINGO_AKKA_TLS_CA) must name the platform CA's certificate (PEM) when dingo.akka.tls.certificate is set: peers are accepted only when their certificate chains to it");
            return;
        }
        foreach (var (name, value) in new[] { ("key", Key), ("password-file", PasswordFile), ("ca", Ca) })
            if (value.Length > 0)
                throw new ArgumentException($"dingo.akka.tls.{name} is set but dingo.akka.tls.certificate (DINGO_AKKA_TLS_CERTIFICATE) is empty: name this process's certificate, or clear dingo.akka.tls to keep remoting plain");
    }
}

public sealed record HaSettings
{
    public required TimeSpan Ttl { get; init; }
    public required TimeSpan LoopWait { get; init; }
    /// <summary>
    /// How often a quiet node's HA loop runs: a leader with no other member whose PostgreSQL answers as a primary and whose
    /// last pass changed nothing (<see cref="Dingo.Ha.PassCadence"/>). Equal to <see cref="LoopWait"/>: never quiet.
    /// </summary>
    public TimeSpan IdleLoopWait { get; init; } = TimeSpan.FromSeconds(10);
    /// <summary>
    /// The leader lease of a node with no other member: long enough for three quiet passes, so that one late pass does
    /// not lose the key. Nobody could take it over meanwhile; a leader that gets members moves its key to a lease of
    /// <see cref="Ttl"/> at its next pass (a spec change wakes it).
    /// </summary>
    public TimeSpan AloneTtl => IdleLoopWait * 3 > Ttl ? IdleLoopWait * 3 : Ttl;
    public required long MaximumLagOnFailover { get; init; }
    public required TimeSpan RewindAfter { get; init; }
    public required TimeSpan LostCellGrace { get; init; }
    /// <summary>
    /// How long after its last renewal a leader cut off from etcd may keep serving while every other member confirms it
    /// follows it (failsafe); zero turns failsafe off.
    /// </summary>
    public TimeSpan FailsafeFor { get; init; } = TimeSpan.FromSeconds(12);
    /// <summary>
    /// A leader whose PostgreSQL and cell agent both died has its key given up by its cell's guard: at once in a
    /// synchronous cluster, after this long in an asynchronous one (time for a restarted cell to recover it in place).
    /// </summary>
    public TimeSpan ReleaseDeadLeaderAfter { get; init; } = TimeSpan.FromSeconds(2);
}
