namespace Dingo.Tests.Support;

/// <summary>Waiting for a distributed system to get somewhere, with a deadline and a message that says what did not happen.</summary>
public static class Eventually
{
    public static Task UntilAsync(Func<Task<bool>> condition, TimeSpan timeout, string what) => UntilAsync(condition, timeout, () => what);

    /// <param name="what">read only on a timeout: what was awaited, and what the condition saw last</param>
    public static async Task UntilAsync(Func<Task<bool>> condition, TimeSpan timeout, Func<string> what)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (!await condition())
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"not within {timeout.TotalSeconds:0}s: {what()}");
            await Task.Delay(200);
        }
    }
}
