using System.Net;
using Akka.Actor;
using Akka.Cluster.Hosting;
using Akka.Hosting;
using Akka.Remote.Hosting;
using Dingo.Backups;
using Dingo.Cells;
using Dingo.Config;
using Dingo.Logging;
using Dingo.Membership;
using Dingo.Routing;
using Dingo.Postgres;
using Dingo.Store;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.Logging;

namespace Dingo.Cell;

/// <summary>Composes a cell process: the Akka.NET `cell` role, its reconcile and router actors, and the etcd watches that wake them.</summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public static class CellApp
{
    /// <param name="seedNodes">Akka addresses of the broker(s) to join, e.g. akka.tcp://dingo@127.0.0.1:4053</param>
    /// <param name="services">registrations of the caller's, after the cell's own (tests: an <see cref="EtcdCallInterceptor"/>)</param>
    public static IHost Build(DingoSettings settings, IReadOnlyList<string> seedNodes, Action<ILoggingBuilder>? logging = null,
        Action<IServiceCollection>? services = null)
    {
        // The keys every password in etcd and the object store is sealed with (a no-op when the settings name none).
        Dingo.Security.Sealing.Configure(settings.Seal);
        var builder = Host.CreateApplicationBuilder();
        builder.Logging.ClearProviders();
        if (logging is not null) logging(builder.Logging);
        else builder.Logging.AddDingoConsole(settings.Logging);
        builder.Logging.AddDingoSyslog(settings.Logging, "dingo-cell");
        builder.Logging.AddFilter("Microsoft.Hosting.Lifetime", LogLevel.Warning);
        builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = TimeSpan.FromSeconds(60));

        builder.Services.AddSingleton(settings);
        builder.Services.AddSchemaCheckedEtcdStore(settings, $"cell {settings.Cell.Id}");
        builder.Services.AddPlatformTrust();
        builder.Services.AddSingleton<IContainerRuntime>(sp => settings.Cell.Runtime switch
        {
            "process" => new LocalProcessRuntime(
                new LocalProcessRuntimeOptions(
                    DataRoot: Path.Combine(Path.GetFullPath(settings.DataDir), "cells", settings.Cell.Id, "nodes"),
                    PostgresBin: settings.Cell.PostgresBin,
                    RunAsUser: settings.Cell.RunAsUser) { WarmPool = settings.Cell.WarmPool, SaturatedCpuPressure = settings.Cell.SaturatedCpuPressure },
                sp.GetRequiredService<ILogger<LocalProcessRuntime>>()),
            "docker" => new DockerRuntime(
                new DockerRuntimeOptions(settings.Cell.Id, settings.Cell.Docker)
                {
                    LimitsOf = PlanLimits(sp.GetRequiredService<EtcdStore>()),
                    LogMaxBytes = settings.Logging.PostgresLogMax,
                    WarmPool = settings.Cell.WarmPool,
                    SaturatedCpuPressure = settings.Cell.SaturatedCpuPressure,
                },
                sp.GetRequiredService<ILoggerFactory>().CreateLogger("Dingo.Cell.Docker")),
            var other => throw new ArgumentException($"dingo.cell.runtime '{other}' is not known: use \"process\" or \"docker\""),
        });
        builder.Services.AddSingleton(sp =>
        {
            // Every cell archives the clusters it leads and restores the ones it bootstraps from a backup.
            var backups = settings.Backups ?? throw new ArgumentException("configuration has no dingo.backups section");
            return new Dingo.Backups.CellBackups(backups.Store.CreateStore(), backups, sp.GetRequiredService<EtcdStore>(),
                Path.Combine(Path.GetFullPath(settings.DataDir), "cells", settings.Cell.Id, "backup-work"), settings.Cell.PostgresBin, settings.Ha,
                sp.GetRequiredService<ILoggerFactory>().CreateLogger("Dingo.Backups"),
                new Dingo.Backups.RestoreDrill(backups.Store.CreateStore(), Path.Combine(Path.GetFullPath(settings.DataDir), "cells", settings.Cell.Id, "backup-work"),
                    settings.Cell.PostgresBin, settings.Cell.RunAsUser, sp.GetRequiredService<ILoggerFactory>()),
                sp.GetRequiredService<Dingo.Health.CellMetrics>(), sp.GetRequiredService<EventJournal>())
            {
                // A new cluster's first base backup waits for the cell's node work to settle (docs/backups.md).
                NodeWorkQuietFor = sp.GetRequiredService<IContainerRuntime>().NodeWorkQuietFor,
            };
        });
        // What the cell's nodes and backups do goes to each instance's history (`dingo events`); counted in the metrics.
        builder.Services.AddSingleton(sp => new EventJournal(sp.GetRequiredService<EtcdStore>(), settings.Events, settings.Cell.Id,
            sp.GetRequiredService<ILoggerFactory>().CreateLogger("Dingo.Events"), sp.GetRequiredService<Dingo.Health.CellMetrics>().Registry));
        // One Prometheus registry for the cell: its nodes, HA loop and backups (CellMetrics), its router, and the
        // process's own figures (CPU, memory, GC, threads), all on /metrics of the cell's health port.
        builder.Services.AddSingleton(_ =>
        {
            var registry = Prometheus.Metrics.NewCustomRegistry();
            Prometheus.DotNetStats.Register(registry);
            return new Dingo.Health.CellMetrics(registry);
        });
        builder.Services.AddSingleton(_ => new Dingo.Ha.FenceGuardDirectory(GuardPath(settings), GuardCommand(), Dingo.Ha.GuardSettings.From(settings)));
        builder.Services.AddSingleton(sp => new CellLease(sp.GetRequiredService<EtcdStore>(), settings.Cell.LeaseTtl, sp.GetRequiredService<ILoggerFactory>().CreateLogger("Dingo.Cell.Lease")));
        builder.Services.AddSingleton(sp => new CellReconciler(
            sp.GetRequiredService<EtcdStore>(), sp.GetRequiredService<IContainerRuntime>(), sp.GetRequiredService<CellLease>(),
            settings, sp.GetRequiredService<ILoggerFactory>().CreateLogger("Dingo.Cell")));
        builder.Services.AddSingleton(sp => new TcpRouter(IPAddress.Parse(settings.Router.BindAddress),
            sp.GetRequiredService<ILoggerFactory>().CreateLogger("Dingo.Router"), settings.Router.LeaderWait));

        builder.Services.AddAkka("dingo", (akka, sp) =>
        {
            // The cell's own actors live in a local actor system. Its Akka cluster membership is a second, small system
            // (CellMembership) that can be made anew when the cluster removes this cell, without touching them.
            akka.AddHocon(AkkaDefaults.Hocon, HoconAddMode.Prepend)
                // Akka's own log goes to the host's logger (the same console format, the same filters).
                .ConfigureLoggers(log =>
                {
                    log.LogLevel = Akka.Event.LogLevel.WarningLevel;
                    log.ClearLoggers();
                    log.AddLoggerFactory();
                })
                .WithActors((system, registry) =>
                {
                    var store = sp.GetRequiredService<EtcdStore>();
                    var runtime = sp.GetRequiredService<IContainerRuntime>();
                    var lease = sp.GetRequiredService<CellLease>();
                    var haLogger = sp.GetRequiredService<ILoggerFactory>().CreateLogger("Dingo.Ha");
                    var backups = sp.GetRequiredService<Dingo.Backups.CellBackups>();
                    var guard = sp.GetRequiredService<Dingo.Ha.FenceGuardDirectory>();
                    Func<Dingo.Model.NodeSpec, Dingo.Ha.NodeAgent> agents = spec => new Dingo.Ha.NodeAgent(spec, store, runtime, lease, settings, haLogger, backups, guard,
                        sp.GetRequiredService<Dingo.Health.CellMetrics>(), sp.GetRequiredService<EventJournal>());
                    var cell = system.ActorOf(CellActor.Props(sp.GetRequiredService<CellReconciler>(), agents, settings.Cell.ReconcileInterval, settings.Ha.LoopWait), "cell");
                    var router = system.ActorOf(RouterActor.Props(new EtcdRouteSource(sp.GetRequiredService<EtcdStore>()), sp.GetRequiredService<IRouteDataPath>(), settings.Router, sp.GetRequiredService<RouterMetrics>()), "router");
                    registry.Register<CellActor>(cell);
                    registry.Register<RouterActor>(router);
                });
        });
        builder.Services.AddSingleton(sp => new RouterMetrics(sp.GetRequiredService<TcpRouter>(), sp.GetRequiredService<Dingo.Health.CellMetrics>().Registry));
        builder.Services.AddSingleton<IRouteDataPath>(sp =>
        {
            var userspace = sp.GetRequiredService<TcpRouter>();
            var log = sp.GetRequiredService<ILoggerFactory>().CreateLogger("Dingo.Router");
            if (settings.Router.Mode == "userspace") return userspace;
            if (!KernelRouter.Available(out var reason))
            {
                if (settings.Router.Mode == "kernel")
                    throw new InvalidOperationException($"dingo.router.mode = kernel, but the kernel path is not available here: {reason}");
                log.LogInformation("router: user-space data path (the kernel path is not available: {Reason})", reason);
                return userspace;
            }
            log.LogInformation("router: kernel fast path (nftables table {Table})", KernelRouter.TableNameFor(settings.Cell.Id));
            return new KernelRouter(IPAddress.Parse(settings.Router.BindAddress), KernelRouter.TableNameFor(settings.Cell.Id), userspace, log);
        });
        builder.Services.AddHostedService<CellWatches>();
        // The nodes' PostgreSQL logs: rotated, and shipped when a syslog receiver is configured. The Docker runtime's
        // engine keeps and rolls container logs itself (LogMaxBytes); they are shipped by following the engine's stream.
        if (settings.Cell.WarmPool > 0)
            builder.Services.AddHostedService(sp => new WarmPoolKeeper(sp.GetRequiredService<IContainerRuntime>() switch
            {
                LocalProcessRuntime local => local.KeepWarmAsync,
                DockerRuntime docker => docker.KeepWarmAsync,
                var other => throw new InvalidOperationException($"runtime {other.Kind} has no warm pool"),
            }));
        if (settings.Cell.Runtime == "process")
            builder.Services.AddHostedService(sp => new NodeLogs((LocalProcessRuntime)sp.GetRequiredService<IContainerRuntime>(), settings.Logging,
                sp.GetService<Dingo.Logging.SyslogSink>(), sp.GetRequiredService<ILogger<NodeLogs>>()));
        else if (settings.Logging.Syslog is { Postgres: true })
            builder.Services.AddHostedService(sp => new ContainerLogs((DockerRuntime)sp.GetRequiredService<IContainerRuntime>(),
                sp.GetRequiredService<Dingo.Logging.SyslogSink>(), sp.GetRequiredService<ILogger<ContainerLogs>>()));
        // Mutual TLS with the platform CA when dingo.akka.tls names a certificate (throws naming the setting when a file
        // is missing); the host owns it, so the certificate outlives every member system.
        var tls = Dingo.Membership.AkkaTls.Load(settings.Akka.Tls);
        if (tls is not null) builder.Services.AddSingleton(tls);
        builder.Services.AddSingleton(sp => new CellMembership(sp.GetRequiredService<EtcdStore>(), settings, seedNodes, tls,
            sp.GetRequiredService<ILoggerFactory>()));
        builder.Services.AddHostedService(sp => sp.GetRequiredService<CellMembership>());
        // Ready: etcd answers, the cell is an Up member of the Akka cluster, its runtime lists its nodes (/readyz, READY=1).
        builder.Services.AddSingleton(sp => new Dingo.Health.Readiness(
        [
            Dingo.Health.ReadinessChecks.Etcd(sp.GetRequiredService<EtcdStore>()),
            Dingo.Health.ReadinessChecks.AkkaMember(() => sp.GetRequiredService<CellMembership>().MemberSystem),
            new Dingo.Health.ReadinessCheck("runtime", async ct =>
            {
                await sp.GetRequiredService<IContainerRuntime>().ListAsync(ct);
                return null;
            }),
        ], TimeSpan.FromSeconds(3)));
        builder.Services.AddHostedService(sp => new Dingo.Health.SystemdReadiness(sp.GetRequiredService<Dingo.Health.Readiness>(),
            sp.GetRequiredService<ILoggerFactory>().CreateLogger("Dingo.Cell.Systemd")));
        // Beyond one host (require-tls) the cell's own ports speak HTTPS with a certificate of the platform CA.
        if (settings.Postgres.RequireTls)
        {
            builder.Services.AddSingleton<CellTlsIdentity>();
            builder.Services.AddSingleton<IPlatformCaListener>(sp => sp.GetRequiredService<CellTlsIdentity>());
        }
        if (settings.Cell.HealthPort > 0)
            builder.Services.AddHostedService(sp => new CellHealthEndpoint(settings, sp.GetRequiredService<Dingo.Health.Readiness>(), sp.GetRequiredService<Dingo.Health.CellMetrics>(),
                sp.GetService<CellTlsIdentity>(), sp.GetRequiredService<ILogger<CellHealthEndpoint>>()));
        if (settings.Router.MetricsPort > 0 && settings.Router.MetricsPort != settings.Cell.HealthPort)
            builder.Services.AddHostedService(sp => new MetricsEndpoint(settings, sp.GetRequiredService<Dingo.Health.CellMetrics>(),
                sp.GetService<CellTlsIdentity>(), sp.GetRequiredService<ILogger<MetricsEndpoint>>()));
        services?.Invoke(builder.Services);
        return builder.Build();
    }

    public static string GuardPath(DingoSettings settings) => Path.Combine(Path.GetFullPath(settings.DataDir), "cells", settings.Cell.Id, "guard");

    /// <summary>How the cell starts its fencing guard: this same program, `guard --dir DIR` (see Program).</summary>
    private static IReadOnlyList<string> GuardCommand()
    {
        var host = Environment.ProcessPath is { } path && Path.GetFileNameWithoutExtension(path) == "dotnet" ? path : "dotnet";
        return [host, typeof(CellApp).Assembly.Location, "guard"];
    }

    /// <summary>A node's memory and CPU ceilings come from its instance's plan (the Docker runtime applies them).</summary>
    private static Func<string, CancellationToken, Task<Dingo.Model.NodeLimits>> PlanLimits(EtcdStore store) => async (instanceId, ct) =>
    {
        var instance = await store.GetAsync<Dingo.Model.InstanceRecord>(store.Keys.Instance(instanceId), ct).ConfigureAwait(false);
        return Dingo.Model.Catalog.FindPlan(instance?.Value.PlanId)?.Limits ?? Dingo.Model.NodeLimits.Default;
    };
}

