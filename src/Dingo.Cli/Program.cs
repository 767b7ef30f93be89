using System.CommandLine;
using System.CommandLine.Help;
using Dingo.Config;
using Dingo.Model;
using Dingo.Store;

namespace Dingo.Cli;

/// <summary>
/// The operator's console. Commands, arguments and options are declared with System.CommandLine (the .NET team's
/// parser: `--help` on every command, errors that name the token, nothing hand-parsed), so nothing runs — no setting
/// is read, no key made, no broker called — until the whole command line has parsed. A command line that does not
/// parse exits 2 with the error and a pointer to the command's help.
/// </summary>
public static class Program
{
    private static readonly Option<string[]> ConfigOption = new("--config")
    {
        Description = "a settings file read after hocon/dingo.conf (repeatable; the last wins)",
        HelpName = "FILE",
        Recursive = true,
        Arity = ArgumentArity.ZeroOrMore,
    };

    public static async Task<int> Main(string[] args)
    {
        var root = BuildCommands();
        var parsed = root.Parse(args);
        if (parsed.Errors.Count > 0)
        {
            foreach (var error in parsed.Errors) Console.Error.WriteLine($"dingo: {error.Message}");
            var command = parsed.CommandResult.Command;
            Console.Error.WriteLine($"see: dingo {(command == root ? "" : CommandPath(parsed) + " ")}--help");
            return 2;
        }
        // No termination handling of the parser's own: `up` stops its processes in order on Ctrl-C (which takes longer
        // than the parser's grace before it ends the process), the other commands end with the process as before.
        return await parsed.InvokeAsync(new InvocationConfiguration { ProcessTerminationTimeout = null }, CancellationToken.None).ConfigureAwait(false);
    }

    private static string CommandPath(ParseResult parsed)
    {
        var names = new List<string>();
        for (var r = parsed.CommandResult; r is not null && r.Parent is System.CommandLine.Parsing.CommandResult parent; r = parent)
            names.Insert(0, r.Command.Name);
        return string.Join(' ', names);
    }

