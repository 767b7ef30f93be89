namespace Dingo.Tests.Support;

/// <summary>
/// The fast tier: tests that need no root, no server and no other process (pure rules, in-process actors and sockets).
/// A developer runs them on every change with `./dingo test --fast` (seconds); `./dingo test` runs everything.
/// </summary>
public static class Tier
{
    public const string Name = "Tier";
    public const string Fast = "Fast";
}