/// <summary>
/// Wakes the actors when etcd changes, and on stop winds the cell down in order: actors first, then
/// PostgreSQL nodes (data kept), then the lease, then the router's listeners.
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
internal sealed class CellWatches(
    EtcdStore store, DingoSettings settings, CellReconciler reconciler, TcpRouter router, IRouteDataPath dataPath,
    IRequiredActor<CellActor> cell, IRequiredActor<RouterActor> routerActor, Dingo.Ha.FenceGuardDirectory guard, ILogger<CellWatches> logger) : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        // The fencing guard runs before any node of this cell can lead (a promotion waits for it otherwise).
        if (!await guard.EnsureGuardRunningAsync(TimeSpan.FromSeconds(10), stoppingToken))
            logger.LogError("the fencing guard did not start (see {Log}): no node of this cell can be promoted until it does", Path.Combine(guard.Path, "guard.log"));
        await WatchAsync(stoppingToken);
    }

    private Task WatchAsync(CancellationToken stoppingToken)
    {
        var keys = store.Keys;
        // How long the process took to get here: after a crash, the nodes it led wait that long for their agent.
        using var self = System.Diagnostics.Process.GetCurrentProcess();
        logger.LogInformation("cell {Cell} ({Zone}) watching etcd at {Endpoints}, {Ms:0} ms after the process started", settings.Cell.Id, settings.Cell.Zone,
            string.Join(",", store.Endpoints), (DateTime.Now - self.StartTime).TotalMilliseconds);
        return Task.WhenAll(
            store.WatchPrefixAsync(keys.Assignments(settings.Cell.Id), _ => { cell.ActorRef.Tell(new CellMessages.Reconcile()); return Task.CompletedTask; }, stoppingToken),
            store.WatchPrefixAsync(keys.Clusters, changes =>
            {
                // Only leadership matters here (the optime key changes with every write and wakes nobody), and the first
                // optime of a new cluster: its primary leads, so the replicas waiting to clone from it can start now.
                var relevant = changes.Where(c => c.Key.EndsWith("/leader", StringComparison.Ordinal) || c.Key.EndsWith("/switchover", StringComparison.Ordinal)
                                                  || (c.Created && c.Key.EndsWith("/optime", StringComparison.Ordinal))).ToList();
                if (relevant.Count == 0) return Task.CompletedTask;
                routerActor.ActorRef.Tell(new RouterMessages.Refresh());
                // A leader key that changed or vanished wakes that cluster's nodes at once, not at their next loop.
                foreach (var instance in relevant.Select(c => c.Key[keys.Clusters.Length..]).Select(k => k[..Math.Max(0, k.IndexOf('/'))]).Distinct())
                    if (instance.Length > 0) cell.ActorRef.Tell(new CellMessages.WakeInstance(instance));
                return Task.CompletedTask;
            }, stoppingToken),
            // A change of an instance (an update) or of its nodes (one added or removed) wakes its nodes too: a quiet leader
            // (PassCadence) must see members come before they wait on its report, and an update applies at once.
            store.WatchPrefixAsync(keys.AllNodes, changes => WakeInstances(changes, keys.AllNodes), stoppingToken),
            store.WatchPrefixAsync(keys.Instances, changes => WakeInstances(changes, keys.Instances), stoppingToken),
            store.WatchPrefixAsync(keys.Ports, _ => { routerActor.ActorRef.Tell(new RouterMessages.Refresh()); return Task.CompletedTask; }, stoppingToken));
    }

    /// <summary>Wakes the nodes of every instance named by a changed key under <paramref name="prefix"/> (prefix + instance id [+ '/' …]).</summary>
    private Task WakeInstances(IReadOnlyList<WatchedChange> changes, string prefix)
    {
        foreach (var instance in changes.Select(c => c.Key[prefix.Length..]).Select(k => k.IndexOf('/') is var slash and >= 0 ? k[..slash] : k).Distinct())
            if (instance.Length > 0) cell.ActorRef.Tell(new CellMessages.WakeInstance(instance));
        return Task.CompletedTask;
    }

    public override async Task StopAsync(CancellationToken cancellationToken)
    {
        await base.StopAsync(cancellationToken);
        try
        {
            // Leaders hand over at once instead of making their replicas wait for the lease to expire.
            await cell.ActorRef.Ask<NodeActor.Done>(new CellMessages.ReleaseAll(), TimeSpan.FromSeconds(8));
        }
        catch (Exception ex) when (ex is TaskCanceledException or AskTimeoutException)
        {
            logger.LogWarning("nodes did not release leadership in time: {Error}", ex.Message);
        }
        try
        {
            await cell.ActorRef.GracefulStop(TimeSpan.FromSeconds(30));
            await routerActor.ActorRef.GracefulStop(TimeSpan.FromSeconds(5));
        }
        catch (Exception ex) when (ex is TaskCanceledException or AskTimeoutException)
        {
            logger.LogWarning("actors did not stop in time: {Error}", ex.Message);
        }
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        cts.CancelAfter(TimeSpan.FromSeconds(45));
        await reconciler.ShutdownAsync(cts.Token);
        // Every node has stopped: nothing of this cell leads any more.
        await guard.StopGuardAsync(cts.Token);
        if (dataPath != router) await dataPath.DisposeAsync();
        await router.DisposeAsync();
        logger.LogInformation("cell {Cell} stopped", settings.Cell.Id);
    }
}

