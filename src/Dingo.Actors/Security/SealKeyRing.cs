using System.Security.Cryptography;
using System.Text;

namespace Dingo.Security;

/// <summary>
/// The platform's seal keys: the current one seals, every one opens. A sealed value reads
/// <c>dingo-sealed:v1:&lt;key id&gt;:&lt;base64(nonce | ciphertext | tag)&gt;</c>: AES-256-GCM with a random 96-bit nonce per
/// value, and associated data naming the format, the key id and the value's purpose, so a sealed value cannot be
/// moved to another purpose (another role's password) or relabelled with another key id without failing to open.
/// </summary>
public sealed class SealKeyRing
{
    public const string Prefix = "dingo-sealed:";
    private const string Version = "v1";
    private const int NonceSize = 12;
    private const int TagSize = 16;
    public const int KeySize = 32;

    private readonly IReadOnlyDictionary<string, byte[]> _keys;

    /// <param name="keys">the keys, the current (sealing) one first</param>
    public SealKeyRing(IReadOnlyList<byte[]> keys)
    {
        if (keys.Count == 0) throw new SealException("a seal key ring needs at least one key");
        var map = new Dictionary<string, byte[]>(StringComparer.Ordinal);
        foreach (var key in keys)
        {
            if (key.Length != KeySize) throw new SealException($"a seal key must be {KeySize} bytes (base64 of 32 random bytes): got {key.Length}");
            map.TryAdd(IdOf(key), key.ToArray());
        }
        _keys = map;
        CurrentId = IdOf(keys[0]);
        Ids = keys.Select(IdOf).Distinct(StringComparer.Ordinal).ToList();
    }

    /// <summary>The key that seals.</summary>
    public string CurrentId { get; }

    /// <summary>Every key id, the current one first.</summary>
    public IReadOnlyList<string> Ids { get; }

    /// <summary>A key's public name: derived from the key (so an operator never has to name one), revealing nothing of it.</summary>
    public static string IdOf(byte[] key) =>
        "k" + Convert.ToHexStringLower(SHA256.HashData([.. "dingo seal key id\n"u8, .. key]))[..10];

    /// <summary>32 random bytes, base64: one line of a key file or one entry of DINGO_SEAL_KEYS.</summary>
    public static string NewKeyText() => Convert.ToBase64String(RandomNumberGenerator.GetBytes(KeySize));

    /// <summary>
    /// Keys as a key file or DINGO_SEAL_KEYS holds them: base64 keys separated by new lines or commas, the current one
    /// first; blank lines and lines starting with '#' are skipped. <paramref name="source"/> names where they came from in errors.
    /// </summary>
    public static SealKeyRing Parse(string text, string source)
    {
        var keys = new List<byte[]>();
        var lineNo = 0;
        foreach (var rawLine in text.Split('\n'))
        {
            lineNo++;
            var line = rawLine.Trim();
            if (line.Length == 0 || line.StartsWith('#')) continue;
            foreach (var entry in line.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
            {
                byte[] key;
                try { key = Convert.FromBase64String(entry); }
                catch (FormatException) { throw new SealException($"{source}, line {lineNo}: not a base64 key (make one with: head -c 32 /dev/urandom | base64)"); }
                if (key.Length != KeySize) throw new SealException($"{source}, line {lineNo}: a seal key must be 32 bytes, base64-encoded: this one has {key.Length}");
                keys.Add(key);
            }
        }
        if (keys.Count == 0) throw new SealException($"{source} holds no seal key (one base64 key per line, the current one first)");
        return new SealKeyRing(keys);
    }

    public static bool IsSealed(string text) => text.StartsWith(Prefix, StringComparison.Ordinal);

    /// <summary>The key id a sealed value names; null for a plain (legacy) value.</summary>
    public static string? KeyIdOf(string text)
    {
        if (!IsSealed(text)) return null;
        var parts = text.Split(':');
        return parts.Length == 4 ? parts[2] : null;
    }

    public bool Has(string keyId) => _keys.ContainsKey(keyId);

    public string Seal(string plain, string purpose)
    {
        var key = _keys[CurrentId];
        var nonce = RandomNumberGenerator.GetBytes(NonceSize);
        var plainBytes = Encoding.UTF8.GetBytes(plain);
        var sealedBytes = new byte[NonceSize + plainBytes.Length + TagSize];
        nonce.CopyTo(sealedBytes, 0);
        using (var aes = new AesGcm(key, TagSize))
            aes.Encrypt(nonce, plainBytes, sealedBytes.AsSpan(NonceSize, plainBytes.Length), sealedBytes.AsSpan(NonceSize + plainBytes.Length), Associated(CurrentId, purpose));
        return $"{Prefix}{Version}:{CurrentId}:{Convert.ToBase64String(sealedBytes)}";
    }

    /// <summary>The plain value of a sealed one; a plain (legacy, written before sealing) value is returned as it is.</summary>
    /// <exception cref="SealException">malformed, sealed with a key this ring lacks, altered, or sealed for another purpose</exception>
    public string Open(string text, string purpose)
    {
        if (!IsSealed(text)) return text;
        var parts = text.Split(':');
        if (parts.Length != 4 || parts[1] != Version)
            throw new SealException($"a sealed value for {purpose} has an unknown format (expected {Prefix}{Version}:<key id>:<data>)");
        var keyId = parts[2];
        if (!_keys.TryGetValue(keyId, out var key))
            throw new SealKeyUnknownException(keyId, $"a value for {purpose} is sealed with key {keyId}, which is not among this process's seal keys ({string.Join(", ", Ids)})");
        byte[] data;
        try { data = Convert.FromBase64String(parts[3]); }
        catch (FormatException) { throw new SealException($"the sealed value for {purpose} is not valid base64"); }
        if (data.Length < NonceSize + TagSize) throw new SealException($"the sealed value for {purpose} is truncated");
        var plain = new byte[data.Length - NonceSize - TagSize];
        try
        {
            using var aes = new AesGcm(key, TagSize);
            aes.Decrypt(data.AsSpan(0, NonceSize), data.AsSpan(NonceSize, plain.Length), data.AsSpan(NonceSize + plain.Length), plain, Associated(keyId, purpose));
        }
        catch (AuthenticationTagMismatchException)
        {
            throw new SealException($"the sealed value for {purpose} fails authentication with key {keyId}: it was altered, or sealed for another value");
        }
        return Encoding.UTF8.GetString(plain);
    }

    private static byte[] Associated(string keyId, string purpose) => Encoding.UTF8.GetBytes($"{Prefix}{Version}:{keyId}:{purpose}");

    /// <summary>Never print keys.</summary>
    public override string ToString() => $"seal keys [{string.Join(", ", Ids)}] (current {CurrentId})";
}

/// <summary>A sealed value that cannot be opened or sealed, or seal keys that cannot be loaded: says what to set.</summary>
public class SealException(string message) : InvalidOperationException(message);

public sealed class SealKeyUnknownException(string keyId, string message) : SealException(message)
{
    public string KeyId { get; } = keyId;
}
