using Akka.Cluster.Hosting;
using Akka.Hosting;
using Akka.Remote.Hosting;
using Dingo.Backups;
using Dingo.Logging;
using Dingo.Broker.Osb;
using Dingo.Config;
using Dingo.Instances;
using Dingo.Membership;
using Dingo.Postgres;
using Dingo.Store;

namespace Dingo.Broker;

/// <summary>Composes the broker process: Kestrel + OSB API, the Akka.NET `broker` role with sharded instance actors.</summary>
public static class BrokerApp
{
    /// <param name="akkaPort">remoting port; 0 picks a free one (tests)</param>
    public static WebApplication Build(DingoSettings settings, int? akkaPort = null, Action<ILoggingBuilder>? logging = null)
    {
        // The keys every password in etcd and the object store is sealed with (a no-op when the settings name none).
        Dingo.Security.Sealing.Configure(settings.Seal);
        var builder = WebApplication.CreateSlimBuilder();
        // One listener, the URL's: https:// with the configured certificate (no plain listener beside it), or http://.
        builder.WebHost.UseUrls(settings.Broker.Url);
        var certificate = ServerCertificate(settings.Broker, out var chain);
        // The slim builder leaves Kestrel's HTTPS out until asked for.
        if (certificate is not null) builder.WebHost.UseKestrelHttpsConfiguration();
        builder.WebHost.ConfigureKestrel(k =>
        {
            // An OSB request is a few hundred bytes: Kestrel refuses to read more than this (413) on any route.
            k.Limits.MaxRequestBodySize = RequestLimits.MaxBodyBytes;
            if (certificate is not null)
            {
                k.ConfigureHttpsDefaults(https =>
                {
                    https.ServerCertificate = certificate;
                    https.ServerCertificateChain = chain;
                    https.SslProtocols = Dingo.Security.PemTls.Protocols;
                });
            }
        });
        builder.Logging.ClearProviders();
        if (logging is not null) logging(builder.Logging);
        else builder.Logging.AddDingoConsole(settings.Logging);
        builder.Logging.AddDingoSyslog(settings.Logging, "dingo-broker");
        builder.Logging.AddFilter("Microsoft.AspNetCore", LogLevel.Warning);
        builder.Logging.AddFilter("Microsoft.Hosting.Lifetime", LogLevel.Warning);

        builder.Services.AddSingleton(settings);
        builder.Services.AddSingleton(settings.Broker);
        builder.Services.AddSchemaCheckedEtcdStore(settings, "broker");
        builder.Services.AddPlatformTrust();
        builder.Services.AddSingleton<InstanceService>();
        builder.Services.AddSingleton<BindingService>();
        builder.Services.AddSingleton(sp => new LostCellDuty(sp.GetRequiredService<EtcdStore>(), settings, sp.GetRequiredService<ILoggerFactory>().CreateLogger("Dingo.Broker.LostCells")));
        builder.Services.AddHostedService<OperationSweeper>();
        builder.Services.AddHostedService(sp =>
        {
            var instances = sp.GetRequiredService<InstanceService>();
            return new StatusWatch(sp.GetRequiredService<EtcdStore>(), instances.InProgress.Contains, instances.Poke, sp.GetRequiredService<ILogger<StatusWatch>>());
        });
        builder.Services.AddSingleton<Dingo.Backups.IObjectStore>(_ => (settings.Backups ?? throw new ArgumentException("configuration has no dingo.backups section")).Store.CreateStore());
        builder.Services.AddSingleton<Recovery>();
        // The broker's Prometheus registry: its requests, operations and instance counts, and the process's own figures.
        builder.Services.AddSingleton(sp =>
        {
            var registry = Prometheus.Metrics.NewCustomRegistry();
            Prometheus.DotNetStats.Register(registry);
            return new Dingo.Health.BrokerMetrics(sp.GetRequiredService<EtcdStore>(), settings.Broker.InstanceQuota, registry);
        });
        // Operations' ends and node placements go to each instance's history (`dingo events`); counted in the metrics.
        builder.Services.AddSingleton(sp => new EventJournal(sp.GetRequiredService<EtcdStore>(), settings.Events, "broker",
            sp.GetRequiredService<ILoggerFactory>().CreateLogger("Dingo.Events"), sp.GetRequiredService<Dingo.Health.BrokerMetrics>().Registry));
        builder.Services.AddHostedService<ClusterDataBackup>();
        // Ready: etcd answers and this broker is an Up member of the Akka cluster (/readyz, systemd's READY=1).
        builder.Services.AddSingleton(sp => new Dingo.Health.Readiness(
        [
            Dingo.Health.ReadinessChecks.Etcd(sp.GetRequiredService<EtcdStore>()),
            Dingo.Health.ReadinessChecks.AkkaMember(() => sp.GetService<Akka.Actor.ActorSystem>()),
        ], TimeSpan.FromSeconds(3)));
        builder.Services.AddHostedService(sp => new Dingo.Health.SystemdReadiness(sp.GetRequiredService<Dingo.Health.Readiness>(),
            sp.GetRequiredService<ILoggerFactory>().CreateLogger("Dingo.Broker.Systemd")));

        var port = akkaPort ?? settings.Broker.AkkaPort;
        // Mutual TLS with the platform CA when dingo.akka.tls names a certificate (throws naming the setting when a
        // file is missing); the app owns it, so the certificate lives as long as the actor system.
        var tls = AkkaTls.Load(settings.Akka.Tls);
        if (tls is not null) builder.Services.AddSingleton(tls);
        builder.Services.AddAkka("dingo", (akka, sp) =>
        {
            var store = sp.GetRequiredService<EtcdStore>();
            var loggers = sp.GetRequiredService<ILoggerFactory>();
            if (tls is not null) akka.AddHocon(AkkaTls.Hocon, HoconAddMode.Prepend).AddSetup(tls.Setup());
            akka.AddHocon(AkkaDefaults.For(settings), HoconAddMode.Prepend)
                // Akka's own log goes to the host's logger (the same console format, the same filters).
                .ConfigureLoggers(log =>
                {
                    log.LogLevel = Akka.Event.LogLevel.WarningLevel;
                    log.ClearLoggers();
                    log.AddLoggerFactory();
                })
                .AddSetup(RemotingNoiseFilter.ForBroker())
                .WithRemoting(settings.Akka.Hostname, port)
                // No seed nodes here: AkkaMembership joins (or founds) the cluster with etcd as the judge.
                .WithClustering(new ClusterOptions { Roles = ["broker"] })
                .WithShardRegion<ServiceInstanceRegion>(
                    "service-instance",
                    id => ServiceInstanceActor.Props(id, store, settings, loggers, sp.GetRequiredService<Dingo.Health.BrokerMetrics>(), sp.GetRequiredService<EventJournal>()),
                    new ServiceInstanceExtractor(),
                    new ShardOptions { Role = "broker", StateStoreMode = Akka.Cluster.Sharding.StateStoreMode.DData, RememberEntities = false })
                .WithActors((system, registry) =>
                {
                    // The operator console (`dingo members`, `dingo status`) asks this actor from outside the cluster.
                    var console = system.ActorOf(ConsoleGateway.Props(registry.Get<ServiceInstanceRegion>(), OperatorCredentials.Expected(settings)), ConsoleGateway.Name);
                    Akka.Cluster.Tools.Client.ClusterClientReceptionist.Get(system).RegisterService(console);
                })
                .AddStartup((system, _) =>
                {
                    var cluster = Akka.Cluster.Cluster.Get(system);
                    // Joins the members etcd lists (and the configured seeds); founds the cluster only when etcd lists no
                    // live member, so a broker restarting cut off from the others never founds a second cluster.
                    var stopping = sp.GetRequiredService<IHostApplicationLifetime>().ApplicationStopping;
                    var membershipLog = sp.GetRequiredService<ILoggerFactory>().CreateLogger("Dingo.Akka");
                    Task.Run(() => AkkaMembership.RunAsync(system, store, settings.Akka.SeedNodes, mayFound: true, membershipLog, stopping), CancellationToken.None)
                        .ContinueWith(t => membershipLog.LogError(t.Exception, "joining the Akka cluster failed"), CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted, TaskScheduler.Default);
                    // A broker the split-brain resolver removed cannot serve its shards: it exits, and its supervisor
                    // (systemd, `dingo up`) starts it again as a new member.
                    cluster.RegisterOnMemberRemoved(() =>
                    {
                        var lifetime = sp.GetRequiredService<IHostApplicationLifetime>();
                        // Leaving on a clean stop removes the member too: only an unexpected removal is worth an error.
                        if (lifetime.ApplicationStopping.IsCancellationRequested) return;
                        sp.GetRequiredService<ILoggerFactory>().CreateLogger("Dingo.Broker").LogError("this broker was removed from the Akka cluster: stopping so it restarts as a new member");
                        lifetime.StopApplication();
                    });
                });
        });

        var app = builder.Build();
        if (certificate is not null) app.Lifetime.ApplicationStopped.Register(certificate.Dispose);
        // Outermost: every request is counted with the status it finally got, by its route template.
        var metrics = app.Services.GetRequiredService<Dingo.Health.BrokerMetrics>();
        app.Use(async (context, next) =>
        {
            var started = System.Diagnostics.Stopwatch.GetTimestamp();
            try
            {
                await next(context);
            }
            finally
            {
                var route = (context.GetEndpoint() as Microsoft.AspNetCore.Routing.RouteEndpoint)?.RoutePattern.RawText ?? "unmatched";
                metrics.Request(route, context.Request.Method, context.Response.StatusCode, System.Diagnostics.Stopwatch.GetElapsedTime(started));
            }
        });
        // An unexpected failure still answers in OSB's error shape, with what went wrong (never a secret).
        app.Use(async (context, next) =>
        {
            try
            {
                await next(context);
            }
            catch (BadHttpRequestException ex) when (!context.Response.HasStarted)
            {
                // The client's fault (a body over the limit, cut short, malformed): its 4xx, never a 500.
                var result = ex.StatusCode == StatusCodes.Status413PayloadTooLarge ? OsbResult.TooLarge()
                    : OsbResult.Error(ex.StatusCode is >= 400 and < 500 ? ex.StatusCode : 400, "BadRequest", $"the request could not be read: {RequestLimits.ForLog(ex.Message)}");
                await result.ToResult().ExecuteAsync(context);
            }
            catch (Exception ex) when (!context.Response.HasStarted && ex is not OperationCanceledException)
            {
                app.Logger.LogError(ex, "{Method} {Path} failed", context.Request.Method, context.Request.Path);
                var detail = ex is Grpc.Core.RpcException rpc ? $"etcd is unavailable ({rpc.StatusCode})" : ex.Message;
                await OsbResult.Error(500, "InternalError", $"the broker could not complete the request: {detail}").ToResult().ExecuteAsync(context);
            }
        });
        app.UseMiddleware<OsbMiddleware>();
        // Unauthenticated, like /healthz: a supervisor's probe carries no credentials, and neither answer holds a secret.
        app.MapGet("/healthz", () => Results.Text("ok"));
        // A page per instance (OSB dashboard_url), opened by the instance's own secret in its URL, not by credentials.
        Dashboard.Map(app);
        // Prometheus' text format, unauthenticated like the probes: counts and durations by route, plan and state, no
        // instance id, name or credential.
        app.MapGet("/metrics", async (HttpContext context) =>
        {
            context.Response.ContentType = "text/plain; version=0.0.4; charset=utf-8";
            await metrics.Registry.CollectAndExportAsTextAsync(context.Response.Body, context.RequestAborted);
        });
        app.MapGet("/readyz", async (HttpContext context, Dingo.Health.Readiness readiness) =>
        {
            var report = await readiness.CheckAsync(context.RequestAborted);
            return Results.Text(report.ToJson().ToJsonString(), "application/json", statusCode: report.Ready ? 200 : 503);
        });
        OsbEndpoints.Map(app);
        AdminEndpoints.Map(app);
        return app;
    }

    /// <summary>
    /// The certificate of dingo.broker.tls for an https:// URL (null for http://). Throws naming the setting when it is
    /// missing or its files cannot be used: an https:// broker never falls back to a development certificate.
    /// </summary>
    private static System.Security.Cryptography.X509Certificates.X509Certificate2? ServerCertificate(BrokerSettings broker,
        out System.Security.Cryptography.X509Certificates.X509Certificate2Collection? chain)
    {
        chain = null;
        if (!new Uri(broker.Url).Scheme.Equals(Uri.UriSchemeHttps, StringComparison.Ordinal)) return null;
        if (broker.TlsCertFile.Length == 0)
            throw new ArgumentException($"dingo.broker.url is https:// ({broker.Url}) but dingo.broker.tls.cert-file and key-file (DINGO_BROKER_CERT_FILE, DINGO_BROKER_KEY_FILE) are not set");
        var certificate = broker.LoadServerCertificate(out var intermediates);
        chain = intermediates;
        return certificate;
    }
}