/// <summary>
/// The cell's membership in the Akka cluster, in an actor system of its own: joined through <see cref="AkkaMembership"/>
/// (a cell never founds a cluster), left on a clean stop. When the split-brain resolver removes the cell (cut off from
/// the brokers, say) its nodes and router go on as before, and a new member system joins again once it can.
/// </summary>
internal sealed class CellMembership(EtcdStore store, DingoSettings settings, IReadOnlyList<string> seeds, Dingo.Membership.AkkaTls? tls, ILoggerFactory loggers) : BackgroundService
{
    private readonly ILogger _logger = loggers.CreateLogger("Dingo.Akka");

    private static readonly TimeSpan RejoinAfter = TimeSpan.FromSeconds(2);

    /// <summary>The member system's address (for tests and logs); null between two systems.</summary>
    public Akka.Actor.Address? SelfAddress { get; private set; }

    /// <summary>The current member system (readiness asks whether it is Up); null between two systems.</summary>
    public ActorSystem? MemberSystem { get; private set; }

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        while (!stoppingToken.IsCancellationRequested)
        {
            // Its log goes to the host's logger too (DingoLogging.AkkaLoggers in MemberConfig).
            var setup = Akka.Actor.BootstrapSetup.Create().WithConfig(MemberConfig()).And(DingoLogging.AkkaLoggerSetup(loggers));
            var system = tls is null ? ActorSystem.Create("dingo", setup) : ActorSystem.Create("dingo", setup.And(tls.Setup()));
            SelfAddress = Akka.Cluster.Cluster.Get(system).SelfAddress;
            MemberSystem = system;
            try
            {
                await AkkaMembership.RunAsync(system, store, seeds, mayFound: false, _logger, stoppingToken);
            }
            finally
            {
                SelfAddress = null;
                MemberSystem = null;
                // A clean stop leaves the cluster first; a removed member has nothing to leave.
                await CoordinatedShutdown.Get(system).Run(CoordinatedShutdown.ClusterLeavingReason.Instance);
                await system.WhenTerminated.WaitAsync(TimeSpan.FromSeconds(10), CancellationToken.None).ContinueWith(_ => { }, TaskScheduler.Default);
            }
            if (stoppingToken.IsCancellationRequested) break;
            _logger.LogWarning("cell {Cell} was removed from the Akka cluster: joining again as a new member (its nodes and router are not affected)", settings.Cell.Id);
            try { await Task.Delay(RejoinAfter, stoppingToken); }
            catch (OperationCanceledException) { break; }
        }
    }

    private Akka.Configuration.Config MemberConfig() =>
        Akka.Configuration.ConfigurationFactory.ParseString($$"""
            {{(tls is null ? "" : Dingo.Membership.AkkaTls.Hocon)}}
            {{DingoLogging.AkkaLoggers}}
            akka.actor.provider = cluster
            akka.remote.dot-netty.tcp {
              hostname = "{{settings.Akka.Hostname}}"
              public-hostname = "{{settings.Akka.Hostname}}"
              port = {{settings.Cell.AkkaPort}}
            }
            akka.cluster.roles = [cell]
            """).WithFallback(Akka.Configuration.ConfigurationFactory.ParseString(AkkaDefaults.For(settings)));
}

