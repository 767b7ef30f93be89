using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Dingo.Cells;
using Dingo.Model;
using Microsoft.Extensions.Logging;
using Npgsql;
using Xunit.Abstractions;

namespace Dingo.Tests.Cells;

/// <summary>Drives real PostgreSQL 15 processes; each test owns a temp DataRoot and cleans it up even on failure.</summary>
public sealed class LocalProcessRuntimeTests : IAsyncLifetime
{
    private const string Superuser = "dingo_admin";
    private const string Password = "s3cret-'quote\"-pw";

    private readonly ITestOutputHelper _output;
    private readonly string _dataRoot = Path.Combine("/tmp", "dingo-rt-" + Guid.NewGuid().ToString("N")[..12]);
    private readonly LocalProcessRuntime _runtime;

    public LocalProcessRuntimeTests(ITestOutputHelper output)
    {
        _output = output;
        _runtime = NewRuntime();
    }

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        if (!Directory.Exists(_dataRoot))
            return;
        foreach (var dir in Directory.GetDirectories(_dataRoot))
        {
            try
            {
                using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
                await _runtime.RemoveAsync(Path.GetFileName(dir), cts.Token);
            }
            catch (Exception e)
            {
                _output.WriteLine($"cleanup: RemoveAsync failed: {e.Message}");
            }
            // Whatever RemoveAsync missed: kill the postmaster named in postmaster.pid.
            var pidFile = Path.Combine(dir, "pgdata", "postmaster.pid");
            if (File.Exists(pidFile) && int.TryParse(File.ReadLines(pidFile).FirstOrDefault(), out var pid))
                KillQuietly(pid);
        }
        try
        {
            Directory.Delete(_dataRoot, recursive: true);
        }
        catch (Exception e)
        {
            _output.WriteLine($"cleanup: could not delete {_dataRoot}: {e.Message}");
        }
    }

    [Fact]
    public async Task Create_and_start_serves_the_superuser_and_refuses_a_wrong_password()
    {
        var spec = NewSpec("node-a");
        await _runtime.CreateAsync(spec, Ct());
        await _runtime.StartAsync(spec, null, Ct());
        await WaitUntilServingAsync(spec);

        await using (var conn = await OpenAsync(spec))
        {
            await using var cmd = new NpgsqlCommand("SELECT 1", conn);
            Assert.Equal(1, await cmd.ExecuteScalarAsync(Ct()));
        }

        var wrong = await Assert.ThrowsAsync<PostgresException>(() => OpenAsync(spec, "not-the-password"));
        Assert.Equal(PostgresErrorCodes.InvalidPassword, wrong.SqlState);

        var node = Assert.Single(await _runtime.ListAsync(Ct()));
        Assert.True(node.Initialised);
        Assert.True(node.Running);
        Assert.Equal($"running as pid {node.Pid}", node.Detail);
    }

    [Fact]
    public async Task Stop_keeps_the_data()
    {
        var spec = NewSpec("node-b");
        await _runtime.CreateAsync(spec, Ct());
        await _runtime.StartAsync(spec, null, Ct());
        await WaitUntilServingAsync(spec);
        await ExecAsync(spec, "CREATE TABLE t (v text); INSERT INTO t VALUES ('kept')");

        await _runtime.StopAsync(spec.NodeId, Ct());
        var stopped = Assert.Single(await _runtime.ListAsync(Ct()));
        Assert.False(stopped.Running);
        Assert.Null(stopped.Pid);
        Assert.Equal("stopped", stopped.Detail);
        await _runtime.StopAsync(spec.NodeId, Ct()); // idempotent

        await _runtime.StartAsync(spec, null, Ct());
        await WaitUntilServingAsync(spec);
        Assert.Equal("kept", await ScalarAsync(spec, "SELECT v FROM t"));
    }

    [Fact]
    public async Task A_new_runtime_adopts_a_running_node()
    {
        var spec = NewSpec("node-c");
        await _runtime.CreateAsync(spec, Ct());
        await _runtime.StartAsync(spec, null, Ct());
        await WaitUntilServingAsync(spec);
        var before = Assert.Single(await _runtime.ListAsync(Ct()));

        var fresh = NewRuntime();
        var adopted = Assert.Single(await fresh.ListAsync(Ct()));
        Assert.Equal(spec.NodeId, adopted.NodeId);
        Assert.True(adopted.Running);
        Assert.NotNull(adopted.Pid);
        Assert.Equal(before.Pid, adopted.Pid);

        await fresh.StartAsync(spec, null, Ct()); // already running: no second postmaster
        Assert.Equal(before.Pid, Assert.Single(await fresh.ListAsync(Ct())).Pid);
    }

    [Fact]
    public async Task Killed_postmaster_is_reported_down_and_restarts_with_its_data()
    {
        var spec = NewSpec("node-d");
        await _runtime.CreateAsync(spec, Ct());
        await _runtime.StartAsync(spec, null, Ct());
        await WaitUntilServingAsync(spec);
        await ExecAsync(spec, "CREATE TABLE t (v int); INSERT INTO t VALUES (42)");
        var pid = Assert.Single(await _runtime.ListAsync(Ct())).Pid!.Value;

        KillQuietly(pid);

        // The killed postmaster may linger as a zombie if nobody reaps it; it must not count as running.
        var down = Stopwatch.StartNew();
        RuntimeNode node;
        while ((node = Assert.Single(await _runtime.ListAsync(Ct()))).Running)
        {
            Assert.True(down.Elapsed < TimeSpan.FromSeconds(10), "node still reported running 10 s after kill -9");
            await Task.Delay(20);
        }
        Assert.Null(node.Pid);
        Assert.True(node.Initialised);

        var restart = Stopwatch.StartNew();
        await _runtime.StartAsync(spec, null, Ct());
        await WaitUntilServingAsync(spec);
        restart.Stop();
        _output.WriteLine($"serving again {restart.ElapsedMilliseconds} ms after StartAsync (kill -9 recovery)");

        Assert.Equal(42, await ScalarAsync(spec, "SELECT v FROM t"));
        Assert.NotEqual(pid, Assert.Single(await _runtime.ListAsync(Ct())).Pid);
    }

    [Fact]
    public async Task Remove_deletes_the_folder_and_closes_the_port()
    {
        var spec = NewSpec("node-e");
        await _runtime.CreateAsync(spec, Ct());
        await _runtime.StartAsync(spec, null, Ct());
        await WaitUntilServingAsync(spec);

        await _runtime.RemoveAsync(spec.NodeId, Ct());

        Assert.False(Directory.Exists(Path.Combine(_dataRoot, spec.NodeId)));
        Assert.Empty(await _runtime.ListAsync(Ct()));
        await Assert.ThrowsAnyAsync<NpgsqlException>(() => OpenAsync(spec));
        await _runtime.RemoveAsync(spec.NodeId, Ct()); // absent: nothing to do
    }

    [Fact]
    public async Task Create_is_idempotent_and_redoes_a_half_made_node()
    {
        var spec = NewSpec("node-f");
        var nodeDir = Path.Combine(_dataRoot, spec.NodeId);
        await _runtime.CreateAsync(spec, Ct());
        var marker = Path.Combine(nodeDir, "initialised");
        var markerWritten = File.GetLastWriteTimeUtc(marker);
        var sentinel = Path.Combine(nodeDir, "pgdata", "sentinel");
        await File.WriteAllTextAsync(sentinel, "x");

        await _runtime.CreateAsync(spec, Ct());
        Assert.True(File.Exists(sentinel), "second CreateAsync touched a complete data directory");
        Assert.Equal(markerWritten, File.GetLastWriteTimeUtc(marker));

        // Half-made: data present but no marker, as if initdb died part-way.
        var half = NewSpec("node-g");
        var halfData = Path.Combine(_dataRoot, half.NodeId, "pgdata");
        Directory.CreateDirectory(halfData);
        await File.WriteAllTextAsync(Path.Combine(halfData, "junk"), "partial");
        Assert.False(Assert.Single(await _runtime.ListAsync(Ct()), n => n.NodeId == half.NodeId).Initialised);

        await _runtime.CreateAsync(half, Ct());
        Assert.False(File.Exists(Path.Combine(halfData, "junk")));
        Assert.True(File.Exists(Path.Combine(halfData, "PG_VERSION")));
        Assert.True(Assert.Single(await _runtime.ListAsync(Ct()), n => n.NodeId == half.NodeId).Initialised);

        await _runtime.StartAsync(half, null, Ct());
        await WaitUntilServingAsync(half);
        Assert.Equal(1, await ScalarAsync(half, "SELECT 1"));
    }

    private LocalProcessRuntime NewRuntime() =>
        new(new LocalProcessRuntimeOptions(_dataRoot), new OutputLogger(_output));

    private static NodeLaunchSpec NewSpec(string nodeId) =>
        new(nodeId, "instance-1", "127.0.0.1", FreePort(), new Credentials(Superuser, Password));

    private static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    private static CancellationToken Ct() => new CancellationTokenSource(TimeSpan.FromSeconds(90)).Token;

    private static async Task<NpgsqlConnection> OpenAsync(NodeLaunchSpec spec, string password = Password)
    {
        var builder = new NpgsqlConnectionStringBuilder
        {
            Host = "127.0.0.1",
            Port = spec.Port,
            Username = Superuser,
            Password = password,
            Database = "postgres",
            Pooling = false,
            Timeout = 5,
        };
        var conn = new NpgsqlConnection(builder.ConnectionString);
        try
        {
            await conn.OpenAsync(Ct());
            return conn;
        }
        catch
        {
            await conn.DisposeAsync();
            throw;
        }
    }

    /// <summary>StartAsync returns before the server accepts connections; poll like the cell's prober would.</summary>
    private async Task WaitUntilServingAsync(NodeLaunchSpec spec)
    {
        var deadline = Stopwatch.StartNew();
        while (true)
        {
            try
            {
                await using var conn = await OpenAsync(spec);
                return;
            }
            catch (NpgsqlException) when (deadline.Elapsed < TimeSpan.FromSeconds(30))
            {
                await Task.Delay(25);
            }
            catch (NpgsqlException)
            {
                // The server log says why it never came up; cleanup deletes it afterwards.
                var log = Path.Combine(_dataRoot, spec.NodeId, "postgres.log");
                if (File.Exists(log))
                    _output.WriteLine("postgres.log tail:\n" + string.Join('\n', File.ReadLines(log).TakeLast(20)));
                throw;
            }
        }
    }

    private static async Task ExecAsync(NodeLaunchSpec spec, string sql)
    {
        await using var conn = await OpenAsync(spec);
        await using var cmd = new NpgsqlCommand(sql, conn);
        await cmd.ExecuteNonQueryAsync(Ct());
    }

    private static async Task<object?> ScalarAsync(NodeLaunchSpec spec, string sql)
    {
        await using var conn = await OpenAsync(spec);
        await using var cmd = new NpgsqlCommand(sql, conn);
        return await cmd.ExecuteScalarAsync(Ct());
    }

    private static void KillQuietly(int pid)
    {
        try
        {
            using var process = Process.GetProcessById(pid);
            process.Kill(); // SIGKILL on Linux
        }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException or System.ComponentModel.Win32Exception)
        {
            // Already gone.
        }
    }

    private sealed class OutputLogger(ITestOutputHelper output) : ILogger<LocalProcessRuntime>
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Debug;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            try
            {
                output.WriteLine($"[{logLevel}] {formatter(state, exception)}");
            }
            catch (InvalidOperationException)
            {
                // Output helper is closed once the test has finished.
            }
        }
    }
}
