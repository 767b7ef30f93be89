using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using Dingo.Backups;
using Dingo.Model;
using Dingo.Postgres;
using Microsoft.Extensions.Logging;

namespace Dingo.Cells;

/// <param name="DataRoot">This cell's node folder; every sub-folder is one node.</param>
/// <param name="PostgresBin">Folder holding initdb, pg_ctl and postgres.</param>
/// <param name="RunAsUser">OS user PostgreSQL runs as when this process is root (PostgreSQL refuses root).</param>
public sealed record LocalProcessRuntimeOptions(
    string DataRoot,
    string PostgresBin = "/usr/lib/postgresql/15/bin",
    string? RunAsUser = "postgres")
{
    /// <summary>How long a fast shutdown may take before the postmaster is signalled directly.</summary>
    public TimeSpan StopTimeout { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>Upper bound for any single tool run (initdb, pg_ctl) so a hung tool cannot block reconcile forever.</summary>
    public TimeSpan ToolTimeout { get; init; } = TimeSpan.FromMinutes(5);

    public string SharedBuffers { get; init; } = "32MB";

    public int MaxConnections { get; init; } = 100;

    /// <summary>
    /// How many initialised, never-started data directories the runtime keeps ready (`dingo.cell.warm-pool`): a new
    /// cluster's first node takes one instead of running initdb. 0: none.
    /// </summary>
    public int WarmPool { get; init; }
    /// <summary>dingo.cell.saturated-cpu-pressure: work that can wait also waits while the host's CPU pressure is this high (0: off).</summary>
    public double SaturatedCpuPressure { get; init; }
}

/// <summary>
/// Runs each PostgreSQL node as local OS processes under DataRoot/&lt;nodeId&gt;. The postmaster is launched through
/// pg_ctl, which detaches it, so nodes outlive this process and a new instance adopts them from postmaster.pid.
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class LocalProcessRuntime : IContainerRuntime
{
    private const string MarkerFileName = "initialised";
    /// <summary>
    /// Beside each node folder, `&lt;node&gt;@instance.json` names the node's instance, written before the folder is made, so
    /// after a restart the cell still knows whose data it holds. '@' is not in a node id, so no node folder can clash.
    /// </summary>
    private const string InstanceFileSuffix = "@instance.json";
    private const string SettingsFileName = "dingo.conf";
    private const string IncludeLine = "include_if_exists = '" + SettingsFileName + "'";
    private const int SigHup = 1;
    private const int SigTerm = 15;
    private const int SigKill = 9;
    private static readonly TimeSpan PostmasterLaunchTimeout = TimeSpan.FromSeconds(15);

    private readonly LocalProcessRuntimeOptions _options;
    private readonly ILogger<LocalProcessRuntime> _logger;
    private readonly string _dataRoot;
    private readonly NodeLocks _nodeLocks = new();
    private readonly SemaphoreSlim _identityLock = new(1, 1);
    /// <summary>Each node's instance as its file says, so a pass does not read every file again.</summary>
    private readonly ConcurrentDictionary<string, string> _instances = new(StringComparer.Ordinal);
    private RunIdentity? _identity;
    private readonly NodeAccess _access = new();

    public LocalProcessRuntime(LocalProcessRuntimeOptions options, ILogger<LocalProcessRuntime> logger)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentException.ThrowIfNullOrWhiteSpace(options.DataRoot);
        ArgumentException.ThrowIfNullOrWhiteSpace(options.PostgresBin);
        if (!OperatingSystem.IsLinux())
            throw NotLinux();
        _options = options;
        _work = new NodeWork(CpuPressure.Some10, options.SaturatedCpuPressure);
        _logger = logger;
        _dataRoot = Path.TrimEndingDirectorySeparator(Path.GetFullPath(options.DataRoot));
    }

    public string Kind => "process";

    public Task<IReadOnlyList<RuntimeNode>> ListAsync(CancellationToken cancellationToken)
    {
        cancellationToken.ThrowIfCancellationRequested();
        return Task.FromResult<IReadOnlyList<RuntimeNode>>(NodeIds().Select(id => Inspect(id, Path.Combine(_dataRoot, id))).ToList());
    }

    /// <summary>The nodes this runtime holds: the folders under the data root named as node ids, in order.</summary>
    private IEnumerable<string> NodeIds() => Directory.Exists(_dataRoot)
        ? Directory.EnumerateDirectories(_dataRoot).Select(Path.GetFileName).OfType<string>().Where(NodeIdRule.IsValid).Order(StringComparer.Ordinal)
        : [];

    public Task<RuntimeNode?> InspectAsync(string nodeId, CancellationToken cancellationToken)
    {
        cancellationToken.ThrowIfCancellationRequested();
        var dir = Path.Combine(_dataRoot, nodeId);
        return Task.FromResult(NodeIdRule.IsValid(nodeId) && Directory.Exists(dir) ? Inspect(nodeId, dir) : null);
    }

    private RuntimeNode Inspect(string nodeId, string dir)
    {
        var paths = new NodePaths(dir);
        // Complete data: initdb (or a clone, a restore) finished, and the data directory is still there (an operator or a
        // fault may have removed it; then the node is made again, not started for ever).
        var initialised = File.Exists(paths.Marker) && File.Exists(Path.Combine(paths.PgData, "PG_VERSION"));
        var pid = FindRunningPostmaster(paths);
        var detail = pid is { } p ? $"running as pid {p}"
            : initialised ? StartFailureIn(ReadLogTail(paths.LogFile)) is { } why ? $"stopped: {why}" : "stopped"
            : "data not initialised";
        return new RuntimeNode(nodeId, initialised, pid is not null, pid, detail) { InstanceId = InstanceOf(nodeId) };
    }

    /// <summary>Each node's PostgreSQL log (pg_ctl -l, opened for appending: truncating it in place is safe), with its instance.</summary>
    public IReadOnlyList<(string NodeId, string? InstanceId, string LogFile)> LogFiles()
    {
        return NodeIds().Select(id => (id, InstanceOf(id), new NodePaths(Path.Combine(_dataRoot, id)).LogFile)).ToList();
    }

    private string InstanceFile(string nodeId) => Path.Combine(_dataRoot, nodeId + InstanceFileSuffix);

    /// <summary>The node's instance as recorded beside its folder; null when nothing is (a node from before the record).</summary>
    private string? InstanceOf(string nodeId)
    {
        if (_instances.TryGetValue(nodeId, out var known)) return known;
        try
        {
            var record = System.Text.Json.JsonSerializer.Deserialize<NodeInstance>(File.ReadAllText(InstanceFile(nodeId)), Json.Options);
            if (record is null || record.NodeId != nodeId) return null;
            return _instances[nodeId] = record.InstanceId;
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            return null;
        }
        catch (Exception e) when (e is System.Text.Json.JsonException or IOException or UnauthorizedAccessException)
        {
            _logger.LogWarning("Node {NodeId}: cannot read {File}: {Error}; its instance is not known", nodeId, InstanceFile(nodeId), e.Message);
            return null;
        }
    }

    private sealed record NodeInstance(string NodeId, string InstanceId);

    public async Task RecordInstanceAsync(string nodeId, string instanceId, CancellationToken cancellationToken)
    {
        if (!NodeIdRule.IsValid(nodeId)) throw new ArgumentException($"Invalid node id '{nodeId}'.", nameof(nodeId));
        if (!OperatingSystem.IsLinux()) throw NotLinux();
        var recorded = InstanceOf(nodeId);
        if (recorded == instanceId) return;
        if (recorded is not null)
            _logger.LogWarning("Node {NodeId}: recorded as a node of {Old}, now of {New}; recording {New}", nodeId, recorded, instanceId, instanceId);
        Directory.CreateDirectory(_dataRoot);
        await AtomicFile.WriteAsync(InstanceFile(nodeId), System.Text.Json.JsonSerializer.Serialize(new NodeInstance(nodeId, instanceId), Json.Options) + "\n", cancellationToken);
        _instances[nodeId] = instanceId;
    }

    public async Task CreateAsync(NodeLaunchSpec spec, CancellationToken cancellationToken)
    {
        using var work = _work.Begin();
        ArgumentNullException.ThrowIfNull(spec);
        var paths = PathsFor(spec.NodeId);
        using var _ = await _nodeLocks.LockAsync(spec.NodeId, cancellationToken);
        // Before the node's folder exists: no data here is ever without its instance.
        await RecordInstanceAsync(spec.NodeId, spec.InstanceId, cancellationToken);

        if (File.Exists(paths.Marker))
            return;

        var identity = await GetIdentityAsync(cancellationToken);
        EnsureDataRoot(identity);
        EnsureOwnedDirectory(paths.NodeDir, identity);
        EnsureOwnedDirectory(paths.RunDir, identity);

        // A half-made node must not be running off half-written data before it is wiped.
        if (FindRunningPostmaster(paths) is { } strayPid)
            await KillPostmasterAsync(spec.NodeId, strayPid, cancellationToken);
        await KillLeftoversAsync(paths, cancellationToken);
        if (Directory.Exists(paths.PgData))
        {
            _logger.LogInformation("Node {NodeId}: removing half-made data directory", spec.NodeId);
            Directory.Delete(paths.PgData, recursive: true);
        }

        var warm = await TryClaimWarmAsync(spec, paths, identity, cancellationToken);
        if (!warm)
        {
            var result = await InitDbAsync(spec.Superuser, paths.NodeDir, paths.PgData, identity, cancellationToken);
            if (result.ExitCode != 0)
                throw ToolFailure(spec.NodeId, "initdb", result);
            // initdb ran with --no-sync: flush it all at once before the marker says the directory is complete.
            await Task.Run(() => SyncFileSystem(paths.PgData), cancellationToken);
        }

        // initdb's pg_hba.conf (local and loopback only) serves until the first start writes the platform's.
        await EnsureIncludeLineAsync(paths, cancellationToken);

        // Written last: its presence is the only proof initdb and the follow-up edits completed.
        // The marker says how (an operator, or a test, can tell a warm claim from an initdb).
        await File.WriteAllTextAsync(paths.Marker, DateTimeOffset.UtcNow.ToString("O", CultureInfo.InvariantCulture) + (warm ? " warm-pool" : " initdb") + "\n", cancellationToken);
        ChownIfNeeded(paths.Marker, identity);
        _logger.LogInformation(warm ? "Node {NodeId}: data directory initialised (taken from the warm pool)" : "Node {NodeId}: data directory initialised", spec.NodeId);
    }

    // ---- The warm pool: data directories initialised for nobody, ready to become a new cluster's first node ----
    //
    // Why a claimed one is as private as a fresh initdb: each entry is its own initdb (its own system identifier, so
    // its WAL never mixes with another's in the archive), made with a random superuser password that is never written
    // anywhere but initdb's short-lived pwfile; it holds no database or role but initdb's; it never starts while in the
    // pool; a claim moves it (one rename) into the node's folder and, before it ever listens, gives the superuser the
    // instance's password in single-user mode (the statement over stdin, never logged); a claimed entry never goes
    // back. The claim saves initdb (0.8 s of a new node's bootstrap here; the single-user step takes 0.04 s).

    /// <summary>Under the data root, a name no node id can take ('@').</summary>
    private string WarmRoot => Path.Combine(_dataRoot, "@warm");
    private const string WarmReady = "ready";
    private readonly SemaphoreSlim _warmLock = new(1, 1);
    private readonly NodeWork _work;

    public bool NodeWorkQuietFor(TimeSpan span) => _work.QuietFor(span);

    public bool ServingWorkQuietFor(TimeSpan span) => _work.ServingQuietFor(span);

    /// <summary>Entries ready to be claimed.</summary>
    public int WarmCount() => Directory.Exists(WarmRoot) ? Directory.EnumerateDirectories(WarmRoot).Count(d => File.Exists(Path.Combine(d, WarmReady))) : 0;

    /// <summary>Keeps the pool at its size until cancelled (<see cref="WarmPoolLoop"/>); half-made entries are removed, a smaller size trims it.</summary>
    public Task KeepWarmAsync(CancellationToken ct) => _options.WarmPool <= 0 ? Task.CompletedTask
        : WarmPoolLoop.RunAsync(FillWarmOnceAsync, _work,
            // A full disk, a broken initdb.
            ex => ex is IOException or InvalidOperationException or UnauthorizedAccessException or TimeoutException, _logger, ct);

    /// <summary>Adds one entry when the pool is short (true), or trims it; false when nothing was to do.</summary>
    public async Task<bool> FillWarmOnceAsync(CancellationToken ct)
    {
        var identity = await GetIdentityAsync(ct);
        await _warmLock.WaitAsync(ct);
        string entry;
        try
        {
            EnsureDataRoot(identity);
            EnsureOwnedDirectory(WarmRoot, identity);
            var entries = Directory.EnumerateDirectories(WarmRoot).Order(StringComparer.Ordinal).ToList();
            foreach (var half in entries.Where(d => !File.Exists(Path.Combine(d, WarmReady)))) Directory.Delete(half, recursive: true);
            var ready = entries.Where(d => File.Exists(Path.Combine(d, WarmReady))).ToList();
            foreach (var extra in ready.Skip(Math.Max(0, _options.WarmPool))) Directory.Delete(extra, recursive: true);
            if (ready.Count >= _options.WarmPool) return false;
            entry = Path.Combine(WarmRoot, Guid.NewGuid().ToString("N"));
            EnsureOwnedDirectory(entry, identity);
        }
        finally
        {
            _warmLock.Release();
        }
        // Outside the lock: a claim need not wait for an initdb. The entry is not ready until its file says so.
        var pgData = Path.Combine(entry, "pgdata");
        var result = await InitDbAsync(new Credentials(DatabaseAdmin.SuperuserName, Dingo.Postgres.Secrets.Password()), entry, pgData, identity, ct, background: true);
        if (result.ExitCode != 0)
        {
            Directory.Delete(entry, recursive: true);
            throw new InvalidOperationException($"initdb failed with exit code {result.ExitCode}: {LastLines(result.StdErr)}");
        }
        // As the Docker runtime's fill: the application database (every instance's is the record's default) made here,
        // where it costs a provision nothing (the first primary's preparation made it, a copy of template1 through the WAL),
        // then the WAL moved on to a new segment: a new primary's archiver starts at the segment it writes in, and the
        // 11.5 MB of WAL initdb and that copy wrote (of no use to any restore: none comes before the first base backup)
        // stay behind. Single-user mode, as a claim's password: no listener, nothing logged.
        var made = await SingleUserAsync(identity, entry, pgData, $"CREATE DATABASE \"{WarmDatabase}\"\nSELECT pg_switch_wal()\n", ct, background: true);
        if (made.ExitCode != 0 || made.StdErr.Contains("ERROR", StringComparison.Ordinal) || made.StdErr.Contains("FATAL", StringComparison.Ordinal))
        {
            Directory.Delete(entry, recursive: true);
            throw new InvalidOperationException($"a warm data directory could not take the application database (exit {made.ExitCode}): {LastLines(made.StdErr)}");
        }
        // initdb fsynced its files itself (background), the single-user session its checkpoint: the ready file is written
        // last, then its folder flushed.
        await File.WriteAllTextAsync(Path.Combine(entry, WarmReady), DateTimeOffset.UtcNow.ToString("O", CultureInfo.InvariantCulture) + "\n", ct);
        AtomicFile.FlushFolder(entry);
        _logger.LogDebug("warm pool: {Count} of {Size} ready", WarmCount(), _options.WarmPool);
        return true;
    }

    /// <summary>
    /// Statements run in single-user mode on a data directory that is not serving: no listener, no authentication, the
    /// statements over stdin and none of them logged.
    /// </summary>
    private Task<ProcessResult> SingleUserAsync(RunIdentity identity, string workDir, string pgData, string statements, CancellationToken ct, bool background = false) =>
        RunToolWithInputAsync(identity, "postgres", workDir, ct, null, statements,
            ["--single", "-D", pgData, "-c", "log_min_error_statement=panic", "-c", "log_statement=none", "postgres"], background);

    /// <summary>The application database a warm entry holds: every instance's, the record's default.</summary>
    internal const string WarmDatabase = "dingo";

    /// <summary>Moves a ready entry into the node's folder and gives it the node's superuser password; false when none could be.</summary>
    private async Task<bool> TryClaimWarmAsync(NodeLaunchSpec spec, NodePaths paths, RunIdentity identity, CancellationToken ct)
    {
        if (_options.WarmPool <= 0 || spec.Superuser.Username != DatabaseAdmin.SuperuserName || !Directory.Exists(WarmRoot)) return false;
        await _warmLock.WaitAsync(ct);
        try
        {
            var taken = false;
            foreach (var entry in Directory.EnumerateDirectories(WarmRoot).Where(d => File.Exists(Path.Combine(d, WarmReady))).Order(StringComparer.Ordinal).ToList())
            {
                try
                {
                    Directory.Move(Path.Combine(entry, "pgdata"), paths.PgData);
                    taken = true;
                }
                catch (IOException ex)
                {
                    _logger.LogWarning("warm pool: could not take {Entry}: {Error}; removing it", Path.GetFileName(entry), ex.Message);
                }
                Directory.Delete(entry, recursive: true);
                if (taken) break;
            }
            if (!taken) return false;
            _work.Touch();
        }
        finally
        {
            _warmLock.Release();
        }
        // Single-user mode: no listener, no authentication; the statement arrives over stdin and no statement is logged.
        var role = spec.Superuser.Username.Replace("\"", "\"\"", StringComparison.Ordinal);
        var password = spec.Superuser.Password.Replace("'", "''", StringComparison.Ordinal);
        var result = await SingleUserAsync(identity, paths.NodeDir, paths.PgData, $"ALTER ROLE \"{role}\" PASSWORD '{password}'\n", ct);
        if (result.ExitCode == 0 && !result.StdErr.Contains("ERROR", StringComparison.Ordinal)) return true;
        _logger.LogWarning("Node {NodeId}: a warm data directory could not take the instance's password (exit {Code}): {Error}; running initdb instead",
            spec.NodeId, result.ExitCode, LastLines(result.StdErr));
        Directory.Delete(paths.PgData, recursive: true);
        return false;
    }

    public async Task StartAsync(NodeLaunchSpec spec, StandbyConfig? standby, CancellationToken cancellationToken)
    {
        // A replica's start follows its clone: no application waits for it.
        using var work = _work.Begin(serving: standby?.Primary is null);
        ArgumentNullException.ThrowIfNull(spec);
        var paths = PathsFor(spec.NodeId);
        using var _ = await _nodeLocks.LockAsync(spec.NodeId, cancellationToken);
        await RecordInstanceAsync(spec.NodeId, spec.InstanceId, cancellationToken);

        if (FindRunningPostmaster(paths) is not null)
            return;
        if (!File.Exists(paths.Marker))
            throw new InvalidOperationException($"Node {spec.NodeId} cannot start: its data directory is not initialised.");

        var identity = await GetIdentityAsync(cancellationToken);
        EnsureDataRoot(identity);
        EnsureOwnedDirectory(paths.NodeDir, identity);
        EnsureOwnedDirectory(paths.RunDir, identity);

        // A killed postmaster leaves children for a moment, plus postmaster.pid and socket lock files naming its PID.
        // PostgreSQL treats that PID as alive if it was reused or lingers as an unreaped zombie (kill(pid, 0)
        // succeeds on zombies), and refuses to start. Clear them once no PostgreSQL process works in this folder.
        await KillLeftoversAsync(paths, cancellationToken);
        if (File.Exists(paths.PidFile))
        {
            _logger.LogInformation("Node {NodeId}: removing stale postmaster.pid", spec.NodeId);
            File.Delete(paths.PidFile);
        }
        foreach (var stale in Directory.EnumerateFiles(paths.RunDir, ".s.PGSQL.*"))
            File.Delete(stale);

        await WriteSettingsAsync(spec, standby, paths, identity, cancellationToken);
        await EnsureIncludeLineAsync(paths, cancellationToken);
        // standby.signal decides whether PostgreSQL comes up read-only; a node never starts writable by accident.
        var signal = Path.Combine(paths.PgData, "standby.signal");
        if (standby is not null)
        {
            await File.WriteAllTextAsync(signal, "", cancellationToken);
            ChownIfNeeded(signal, identity);
        }
        else if (File.Exists(signal))
        {
            File.Delete(signal);
        }

        // -W: return once launched; the caller probes readiness itself. Settings come from dingo.conf rather than
        // pg_ctl -o because pg_ctl passes -o through a shell.
        var result = await RunToolAsync(identity, "pg_ctl", paths.NodeDir, cancellationToken,
            "-D", paths.PgData, "-l", paths.LogFile, "-W", "start");
        if (result.ExitCode != 0)
            throw ToolFailure(spec.NodeId, "pg_ctl start", result);

        // pg_ctl -W returns before the postmaster has written postmaster.pid. Until it has, ListAsync would call the
        // node stopped and a second StartAsync would take the new postmaster for a leftover, so wait that long.
        var launched = Stopwatch.StartNew();
        while (FindRunningPostmaster(paths) is null)
        {
            if (launched.Elapsed > PostmasterLaunchTimeout)
                throw new InvalidOperationException(
                    $"Node {spec.NodeId}: postmaster did not start: {LastLines(ReadLogTail(paths.LogFile))}");
            await Task.Delay(20, cancellationToken);
        }
        _logger.LogInformation("Node {NodeId}: postmaster launched on {Address}:{Port}", spec.NodeId, spec.ListenAddress, spec.Port);
    }

    private static string ReadLogTail(string logFile)
    {
        try
        {
            using var stream = new FileStream(logFile, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
            stream.Seek(Math.Max(0, stream.Length - 4096), SeekOrigin.Begin);
            using var reader = new StreamReader(stream);
            return reader.ReadToEnd();
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException or IOException or UnauthorizedAccessException)
        {
            return "";
        }
    }

    public Task<int?> PostmasterPidAsync(string nodeId, CancellationToken cancellationToken) =>
        Task.FromResult(FindRunningPostmaster(PathsFor(nodeId)));

    public async Task<IReadOnlyList<string>> AddTimelineHistoriesAsync(string nodeId, IReadOnlyList<TimelineHistoryFile> files, CancellationToken cancellationToken)
    {
        if (!OperatingSystem.IsLinux()) throw NotLinux();
        var paths = PathsFor(nodeId);
        var pgWal = Path.Combine(paths.PgData, "pg_wal");
        if (!Directory.Exists(pgWal)) throw new InvalidOperationException($"Node {nodeId} has no pg_wal: its data directory is not initialised.");
        var identity = await GetIdentityAsync(cancellationToken);
        var written = new List<string>();
        foreach (var file in files)
        {
            cancellationToken.ThrowIfCancellationRequested();
            var target = Path.Combine(pgWal, file.Name);
            if (File.Exists(target)) continue;
            // Complete before it has its name (PostgreSQL may look at any moment); the name is taken only if still free.
            var temp = Path.Combine(pgWal, $".{file.Name}.{Guid.NewGuid():N}.tmp");
            try
            {
                await using (var stream = new FileStream(temp, new FileStreamOptions
                             {
                                 Mode = FileMode.CreateNew, Access = FileAccess.Write, UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite,
                             }))
                {
                    await stream.WriteAsync(file.Content, cancellationToken);
                    stream.Flush(flushToDisk: true);
                }
                ChownIfNeeded(temp, identity);
                // link(2) fails when the name exists: a file PostgreSQL (its walreceiver) wrote meanwhile wins.
                if (Native.link(temp, target) == 0) written.Add(file.Name);
                else if (Marshal.GetLastPInvokeError() is var errno && errno != Native.EExist)
                    throw new IOException($"Node {nodeId}: cannot write {target}: errno {errno}");
            }
            finally
            {
                File.Delete(temp);
            }
        }
        return written;
    }

    public async Task StopAsync(string nodeId, CancellationToken cancellationToken)
    {
        var paths = PathsFor(nodeId);
        using var _ = await _nodeLocks.LockAsync(nodeId, cancellationToken);
        await StopCoreAsync(nodeId, paths, "fast", cancellationToken);
    }

    public async Task RemoveAsync(string nodeId, CancellationToken cancellationToken)
    {
        var paths = PathsFor(nodeId);
        using var _ = await _nodeLocks.LockAsync(nodeId, cancellationToken);
        if (Directory.Exists(paths.NodeDir))
        {
            await StopCoreAsync(nodeId, paths, "immediate", cancellationToken);
            await KillLeftoversAsync(paths, cancellationToken);
            Directory.Delete(paths.NodeDir, recursive: true);
            _logger.LogInformation("Node {NodeId}: removed", nodeId);
        }
        // Last: data without its instance record would be kept for ever.
        if (File.Exists(InstanceFile(nodeId)))
        {
            File.Delete(InstanceFile(nodeId));
            if (OperatingSystem.IsLinux()) AtomicFile.FlushFolder(_dataRoot);
        }
        _instances.TryRemove(nodeId, out string? _);
    }

    private async Task StopCoreAsync(string nodeId, NodePaths paths, string mode, CancellationToken cancellationToken)
    {
        _access.Forget(nodeId);
        if (FindRunningPostmaster(paths) is not { } pid)
            return;

        var identity = await GetIdentityAsync(cancellationToken);
        // pg_ctl -W: send the signal and return. Its own wait watches postmaster.pid, which a postmaster killed meanwhile
        // (by the fencing guard, say) leaves behind: it would wait out the whole timeout for a process long gone.
        var result = await RunToolAsync(identity, "pg_ctl", paths.NodeDir, cancellationToken, "-D", paths.PgData, "-m", mode, "-W", "stop");
        if (result.ExitCode == 0 && await WaitForExitAsync(pid, _options.StopTimeout, cancellationToken))
        {
            _logger.LogInformation("Node {NodeId}: stopped ({Mode})", nodeId, mode);
            return;
        }
        if (!IsAlive(pid)) return;

        _logger.LogWarning("Node {NodeId}: pg_ctl stop did not stop it ({Error}); signalling pid {Pid}", nodeId, LastLines(result.StdErr), pid);
        await KillPostmasterAsync(nodeId, pid, cancellationToken);
    }

    /// <summary>SIGTERM, a grace period, then SIGKILL; returns once the postmaster is gone or a zombie.</summary>
    private async Task KillPostmasterAsync(string nodeId, int pid, CancellationToken cancellationToken)
    {
        _ = Native.kill(pid, SigTerm);
        if (await WaitForExitAsync(pid, TimeSpan.FromSeconds(10), cancellationToken))
            return;
        _logger.LogWarning("Node {NodeId}: pid {Pid} ignored SIGTERM; sending SIGKILL", nodeId, pid);
        _ = Native.kill(pid, SigKill);
        if (!await WaitForExitAsync(pid, TimeSpan.FromSeconds(10), cancellationToken))
            throw new InvalidOperationException($"Node {nodeId}: postmaster pid {pid} survived SIGKILL.");
    }

    private static async Task<bool> WaitForExitAsync(int pid, TimeSpan timeout, CancellationToken cancellationToken)
    {
        var deadline = Stopwatch.StartNew();
        while (IsAlive(pid))
        {
            if (deadline.Elapsed > timeout)
                return false;
            await Task.Delay(50, cancellationToken);
        }
        return true;
    }

    /// <summary>
    /// Children of a killed postmaster keep the data directory busy until they notice; give them a moment, then
    /// kill them. They are recognised by their working directory, which every PostgreSQL process sets to PGDATA.
    /// </summary>
    private async Task KillLeftoversAsync(NodePaths paths, CancellationToken cancellationToken)
    {
        var deadline = Stopwatch.StartNew();
        while (true)
        {
            var leftovers = FindProcessesInDataDir(paths.PgData);
            if (leftovers.Count == 0)
                return;
            if (deadline.Elapsed > TimeSpan.FromSeconds(5))
            {
                _logger.LogWarning("Killing {Count} leftover PostgreSQL processes in {Dir}", leftovers.Count, paths.NodeDir);
                foreach (var pid in leftovers)
                    _ = Native.kill(pid, SigKill);
                if (deadline.Elapsed > TimeSpan.FromSeconds(15))
                    throw new InvalidOperationException($"PostgreSQL processes in {paths.NodeDir} do not exit.");
            }
            await Task.Delay(50, cancellationToken);
        }
    }

    /// <summary>The postmaster PID from postmaster.pid if that process is alive, not a zombie, and really our postmaster.</summary>
    private static int? FindRunningPostmaster(NodePaths paths)
    {
        string? firstLine;
        try
        {
            using var reader = new StreamReader(paths.PidFile);
            firstLine = reader.ReadLine();
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException or UnauthorizedAccessException or IOException)
        {
            return null;
        }
        if (!int.TryParse(firstLine?.Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out var pid) || pid <= 0)
            return null;
        if (!IsAlive(pid))
            return null;
        return IsPostmasterFor(pid, paths.PgData) ? pid : null;
    }

    /// <summary>Alive and not a zombie: an unreaped dead postmaster still holds its PID.</summary>
    private static bool IsAlive(int pid) => Dingo.ProcStat.Read(pid) is { Zombie: false };

    /// <summary>PIDs get reused, so check the process is postgres and works on this data directory.</summary>
    private static bool IsPostmasterFor(int pid, string pgData)
    {
        string[] args;
        try
        {
            args = File.ReadAllText($"/proc/{pid}/cmdline").Split('\0', StringSplitOptions.RemoveEmptyEntries);
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException or IOException or UnauthorizedAccessException)
        {
            return false;
        }
        if (args.Length == 0)
            return false;
        var exe = Path.GetFileName(args[0]);
        if (exe is not ("postgres" or "postmaster"))
            return false;
        if (args.Contains(pgData, StringComparer.Ordinal))
            return true;
        // Started with a relative -D or PGDATA from the environment: the postmaster's cwd is the data directory.
        return SameDirectory(ReadCwd(pid), pgData);
    }

    private static List<int> FindProcessesInDataDir(string pgData)
    {
        var found = new List<int>();
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), NumberStyles.None, CultureInfo.InvariantCulture, out var pid))
                continue;
            if (!SameDirectory(ReadCwd(pid), pgData) || !IsAlive(pid))
                continue;
            string comm;
            try
            {
                comm = File.ReadAllText($"/proc/{pid}/comm").Trim();
            }
            catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException or IOException)
            {
                continue;
            }
            // Only PostgreSQL processes: never a shell or tool that happens to sit in that folder.
            if (comm.StartsWith("postgres", StringComparison.Ordinal) || comm == "postmaster")
                found.Add(pid);
        }
        return found;
    }

    private static string? ReadCwd(int pid)
    {
        try
        {
            return new DirectoryInfo($"/proc/{pid}/cwd").LinkTarget;
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException or IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    private static bool SameDirectory(string? a, string b) =>
        a is not null && string.Equals(Path.TrimEndingDirectorySeparator(a), Path.TrimEndingDirectorySeparator(b), StringComparison.Ordinal);

    /// <summary>initdb into <paramref name="pgData"/> (C.UTF-8, or C where that locale is missing): without sync in the
    /// foreground (the caller flushes), with initdb's own fsync in the background.</summary>
    private async Task<ProcessResult> InitDbAsync(Credentials superuser, string workDir, string pgData, RunIdentity identity, CancellationToken cancellationToken, bool background = false)
    {
        var result = await RunInitDbAsync(superuser, workDir, pgData, identity, "C.UTF-8", cancellationToken, background);
        if (result.ExitCode != 0 && result.StdErr.Contains("locale", StringComparison.OrdinalIgnoreCase))
        {
            _logger.LogWarning("initdb: locale C.UTF-8 unavailable, falling back to C");
            if (Directory.Exists(pgData))
                Directory.Delete(pgData, recursive: true);
            result = await RunInitDbAsync(superuser, workDir, pgData, identity, "C", cancellationToken, background);
        }
        return result;
    }

    private async Task<ProcessResult> RunInitDbAsync(Credentials superuser, string workDir, string pgData, RunIdentity identity, string locale, CancellationToken cancellationToken, bool background = false)
    {
        // The password reaches initdb only through a file that only the run user can read and that lives only as long as initdb.
        if (!OperatingSystem.IsLinux())
            throw NotLinux();
        var pwFile = Path.Combine(workDir, ".pwfile");
        try
        {
            if (File.Exists(pwFile))
                File.Delete(pwFile);
            var fileOptions = new FileStreamOptions
            {
                Mode = FileMode.CreateNew,
                Access = FileAccess.Write,
                UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite,
            };
            await using (var stream = new FileStream(pwFile, fileOptions))
            await using (var writer = new StreamWriter(stream, new UTF8Encoding(false)))
                await writer.WriteAsync(superuser.Password.AsMemory(), cancellationToken);
            ChownIfNeeded(pwFile, identity);

            // In the foreground, --no-sync and one syncfs after (the caller's): fastest for the node waiting on it. In the
            // background (the warm pool), initdb's own fsync of its files: slower, but it does not flush every other
            // process's dirty pages as syncfs does, which stalled the next node's start beside a refill.
            string[] sync = background ? [] : ["--no-sync"];
            return await RunToolWithInputAsync(identity, "initdb", workDir, cancellationToken, null, null, [
                "-D", pgData,
                "-U", superuser.Username,
                "--pwfile=" + pwFile,
                "--auth-local=scram-sha-256",
                "--auth-host=scram-sha-256",
                "--data-checksums",
                .. sync,
                "-E", "UTF8",
                "--locale=" + locale], background);
        }
        finally
        {
            File.Delete(pwFile);
        }
    }

    public async Task ConfigureStandbyAsync(NodeLaunchSpec spec, StandbyConfig standby, CancellationToken cancellationToken)
    {
        var paths = PathsFor(spec.NodeId);
        using var _ = await _nodeLocks.LockAsync(spec.NodeId, cancellationToken);
        var identity = await GetIdentityAsync(cancellationToken);
        await WriteSettingsAsync(spec, standby, paths, identity, cancellationToken);
    }

    public async Task CloneAsync(NodeLaunchSpec spec, ReplicationSource source, CancellationToken cancellationToken)
    {
        using var work = _work.Begin(serving: false);
        var paths = PathsFor(spec.NodeId);
        using var _ = await _nodeLocks.LockAsync(spec.NodeId, cancellationToken);
        await RecordInstanceAsync(spec.NodeId, spec.InstanceId, cancellationToken);
        var identity = await DiscardDataAsync(spec.NodeId, paths, cancellationToken);
        var passfile = await WritePassfileAsync(paths, source, identity, cancellationToken);
        var tlsDir = await WriteClientTlsFilesAsync(paths, identity, cancellationToken);
        try
        {
            var env = new Dictionary<string, string> { ["PGPASSFILE"] = passfile, ["PGSSLMODE"] = tlsDir is null ? "prefer" : "verify-full" };
            if (tlsDir is not null)
            {
                env["PGSSLROOTCERT"] = Path.Combine(tlsDir, NodeTlsFiles.CaFile);
                env["PGSSLCERT"] = Path.Combine(tlsDir, NodeTlsFiles.ClientCertFile);
                env["PGSSLKEY"] = Path.Combine(tlsDir, NodeTlsFiles.ClientKeyFile);
            }
            var result = await RunToolWithEnvAsync(identity, "pg_basebackup", paths.NodeDir, cancellationToken, env,
                "-h", source.Host, "-p", source.Port.ToString(CultureInfo.InvariantCulture), "-U", source.Credentials.Username,
                "-D", paths.PgData, "-X", "stream", "-c", "fast", "-w", "--no-sync");
            if (result.ExitCode != 0) throw ToolFailure(spec.NodeId, "pg_basebackup", result);
        }
        finally
        {
            File.Delete(passfile);
        }
        await EnsureIncludeLineAsync(paths, cancellationToken);
        await File.WriteAllTextAsync(paths.Marker, DateTimeOffset.UtcNow.ToString("O", CultureInfo.InvariantCulture) + "\n", cancellationToken);
        ChownIfNeeded(paths.Marker, identity);
        _logger.LogInformation("Node {NodeId}: cloned from {Host}:{Port}", spec.NodeId, source.Host, source.Port);
    }

    /// <summary>
    /// Before a clone or a restore replaces the node's data: nothing of it runs, and the marker goes first, so a job
    /// cut short never passes for a complete data directory. The caller holds the node's lock.
    /// </summary>
    private async Task<RunIdentity> DiscardDataAsync(string nodeId, NodePaths paths, CancellationToken ct)
    {
        var identity = await GetIdentityAsync(ct);
        EnsureDataRoot(identity);
        EnsureOwnedDirectory(paths.NodeDir, identity);
        EnsureOwnedDirectory(paths.RunDir, identity);
        if (FindRunningPostmaster(paths) is { } pid) await KillPostmasterAsync(nodeId, pid, ct);
        await KillLeftoversAsync(paths, ct);
        if (File.Exists(paths.Marker)) File.Delete(paths.Marker);
        if (Directory.Exists(paths.PgData)) Directory.Delete(paths.PgData, recursive: true);
        return identity;
    }

    public async Task RestoreAsync(NodeLaunchSpec spec, RestoreInput input, CancellationToken cancellationToken)
    {
        using var work = _work.Begin();
        var paths = PathsFor(spec.NodeId);
        using var _ = await _nodeLocks.LockAsync(spec.NodeId, cancellationToken);
        await RecordInstanceAsync(spec.NodeId, spec.InstanceId, cancellationToken);
        var identity = await DiscardDataAsync(spec.NodeId, paths, cancellationToken);
        Directory.CreateDirectory(paths.PgData, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        await System.Formats.Tar.TarFile.ExtractToDirectoryAsync(Path.Combine(input.BackupDir, "base.tar"), paths.PgData, overwriteFiles: true, cancellationToken);
        var walTar = Path.Combine(input.BackupDir, "pg_wal.tar");
        if (File.Exists(walTar))
            await System.Formats.Tar.TarFile.ExtractToDirectoryAsync(walTar, Path.Combine(paths.PgData, "pg_wal"), overwriteFiles: true, cancellationToken);
        foreach (var stray in new[] { "standby.signal", "recovery.signal", "postmaster.pid", "postmaster.opts" })
            File.Delete(Path.Combine(paths.PgData, stray));
        ChownTree(paths.PgData, identity);
        ChownTree(input.WalDir, identity);
        EnsureTraversable(input.WalDir, identity);

        await WriteSettingsAsync(spec, null, paths, identity, cancellationToken);
        await EnsureIncludeLineAsync(paths, cancellationToken);
        var target = input.TargetTime;
        long recoveryLogStart = 0;
        for (var attempt = 0; ; attempt++)
        {
            await WriteRestoreSettingsAsync(paths, input.WalDir, target, identity, cancellationToken);
            var signal = Path.Combine(paths.PgData, "recovery.signal");
            await File.WriteAllTextAsync(signal, "", cancellationToken);
            ChownIfNeeded(signal, identity);
            var logStart = recoveryLogStart = File.Exists(paths.LogFile) ? new FileInfo(paths.LogFile).Length : 0;
            var result = await RunToolAsync(identity, "pg_ctl", paths.NodeDir, cancellationToken, "-D", paths.PgData, "-l", paths.LogFile, "-W", "start");
            if (result.ExitCode != 0) throw ToolFailure(spec.NodeId, "pg_ctl start (restore)", result);
            var outcome = await WaitForRecoveryAsync(paths, logStart, cancellationToken);
            if (outcome == RecoveryOutcome.Promoted) break;
            if (outcome == RecoveryOutcome.TargetNotReached && target is not null && attempt == 0)
            {
                // Nothing was committed after the target: every archived commit is older, so replaying all of it is
                // exactly the requested point in time.
                _logger.LogInformation("Node {NodeId}: no commit after {Target:O} in the archive; recovering to its end", spec.NodeId, target);
                target = null;
                await KillLeftoversAsync(paths, cancellationToken);
                continue;
            }
            throw new InvalidOperationException($"Node {spec.NodeId}: recovery from the backup failed: {LastLines(ReadLogTail(paths.LogFile), 8)}");
        }

        // Promoted is not enough: recovery also ends early where WAL is missing. The node counts as restored (marker)
        // only once it reached what was asked.
        var end = Dingo.Backups.RecoveryEnd.ReadFromPgWal(Path.Combine(paths.PgData, "pg_wal"));
        var verdict = Dingo.Backups.RestoreVerification.Decide(input.Goal, end,
            end is null ? null : Dingo.Backups.RestoreVerification.RecordEndAt(input.WalDir, end.Timeline, end.Lsn,
                Dingo.Backups.RestoreVerification.RedoDoneAt(ReadLogSince(paths.LogFile, recoveryLogStart)), Dingo.Backups.WalSegment.DefaultSize));
        if (!verdict.Ok)
        {
            await StopCoreAsync(spec.NodeId, paths, "immediate", cancellationToken);
            throw new Dingo.Backups.RestoreException(verdict.Sentence);
        }
        _logger.LogInformation("Node {NodeId}: {Verdict}", spec.NodeId, verdict.Sentence);

        // The restored roles carry the source's passwords: give the superuser this instance's password.
        await SetSuperuserPasswordAsync(paths, spec.Port, spec.Superuser, cancellationToken);
        await StopCoreAsync(spec.NodeId, paths, "fast", cancellationToken);
        File.Delete(Path.Combine(paths.NodeDir, RestoreSettingsFileName));
        File.Delete(Path.Combine(paths.NodeDir, "restore_hba.conf"));
        await File.WriteAllTextAsync(paths.Marker, DateTimeOffset.UtcNow.ToString("O", CultureInfo.InvariantCulture) + "\n", cancellationToken);
        ChownIfNeeded(paths.Marker, identity);
        _logger.LogInformation("Node {NodeId}: restored from a base backup and archived WAL (target {Target})", spec.NodeId, input.TargetTime?.ToString("O") ?? "latest");
    }

    private const string RestoreSettingsFileName = "restore.conf";
    private enum RecoveryOutcome { Promoted, TargetNotReached, Failed }

    /// <summary>
    /// Recovery settings for one restore, outside the data directory and included after dingo.conf: WAL comes from
    /// the local archive copy, connections only over a private socket with trust (to set the password after).
    /// </summary>
    private async Task WriteRestoreSettingsAsync(NodePaths paths, string walDir, DateTimeOffset? target, RunIdentity identity, CancellationToken ct)
    {
        var hba = Path.Combine(paths.NodeDir, "restore_hba.conf");
        await File.WriteAllTextAsync(hba, "local all all trust\n", ct);
        ChownIfNeeded(hba, identity);
        var conf = new StringBuilder()
            .AppendLine("# A restore in progress (Dingo); removed when it ends.")
            .AppendLine(CultureInfo.InvariantCulture, $"restore_command = {NodeSettings.Quote($"cp '{walDir}/%f' '%p'")}")
            .AppendLine("recovery_target_timeline = 'latest'")
            .AppendLine("recovery_target_action = 'promote'")
            .AppendLine("listen_addresses = ''")
            .AppendLine("unix_socket_permissions = 0700")
            .AppendLine(CultureInfo.InvariantCulture, $"hba_file = {NodeSettings.Quote(hba)}");
        if (target is { } t)
            conf.AppendLine(CultureInfo.InvariantCulture, $"recovery_target_time = {NodeSettings.Quote(t.UtcDateTime.ToString("yyyy-MM-dd HH:mm:ss.ffffff", CultureInfo.InvariantCulture) + "+00")}")
                .AppendLine("recovery_target_inclusive = false");
        var file = Path.Combine(paths.NodeDir, RestoreSettingsFileName);
        await File.WriteAllTextAsync(file, conf.ToString(), ct);
        ChownIfNeeded(file, identity);
        var postgresqlConf = Path.Combine(paths.PgData, "postgresql.conf");
        var line = $"include_if_exists = {NodeSettings.Quote(file)}";
        var text = await File.ReadAllTextAsync(postgresqlConf, ct);
        if (!text.Contains(line, StringComparison.Ordinal))
            await File.AppendAllTextAsync(postgresqlConf, $"\n# Recovery settings while Dingo restores this node.\n{line}\n", ct);
    }

    private async Task<RecoveryOutcome> WaitForRecoveryAsync(NodePaths paths, long logStart, CancellationToken ct)
    {
        var signal = Path.Combine(paths.PgData, "recovery.signal");
        var watch = Stopwatch.StartNew();
        while (watch.Elapsed < _options.ToolTimeout)
        {
            var running = FindRunningPostmaster(paths) is not null;
            if (running && !File.Exists(signal) && ReadLogSince(paths.LogFile, logStart).Contains("database system is ready to accept connections", StringComparison.Ordinal))
                return RecoveryOutcome.Promoted;
            if (!running && watch.Elapsed > TimeSpan.FromSeconds(2))
            {
                var log = ReadLogSince(paths.LogFile, logStart);
                return log.Contains("recovery ended before configured recovery target was reached", StringComparison.Ordinal)
                    ? RecoveryOutcome.TargetNotReached : RecoveryOutcome.Failed;
            }
            await Task.Delay(100, ct);
        }
        return RecoveryOutcome.Failed;
    }

    private static string ReadLogSince(string logFile, long offset)
    {
        try
        {
            using var stream = new FileStream(logFile, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
            stream.Seek(Math.Min(offset, stream.Length), SeekOrigin.Begin);
            using var reader = new StreamReader(stream);
            return reader.ReadToEnd();
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException or IOException)
        {
            return "";
        }
    }

    private static async Task SetSuperuserPasswordAsync(NodePaths paths, int port, Credentials superuser, CancellationToken ct)
    {
        var cs = new Npgsql.NpgsqlConnectionStringBuilder
        {
            Host = paths.RunDir, Port = port, Username = superuser.Username, Database = "postgres", Pooling = false, Timeout = 10,
        };
        await using var conn = new Npgsql.NpgsqlConnection(cs.ConnectionString);
        await conn.OpenAsync(ct);
        // Letters and digits only (Secrets.Password), so the literal needs no escaping beyond quotes.
        await using var cmd = new Npgsql.NpgsqlCommand($"ALTER ROLE \"{superuser.Username}\" PASSWORD '{superuser.Password.Replace("'", "''", StringComparison.Ordinal)}'", conn);
        await cmd.ExecuteNonQueryAsync(ct);
    }

    private static void ChownTree(string root, RunIdentity identity)
    {
        if (!identity.SwitchUser) return;
        ChownIfNeeded(root, identity);
        foreach (var entry in Directory.EnumerateFileSystemEntries(root, "*", SearchOption.AllDirectories))
            ChownIfNeeded(entry, identity);
    }

    /// <summary>The run user must reach a folder outside the data root (the restore's WAL copy).</summary>
    private void EnsureTraversable(string path, RunIdentity identity)
    {
        if (!identity.SwitchUser || !OperatingSystem.IsLinux()) return;
        for (var dir = new DirectoryInfo(path).Parent; dir is not null && dir.Parent is not null; dir = dir.Parent)
        {
            var mode = File.GetUnixFileMode(dir.FullName);
            if ((mode & UnixFileMode.OtherExecute) == 0) File.SetUnixFileMode(dir.FullName, mode | UnixFileMode.OtherExecute);
        }
    }

    public async Task RewindAsync(NodeLaunchSpec spec, ReplicationSource source, CancellationToken cancellationToken)
    {
        using var work = _work.Begin();
        var paths = PathsFor(spec.NodeId);
        using var _ = await _nodeLocks.LockAsync(spec.NodeId, cancellationToken);
        var identity = await GetIdentityAsync(cancellationToken);
        if (!File.Exists(paths.Marker)) throw new InvalidOperationException($"Node {spec.NodeId} cannot be rewound: its data directory is not initialised.");
        await StopCoreAsync(spec.NodeId, paths, "fast", cancellationToken);
        await KillLeftoversAsync(paths, cancellationToken);
        var passfile = await WritePassfileAsync(paths, source, identity, cancellationToken);
        var tlsDir = await WriteClientTlsFilesAsync(paths, identity, cancellationToken);
        try
        {
            var conninfo = $"host={source.Host} port={source.Port} user={source.Credentials.Username} dbname=postgres passfile={passfile} {NodeTlsFiles.ClientConninfo(tlsDir)}";
            // pg_rewind finishes crash recovery itself when the node was not shut down cleanly (PostgreSQL 13+).
            var result = await RunToolWithEnvAsync(identity, "pg_rewind", paths.NodeDir, cancellationToken, null,
                "-D", paths.PgData, "--source-server", conninfo);
            if (result.ExitCode != 0) throw ToolFailure(spec.NodeId, "pg_rewind", result);
        }
        finally
        {
            File.Delete(passfile);
        }
        // pg_rewind copied the source's settings; ours are rewritten at the next start.
        await EnsureIncludeLineAsync(paths, cancellationToken);
        _logger.LogInformation("Node {NodeId}: rewound to the timeline of {Host}:{Port}", spec.NodeId, source.Host, source.Port);
    }

    /// <summary>A libpq passfile readable only by the run user: passwords never go on a command line.</summary>
    private static async Task<string> WritePassfileAsync(NodePaths paths, ReplicationSource source, RunIdentity identity, CancellationToken ct)
    {
        var file = Path.Combine(paths.NodeDir, $".pgpass-{Guid.NewGuid():N}");
        await Dingo.Security.SecretFile.WriteAsync(file, $"*:*:*:{source.Credentials.Username}:{source.Credentials.Password}\n", ct);
        ChownIfNeeded(file, identity);
        return file;
    }

    private async Task WriteSettingsAsync(NodeLaunchSpec spec, StandbyConfig? standby, NodePaths paths, RunIdentity identity, CancellationToken cancellationToken)
    {
        var conf = new StringBuilder()
            .AppendLine("# Written by Dingo on every start; edits are overwritten.")
            .AppendLine(CultureInfo.InvariantCulture, $"port = {spec.Port}")
            .AppendLine(CultureInfo.InvariantCulture, $"listen_addresses = {NodeSettings.Quote(spec.ListenAddress)}")
            .AppendLine(CultureInfo.InvariantCulture, $"unix_socket_directories = {NodeSettings.Quote(paths.RunDir)}")
            .AppendLine(CultureInfo.InvariantCulture, $"shared_buffers = {NodeSettings.Quote(_options.SharedBuffers)}")
            .AppendLine(CultureInfo.InvariantCulture, $"max_connections = {_options.MaxConnections}")
            .AppendReplicationSettings()
            .AppendLine(CultureInfo.InvariantCulture, $"cluster_name = {NodeSettings.Quote(spec.NodeId)}")
            // TLS settings live in a file of their own, so a node that started before its cell knew the CA turns TLS on
            // at a reload (ssl is a reload setting).
            .AppendLine(CultureInfo.InvariantCulture, $"include_if_exists = {NodeSettings.Quote(Path.Combine(paths.TlsDir, NodeTlsFiles.ConfFile))}");
        var passfile = Path.Combine(paths.NodeDir, "replication.pgpass");
        string? tlsDir = null;
        if (standby?.Primary is { } primary)
        {
            // The password lives in a passfile of the run user, not in the settings file.
            await Dingo.Security.SecretFile.WriteAsync(passfile, $"*:*:*:{primary.Credentials.Username}:{primary.Credentials.Password}\n", cancellationToken);
            ChownIfNeeded(passfile, identity);
            tlsDir = await WriteClientTlsFilesAsync(paths, identity, cancellationToken);
        }
        conf.AppendStandbySettings(standby, passfile, tlsDir);
        await StripAutoConfAsync(paths, cancellationToken);

        // Write-then-rename so a crash never leaves the postmaster a truncated file.
        await WriteReplacingAsync(Path.Combine(paths.PgData, SettingsFileName), conf.ToString(), identity, cancellationToken);
        // pg_hba.conf stays where PostgreSQL looks by default, so a node started by an older cell is covered by a reload.
        await WriteAccessFilesAsync(paths, _access.ForStart(spec.NodeId, spec.Superuser.Username, spec.ListenAddress), identity, cancellationToken);
    }

    /// <summary>The node's TLS files (key 0600 from creation, folder 0700, outside the data directory so base backups
    /// and rewinds never copy a key), then pg_hba.conf. TLS files first: a reload never meets hostssl lines without them.</summary>
    private static async Task WriteAccessFilesAsync(NodePaths paths, NodeAccessFiles files, RunIdentity identity, CancellationToken ct)
    {
        if (files.Tls is { } tls)
        {
            EnsurePrivateDirectory(paths.TlsDir, identity);
            await Dingo.Security.SecretFile.WriteAsync(Path.Combine(paths.TlsDir, NodeTlsFiles.KeyFile), tls.KeyPem, ct);
            ChownIfNeeded(Path.Combine(paths.TlsDir, NodeTlsFiles.KeyFile), identity);
            await WriteReplacingAsync(Path.Combine(paths.TlsDir, NodeTlsFiles.CertFile), tls.CertificatePem, identity, ct);
            await WriteReplacingAsync(Path.Combine(paths.TlsDir, NodeTlsFiles.CaFile), tls.CaPem, identity, ct);
            await WriteClientCertificateAsync(paths, tls.ClientCertificatePem, tls.ClientKeyPem, identity, ct);
            await WriteReplacingAsync(Path.Combine(paths.TlsDir, NodeTlsFiles.ConfFile), NodeTlsFiles.Conf(paths.TlsDir), identity, ct);
        }
        await WriteReplacingAsync(Path.Combine(paths.PgData, "pg_hba.conf"), files.Hba, identity, ct);
    }

    /// <summary>
    /// The platform CA's certificate and this runtime's client certificate where libpq tools of this node read them;
    /// returns their folder, or null while no CA is known.
    /// </summary>
    private async Task<string?> WriteClientTlsFilesAsync(NodePaths paths, RunIdentity identity, CancellationToken ct)
    {
        if (_access.CaPem is not { } ca || _access.ClientCertificate() is not { } client) return null;
        EnsurePrivateDirectory(paths.TlsDir, identity);
        await WriteReplacingAsync(Path.Combine(paths.TlsDir, NodeTlsFiles.CaFile), ca, identity, ct);
        await WriteClientCertificateAsync(paths, client.CertificatePem, client.KeyPem, identity, ct);
        return paths.TlsDir;
    }

    /// <summary>The key first (0600 from creation, as libpq insists), then the certificate naming it.</summary>
    private static async Task WriteClientCertificateAsync(NodePaths paths, string certificatePem, string keyPem, RunIdentity identity, CancellationToken ct)
    {
        var key = Path.Combine(paths.TlsDir, NodeTlsFiles.ClientKeyFile);
        await Dingo.Security.SecretFile.WriteAsync(key, keyPem, ct);
        ChownIfNeeded(key, identity);
        await WriteReplacingAsync(Path.Combine(paths.TlsDir, NodeTlsFiles.ClientCertFile), certificatePem, identity, ct);
    }

    private static void EnsurePrivateDirectory(string path, RunIdentity identity)
    {
        if (!OperatingSystem.IsLinux()) throw NotLinux();
        if (Directory.Exists(path)) return;
        Directory.CreateDirectory(path, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        ChownIfNeeded(path, identity);
    }

    private static async Task WriteReplacingAsync(string target, string content, RunIdentity identity, CancellationToken cancellationToken)
    {
        var temp = target + ".tmp";
        await File.WriteAllTextAsync(temp, content, cancellationToken);
        ChownIfNeeded(temp, identity);
        File.Move(temp, target, overwrite: true);
    }

    public Dingo.Ha.HealthTls HealthApiTls(string nodeId) => _access.HealthApiTls(nodeId);

    public async Task ApplyPlatformAccessAsync(PlatformAccess access, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(access);
        if (_access.Set(access)) _logger.LogInformation("Platform roles may log in from: {Networks} (and local sockets); TLS {Tls}", string.Join(", ", access.Networks),
            access.Tls is null ? "not yet offered (no platform CA known)" : access.RequireTls ? $"required, certificates of {access.Tls}" : $"offered, certificates of {access.Tls}");
        // Only nodes whose files are due are looked at: the cell's pass calls this every second, and inspecting every node
        // (its pid file, its /proc entries) each time grew the idle cost of a cell with its node count.
        var due = NodeIds().Where(id => _access.Due(id) is not null).ToList();
        foreach (var nodeId in due)
        {
            if (await InspectAsync(nodeId, cancellationToken) is not { Running: true } node) continue;
            var paths = PathsFor(node.NodeId);
            using var _ = await _nodeLocks.LockAsync(node.NodeId, cancellationToken);
            // Checked again under the lock: a clone or a stop may have come in between.
            if (FindRunningPostmaster(paths) is not { } pid || _access.Due(node.NodeId) is not { } hba) continue;
            await WriteAccessFilesAsync(paths, hba, await GetIdentityAsync(cancellationToken), cancellationToken);
            if (Native.kill(pid, SigHup) != 0)
            {
                _logger.LogWarning("Node {NodeId}: could not signal pid {Pid} to reload pg_hba.conf (errno {Errno}); trying again next pass", node.NodeId, pid, Marshal.GetLastPInvokeError());
                continue;
            }
            _access.Applied(node.NodeId, hba);
            _logger.LogInformation("Node {NodeId}: pg_hba.conf{Tls} rewritten for the platform's current hosts and reloaded", node.NodeId, hba.Tls is null ? "" : " and TLS certificate");
        }
    }

    /// <summary>
    /// postgresql.auto.conf is read after our settings file and would override it: replication settings there
    /// (copied from another node by pg_basebackup or pg_rewind) must go.
    /// </summary>
    private static async Task StripAutoConfAsync(NodePaths paths, CancellationToken cancellationToken)
    {
        var auto = Path.Combine(paths.PgData, "postgresql.auto.conf");
        if (!File.Exists(auto)) return;
        var lines = await File.ReadAllLinesAsync(auto, cancellationToken);
        var kept = lines.Where(l => !l.TrimStart().StartsWith("primary_conninfo", StringComparison.Ordinal)
                                    && !l.TrimStart().StartsWith("primary_slot_name", StringComparison.Ordinal)).ToArray();
        if (kept.Length != lines.Length) await File.WriteAllLinesAsync(auto, kept, cancellationToken);
    }

    private static async Task EnsureIncludeLineAsync(NodePaths paths, CancellationToken cancellationToken)
    {
        var conf = Path.Combine(paths.PgData, "postgresql.conf");
        var text = await File.ReadAllTextAsync(conf, cancellationToken);
        if (text.Contains(IncludeLine, StringComparison.Ordinal))
            return;
        await File.AppendAllTextAsync(conf, $"\n# Dingo's per-node settings (port, addresses, sizing).\n{IncludeLine}\n", cancellationToken);
    }

    private Task<ProcessResult> RunToolAsync(RunIdentity identity, string tool, string workingDirectory, CancellationToken cancellationToken, params string[] args) =>
        RunToolWithEnvAsync(identity, tool, workingDirectory, cancellationToken, null, args);

    private Task<ProcessResult> RunToolWithEnvAsync(RunIdentity identity, string tool, string workingDirectory, CancellationToken cancellationToken, IReadOnlyDictionary<string, string>? env, params string[] args) =>
        RunToolWithInputAsync(identity, tool, workingDirectory, cancellationToken, env, null, args);

    /// <param name="stdin">written to the tool's standard input, then closed (never logged: it may carry a password)</param>
    /// <param name="background">at the lowest CPU priority (nice 19, inherited by what the tool starts): work ahead of
    /// need, such as the warm pool's initdb, must not slow a provision under way</param>
    private async Task<ProcessResult> RunToolWithInputAsync(RunIdentity identity, string tool, string workingDirectory, CancellationToken cancellationToken, IReadOnlyDictionary<string, string>? env, string? stdin, string[] args, bool background = false)
    {
        var binary = Path.Combine(_options.PostgresBin, tool);
        // The run user must be able to stat its cwd; the caller's cwd may be private to root.
        var psi = new ProcessStartInfo { WorkingDirectory = workingDirectory };
        if (identity.SwitchUser)
        {
            // setpriv execs the tool directly: no shell to interpret arguments.
            psi.FileName = "setpriv";
            psi.ArgumentList.Add($"--reuid={identity.Uid}");
            psi.ArgumentList.Add($"--regid={identity.Gid}");
            psi.ArgumentList.Add("--init-groups");
            psi.ArgumentList.Add(binary);
            psi.Environment["HOME"] = identity.Home;
            psi.Environment["USER"] = identity.UserName;
            psi.Environment["LOGNAME"] = identity.UserName;
        }
        else
        {
            psi.FileName = binary;
        }
        foreach (var arg in args)
            psi.ArgumentList.Add(arg);
        // Stray libpq/server variables from the caller's environment must not redirect the tools.
        foreach (var name in new[] { "PGDATA", "PGPORT", "PGHOST", "PGUSER", "PGPASSWORD", "PGOPTIONS", "PGPASSFILE" })
            psi.Environment.Remove(name);
        if (env is not null)
            foreach (var (name, value) in env) psi.Environment[name] = value;

        _logger.LogDebug("Running {Tool} {Args}", tool, string.Join(' ', args));
        return await ProcessRunner.RunAsync(psi, stdin, _options.ToolTimeout, cancellationToken, background, tool);
    }

    private static Exception ToolFailure(string nodeId, string tool, ProcessResult result) =>
        new InvalidOperationException($"Node {nodeId}: {tool} failed with exit code {result.ExitCode}: {LastLines(result.StdErr)}");

    /// <summary>
    /// Why the last start in a PostgreSQL log failed: its first FATAL or PANIC line after the last "starting PostgreSQL",
    /// when the server never became ready after it (a port another process holds, a damaged data directory). Null when
    /// the last start succeeded (a crash or kill later says nothing here) or the log has no start. Shown as the node's
    /// detail, so a node that cannot start says why in `dingo status` and the cell log, not just "stopped".
    /// </summary>
    internal static string? StartFailureIn(string logTail)
    {
        var lines = logTail.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        var start = Array.FindLastIndex(lines, l => l.Contains("] LOG:  starting PostgreSQL", StringComparison.Ordinal));
        if (start < 0) return null;
        string? fatal = null, bind = null;
        foreach (var line in lines.Skip(start + 1))
        {
            if (line.Contains("database system is ready to accept", StringComparison.Ordinal)) return null;
            var at = line.IndexOf("] FATAL:", StringComparison.Ordinal) is var f and >= 0 ? f : line.IndexOf("] PANIC:", StringComparison.Ordinal);
            if (fatal is null && at >= 0) fatal = Squeeze(line[(at + 2)..]);
            // "could not create any TCP/IP sockets" names no port or cause; the LOG line before it does.
            if (bind is null && line.IndexOf("] LOG:  could not bind", StringComparison.Ordinal) is var b and >= 0) bind = Squeeze(line[(b + 8)..]);
        }
        return fatal is null ? null : bind is null ? fatal : $"{fatal} ({bind})";

        static string Squeeze(string text) => string.Join(' ', text.Split(' ', StringSplitOptions.RemoveEmptyEntries));
    }

    private static string LastLines(string text, int count = 5)
    {
        var lines = text.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        return lines.Length == 0 ? "(no error output)" : string.Join(" | ", lines.TakeLast(count));
    }

    private NodePaths PathsFor(string nodeId)
    {
        if (!NodeIdRule.IsValid(nodeId))
            throw new ArgumentException($"Invalid node id '{nodeId}'.", nameof(nodeId));
        return new NodePaths(Path.Combine(_dataRoot, nodeId));
    }

    private async Task<RunIdentity> GetIdentityAsync(CancellationToken cancellationToken)
    {
        if (_identity is { } known)
            return known;
        await _identityLock.WaitAsync(cancellationToken);
        try
        {
            _identity ??= await ResolveIdentityAsync(cancellationToken);
            return _identity;
        }
        finally
        {
            _identityLock.Release();
        }
    }

    private async Task<RunIdentity> ResolveIdentityAsync(CancellationToken cancellationToken)
    {
        if (Native.geteuid() != 0)
            return new RunIdentity(false, 0, 0, "", "");
        if (string.IsNullOrWhiteSpace(_options.RunAsUser))
            throw new InvalidOperationException("Running as root needs RunAsUser: PostgreSQL refuses to run as root.");

        var psi = new ProcessStartInfo("getent");
        psi.ArgumentList.Add("passwd");
        psi.ArgumentList.Add(_options.RunAsUser);
        // Under the tools' deadline: a user database that hangs (a directory service away) fails the pass, not the cell.
        var lookup = await ProcessRunner.RunAsync(psi, null, _options.ToolTimeout, cancellationToken);
        // name:password:uid:gid:gecos:home:shell
        var fields = lookup.StdOut.Trim().Split(':');
        if (lookup.ExitCode != 0 || fields.Length < 6
            || !uint.TryParse(fields[2], NumberStyles.None, CultureInfo.InvariantCulture, out var uid)
            || !uint.TryParse(fields[3], NumberStyles.None, CultureInfo.InvariantCulture, out var gid))
            throw new InvalidOperationException($"User '{_options.RunAsUser}' not found: cannot run PostgreSQL as root.");
        if (uid == 0)
            throw new InvalidOperationException($"RunAsUser '{_options.RunAsUser}' is root: PostgreSQL refuses to run as root.");
        return new RunIdentity(true, uid, gid, fields[0], fields[5]);
    }

    private void EnsureDataRoot(RunIdentity identity)
    {
        if (!OperatingSystem.IsLinux())
            throw NotLinux();
        Directory.CreateDirectory(_dataRoot);
        if (!identity.SwitchUser)
            return;
        // The run user only needs to pass through DataRoot and its ancestors to reach its own node folders.
        for (var dir = new DirectoryInfo(_dataRoot); dir is not null && dir.Parent is not null; dir = dir.Parent)
        {
            var mode = File.GetUnixFileMode(dir.FullName);
            if ((mode & UnixFileMode.OtherExecute) != 0)
                continue;
            File.SetUnixFileMode(dir.FullName, mode | UnixFileMode.OtherExecute);
            _logger.LogInformation("Added o+x to {Dir} so {User} can reach the node folders", dir.FullName, identity.UserName);
        }
    }

    private static void EnsureOwnedDirectory(string path, RunIdentity identity)
    {
        if (!OperatingSystem.IsLinux())
            throw NotLinux();
        Directory.CreateDirectory(path, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute
            | UnixFileMode.GroupRead | UnixFileMode.GroupExecute);
        ChownIfNeeded(path, identity);
    }

    private static void ChownIfNeeded(string path, RunIdentity identity)
    {
        if (!identity.SwitchUser)
            return;
        if (Native.chown(path, identity.Uid, identity.Gid) != 0)
            throw new IOException($"chown {path} failed: errno {Marshal.GetLastPInvokeError()}");
    }

    // Checked inline where Unix-only file-mode APIs are used: the platform analyzer only trusts guards in the same method.
    private static PlatformNotSupportedException NotLinux() =>
        new("LocalProcessRuntime needs Linux (/proc, setpriv, PostgreSQL binaries).");

    private sealed record RunIdentity(bool SwitchUser, uint Uid, uint Gid, string UserName, string Home);

    private sealed class NodePaths(string nodeDir)
    {
        public string NodeDir { get; } = nodeDir;
        public string PgData { get; } = Path.Combine(nodeDir, "pgdata");
        public string LogFile { get; } = Path.Combine(nodeDir, "postgres.log");
        public string RunDir { get; } = Path.Combine(nodeDir, "run");
        public string TlsDir { get; } = Path.Combine(nodeDir, "tls");
        public string Marker { get; } = Path.Combine(nodeDir, MarkerFileName);
        public string PidFile { get; } = Path.Combine(nodeDir, "pgdata", "postmaster.pid");
    }

    private static class Native
    {
        [DllImport("libc", SetLastError = true)]
        public static extern int kill(int pid, int sig);

        [DllImport("libc")]
        public static extern uint geteuid();

        [DllImport("libc", SetLastError = true)]
        public static extern int chown([MarshalAs(UnmanagedType.LPUTF8Str)] string path, uint owner, uint group);

        [DllImport("libc", SetLastError = true)]
        public static extern int open([MarshalAs(UnmanagedType.LPUTF8Str)] string path, int flags);

        [DllImport("libc", SetLastError = true)]
        public static extern int syncfs(int fd);

        [DllImport("libc")]
        public static extern int close(int fd);

        [DllImport("libc", SetLastError = true)]
        public static extern int link([MarshalAs(UnmanagedType.LPUTF8Str)] string oldPath, [MarshalAs(UnmanagedType.LPUTF8Str)] string newPath);

        public const int EExist = 17;

        public const int ORdOnlyDirectory = 0x10000; // O_RDONLY | O_DIRECTORY (Linux)
    }

    /// <summary>
    /// Flushes the file system holding <paramref name="directory"/> (syncfs(2)): one call instead of initdb's fsync of
    /// every file it wrote, which on a busy disk takes seconds and slows every other node's fsyncs too.
    /// </summary>
    private static void SyncFileSystem(string directory)
    {
        var fd = Native.open(directory, Native.ORdOnlyDirectory);
        if (fd < 0) throw new IOException($"cannot open {directory} to flush it (errno {Marshal.GetLastPInvokeError()})");
        try
        {
            if (Native.syncfs(fd) != 0) throw new IOException($"flushing {directory} to disk failed (errno {Marshal.GetLastPInvokeError()})");
        }
        finally
        {
            Native.close(fd);
        }
    }
}
