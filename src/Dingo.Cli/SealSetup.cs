using Dingo.Config;
using Dingo.Security;

namespace Dingo.Cli;

/// <summary>
/// The console's seal keys: what the settings name (DINGO_SEAL_KEYS, DINGO_SEAL_KEY_FILE, dingo.security.seal-key-file);
/// else the loopback platform's own key file, $DINGO_HOME/.secrets/seal.key, which `dingo up` makes on its first start
/// (outside the data folder and etcd's folder, so a copy of the data never carries the key).
/// </summary>
public static class SealSetup
{
    public static string DefaultKeyFile(string home) => Path.Combine(home, ".secrets", "seal.key");

    public static async Task<DingoSettings> PrepareAsync(string command, string home, DingoSettings settings, CancellationToken ct)
    {
        if (settings.Seal.Configured) return settings;
        var file = DefaultKeyFile(home);
        if (command == "up" && await SealKeyFile.EnsureAsync(file, ct))
            Console.WriteLine($"dingo: made the platform's seal key in {file} (mode 0600); keep it, and a copy of it apart from the data: without it no password in etcd or the backups can be read");
        return File.Exists(file) ? settings with { Seal = settings.Seal with { KeyFile = file } } : settings;
    }
}
