using Dingo.Model;
using Npgsql;

namespace Dingo.Postgres;

/// <summary>
/// The SQL Dingo runs as an instance's superuser: preparing the application database and managing each
/// binding's login role. Objects a binding creates belong to the shared owner role, so dropping one binding
/// never takes another's tables with it, and a later binding (a rebinding, a blue-green copy, a restore) finds them.
/// The database itself belongs to the superuser: the owner role (and so no binding) can drop, rename or reconfigure it,
/// and bindings reach no other database.
/// </summary>
public static class DatabaseAdmin
{
    public const string OwnerRole = "dingo_owner";
    public const string SuperuserName = "dingo_admin";
    public const string ReplicationUserName = "dingo_replicator";

    /// <summary>A connection of the platform to a node, with this process's TLS policy (<see cref="PlatformConnectionTls"/>).</summary>
    /// <param name="openSeconds">how long the open may take (5 s unless a caller needs longer)</param>
    public static NpgsqlConnectionStringBuilder ConnectionString(string host, int port, Credentials superuser, string database, int openSeconds = 5) =>
        PlatformConnectionTls.Apply(new NpgsqlConnectionStringBuilder
        {
            Host = host,
            Port = port,
            Username = superuser.Username,
            Password = superuser.Password,
            Database = database,
            Timeout = openSeconds,
            CommandTimeout = 15,
            Pooling = false,
            ApplicationName = "dingo",
        }, PlatformConnectionTls.Required);

