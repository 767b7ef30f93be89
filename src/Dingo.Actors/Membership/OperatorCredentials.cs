using System.Security.Cryptography;
using System.Text;
using Dingo.Config;

namespace Dingo.Membership;

/// <summary>
/// The operator's credentials: the broker's admin pair (dingo.broker.admin-username / admin-password), which opens
/// /admin and the console gateway alike. Never printed: <see cref="ToString"/> leaves the password out.
/// </summary>
public sealed record OperatorCredentials(string Username, string Password)
{
    /// <summary>Where `dingo up` keeps the admin password it generated (in dingo.data-dir, mode 0600).</summary>
    public const string SavedFile = "admin-credentials";

    /// <summary>What the broker expects: the configured pair (an empty password closes /admin and the gateway).</summary>
    public static OperatorCredentials Expected(DingoSettings settings) => new(settings.Broker.AdminUsername, settings.Broker.AdminPassword);

    /// <summary>What a console presents: the configured pair, or the password `dingo up` generated and saved.</summary>
    public static OperatorCredentials Presented(DingoSettings settings)
    {
        var password = settings.Broker.AdminPassword;
        var saved = Path.Combine(settings.DataDir, SavedFile);
        if (string.IsNullOrEmpty(password) && File.Exists(saved)) password = File.ReadAllText(saved).Trim();
        return new OperatorCredentials(settings.Broker.AdminUsername, password);
    }

    /// <summary>
    /// Why a request presenting <paramref name="username"/> and <paramref name="password"/> is refused, or null when
    /// it may be answered. Both compared in constant time.
    /// </summary>
    public string? Refusal(string? username, string? password)
    {
        if (Password.Length == 0)
            return "this broker has no admin password (dingo.broker.admin-password, DINGO_BROKER_ADMIN_PASSWORD), so its console gateway is closed";
        if (string.IsNullOrEmpty(username) || string.IsNullOrEmpty(password))
            return "the console gave no operator credentials (dingo.broker.admin-username and admin-password, DINGO_BROKER_ADMIN_USERNAME / DINGO_BROKER_ADMIN_PASSWORD)";
        var userOk = FixedTimeEquals(username, Username);
        var passOk = FixedTimeEquals(password, Password);
        return userOk && passOk ? null : "wrong operator credentials (dingo.broker.admin-username / admin-password)";
    }

    // Hashing first makes the comparison take the same time whatever the lengths.
    private static bool FixedTimeEquals(string a, string b) =>
        CryptographicOperations.FixedTimeEquals(SHA256.HashData(Encoding.UTF8.GetBytes(a)), SHA256.HashData(Encoding.UTF8.GetBytes(b)));

    public override string ToString() => $"OperatorCredentials {{ Username = {Username} }}";
}
