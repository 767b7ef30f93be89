using System.Security.Cryptography;

namespace Dingo.Postgres;

public static class Secrets
{
    private const string Alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

    /// <summary>A random password from letters and digits only, so it needs no quoting anywhere (SQL, URIs, shells).</summary>
    public static string Password(int length = 40) => RandomNumberGenerator.GetString(Alphabet, length);

    /// <summary>A role name for a binding: lower-case letters and digits, valid unquoted in SQL.</summary>
    public static string RoleName(string prefix) => prefix + RandomNumberGenerator.GetString("abcdefghijklmnopqrstuvwxyz0123456789", 16);
}
