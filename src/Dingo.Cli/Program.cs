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
          help      this text
        """;

    public static async Task<int> Main(string[] args)
    {
        if (args.Length == 0 || args[0] is "help" or "--help" or "-h")
        {
            Console.WriteLine(Usage);
            return args.Length == 0 ? 2 : 0;
        }
        var home = Environment.GetEnvironmentVariable("DINGO_HOME") ?? Directory.GetCurrentDirectory();
        var files = new List<string> { Path.Combine(home, "hocon", "dingo.conf") };
        var rest = new List<string>();
        var takesArguments = args[0] is "switchover" or "drain" or "undrain" or "recreate" or "drill" or "backups" or "logs";
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
            if (!Path.IsPathRooted(settings.DataDir)) settings = settings with { DataDir = Path.Combine(home, settings.DataDir) };
        }
        catch (Exception ex) when (ex is ArgumentException or FileNotFoundException or Akka.Configuration.ConfigurationException)
        {
            Console.Error.WriteLine($"dingo: configuration error: {ex.Message}");
            return 2;
        }
        using var cts = new CancellationTokenSource();
        return args[0] switch
        {
            "up" => await Platform.UpAsync(home, files, settings),
            "status" => await StatusCommand.RunAsync(settings, Console.Out, cts.Token),
            "members" => await MembersCommand.RunAsync(settings, Console.Out, Console.Error, cts.Token),
            "switchover" or "drain" or "undrain" or "recreate" or "rebuild" or "drill" or "backups" or "store-check" => await AdminCommands.RunAsync(args[0], rest, settings, cts.Token),
            "logs" => await LogsCommand.RunAsync(rest, settings, Console.Out, cts.Token),
            _ => Unknown(args[0]),
        };
    }

    private static int Unknown(string command)
    {
        Console.Error.WriteLine($"dingo: unknown command '{command}'\n{Usage}");
        return 2;
    }
}
