using Dingo.Config;
using Microsoft.Extensions.Hosting;

namespace Dingo.Cell;

public static class Program
{
    /// <summary>dingo-cell [--config FILE]... [--seed akka.tcp://dingo@HOST:PORT]...</summary>
    public static async Task<int> Main(string[] args)
    {
        var files = new List<string>();
        var seeds = new List<string>();
        for (var i = 0; i < args.Length; i++)
        {
            if (args[i] == "--config" && i + 1 < args.Length) files.Add(args[++i]);
            else if (args[i] == "--seed" && i + 1 < args.Length) seeds.Add(args[++i]);
            else
            {
                Console.Error.WriteLine($"dingo-cell: unknown argument '{args[i]}'. Usage: dingo-cell [--config FILE]... [--seed AKKA-ADDRESS]...");
                return 2;
            }
        }
        DingoSettings settings;
        try { settings = DingoSettings.Load(files); }
        catch (Exception ex) when (ex is ArgumentException or FileNotFoundException or Akka.Configuration.ConfigurationException)
        {
            Console.Error.WriteLine($"dingo-cell: configuration error: {ex.Message}");
            return 2;
        }
        if (seeds.Count == 0) seeds.AddRange(settings.Akka.SeedNodes);
        if (seeds.Count == 0) seeds.Add($"akka.tcp://dingo@127.0.0.1:{settings.Broker.AkkaPort}");
        using var host = CellApp.Build(settings, seeds);
        await host.RunAsync();
        return 0;
    }
}
