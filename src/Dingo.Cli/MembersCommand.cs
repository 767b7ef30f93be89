using Dingo.Config;
using Dingo.Membership;
using Dingo.Store;

namespace Dingo.Cli;

/// <summary>
/// `dingo members`: the Akka cluster as a broker sees it, asked from outside the cluster through a ClusterClient
/// (the console is never a member). Brokers are found from the configured seeds and the members registered in etcd.
/// </summary>
public static class MembersCommand
{
    public static async Task<int> RunAsync(DingoSettings settings, TextWriter output, TextWriter error, CancellationToken ct, bool json = false)
    {
        try
        {
            var view = await ClusterConsole.QueryAsync(settings, store: null, ClusterConsole.DefaultTimeout, ct);
            if (json) await output.WriteLineAsync(System.Text.Json.JsonSerializer.Serialize(view, new System.Text.Json.JsonSerializerOptions(Dingo.Model.Json.Options) { WriteIndented = true }));
            else ClusterConsole.Write(view, output);
            return 0;
        }
        catch (ClusterConsoleException ex)
        {
            await error.WriteLineAsync($"dingo: {ex.Message}");
            return 1;
        }
    }

    /// <summary>The AKKA MEMBERS section of `dingo status`: a short wait, and one line when no broker answers.</summary>
    public static async Task WriteSectionAsync(DingoSettings settings, EtcdStore store, TextWriter output, CancellationToken ct)
    {
        output.WriteLine();
        output.WriteLine("AKKA MEMBERS");
        try
        {
            var view = await ClusterConsole.QueryAsync(settings, store, TimeSpan.FromSeconds(5), ct);
            ClusterConsole.Write(view, output);
        }
        catch (ClusterConsoleException ex)
        {
            output.WriteLine($"(no Akka view: {ex.Message})");
        }
    }
}