    /// <summary>
    /// Creates the owner role, the replication role and the application database when missing. Safe to run again.
    /// Every new leader runs it before anything else, so its commits do not wait for synchronous standbys
    /// (<c>synchronous_commit = local</c>): a node promoted with standbys named in synchronous_standby_names that do not
    /// stream yet (the old primary cut off, a replica restarting) would otherwise block its first pass on them past the
    /// fencing deadline, be fenced, and hand the key to the next node, which blocks the same way (bench/Chaos link-cut:
    /// the key went back and forth every 3.6 s). Nothing is lost by it: the next leader runs the same statements again.
    /// Applications' commits keep waiting for a synchronous standby as before.
    /// </summary>
    public static async Task PrepareAsync(string host, int port, Credentials superuser, string database, CancellationToken ct, Credentials? replication = null)
    {
        // Opens of 15 s (the step's own deadline bounds them): a new primary on a saturated machine took longer than 5 s to
        // fork and authenticate a session, and its preparation failed pass after pass (bench/Provision's Docker burst).
        // One session, to the application database, does it all where that database exists (a warm pool's entry brings it,
        // as a restore or a clone does): a session to postgres first, then one to it, was a second fork, TLS handshake and
        // SCRAM exchange in the step every new primary runs before it serves. Only a cluster's very first node without
        // one makes it, from a session to postgres (a session needs a database that exists; CREATE DATABASE cannot run in a
        // transaction).
        var app = await OpenAppDatabaseAsync(host, port, superuser, database, ct).ConfigureAwait(false);
        if (app is null)
        {
            await using (var conn = PlatformConnectionTls.Connection(ConnectionString(host, port, superuser, "postgres", openSeconds: 15)))
            {
                await conn.OpenAsync(ct).ConfigureAwait(false);
                await ExecAsync(conn, "SET synchronous_commit = local", ct).ConfigureAwait(false);
                if (!await ExistsAsync(conn, "SELECT 1 FROM pg_database WHERE datname = $1", database, ct).ConfigureAwait(false))
                    await ExecAsync(conn, $"CREATE DATABASE \"{database}\"", ct).ConfigureAwait(false);
            }
            app = await OpenAppDatabaseAsync(host, port, superuser, database, ct).ConfigureAwait(false)
                  ?? throw new InvalidOperationException($"database {database} is missing right after it was created");
        }
        await using (app)
        {
            await ExecAsync(app, "SET synchronous_commit = local", ct).ConfigureAwait(false);
            // Everything commits once (one WAL flush, not one a statement: each was a flush on a saturated machine's disk).
            await using var tx = await app.BeginTransactionAsync(ct).ConfigureAwait(false);
            if (!await ExistsAsync(app, "SELECT 1 FROM pg_roles WHERE rolname = $1", OwnerRole, ct).ConfigureAwait(false))
                await ExecAsync(app, $"CREATE ROLE {OwnerRole} NOLOGIN", ct).ConfigureAwait(false);
            // Owned by the platform (databases made by older versions belonged to the owner role, which let every binding
            // drop or rename them): the owner role keeps what an application needs, CONNECT, TEMPORARY and CREATE (schemas,
            // trusted extensions).
            await ExecAsync(app, $"ALTER DATABASE \"{database}\" OWNER TO \"{superuser.Username}\"", ct).ConfigureAwait(false);
            await ExecAsync(app, $"REVOKE ALL ON DATABASE \"{database}\" FROM PUBLIC", ct).ConfigureAwait(false);
            await ExecAsync(app, $"GRANT CONNECT, TEMPORARY, CREATE ON DATABASE \"{database}\" TO {OwnerRole}", ct).ConfigureAwait(false);
            // Bindings reach only the application database: not the platform's own, not the template new ones copy.
            foreach (var other in new[] { "postgres", "template1" })
                if (other != database) await ExecAsync(app, $"REVOKE CONNECT, TEMPORARY, CREATE ON DATABASE {other} FROM PUBLIC", ct).ConfigureAwait(false);
            if (replication is not null)
            {
                CheckSafe(replication.Username);
                CheckSafe(replication.Password);
                var attributes = $"LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '{replication.Password}'";
                if (await ExistsAsync(app, "SELECT 1 FROM pg_roles WHERE rolname = $1", replication.Username, ct).ConfigureAwait(false))
                    await ExecAsync(app, $"ALTER ROLE {replication.Username} {attributes}", ct).ConfigureAwait(false);
                else
                    await ExecAsync(app, $"CREATE ROLE {replication.Username} {attributes}", ct).ConfigureAwait(false);
            }
            // The public schema belonged to the database's owner (pg_database_owner): it stays the applications' schema.
            if (await ExistsAsync(app, "SELECT 1 FROM pg_namespace WHERE nspname = $1", "public", ct).ConfigureAwait(false))
                await ExecAsync(app, $"ALTER SCHEMA public OWNER TO {OwnerRole}", ct).ConfigureAwait(false);
            await tx.CommitAsync(ct).ConfigureAwait(false);
        }
    }

