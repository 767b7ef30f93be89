using System.Security.Cryptography;

namespace Dingo.Cli;

/// <summary>
/// The broker and cell as `./dingo up` runs them: compiled ahead of time (ReadyToRun) when that build is current. A cell
/// restarted after a crash spends its first seconds in the JIT: bench/Chaos kill-cell measured 0.8-2.3 s from process
/// start to watching etcd and 1.0-1.6 s for the first probe of its PostgreSQL; the nodes it led wait for it that long.
/// `./dingo up` (the dingo script's publish_ready) publishes that build next to the ordinary one
/// (src/PROJECT/bin/Release/net10.0/linux-x64/publish) and records there the SHA-256 of the ordinary build's Dingo
/// assemblies it was made with (<see cref="StampFile"/>).
/// <para>
/// "Current" goes by content, not file times (a plain build rewrites its outputs whether or not they changed, and an
/// up-to-date publish leaves its own alone): the Dingo assemblies of the ordinary build must be byte for byte those the
/// stamp names (deterministic builds change them only with the code). Anything else runs the ordinary build, so an old
/// publish never runs in newer code's place.
/// </para>
/// </summary>
public static class ReadyToRun
{
    public const string Rid = "linux-x64";

    /// <summary>In the publish folder: `sha256sum` lines of the ordinary build's Dingo.*.dll it was published with.</summary>
    public const string StampFile = "plain-build.sha256";

    /// <summary>The ahead-of-time compiled copy of <paramref name="buildDll"/> when it holds the same code, else <paramref name="buildDll"/>.</summary>
    public static string Prefer(string buildDll)
    {
        var dir = Path.GetDirectoryName(Path.GetFullPath(buildDll)) ?? ".";
        var publishedDir = Path.Combine(dir, Rid, "publish");
        var published = Path.Combine(publishedDir, Path.GetFileName(buildDll));
        var stamp = Path.Combine(publishedDir, StampFile);
        if (!File.Exists(published) || !File.Exists(buildDll) || !File.Exists(stamp)) return buildDll;
        try
        {
            var recorded = File.ReadAllLines(stamp).Select(l => l.Split(' ', 2, StringSplitOptions.RemoveEmptyEntries))
                .Where(f => f.Length == 2).ToDictionary(f => f[1].TrimStart('*').Trim(), f => f[0].ToLowerInvariant(), StringComparer.Ordinal);
            var now = Directory.EnumerateFiles(dir, "Dingo.*.dll").ToDictionary(f => Path.GetFileName(f), Sha256, StringComparer.Ordinal);
            return now.Count > 0 && now.Count == recorded.Count && now.All(f => recorded.TryGetValue(f.Key, out var hash) && hash == f.Value)
                ? published
                : buildDll;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return buildDll;
        }
    }

    /// <summary>Whether <paramref name="dll"/> is the ahead-of-time compiled copy (for a line saying which build runs).</summary>
    public static bool IsPublished(string dll) =>
        Path.GetFullPath(dll).Contains($"{Path.DirectorySeparatorChar}{Rid}{Path.DirectorySeparatorChar}publish{Path.DirectorySeparatorChar}", StringComparison.Ordinal);

    private static string Sha256(string path)
    {
        using var file = File.OpenRead(path);
        return Convert.ToHexStringLower(SHA256.HashData(file));
    }
}
