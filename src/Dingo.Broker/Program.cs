using Dingo.Config;

namespace Dingo.Broker;

public static class Program
{
    /// <summary>dingo-broker [--config FILE]...: HOCON files in order, later ones win; environment variables win over all.</summary>
    public static async Task<int> Main(string[] args)
    {
        var files = new List<string>();
        // `probe [--config FILE]...`: one GET of this broker's /readyz (a container's HEALTHCHECK), exit 0 or 1.
        var probe = args is ["probe", ..];
        for (var i = probe ? 1 : 0; i < args.Length; i++)
        {
            if (args[i] == "--config" && i + 1 < args.Length) files.Add(args[++i]);
            else
            {
                Console.Error.WriteLine($"dingo-broker: unknown argument '{args[i]}'. Usage: dingo-broker [probe] [--config FILE]...");
                return 2;
            }
        }
        DingoSettings settings;
        try
        {
            settings = DingoSettings.Load(files);
            settings.CheckTlsFiles(broker: true);
        }
        catch (Exception ex) when (ex is ArgumentException or FileNotFoundException or Akka.Configuration.ConfigurationException)
        {
            Console.Error.WriteLine($"dingo-broker: configuration error: {ex.Message}");
            return 2;
        }
        if (probe) return await Dingo.Health.HealthProbe.RunAsync(new Uri(settings.Broker.Url.TrimEnd('/') + "/readyz"), Console.Error, TimeSpan.FromSeconds(10));
        // The platform's own connections to nodes require TLS with channel binding when clients must use TLS.
        Dingo.Postgres.PlatformConnectionTls.Configure(settings.Postgres.RequireTls);
        // Every record that holds a password is sealed with the platform key: without it, refuse to start.
        try { Dingo.Security.Sealing.Configure(settings.Seal); }
        catch (Dingo.Security.SealException ex)
        {
            Console.Error.WriteLine($"dingo-broker: {ex.Message}");
            return 2;
        }
        if (!Dingo.Security.Sealing.Configured)
        {
            Console.Error.WriteLine($"dingo-broker: no seal key: {Dingo.Security.SealSettings.HowToSet}");
            return 2;
        }
        if (string.IsNullOrEmpty(settings.Broker.Password))
        {
            Console.Error.WriteLine("dingo-broker: no broker password: set DINGO_BROKER_PASSWORD or dingo.broker.password");
            return 2;
        }
        WebApplication app;
        // TLS files (dingo.akka.tls, dingo.broker.tls) are read here: a missing or wrong one stops the start, naming the setting.
        try { app = BrokerApp.Build(settings); }
        catch (ArgumentException ex)
        {
            Console.Error.WriteLine($"dingo-broker: configuration error: {ex.Message}");
            return 2;
        }
        if (string.IsNullOrEmpty(settings.Broker.AdminPassword))
            Console.Error.WriteLine("dingo-broker: no admin password (DINGO_BROKER_ADMIN_PASSWORD or dingo.broker.admin-password): the admin API (/admin) stays closed");
        try { await app.RunAsync(); }
        // Records of a newer schema met while starting (a service's first read writes the CA, say): the start is
        // cancelled by the stop it asked for, and the exit code still says why.
        catch (OperationCanceledException) when (Dingo.Store.SchemaVersion.RefusedInThisProcess) { }
        return Dingo.Store.SchemaVersion.RefusedInThisProcess ? Dingo.Store.SchemaVersion.RefusedExitCode : 0;
    }
}