/// <summary>
/// A listener of the cell on its own address: what the metrics and health endpoints share. With a
/// <see cref="CellTlsIdentity"/> (require-tls) it speaks HTTPS only, presenting the cell's current certificate on each
/// handshake (a renewed one without a restart; none before the CA has been read, so handshakes fail until then).
/// </summary>
internal abstract class CellHttpEndpoint(string address, int port, string serves, Dingo.Health.CellMetrics metrics, CellTlsIdentity? tls, ILogger logger) : IHostedService
{
    private Microsoft.AspNetCore.Builder.WebApplication? _app;
    protected virtual void Map(Microsoft.AspNetCore.Builder.WebApplication app) { }

    /// <summary>http(s)://address:port, an IPv6 address in brackets (the listener's URL and the probe's).</summary>
    public static string Url(string address, int port, bool https = false)
    {
        var scheme = https ? "https" : "http";
        return IPAddress.TryParse(address, out var ip) && ip.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6
            ? $"{scheme}://[{address}]:{port}" : $"{scheme}://{address}:{port}";
    }

    public async Task StartAsync(CancellationToken cancellationToken)
    {
        var builder = Microsoft.AspNetCore.Builder.WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.UseUrls(Url(address, port, https: tls is not null));
        if (tls is not null)
        {
            // The slim builder leaves HTTPS out unless asked.
            builder.WebHost.UseKestrelHttpsConfiguration();
            builder.WebHost.ConfigureKestrel(kestrel => kestrel.ConfigureHttpsDefaults(https =>
            {
                https.ServerCertificateSelector = (_, _) => tls.Certificate;
                https.SslProtocols = Dingo.Security.PemTls.Protocols;
            }));
        }
        _app = builder.Build();
        Map(_app);
        _app.MapGet("/metrics", async (Microsoft.AspNetCore.Http.HttpContext context) =>
        {
            context.Response.ContentType = "text/plain; version=0.0.4; charset=utf-8";
            await metrics.Registry.CollectAndExportAsTextAsync(context.Response.Body, context.RequestAborted);
        });
        await _app.StartAsync(cancellationToken);
        logger.LogInformation("{Serves} on {Url}", serves, Url(address, port, https: tls is not null));
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        if (_app is not null) await _app.StopAsync(cancellationToken);
    }
}

