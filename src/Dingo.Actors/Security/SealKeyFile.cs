namespace Dingo.Security;

/// <summary>A key file: one base64 key per line, the current one first (see <see cref="SealKeyRing.Parse"/>).</summary>
public static class SealKeyFile
{
    private const string Header = "# Dingo seal keys: the first seals, every one opens. Keep apart from the data; mode 0600. docs/security.md\n";

    /// <summary>Makes the file with one new key when it does not exist (its folder 0700, the file 0600 from creation); true when made.</summary>
    public static async Task<bool> EnsureAsync(string path, CancellationToken ct)
    {
        if (File.Exists(path)) return false;
        SecretFile.CreatePrivateFolder(Path.GetDirectoryName(Path.GetFullPath(path))!);
        await SecretFile.WriteAsync(path, Header + SealKeyRing.NewKeyText() + "\n", ct).ConfigureAwait(false);
        return true;
    }

    /// <summary>Puts a new key first (it seals from now on) and keeps the others (they still open); returns the new key's id.</summary>
    public static async Task<string> AddCurrentKeyAsync(string path, CancellationToken ct)
    {
        var existing = await File.ReadAllTextAsync(path, ct).ConfigureAwait(false);
        SealKeyRing.Parse(existing, $"seal key file {path}"); // a broken file is refused before anything changes
        var key = SealKeyRing.NewKeyText();
        var kept = string.Join("\n", existing.Split('\n').Where(l => l.Trim().Length > 0 && !l.TrimStart().StartsWith('#')));
        await SecretFile.WriteAsync(path, Header + key + "\n" + kept + "\n", ct).ConfigureAwait(false);
        return SealKeyRing.IdOf(Convert.FromBase64String(key));
    }
}