    /// <summary>An open session to the application database; null when it does not exist (yet).</summary>
    private static async Task<NpgsqlConnection?> OpenAppDatabaseAsync(string host, int port, Credentials superuser, string database, CancellationToken ct)
    {
        var conn = PlatformConnectionTls.Connection(ConnectionString(host, port, superuser, database, openSeconds: 15));
        try
        {
            await conn.OpenAsync(ct).ConfigureAwait(false);
            return conn;
        }
        catch (PostgresException ex) when (ex.SqlState == PostgresErrorCodes.InvalidCatalogName)
        {
            await conn.DisposeAsync().ConfigureAwait(false);
            return null;
        }
        catch
        {
            await conn.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>Creates (or re-passwords) a binding's login role with full rights on the database and nothing else.</summary>
    /// <param name="openSeconds">how long the session's open may take (default 5 s): a bind gives it the rest of its patience</param>
    public static async Task CreateBindingRoleAsync(string host, int port, Credentials superuser, string database, Credentials role, CancellationToken ct, int openSeconds = 5)
    {
        CheckSafe(role.Username);
        CheckSafe(role.Password);
        await using var conn = PlatformConnectionTls.Connection(ConnectionString(host, port, superuser, database, Math.Max(1, openSeconds)));
        await conn.OpenAsync(ct).ConfigureAwait(false);
        var attributes = $"LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD '{role.Password}'";
        // One commit (on cluster-ha, one wait for the synchronous standby) for the role and its setting.
        await using var tx = await conn.BeginTransactionAsync(ct).ConfigureAwait(false);
        if (await ExistsAsync(conn, "SELECT 1 FROM pg_roles WHERE rolname = $1", role.Username, ct).ConfigureAwait(false))
            await ExecAsync(conn, $"ALTER ROLE {role.Username} {attributes}", ct).ConfigureAwait(false);
        else
            await ExecAsync(conn, $"CREATE ROLE {role.Username} {attributes} IN ROLE {OwnerRole}", ct).ConfigureAwait(false);
        // Sessions act as the owner role, so every table a binding creates is shared with later bindings.
        await ExecAsync(conn, $"ALTER ROLE {role.Username} SET role = '{OwnerRole}'", ct).ConfigureAwait(false);
        await tx.CommitAsync(ct).ConfigureAwait(false);
    }

    /// <summary>
    /// First step of an unbind, on the primary: the role may no longer log in (replicated to every replica) and its
    /// sessions here end. Returns the primary's WAL position after the change, which a replica must have replayed
    /// before its own sessions are ended (else one could log in between), or null when the role does not exist.
    /// </summary>
    public static async Task<string?> LockOutBindingRoleAsync(string host, int port, Credentials superuser, string database, string roleName, CancellationToken ct)
    {
        CheckSafe(roleName);
        await using var conn = PlatformConnectionTls.Connection(ConnectionString(host, port, superuser, database));
        await conn.OpenAsync(ct).ConfigureAwait(false);
        if (!await ExistsAsync(conn, "SELECT 1 FROM pg_roles WHERE rolname = $1", roleName, ct).ConfigureAwait(false)) return null;
        await ExecAsync(conn, $"ALTER ROLE {roleName} NOLOGIN", ct).ConfigureAwait(false);
        await TerminateSessionsAsync(conn, roleName, ct).ConfigureAwait(false);
        await using var cmd = new NpgsqlCommand("SELECT pg_current_wal_lsn()::text", conn);
        return (string)(await cmd.ExecuteScalarAsync(ct).ConfigureAwait(false))!;
    }

    /// <summary>
    /// Ends the role's sessions on another node (a replica) once it has replayed WAL up to <paramref name="lockedOutAt"/>
    /// (so the role cannot log in there any more); returns how many ended. Throws <see cref="TimeoutException"/> when
    /// the node has not replayed that far by <paramref name="replayDeadline"/>.
    /// </summary>
    public static async Task<int> EndSessionsOnNodeAsync(string host, int port, Credentials superuser, string roleName, string lockedOutAt, DateTime replayDeadline, CancellationToken ct)
    {
        CheckSafe(roleName);
        await using var conn = PlatformConnectionTls.Connection(ConnectionString(host, port, superuser, "postgres"));
        await conn.OpenAsync(ct).ConfigureAwait(false);
        while (true)
        {
            // A node no longer in recovery (promoted meanwhile) carries the change already: it came from its own WAL.
            await using (var cmd = new NpgsqlCommand("SELECT NOT pg_is_in_recovery() OR pg_last_wal_replay_lsn() >= $1::pg_lsn", conn))
            {
                cmd.Parameters.AddWithValue(lockedOutAt);
                if (await cmd.ExecuteScalarAsync(ct).ConfigureAwait(false) is true) break;
            }
            if (DateTime.UtcNow >= replayDeadline)
                throw new TimeoutException($"node {host}:{port} has not replayed the role's lock-out (WAL {lockedOutAt}) yet");
            await Task.Delay(100, ct).ConfigureAwait(false);
        }
        return await TerminateSessionsAsync(conn, roleName, ct).ConfigureAwait(false);
    }

    private static async Task<int> TerminateSessionsAsync(NpgsqlConnection conn, string roleName, CancellationToken ct)
    {
        await using var cmd = new NpgsqlCommand("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = $1 AND pid <> pg_backend_pid()", conn);
        cmd.Parameters.AddWithValue(roleName);
        return Convert.ToInt32(await cmd.ExecuteScalarAsync(ct).ConfigureAwait(false), System.Globalization.CultureInfo.InvariantCulture);
    }

    /// <summary>Locks the role out, ends its sessions, hands its objects to the owner and drops it. Safe to run again.</summary>
    public static async Task DropBindingRoleAsync(string host, int port, Credentials superuser, string database, string roleName, CancellationToken ct)
    {
        CheckSafe(roleName);
        await using var conn = PlatformConnectionTls.Connection(ConnectionString(host, port, superuser, database));
        await conn.OpenAsync(ct).ConfigureAwait(false);
        if (!await ExistsAsync(conn, "SELECT 1 FROM pg_roles WHERE rolname = $1", roleName, ct).ConfigureAwait(false)) return;
        // NOLOGIN first, so no new session slips in between terminating the old ones and the drop.
        await ExecAsync(conn, $"ALTER ROLE {roleName} NOLOGIN", ct).ConfigureAwait(false);
        await TerminateSessionsAsync(conn, roleName, ct).ConfigureAwait(false);
        await ExecAsync(conn, $"REASSIGN OWNED BY {roleName} TO {OwnerRole}", ct).ConfigureAwait(false);
        await ExecAsync(conn, $"DROP OWNED BY {roleName}", ct).ConfigureAwait(false);
        await ExecAsync(conn, $"DROP ROLE IF EXISTS {roleName}", ct).ConfigureAwait(false);
    }

    /// <summary>
    /// A clone carries the source's binding roles and their passwords: the source's applications must not log into
    /// the copy, so every login role except the platform's own loses LOGIN.
    /// </summary>
    public static async Task DisableInheritedLoginsAsync(string host, int port, Credentials superuser, CancellationToken ct)
    {
        await using var conn = PlatformConnectionTls.Connection(ConnectionString(host, port, superuser, "postgres"));
        await conn.OpenAsync(ct).ConfigureAwait(false);
        var roles = new List<string>();
        await using (var cmd = new NpgsqlCommand("SELECT rolname FROM pg_roles WHERE rolcanlogin AND rolname <> ALL($1) AND rolname NOT LIKE 'pg\\_%'", conn))
        {
            cmd.Parameters.AddWithValue(new[] { SuperuserName, ReplicationUserName, superuser.Username });
            await using var r = await cmd.ExecuteReaderAsync(ct).ConfigureAwait(false);
            while (await r.ReadAsync(ct).ConfigureAwait(false)) roles.Add(r.GetString(0));
        }
        foreach (var role in roles) await ExecAsync(conn, $"ALTER ROLE \"{role.Replace("\"", "\"\"", StringComparison.Ordinal)}\" NOLOGIN", ct).ConfigureAwait(false);
    }

    private static void CheckSafe(string value)
    {
        if (value.Length == 0 || !value.All(c => char.IsAsciiLetterOrDigit(c) || c == '_'))
            throw new ArgumentException("role names and passwords must be ASCII letters, digits or '_'");
    }

    private static async Task<bool> ExistsAsync(NpgsqlConnection conn, string sql, string arg, CancellationToken ct)
    {
        await using var cmd = new NpgsqlCommand(sql, conn);
        cmd.Parameters.AddWithValue(arg);
        return await cmd.ExecuteScalarAsync(ct).ConfigureAwait(false) is not null;
    }

    private static async Task ExecAsync(NpgsqlConnection conn, string sql, CancellationToken ct)
    {
        await using var cmd = new NpgsqlCommand(sql, conn);
        await cmd.ExecuteNonQueryAsync(ct).ConfigureAwait(false);
    }
}
