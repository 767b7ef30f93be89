using System.Security.Cryptography;
using System.Text;
using Dingo.Model;

namespace Dingo.Ha;

/// <summary>
/// Signs the failsafe exchange (docs/ha.md, "Failsafe"; docs/security.md). The health API is plain HTTP on the node
/// network, and a failsafe confirmation is what lets a primary cut off from etcd stay writable: a forged 200 would keep
/// it writable while the members that still reach etcd promote another (two writable primaries), and a forged ask would
/// make a member promise not to take the key. Both directions carry an HMAC-SHA256 under a key only the instance's own
/// agents hold: derived (HKDF) from the instance's superuser password, which is sealed in etcd and never leaves the
/// platform. The ask names leader, member and a fresh nonce; the confirmation names the same three, so it answers that
/// ask only (no replay of an old one, no reuse of another member's).
/// </summary>
public sealed class FailsafeProof
{
    private readonly byte[] _key;

    private FailsafeProof(byte[] key) => _key = key;

    /// <summary>The instance's failsafe key: HKDF-SHA256 of its superuser password, bound to the instance id.</summary>
    public static FailsafeProof For(string instanceId, Credentials superuser) =>
        new(HKDF.DeriveKey(HashAlgorithmName.SHA256, Encoding.UTF8.GetBytes(superuser.Password), 32,
            salt: Encoding.ASCII.GetBytes("dingo failsafe v1"), info: Encoding.UTF8.GetBytes(instanceId)));

    /// <summary>A fresh nonce for one ask: 16 random bytes, hex.</summary>
    public static string NewNonce() => Convert.ToHexString(RandomNumberGenerator.GetBytes(16)).ToLowerInvariant();

    /// <summary>What the leader sends with its ask to <paramref name="member"/>.</summary>
    public string Ask(string leader, string member, string nonce) => Mac("ask", leader, member, nonce);

    /// <summary>What a member sends back when it confirms that ask.</summary>
    public string Confirm(string leader, string member, string nonce) => Mac("confirm", leader, member, nonce);

    /// <summary>Whether <paramref name="proof"/> is the ask of <paramref name="leader"/> to <paramref name="member"/> with this nonce.</summary>
    public bool IsAsk(string leader, string member, string nonce, string? proof) => Same(Ask(leader, member, nonce), proof);

    /// <summary>Whether <paramref name="proof"/> is <paramref name="member"/>'s confirmation of that ask.</summary>
    public bool IsConfirmation(string leader, string member, string nonce, string? proof) => Same(Confirm(leader, member, nonce), proof);

    private string Mac(string kind, string leader, string member, string nonce) =>
        Convert.ToHexString(HMACSHA256.HashData(_key, Encoding.UTF8.GetBytes($"{kind}\n{leader}\n{member}\n{nonce}"))).ToLowerInvariant();

    private static bool Same(string expected, string? given) =>
        given is not null && given.Length == expected.Length
        && CryptographicOperations.FixedTimeEquals(Encoding.ASCII.GetBytes(expected), Encoding.ASCII.GetBytes(given));

    // Never print the key.
    public override string ToString() => "failsafe proof";
}

/// <summary>A failsafe ask as the health API received it.</summary>
public sealed record FailsafeAsk(string Leader, string Nonce, string? Proof);

/// <summary>
/// A member's answer: <see cref="Refusal"/> null means confirmed, and then <see cref="Proof"/> signs the confirmation.
/// <see cref="Forbidden"/>: the ask was not signed by the instance's key (403).
/// </summary>
public sealed record FailsafeReply(string? Refusal, string? Proof, bool Forbidden = false)
{
    public static FailsafeReply Confirmed(string proof) => new(null, proof);
    public static FailsafeReply Refused(string reason) => new(reason, null);
    public static FailsafeReply Unsigned(string reason) => new(reason, null, Forbidden: true);
}