    /// <summary>Every command, its arguments and options (internal: tests parse against it).</summary>
    internal static RootCommand BuildCommands()
    {
        var root = new RootCommand("Dingo PostgreSQL: the operator's console. Most commands read etcd or call a broker's admin API.");
        // `dingo --version` prints what `dingo version` does (the product version and commit), not the assembly's.
        foreach (var builtIn in root.Options.OfType<VersionOption>().ToList()) root.Options.Remove(builtIn);
        var versionOption = new Option<bool>("--version") { Description = "this build's version" };
        root.Options.Add(versionOption);
        root.Options.Add(ConfigOption);
        root.SetAction(parsed =>
        {
            if (!parsed.GetValue(versionOption))
            {
                new HelpAction().Invoke(parsed);
                return 2;
            }
            PrintVersion();
            return 0;
        });

        var json = new Option<bool>("--json") { Description = "print JSON instead of text (for scripts)" };

        var up = new Command("up", "start etcd, the broker and three cells on this machine on loopback (Ctrl-C stops them)");
        up.SetAction((parsed, ct) => WithSettingsAsync(parsed, "up", (home, files, settings, _) => Platform.UpAsync(home, files, settings), ct));
        root.Subcommands.Add(up);

        var status = new Command("status", "every cell and instance: port, plan, operation, nodes, roles, states; backups; then the Akka members") { json };
        status.SetAction((parsed, ct) => WithSettingsAsync(parsed, "status", (_, _, settings, t) => StatusCommand.RunAsync(settings, Console.Out, t, parsed.GetValue(json)), ct));
        root.Subcommands.Add(status);

        var members = new Command("members", "the Akka cluster as a broker sees it: members, roles, status, reachability, leader") { json };
        members.SetAction((parsed, ct) => WithSettingsAsync(parsed, "members", (_, _, settings, t) => MembersCommand.RunAsync(settings, Console.Out, Console.Error, t, parsed.GetValue(json)), ct));
        root.Subcommands.Add(members);

        // Operations return once the broker accepted them; --wait follows each in etcd until it is done.
        var wait = new Option<bool>("--wait") { Description = "follow the operation until it is done, printing each change of what it is at (exit 1 if it is not done in --timeout)" };
        var timeout = PositiveInt("--timeout", 300, "seconds --wait waits at most");
        TimeSpan? WaitOf(ParseResult parsed) => parsed.GetValue(wait) ? TimeSpan.FromSeconds(parsed.GetValue(timeout)) : null;

        var switchoverInstance = InstanceArgument();
        var to = new Option<string>("--to") { Description = "the replica to hand the primary to (default: the best one)", HelpName = "NODE" };
        var switchover = new Command("switchover", "hand the primary to a named or the best replica, no acknowledged write lost") { switchoverInstance, to, wait, timeout };
        switchover.SetAction((parsed, ct) => WithInstanceAsync(parsed, switchoverInstance, "switchover",
            (id, settings, t) => AdminCommands.RunAsync("switchover", parsed.GetValue(to) is { } node ? [id, "--to", node] : [id], settings, t, wait: WaitOf(parsed)), ct));
        root.Subcommands.Add(switchover);

        foreach (var (name, description) in new[]
                 {
                     ("drain", "switch primaries away from a cell, then move its nodes to other cells"),
                     ("undrain", "let a drained cell take nodes again"),
                 })
        {
            var cell = new Argument<string>("cell") { Description = "the cell's id (dingo status lists them)" };
            var command = new Command(name, description) { cell, wait, timeout };
            command.SetAction((parsed, ct) => WithSettingsAsync(parsed, name, (_, _, settings, t) => AdminCommands.RunAsync(name, [parsed.GetValue(cell)!], settings, t, wait: WaitOf(parsed)), ct));
            root.Subcommands.Add(command);
        }

        foreach (var (name, description) in new[]
                 {
                     ("backups", "base backups, WAL archive position, backlog alarm and the last restore drill"),
                     ("drill", "restore the latest backup into a scratch node now and check it"),
                     ("recreate", "bring a deleted instance back from its backups (same id, port, credentials)"),
                 })
        {
            var instance = InstanceArgument();
            var command = new Command(name, description) { instance };
            if (name == "backups") command.Options.Add(json);
            else
            {
                command.Options.Add(wait);
                command.Options.Add(timeout);
            }
            command.SetAction((parsed, ct) => WithInstanceAsync(parsed, instance, name,
                (id, settings, t) => AdminCommands.RunAsync(name, [id], settings, t, name == "backups" && parsed.GetValue(json), name == "backups" ? null : WaitOf(parsed)), ct));
            root.Subcommands.Add(command);
        }

        var rebuild = new Command("rebuild", "after losing etcd and the cells: rebuild every instance from the object store") { wait, timeout };
        rebuild.SetAction((parsed, ct) => WithSettingsAsync(parsed, "rebuild", (_, _, settings, t) => AdminCommands.RunAsync("rebuild", [], settings, t, wait: WaitOf(parsed)), ct));
        root.Subcommands.Add(rebuild);

        var storeCheck = new Command("store-check", "check the backup store: endpoint, credentials, bucket/container, write/read/delete") { json };
        storeCheck.SetAction((parsed, ct) => WithSettingsAsync(parsed, "store-check", (_, _, settings, t) => AdminCommands.RunAsync("store-check", [], settings, t, parsed.GetValue(json)), ct));
        root.Subcommands.Add(storeCheck);

        var logsInstance = InstanceArgument();
        var logsNode = new Argument<string?>("node") { Description = "one node's log (default: every node's)", Arity = ArgumentArity.ZeroOrOne };
        var tail = PositiveInt("--tail", 200, "lines from the end of each log");
        var follow = new Option<bool>("--follow", "-f") { Description = "go on printing each new line until Ctrl-C (several nodes: each line prefixed with its node)" };
        var logs = new Command("logs", "a node's PostgreSQL log (its container's output on a Docker cell)") { logsInstance, logsNode, tail, follow };
        logs.SetAction((parsed, ct) => WithInstanceAsync(parsed, logsInstance, "logs",
            (id, settings, t) => LogsCommand.RunAsync(id, parsed.GetValue(logsNode), parsed.GetValue(tail), parsed.GetValue(follow), settings, Console.Out, t), ct));
        root.Subcommands.Add(logs);

        var eventsInstance = InstanceArgument();
        var limit = PositiveInt("--limit", 100, "the newest N events");
        var events = new Command("events", "the instance's history: role changes, failovers and why, fencing, rewinds, re-clones, operations, backups, restores, drills")
        {
            eventsInstance, limit, json,
        };
        events.SetAction((parsed, ct) => WithInstanceAsync(parsed, eventsInstance, "events", (id, settings, t) =>
        {
            List<string> rest = [id, "--limit", parsed.GetValue(limit).ToString(System.Globalization.CultureInfo.InvariantCulture)];
            if (parsed.GetValue(json)) rest.Add("--json");
            return EventsCommand.RunAsync(rest, settings, Console.Out, t);
        }, ct));
        root.Subcommands.Add(events);

        var every = new Option<double>("--every")
        {
            Description = "seconds between two refreshes (default 2)",
            HelpName = "SECONDS",
            DefaultValueFactory = _ => 2,
            Validators = { r => { if (r.GetValueOrDefault<double>() is < 0.2 or > 3600) r.AddError("--every must be between 0.2 and 3600 seconds"); } },
        };
        var once = new Option<bool>("--once") { Description = "print one picture and exit (for scripts and logs)" };
        var watch = new Command("watch", "the platform live: cells, instances, roles, lag, backlog and the latest events, redrawn in place until Ctrl-C") { every, once };
        watch.SetAction((parsed, ct) => WithSettingsAsync(parsed, "watch",
            (_, _, settings, t) => WatchCommand.RunAsync(settings, TimeSpan.FromSeconds(parsed.GetValue(every)), parsed.GetValue(once), Spectre.Console.AnsiConsole.Console, t), ct));
        root.Subcommands.Add(watch);

        var newKey = new Option<bool>("--new-key") { Description = "first put a new key at the top of the key file (docs/security.md)" };
        var rotateKey = new Command("rotate-key", "re-seal every password in etcd and the object store with the current seal key") { newKey };
        rotateKey.SetAction((parsed, ct) => WithSettingsAsync(parsed, "rotate-key",
            (_, _, settings, t) => RotateKeyCommand.RunAsync(parsed.GetValue(newKey) ? ["--new-key"] : [], settings, Console.Out, t), ct));
        root.Subcommands.Add(rotateKey);

        var version = new Command("version", "this build's version (also --version)");
        version.SetAction(_ =>
        {
            PrintVersion();
            return 0;
        });
        root.Subcommands.Add(version);
        return root;
    }

