using Dingo.Config;

namespace Dingo.Cli;

public static class Program
{
    private const string Usage = """
        usage: dingo <command> [--config FILE]...
          up        start etcd, the broker and three cells on this machine (Ctrl-C stops them)
          status    every instance with its port, plan, operation, nodes, roles, states and cells, then the Akka members
          members   the Akka cluster as a broker sees it: members, roles, status, reachability, leader (a client, not a member)
          switchover <instance> [--to <node>]   hand the primary to a named or the best replica, no write lost
          drain <cell>      switch primaries away from a cell, then move its nodes to other cells
          undrain <cell>    let a drained cell take nodes again
          backups <instance>    base backups, WAL archive position, backlog alarm and the last restore drill
          drill <instance>      restore the latest backup into a scratch node now and check it
          recreate <instance>   bring a deleted instance back from its backups (same id, port, credentials)
          rebuild   after losing etcd and the cells: rebuild every instance from the object store
          store-check   check the backup store: endpoint, credentials, bucket/container, write/read/delete
          logs <instance> [node] [--tail N]   a node's PostgreSQL log (its container's output on a Docker cell)
          events <instance> [--limit N] [--json]   the instance's history: role changes, failovers and why, fencing,
                    rewinds, re-clones, operations, backups, restores and drills
          rotate-key [--new-key]   re-seal every password in etcd and the object store with the current seal key
                    (--new-key: first put a new key at the top of the key file); docs/security.md
          version   this build's version (also --version)
          help      this text
        """;

    public static async Task<int> Main(string[] args)
    {
        if (args.Length == 0 || args[0] is "help" or "--help" or "-h")
        {
            Console.WriteLine(Usage);
            return args.Length == 0 ? 2 : 0;
        }
        if (args[0] is "version" or "--version")
        {
            if (args.Length > 1)
            {
                Console.Error.WriteLine($"dingo: {args[0]} takes no argument");
                return 2;
            }
            // The product version (Directory.Build.props), and the commit when the build recorded one.
            Console.WriteLine(Dingo.Model.Product.Commit is { Length: > 0 } commit ? $"dingo {Dingo.Model.Product.Version} ({commit})" : $"dingo {Dingo.Model.Product.Version}");
            return 0;
        }
        var home = Environment.GetEnvironmentVariable("DINGO_HOME") ?? Directory.GetCurrentDirectory();
        var files = new List<string> { Path.Combine(home, "hocon", "dingo.conf") };
        var rest = new List<string>();
        var takesArguments = args[0] is "switchover" or "drain" or "undrain" or "recreate" or "drill" or "backups" or "logs" or "rotate-key" or "events";
        for (var i = 1; i < args.Length; i++)
        {
            if (args[i] == "--config" && i + 1 < args.Length) files.Add(Path.GetFullPath(args[++i]));
            else if (takesArguments) rest.Add(args[i]);
            else
            {
                Console.Error.WriteLine($"dingo: unknown argument '{args[i]}'\n{Usage}");
                return 2;
            }
        }
        DingoSettings settings;
        try
        {
            settings = DingoSettings.Load(files);
            settings.CheckTlsFiles();
            if (!Path.IsPathRooted(settings.DataDir)) settings = settings with { DataDir = Path.Combine(home, settings.DataDir) };
        }
        catch (Exception ex) when (ex is ArgumentException or FileNotFoundException or Akka.Configuration.ConfigurationException)
        {
            Console.Error.WriteLine($"dingo: configuration error: {ex.Message}");
            return 2;
        }
        using var cts = new CancellationTokenSource();
        try
        {
            settings = await SealSetup.PrepareAsync(args[0], home, settings, cts.Token);
            Dingo.Security.Sealing.Configure(settings.Seal);
            Dingo.Postgres.PlatformConnectionTls.Configure(settings.Postgres.RequireTls);
        }
        catch (Dingo.Security.SealException ex)
        {
            Console.Error.WriteLine($"dingo: {ex.Message}");
            return 2;
        }
        try
        {
            return await RunAsync(args[0], home, files, rest, settings, cts.Token);
        }
        catch (Dingo.Security.SealException ex)
        {
            // A sealed password this console cannot open: say which key or setting it needs, not a stack trace.
            Console.Error.WriteLine($"dingo: {ex.Message} ({Dingo.Security.Sealing.Source}); {Dingo.Security.SealSettings.HowToSet}");
            return 1;
        }
    }

    private static async Task<int> RunAsync(string command, string home, List<string> files, List<string> rest, DingoSettings settings, CancellationToken ct) =>
        command switch
        {
            "up" => await Platform.UpAsync(home, files, settings),
            "status" => await StatusCommand.RunAsync(settings, Console.Out, ct),
            "members" => await MembersCommand.RunAsync(settings, Console.Out, Console.Error, ct),
            "switchover" or "drain" or "undrain" or "recreate" or "rebuild" or "drill" or "backups" or "store-check" => await AdminCommands.RunAsync(command, rest, settings, ct),
            "logs" => await LogsCommand.RunAsync(rest, settings, Console.Out, ct),
            "events" => await EventsCommand.RunAsync(rest, settings, Console.Out, ct),
            "rotate-key" => await RotateKeyCommand.RunAsync(rest, settings, Console.Out, ct),
            _ => Unknown(command),
        };

    private static int Unknown(string command)
    {
        Console.Error.WriteLine($"dingo: unknown command '{command}'\n{Usage}");
        return 2;
    }
}
