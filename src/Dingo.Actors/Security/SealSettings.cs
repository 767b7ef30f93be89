namespace Dingo.Security;

/// <summary>
/// Where a process finds the platform's seal keys: DINGO_SEAL_KEYS (base64 keys, comma-separated, the current one
/// first), else the file named by DINGO_SEAL_KEY_FILE or `dingo.security.seal-key-file` (one key per line). Never
/// beside the data: not in etcd, not in the object store, not under the data folder.
/// </summary>
public sealed record SealSettings
{
    public const string KeysVariable = "DINGO_SEAL_KEYS";
    public const string KeyFileVariable = "DINGO_SEAL_KEY_FILE";
    public const string KeyFileSetting = "dingo.security.seal-key-file";
    public const string HowToSet = $"set {KeysVariable}, {KeyFileVariable} or {KeyFileSetting} (docs/security.md, \"Secrets at rest\")";

    /// <summary>Keys given inline (DINGO_SEAL_KEYS); empty when they come from a file.</summary>
    public string InlineKeys { get; init; } = "";
    /// <summary>A key file; empty when none is configured.</summary>
    public string KeyFile { get; init; } = "";

    public bool Configured => InlineKeys.Length > 0 || KeyFile.Length > 0;

    public static SealSettings FromConfig(Akka.Configuration.Config dingo, IReadOnlyDictionary<string, string?> env)
    {
        string? Env(string name) => env.TryGetValue(name, out var v) && !string.IsNullOrWhiteSpace(v) ? v : null;
        return new SealSettings
        {
            InlineKeys = Env("DINGO_SEAL_KEYS") ?? "",
            KeyFile = Env("DINGO_SEAL_KEY_FILE") ?? dingo.GetString("security.seal-key-file", ""),
        };
    }

    public override string ToString() => InlineKeys.Length > 0 ? $"seal keys from {KeysVariable}" : KeyFile.Length > 0 ? $"seal keys from {KeyFile}" : "no seal keys";
}