/// <summary>Serves the cell's metrics also on &lt;cell address&gt;:&lt;metrics-port&gt;/metrics (dingo.router.metrics-port, for scrape configurations made before the health port served them).</summary>
internal sealed class MetricsEndpoint(DingoSettings settings, Dingo.Health.CellMetrics metrics, CellTlsIdentity? tls, ILogger<MetricsEndpoint> logger)
    : CellHttpEndpoint(settings.Cell.Address, settings.Router.MetricsPort, "cell metrics (/metrics)", metrics, tls, logger);

/// <summary>
/// The cell's own HTTP port (dingo.cell.health-port) on its address: /healthz answers 200 while the process serves
/// requests; /readyz 200 when etcd answers, the cell is an Up Akka member and its runtime lists its nodes, else 503
/// naming each check's problem (JSON); /metrics the cell's Prometheus figures (nodes, HA, backups, router, process).
/// Nothing secret: no credentials; instances appear by id only, with roles, positions and counters. HTTPS only under
/// dingo.postgres.require-tls (<see cref="CellTlsIdentity"/>), plain HTTP otherwise (the loopback ./dingo up).
/// </summary>
internal sealed class CellHealthEndpoint(DingoSettings settings, Dingo.Health.Readiness readiness, Dingo.Health.CellMetrics metrics, CellTlsIdentity? tls, ILogger<CellHealthEndpoint> logger)
    : CellHttpEndpoint(settings.Cell.Address, settings.Cell.HealthPort, "cell health (/healthz, /readyz, /metrics)", metrics, tls, logger)
{
    protected override void Map(Microsoft.AspNetCore.Builder.WebApplication app)
    {
        app.MapGet("/healthz", () => Microsoft.AspNetCore.Http.Results.Text("ok"));
        app.MapGet("/readyz", async (Microsoft.AspNetCore.Http.HttpContext context) =>
        {
            var report = await readiness.CheckAsync(context.RequestAborted);
            return Microsoft.AspNetCore.Http.Results.Text(report.ToJson().ToJsonString(), "application/json", statusCode: report.Ready ? 200 : 503);
        });
    }
}
