using System.Net;
using System.Net.NetworkInformation;
using System.Net.Sockets;
using System.Text.Json.Nodes;
using Dingo.Model;
using Dingo.Tests.Support;
using Npgsql;
using Xunit.Abstractions;

namespace Dingo.Tests.Security;

/// <summary>
/// Least privilege in PostgreSQL on a real cluster-ha instance: the superuser only from the platform's hosts, binding
/// roles that cannot touch the database, roles or each other's own objects, rebinding that keeps the data, and an
/// unbind that ends the role's sessions on the replicas too.
/// </summary>
[SuiteCost(34)]
public sealed class LeastPrivilegeTests(ITestOutputHelper output)
{
    [Fact]
    public async Task Platform_roles_only_from_cells_bindings_confined_and_unbind_ends_sessions_on_replicas()
    {
        await using var platform = await TestPlatform.StartAsync(cells: 3);
        var id = "lp-" + Guid.NewGuid().ToString("N")[..8];
        var started = DateTime.UtcNow;
        await platform.ProvisionReadyAsync(id, Catalog.ClusterHaPlanId);
        output.WriteLine($"cluster-ha ready in {(DateTime.UtcNow - started).TotalSeconds:0.0}s");
        var record = (await platform.Store.GetAsync<InstanceRecord>(platform.Store.Keys.Instance(id), CancellationToken.None))!.Value;

        var first = await BindAsync(platform, id, "bind-1", "app-1");
        await using (var conn = await OpenAsync((string)first["uri"]!))
        {
            await ExecAsync(conn, "CREATE TABLE shared_notes(id int primary key, body text); INSERT INTO shared_notes VALUES (1, 'kept across bindings')");
            // Created as the binding's own role (not the shared owner): private to it unless it grants it.
            await ExecAsync(conn, "SET ROLE NONE; CREATE TABLE own_notes(id int); INSERT INTO own_notes VALUES (7)");
        }

        // A session through the read-only port lands on a replica (once replicas stream, the router balances over
        // them) and stays open across the unbind below.
        NpgsqlConnection? readOnly = null;
        await Eventually.UntilAsync(async () =>
        {
            if (readOnly is not null) await readOnly.DisposeAsync();
            readOnly = await OpenAsync((string)first["read_only_uri"]!);
            return await ScalarAsync(readOnly, "SELECT pg_is_in_recovery()") is true;
        }, TimeSpan.FromSeconds(30), "a read-only connection on a replica; statuses as the wait began: " + string.Join("; ",
            (await platform.Store.ListAsync<NodeStatus>(platform.Store.Keys.Statuses(id), CancellationToken.None)).Select(s => $"{s.Value.NodeId} {s.Value.State} {s.Value.Role} streaming={s.Value.Streaming} {s.Value.Detail}")));
        var onPrimary = await OpenAsync((string)first["uri"]!);

        var second = await BindAsync(platform, id, "bind-2", "app-2");
        await using (var conn = await OpenAsync((string)second["uri"]!))
        {
            Assert.Equal("kept across bindings", await ScalarAsync(conn, "SELECT body FROM shared_notes WHERE id = 1"));
            await AssertDeniedAsync(conn, "SELECT * FROM own_notes");
            await AssertDeniedAsync(conn, $"ALTER ROLE {first["username"]} PASSWORD 'taken0ver'");
            await AssertDeniedAsync(conn, $"ALTER DATABASE {record.Database} RENAME TO stolen");
            await AssertDeniedAsync(conn, $"DROP DATABASE {record.Database}");
            await AssertDeniedAsync(conn, "CREATE ROLE intruder LOGIN");
            await AssertDeniedAsync(conn, "GRANT dingo_owner TO dingo_replicator");
            await AssertDeniedAsync(conn, "GRANT pg_read_all_data TO session_user");
            Assert.Equal(false, await ScalarAsync(conn, "SELECT rolsuper OR rolcreaterole OR rolcreatedb OR rolreplication FROM pg_roles WHERE rolname = session_user"));
        }
        // No other database: not the platform's own, not the template.
        var elsewhere = new NpgsqlConnectionStringBuilder(TestPlatform.ConnectionStringFromUri((string)second["uri"]!)) { Database = "postgres" };
        var refused = await Assert.ThrowsAsync<PostgresException>(async () => { await using var c = new NpgsqlConnection(elsewhere.ConnectionString); await c.OpenAsync(); });
        Assert.Equal(PostgresErrorCodes.InsufficientPrivilege, refused.SqlState);

        // The superuser from a host that is not a cell (a local non-loopback address): refused by pg_hba.conf,
        // while a binding role comes in from there and the superuser from the cell's own address works.
        var leader = (await platform.Store.GetAsync<LeaderRecord>(platform.Store.Keys.Leader(id), CancellationToken.None))!.Value;
        await using (var relay = await SourceRelay.StartAsync(NonLoopbackAddress(), new IPEndPoint(IPAddress.Parse(leader.Host), leader.Port)))
        {
            var viaOther = Dingo.Postgres.DatabaseAdmin.ConnectionString("127.0.0.1", relay.Port, record.Superuser, "postgres");
            var hba = await Assert.ThrowsAsync<PostgresException>(async () => { await using var c = new NpgsqlConnection(viaOther.ConnectionString); await c.OpenAsync(); });
            Assert.Equal(PostgresErrorCodes.InvalidAuthorizationSpecification, hba.SqlState);
            output.WriteLine($"superuser from {relay.Source}: {hba.MessageText}");
            var binding = new NpgsqlConnectionStringBuilder(TestPlatform.ConnectionStringFromUri((string)second["uri"]!)) { Host = "127.0.0.1", Port = relay.Port };
            await using (var c = new NpgsqlConnection(binding.ConnectionString))
            {
                await c.OpenAsync();
                Assert.Equal(relay.Source.ToString(), (await ScalarAsync(c, "SELECT host(inet_client_addr())"))?.ToString());
            }
        }
        await using (var direct = new NpgsqlConnection(Dingo.Postgres.DatabaseAdmin.ConnectionString(leader.Host, leader.Port, record.Superuser, "postgres").ConnectionString))
        {
            await direct.OpenAsync();
            Assert.Equal(true, await ScalarAsync(direct, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"));
        }

        // Unbind: the role's sessions end on the replica as on the primary, before the broker answers.
        var q = $"service_id={Catalog.ServiceId}&plan_id={Catalog.ClusterHaPlanId}";
        var (unbound, body) = await platform.SendAsync(HttpMethod.Delete, $"/v2/service_instances/{id}/service_bindings/bind-1?{q}");
        Assert.True(unbound == 200, $"unbind answered {unbound}: {body.ToJsonString()}");
        await AssertEndedAsync(readOnly!);
        await AssertEndedAsync(onPrimary);
        await readOnly!.DisposeAsync();
        await onPrimary.DisposeAsync();

        // The same app bound again finds its data, the former binding's own table included (handed to the owner at unbind).
        var rebound = await BindAsync(platform, id, "bind-3", "app-1");
        await using (var conn = await OpenAsync((string)rebound["uri"]!))
        {
            Assert.Equal("kept across bindings", await ScalarAsync(conn, "SELECT body FROM shared_notes WHERE id = 1"));
            Assert.Equal(7, await ScalarAsync(conn, "SELECT id FROM own_notes"));
            await ExecAsync(conn, "INSERT INTO shared_notes VALUES (2, 'still writable')");
        }
        output.WriteLine($"whole test {(DateTime.UtcNow - started).TotalSeconds:0.0}s");
    }

    private static async Task<JsonObject> BindAsync(TestPlatform platform, string id, string bindingId, string appGuid)
    {
        var body = new JsonObject { ["service_id"] = Catalog.ServiceId, ["plan_id"] = Catalog.ClusterHaPlanId, ["app_guid"] = appGuid }.ToJsonString();
        var (status, json) = await platform.SendAsync(HttpMethod.Put, $"/v2/service_instances/{id}/service_bindings/{bindingId}", body);
        Assert.True(status == 201, $"bind answered {status}: {json.ToJsonString()}");
        return json["credentials"]!.AsObject();
    }

    private static async Task<NpgsqlConnection> OpenAsync(string uri)
    {
        var conn = new NpgsqlConnection(TestPlatform.ConnectionStringFromUri(uri));
        await conn.OpenAsync();
        return conn;
    }

    private static async Task ExecAsync(NpgsqlConnection conn, string sql)
    {
        await using var cmd = new NpgsqlCommand(sql, conn);
        await cmd.ExecuteNonQueryAsync();
    }

    private static async Task<object?> ScalarAsync(NpgsqlConnection conn, string sql)
    {
        await using var cmd = new NpgsqlCommand(sql, conn);
        return await cmd.ExecuteScalarAsync();
    }

    private static async Task AssertDeniedAsync(NpgsqlConnection conn, string sql)
    {
        var ex = await Assert.ThrowsAsync<PostgresException>(() => ExecAsync(conn, sql));
        Assert.True(ex.SqlState == PostgresErrorCodes.InsufficientPrivilege, $"{sql}: {ex.SqlState} {ex.MessageText}");
    }

    /// <summary>The open session no longer answers: the server ended it.</summary>
    private static async Task AssertEndedAsync(NpgsqlConnection conn)
    {
        var ex = await Assert.ThrowsAnyAsync<NpgsqlException>(() => ScalarAsync(conn, "SELECT 1"));
        Assert.True(conn.FullState.HasFlag(System.Data.ConnectionState.Broken) || conn.FullState == System.Data.ConnectionState.Closed, ex.Message);
    }

    private static IPAddress NonLoopbackAddress() =>
        NetworkInterface.GetAllNetworkInterfaces()
            .Where(n => n.OperationalStatus == OperationalStatus.Up && n.NetworkInterfaceType != NetworkInterfaceType.Loopback)
            .SelectMany(n => n.GetIPProperties().UnicastAddresses)
            .Select(a => a.Address)
            .FirstOrDefault(a => a.AddressFamily == AddressFamily.InterNetwork && !IPAddress.IsLoopback(a))
        ?? throw new InvalidOperationException("this test needs a local non-loopback IPv4 address to connect from a host that is not a cell");

    /// <summary>A TCP relay on 127.0.0.1 whose connections reach the target from another local address.</summary>
    private sealed class SourceRelay : IAsyncDisposable
    {
        private readonly Socket _listener;
        private readonly CancellationTokenSource _stop = new();
        private readonly List<Socket> _sockets = [];
        private readonly Task _accepting;

        private SourceRelay(Socket listener, IPAddress source, IPEndPoint target)
        {
            _listener = listener;
            Source = source;
            _accepting = AcceptAsync(target);
        }

        public IPAddress Source { get; }
        public int Port => ((IPEndPoint)_listener.LocalEndPoint!).Port;

        public static Task<SourceRelay> StartAsync(IPAddress source, IPEndPoint target)
        {
            var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            listener.Listen();
            return Task.FromResult(new SourceRelay(listener, source, target));
        }

        private async Task AcceptAsync(IPEndPoint target)
        {
            try
            {
                while (true)
                {
                    var client = await _listener.AcceptAsync(_stop.Token);
                    var upstream = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
                    lock (_sockets) { _sockets.Add(client); _sockets.Add(upstream); }
                    upstream.Bind(new IPEndPoint(Source, 0));
                    await upstream.ConnectAsync(target, _stop.Token);
                    _ = PipeAsync(client, upstream);
                    _ = PipeAsync(upstream, client);
                }
            }
            catch (Exception ex) when (ex is OperationCanceledException or SocketException or ObjectDisposedException) { }
        }

        private async Task PipeAsync(Socket from, Socket to)
        {
            var buffer = new byte[16384];
            try
            {
                while (true)
                {
                    var n = await from.ReceiveAsync(buffer, SocketFlags.None, _stop.Token);
                    if (n == 0) break;
                    await to.SendAsync(buffer.AsMemory(0, n), SocketFlags.None, _stop.Token);
                }
                to.Shutdown(SocketShutdown.Send);
            }
            catch (Exception ex) when (ex is OperationCanceledException or SocketException or ObjectDisposedException) { }
        }

        public async ValueTask DisposeAsync()
        {
            await _stop.CancelAsync();
            _listener.Dispose();
            lock (_sockets) foreach (var s in _sockets) s.Dispose();
            await _accepting;
            _stop.Dispose();
        }
    }
}
