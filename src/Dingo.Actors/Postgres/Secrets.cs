using System.Security.Cryptography;

namespace Dingo.Postgres;

public static class Secrets
{
    private const string Alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

    /// <summary>A random password from letters and digits only, so it needs no quoting anywhere (SQL, URIs, shells).</summary>
    public static string Password(int length = 40) => RandomNumberGenerator.GetString(Alphabet, length);

    /// <summary>A role name for a binding: lower-case letters and digits, valid unquoted in SQL.</summary>
    public static string RoleName(string prefix) => prefix + RandomNumberGenerator.GetString("abcdefghijklmnopqrstuvwxyz0123456789", 16);

    /// <summary>
    /// Whether <see cref="ScramVerifier"/> gives what PostgreSQL computes for this password: printable ASCII, which
    /// SASLprep (RFC 4013, applied by PostgreSQL before hashing) leaves as it is. Others are left to PostgreSQL.
    /// </summary>
    public static bool ScramReady(string password) => password.Length > 0 && password.All(c => c is >= ' ' and <= '~');

    /// <summary>
    /// The SCRAM-SHA-256 verifier PostgreSQL stores for a password (RFC 5802/7677: SaltedPassword by PBKDF2-HMAC-SHA-256,
    /// StoredKey, ServerKey), in the form <c>ALTER ROLE … PASSWORD</c> takes as it is: a role gets a password without the
    /// password itself being written anywhere on the way (a file, a statement log).
    /// </summary>
    public static string ScramVerifier(string password, byte[]? salt = null, int iterations = 4096)
    {
        if (!ScramReady(password)) throw new ArgumentException("only printable ASCII passwords are hashed here (SASLprep would change others)", nameof(password));
        salt ??= RandomNumberGenerator.GetBytes(16);
        var salted = Rfc2898DeriveBytes.Pbkdf2(System.Text.Encoding.ASCII.GetBytes(password), salt, iterations, HashAlgorithmName.SHA256, 32);
        var clientKey = HMACSHA256.HashData(salted, "Client Key"u8);
        var storedKey = SHA256.HashData(clientKey);
        var serverKey = HMACSHA256.HashData(salted, "Server Key"u8);
        return string.Create(System.Globalization.CultureInfo.InvariantCulture,
            $"SCRAM-SHA-256${iterations}:{Convert.ToBase64String(salt)}${Convert.ToBase64String(storedKey)}:{Convert.ToBase64String(serverKey)}");
    }
}