    /// <summary>A count option: a whole number of at least 1, else a parse error naming the option and the value.</summary>
    private static Option<int> PositiveInt(string name, int byDefault, string description) => new(name)
    {
        Description = $"{description} (default {byDefault})",
        HelpName = "N",
        DefaultValueFactory = _ => byDefault,
        CustomParser = result =>
        {
            var token = result.Tokens.Count == 1 ? result.Tokens[0].Value : null;
            if (int.TryParse(token, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var value) && value >= 1) return value;
            result.AddError($"{name} must be a whole number of at least 1: got '{token}'");
            return byDefault;
        },
    };

    private static Argument<string> InstanceArgument() => new("instance")
    {
        Description = "the instance's id, or its name as Cloud Foundry gave it (context.instance_name)",
    };

    private static void PrintVersion() =>
        // The product version (Directory.Build.props), and the commit when the build recorded one.
        Console.WriteLine(Product.Commit is { Length: > 0 } commit ? $"dingo {Product.Version} ({commit})" : $"dingo {Product.Version}");

    /// <summary>The settings (hocon/dingo.conf under DINGO_HOME, then each --config), the seal keys, TLS: then the command.</summary>
    private static async Task<int> WithSettingsAsync(ParseResult parsed, string command,
        Func<string, IReadOnlyList<string>, DingoSettings, CancellationToken, Task<int>> run, CancellationToken ct)
    {
        var home = Environment.GetEnvironmentVariable("DINGO_HOME") ?? Directory.GetCurrentDirectory();
        var files = new List<string> { Path.Combine(home, "hocon", "dingo.conf") };
        files.AddRange((parsed.GetValue(ConfigOption) ?? []).Select(Path.GetFullPath));
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
        try
        {
            settings = await SealSetup.PrepareAsync(command, home, settings, ct).ConfigureAwait(false);
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
            return await run(home, files, settings, ct).ConfigureAwait(false);
        }
        catch (Dingo.Security.SealException ex)
        {
            // A sealed password this console cannot open: say which key or setting it needs, not a stack trace.
            Console.Error.WriteLine($"dingo: {ex.Message} ({Dingo.Security.Sealing.Source}); {Dingo.Security.SealSettings.HowToSet}");
            return 1;
        }
    }

    /// <summary>A command on one instance, named by id or by its Cloud Foundry name (resolved through etcd's records).</summary>
    private static Task<int> WithInstanceAsync(ParseResult parsed, Argument<string> instance, string command,
        Func<string, DingoSettings, CancellationToken, Task<int>> run, CancellationToken ct) =>
        WithSettingsAsync(parsed, command, async (_, _, settings, t) =>
        {
            var given = parsed.GetValue(instance)!;
            string id;
            await using (var store = EtcdStore.Connect(settings))
            {
                IReadOnlyList<InstanceRecord> records;
                try { records = (await store.ListAsync<InstanceRecord>(store.Keys.Instances, t).ConfigureAwait(false)).Select(r => r.Value).ToList(); }
                catch (Grpc.Core.RpcException ex)
                {
                    Console.Error.WriteLine($"dingo: cannot read etcd at {string.Join(",", settings.EtcdEndpoints)}: {ex.Status.Detail}. Is the platform up (./dingo up)?");
                    return 1;
                }
                var (resolved, problem) = InstanceNames.Resolve(given, records);
                if (resolved is null)
                {
                    Console.Error.WriteLine($"dingo {command}: {problem}");
                    return 2;
                }
                id = resolved;
            }
            return await run(id, settings, t).ConfigureAwait(false);
        }, ct);
}
