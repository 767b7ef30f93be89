using Dingo.Tests.Support;
using Npgsql;

namespace Dingo.Tests.Routing;

/// <summary>Opens connections through a router until it refuses one, keeping the open ones; disposing closes them.</summary>
internal sealed class ConnectionLimit : IAsyncDisposable
{
    public List<NpgsqlConnection> Held { get; } = new();
    public PostgresException? Refused { get; private set; }

    public static async Task<ConnectionLimit> ProbeAsync(string uri, int attempts)
    {
        var probe = new ConnectionLimit();
        for (var i = 0; i < attempts && probe.Refused is null; i++)
        {
            var c = new NpgsqlConnection(TestPlatform.ConnectionStringFromUri(uri));
            try { await c.OpenAsync(); probe.Held.Add(c); }
            catch (PostgresException ex) { probe.Refused = ex; await c.DisposeAsync(); }
        }
        return probe;
    }

    public async ValueTask DisposeAsync()
    {
        foreach (var c in Held) await c.DisposeAsync();
    }
}
