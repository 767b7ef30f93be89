namespace Dingo.Security;

/// <summary>
/// This process's seal keys, as every record that holds a secret is sealed and opened with them (see
/// <see cref="CredentialsJsonConverter"/>). Configured once at start from <see cref="SealSettings"/>; a key file is read
/// again when it changes (looked at every <see cref="ReloadInterval"/>, and at once when a value names a key not loaded
/// yet), so a key added by `dingo rotate-key --new-key` reaches running processes without a restart.
/// </summary>
public static class Sealing
{
    public static readonly TimeSpan ReloadInterval = TimeSpan.FromSeconds(2);

    private static readonly Lock Gate = new();
    private static SealSettings? _settings;
    private static SealKeyRing? _ring;
    private static DateTime _fileStamp;
    private static long _checkedAt;

    public static bool Configured { get { lock (Gate) return _ring is not null; } }

    /// <summary>Where the keys come from (never the keys).</summary>
    public static string Source { get { lock (Gate) return _settings?.ToString() ?? "no seal keys"; } }

    /// <summary>
    /// Loads the keys the settings name. Settings without keys change nothing (a process that then meets a secret says
    /// what to set). A process already sealing with other keys refuses: one process, one platform key.
    /// </summary>
    /// <exception cref="SealException">the file is missing or unreadable, a key is malformed, or the process already uses other keys</exception>
    public static void Configure(SealSettings settings)
    {
        if (!settings.Configured) return;
        lock (Gate)
        {
            if (_settings is not null)
            {
                if (_settings == settings) return;
                throw new SealException($"this process already seals with {_settings}; it cannot switch to {settings}");
            }
            var (ring, stamp) = Load(settings);
            (_settings, _ring, _fileStamp, _checkedAt) = (settings, ring, stamp, Environment.TickCount64);
        }
    }

    /// <summary>The keys; a key file changed on disk is read again first (at most every <see cref="ReloadInterval"/>).</summary>
    /// <exception cref="SealException">no keys are configured</exception>
    public static SealKeyRing Ring
    {
        get
        {
            lock (Gate)
            {
                if (_ring is null || _settings is null)
                    throw new SealException($"this process met a password to seal or open but has no seal key: {SealSettings.HowToSet}");
                if (_settings.KeyFile.Length > 0 && _settings.InlineKeys.Length == 0 && Environment.TickCount64 - _checkedAt >= ReloadInterval.TotalMilliseconds)
                    ReloadIfChanged(force: false);
                return _ring;
            }
        }
    }

    /// <summary>A value names a key this process lacks: read the key file again now (it may have just been added).</summary>
    internal static SealKeyRing RingWith(string keyId)
    {
        var ring = Ring;
        if (ring.Has(keyId)) return ring;
        lock (Gate)
        {
            if (_settings is { KeyFile.Length: > 0, InlineKeys.Length: 0 }) ReloadIfChanged(force: true);
            return _ring!;
        }
    }

    private static void ReloadIfChanged(bool force)
    {
        _checkedAt = Environment.TickCount64;
        var stamp = File.Exists(_settings!.KeyFile) ? File.GetLastWriteTimeUtc(_settings.KeyFile) : default;
        if (!force && stamp == _fileStamp) return;
        try
        {
            (_ring, _fileStamp) = Load(_settings);
        }
        catch (Exception ex) when (ex is SealException or IOException or UnauthorizedAccessException)
        {
            // A key file being replaced or broken must not take the keys already loaded away: keep them.
        }
    }

    private static (SealKeyRing Ring, DateTime Stamp) Load(SealSettings settings)
    {
        if (settings.InlineKeys.Length > 0) return (SealKeyRing.Parse(settings.InlineKeys, SealSettings.KeysVariable), default);
        var file = settings.KeyFile;
        try
        {
            var stamp = File.GetLastWriteTimeUtc(file);
            return (SealKeyRing.Parse(File.ReadAllText(file), $"seal key file {file}"), stamp);
        }
        catch (Exception ex) when (ex is FileNotFoundException or DirectoryNotFoundException)
        {
            throw new SealException($"seal key file {file} does not exist ({SealSettings.KeyFileSetting} / {SealSettings.KeyFileVariable})");
        }
        catch (UnauthorizedAccessException)
        {
            throw new SealException($"seal key file {file} cannot be read by this process's user");
        }
    }
}
