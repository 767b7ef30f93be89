using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json;
using Dingo.Config;
using Dingo.Model;
using Dingo.Store;
using Microsoft.Extensions.Logging;

namespace Dingo.Ha;

/// <summary>
/// What a cell's guard needs beyond its folder to give a dead leader's key up (<see cref="DeadLeader"/>): how to reach
/// etcd, the HA timings and where events go. The cell writes it into the guard's folder (<c>guard.settings.json</c>)
/// each time it makes sure its guard runs; it names files, never holds a secret.
/// </summary>
public sealed record GuardSettings(IReadOnlyList<string> EtcdEndpoints, string EtcdPrefix, EtcdTlsSettings EtcdTls, TimeSpan Ttl,
    TimeSpan ReleaseDeadLeaderAfter, EventSettings Events, string CellId)
{
    public static GuardSettings From(DingoSettings s) =>
        new(s.EtcdEndpoints, s.EtcdPrefix, s.EtcdTls, s.Ha.Ttl, s.Ha.ReleaseDeadLeaderAfter, s.Events, s.Cell.Id);
}

/// <summary>The host's monotonic clock (CLOCK_MONOTONIC), the same in every process: deadlines handed to the guard use it.</summary>
public static class Monotonic
{
    public static long NowNs()
    {
        var ticks = Stopwatch.GetTimestamp();
        return Stopwatch.Frequency == 1_000_000_000 ? ticks : (long)(ticks * (1_000_000_000.0 / Stopwatch.Frequency));
    }

    public static TimeSpan Between(long fromNs, long toNs) => TimeSpan.FromTicks((toNs - fromNs) / 100);

    public static long Add(long ns, TimeSpan span) => ns + span.Ticks * 100;
}

/// <summary>
/// One leading node's arming: past <paramref name="DeadlineNs"/> (monotonic) the guard stops <paramref name="Postmaster"/>'s
/// process tree. The instance and the lease behind its leader key let a restarted agent renew at once, before its HA loop
/// runs again (<see cref="FenceGuardDirectory.Armed()"/>).
/// </summary>
public sealed record GuardArm(long DeadlineNs, ProcessIdentity Postmaster, string? InstanceId = null, long Lease = 0);


/// <summary>
/// The arming side of a cell's fencing guard (<see cref="FenceGuard"/>): a folder with one file per node that leads,
/// holding the moment (monotonic clock) after which its PostgreSQL must no longer accept writes unless the agent has
/// renewed the leader lease and moved that moment on. The guard is a separate process, so it enforces the deadline
/// when the HA pass blocks or the agent is SIGKILLed; the agent only writes files.
/// </summary>
public sealed class FenceGuardDirectory
{
    private const string ArmSuffix = ".arm";
    private const string FencedSuffix = ".fenced";
    internal const string LockFile = "guard.lock";
    internal const string StopFile = "guard.stop";
    internal const string LogFile = "guard.log";
    internal const string OwnerFile = "guard.owner";

    internal const string SettingsFile = "guard.settings.json";
    private const string SynchronousSuffix = ".sync";

    private readonly IReadOnlyList<string>? _launch;
    private readonly GuardSettings? _settings;
    private readonly object _launching = new();

    /// <param name="path">the cell's guard folder</param>
    /// <param name="launch">the command that runs the guard process for this folder (`--dir PATH` is appended); null when
    /// the caller starts the guard itself</param>
    /// <param name="settings">written into the folder for the guard each time <see cref="EnsureGuardRunningAsync"/> runs;
    /// null: left as it is (a guard without any does not release dead leaders' keys)</param>
    public FenceGuardDirectory(string path, IReadOnlyList<string>? launch, GuardSettings? settings = null)
    {
        Path = System.IO.Path.GetFullPath(path);
        _launch = launch;
        _settings = settings;
    }

    public string Path { get; }

    /// <summary>Arms (or moves on) the node's deadline. Written with a rename, so the guard never reads half a file.</summary>
    public void Arm(string nodeId, GuardArm arm)
    {
        CheckNodeId(nodeId);
        Replace(ArmPath(nodeId), FormattableString.Invariant($"{arm.DeadlineNs} {arm.Postmaster.Pid} {arm.Postmaster.StartTime} {arm.Lease} {arm.InstanceId ?? "-"}\n"));
    }

    /// <summary>
    /// Writes the file whole through a rename, so the guard never reads half of it. The temporary name is unique: a
    /// starting cell's lease bridge and the node's own loop may both write for a moment. Not flushed to disk: the
    /// files matter only while the processes that read them live.
    /// </summary>
    private void Replace(string file, string text)
    {
        Directory.CreateDirectory(Path);
        var temp = $"{file}.{Guid.NewGuid():N}.tmp";
        File.WriteAllText(temp, text);
        File.Move(temp, file, overwrite: true);
    }

    /// <summary>Every armed node and its arming, as the files say now.</summary>
    public IReadOnlyList<(string NodeId, GuardArm Arm)> Armed() =>
        ArmedNodes().Select(n => (n, Parse(ReadOrNull(ArmPath(n))))).Where(a => a.Item2 is not null).Select(a => (a.n, a.Item2!)).ToList();

    /// <summary>The node no longer needs guarding: its PostgreSQL is stopped or read-only.</summary>
    public void Disarm(string nodeId)
    {
        CheckNodeId(nodeId);
        try
        {
            File.Delete(ArmPath(nodeId));
            File.Delete(SynchronousPath(nodeId));
        }
        catch (DirectoryNotFoundException) { }
    }

    /// <summary>
    /// Whether the armed node leads a synchronous cluster: the guard then gives a dead leader's key up at once
    /// (<see cref="DeadLeader"/>). A file of its own beside the arming, whose format a guard of an older version reads.
    /// </summary>
    public void MarkSynchronous(string nodeId, bool synchronous)
    {
        CheckNodeId(nodeId);
        if (synchronous) Replace(SynchronousPath(nodeId), "synchronous\n");
        else
        {
            try { File.Delete(SynchronousPath(nodeId)); }
            catch (DirectoryNotFoundException) { }
        }
    }

    /// <summary>The node was last marked as leading a synchronous cluster.</summary>
    public bool MarkedSynchronous(string nodeId)
    {
        CheckNodeId(nodeId);
        return File.Exists(SynchronousPath(nodeId));
    }

    private string SynchronousPath(string nodeId) => System.IO.Path.Combine(Path, nodeId + SynchronousSuffix);

    /// <summary>The settings the cell last wrote for its guard, or null (none yet, or unreadable).</summary>
    public GuardSettings? ReadSettings()
    {
        var text = ReadOrNull(System.IO.Path.Combine(Path, SettingsFile));
        if (text is null) return null;
        try { return JsonSerializer.Deserialize<GuardSettings>(text); }
        catch (JsonException) { return null; }
    }

    /// <summary>The node's arming, or null when it is not armed.</summary>
    public GuardArm? Armed(string nodeId)
    {
        CheckNodeId(nodeId);
        return Parse(ReadOrNull(ArmPath(nodeId)));
    }

    /// <summary>What the guard did to the node since the last call (one sentence), or null; reading it clears it.</summary>
    public string? TakeFenced(string nodeId)
    {
        CheckNodeId(nodeId);
        var path = System.IO.Path.Combine(Path, nodeId + FencedSuffix);
        var text = ReadOrNull(path);
        if (text is null) return null;
        File.Delete(path);
        return text.Trim();
    }

    /// <summary>
    /// Records that the node confirmed <paramref name="leader"/> in failsafe mode at <paramref name="atNs"/>: it will not
    /// take the leader key for a TTL after that, even if its agent restarts meanwhile (the promise is read back on start).
    /// </summary>
    public void Promise(string nodeId, string leader, long atNs)
    {
        CheckNodeId(nodeId);
        CheckNodeId(leader);
        Replace(System.IO.Path.Combine(Path, nodeId + ".promise"), FormattableString.Invariant($"{leader} {atNs}\n"));
    }

    /// <summary>The node's last failsafe promise, or null.</summary>
    public (string Leader, long AtNs)? PromiseOf(string nodeId)
    {
        CheckNodeId(nodeId);
        var parts = ReadOrNull(System.IO.Path.Combine(Path, nodeId + ".promise"))?.Trim().Split(' ');
        return parts is [var leader, var at] && long.TryParse(at, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var ns) ? (leader, ns) : null;
    }

    /// <summary>A guard process holds the folder's lock.</summary>
    public bool GuardRunning()
    {
        var lockPath = System.IO.Path.Combine(Path, LockFile);
        if (!File.Exists(lockPath)) return false;
        var fd = Native.open(lockPath, Native.ORdOnly);
        if (fd < 0) return false;
        try
        {
            if (Native.flock(fd, Native.LockSh | Native.LockNb) == 0)
            {
                _ = Native.flock(fd, Native.LockUn);
                return false;
            }
            return true;
        }
        finally
        {
            _ = Native.close(fd);
        }
    }

    /// <summary>
    /// Starts the guard process when none runs (detached in a session of its own, so it outlives this process) and
    /// waits up to <paramref name="timeout"/> for it to hold its lock. False when it did not come up.
    /// </summary>
    public async Task<bool> EnsureGuardRunningAsync(TimeSpan timeout, CancellationToken ct)
    {
        ClaimOwnership();
        if (_settings is not null) Replace(System.IO.Path.Combine(Path, SettingsFile), JsonSerializer.Serialize(_settings));
        if (GuardRunning()) return true;
        if (_launch is null) return false;
        lock (_launching)
        {
            if (!GuardRunning())
            {
                Directory.CreateDirectory(Path);
                File.Delete(System.IO.Path.Combine(Path, StopFile));
                // setsid --fork: a new session, reparented away from this process, so SIGKILL of the agent (or of its
                // process group) leaves the guard running. Its working directory is the guard folder.
                var psi = new ProcessStartInfo("setsid") { UseShellExecute = false, WorkingDirectory = Path, RedirectStandardInput = true };
                psi.ArgumentList.Add("--fork");
                foreach (var a in _launch) psi.ArgumentList.Add(a);
                psi.ArgumentList.Add("--dir");
                psi.ArgumentList.Add(Path);
                using var p = Process.Start(psi) ?? throw new InvalidOperationException("could not start the fencing guard (setsid)");
                p.StandardInput.Close();
                p.WaitForExit(5000);
            }
        }
        var until = Monotonic.Add(Monotonic.NowNs(), timeout);
        while (Monotonic.NowNs() < until)
        {
            if (GuardRunning()) return true;
            await Task.Delay(20, ct).ConfigureAwait(false);
        }
        return GuardRunning();
    }

    /// <summary>Asks the guard to exit (the cell stopped cleanly: nothing of it leads any more) and waits up to 2 s.</summary>
    public async Task StopGuardAsync(CancellationToken ct)
    {
        if (!Directory.Exists(Path)) return;
        await File.WriteAllTextAsync(System.IO.Path.Combine(Path, StopFile), "stop\n", ct).ConfigureAwait(false);
        for (var i = 0; i < 100 && GuardRunning(); i++) await Task.Delay(20, ct).ConfigureAwait(false);
    }

    /// <summary>
    /// This process is the guard's owner from now on (a restarted cell takes over the guard its predecessor started): a
    /// guard with nothing armed whose owner is gone exits, so no guard outlives its cell for good, and a guard gives a
    /// dead leader's key up only while its owner is gone (<see cref="DeadLeader"/>). A restarted cell claims it first
    /// thing, before it builds anything: a cell back within `release-dead-leader-after` keeps its asynchronous leaders.
    /// </summary>
    public void ClaimOwnership()
    {
        if (ProcessIdentity.Of(Environment.ProcessId) is not { } me) return;
        Replace(System.IO.Path.Combine(Path, OwnerFile), FormattableString.Invariant($"{me.Pid} {me.StartTime}\n"));
    }

    /// <summary>The owner recorded is no longer running (false when none is recorded).</summary>
    internal bool OwnerGone()
    {
        var parts = ReadOrNull(System.IO.Path.Combine(Path, OwnerFile))?.Trim().Split(' ');
        if (parts is not [var pid, var start]) return false;
        if (!int.TryParse(pid, NumberStyles.None, CultureInfo.InvariantCulture, out var p)
            || !long.TryParse(start, NumberStyles.None, CultureInfo.InvariantCulture, out var t)) return false;
        return !new ProcessIdentity(p, t).Alive;
    }

    internal string ArmPath(string nodeId) => System.IO.Path.Combine(Path, nodeId + ArmSuffix);

    internal IEnumerable<string> ArmedNodes() =>
        Directory.Exists(Path)
            ? Directory.EnumerateFiles(Path, "*" + ArmSuffix).Select(f => System.IO.Path.GetFileName(f)[..^ArmSuffix.Length])
            : [];

    /// <summary>Written whole through a rename: the agent (<see cref="TakeFenced"/>) never reads half a sentence.</summary>
    internal void ReportFenced(string nodeId, string sentence) =>
        Replace(System.IO.Path.Combine(Path, nodeId + FencedSuffix), sentence + "\n");

    internal static GuardArm? Parse(string? text)
    {
        var parts = text?.Trim().Split(' ');
        if (parts is not { Length: 5 }) return null;
        if (!long.TryParse(parts[0], NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var deadline)) return null;
        if (!int.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out var pid) || pid <= 1) return null;
        if (!long.TryParse(parts[2], NumberStyles.None, CultureInfo.InvariantCulture, out var start)) return null;
        if (!long.TryParse(parts[3], NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var lease)) return null;
        return new GuardArm(deadline, new ProcessIdentity(pid, start), parts[4] == "-" ? null : parts[4], lease);
    }

    internal static string? ReadOrNull(string path)
    {
        // Asked every HA pass of every node (TakeFenced): the usual answer, no file, must not cost an exception.
        if (!File.Exists(path)) return null;
        try { return File.ReadAllText(path); }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException) { return null; }
    }

    private static void CheckNodeId(string nodeId)
    {
        if (nodeId.Length is 0 or > 128 || nodeId.Any(c => !(char.IsAsciiLetterOrDigit(c) || c is '-' or '_')))
            throw new ArgumentException($"'{nodeId}' is not a node id", nameof(nodeId));
    }

    internal static class Native
    {
        public const int ORdOnly = 0;
        public const int ORdWr = 2;
        public const int OCreat = 0x40;
        public const int LockSh = 1;
        public const int LockEx = 2;
        public const int LockNb = 4;
        public const int LockUn = 8;
        public const int SigInt = 2;
        public const int SigKill = 9;

        [DllImport("libc", SetLastError = true)]
        public static extern int open([MarshalAs(UnmanagedType.LPUTF8Str)] string path, int flags, int mode = 0);

        [DllImport("libc", SetLastError = true)]
        public static extern int flock(int fd, int operation);

        [DllImport("libc")]
        public static extern int close(int fd);

        [DllImport("libc", SetLastError = true)]
        public static extern int kill(int pid, int sig);

        public const int PrioProcess = 0;

        [DllImport("libc", SetLastError = true)]
        public static extern int setpriority(int which, int who, int prio);
    }

    /// <summary>
    /// Puts every thread of this process at <paramref name="nice"/> (Linux keeps a nice value per thread; threads made
    /// later inherit their creator's). The guard runs it first: on a host whose cores are saturated, a guard scheduled
    /// late fences late. Needs root (or CAP_SYS_NICE); returns why not otherwise.
    /// </summary>
    public static string? RaisePriority(int nice)
    {
        try
        {
            foreach (var task in Directory.EnumerateDirectories("/proc/self/task"))
            {
                if (!int.TryParse(System.IO.Path.GetFileName(task), out var tid)) continue;
                if (Native.setpriority(Native.PrioProcess, tid, nice) != 0)
                    return $"setpriority({nice}) refused (errno {Marshal.GetLastPInvokeError()}): the guard runs at normal priority";
            }
            return null;
        }
        catch (IOException ex)
        {
            return $"cannot list this process's threads: {ex.Message}";
        }
    }
}

/// <summary>
/// The fencing guard: a small process per cell, independent of the agent, that makes a leading node non-writable once
/// its deadline has passed — a fast shutdown (SIGINT to the postmaster), and SIGKILL of its whole process tree when that
/// has not finished within <see cref="FastStopGrace"/> (a stopped or hung PostgreSQL ignores everything else). The
/// agent moves the deadline on each time it renews the leader lease (to the renewal's send time + ¾ TTL, a quarter of the
/// TTL before the lease can expire), so the guard acts only when renewals stopped: a blocked pass, a dead agent.
/// </summary>
public sealed class FenceGuard(FenceGuardDirectory directory, ILogger logger)
{
    public static readonly TimeSpan Poll = TimeSpan.FromMilliseconds(50);

    /// <summary>
    /// How long after a renewal was sent the guard stops PostgreSQL unless renewed again: ¾ TTL, a quarter of the TTL
    /// before the lease can expire in etcd (which counts from when it received the renewal, later than it was sent).
    /// </summary>
    public static TimeSpan DeadlineAfterRenewal(TimeSpan ttl) => ttl * 3 / 4;
    public static readonly TimeSpan FastStopGrace = TimeSpan.FromMilliseconds(300);

    /// <summary>Holds the folder's lock and checks every armed node every <see cref="Poll"/> until asked to stop.</summary>
    public async Task<int> RunAsync(CancellationToken ct)
    {
        Directory.CreateDirectory(directory.Path);
        var lockPath = Path.Combine(directory.Path, FenceGuardDirectory.LockFile);
        var fd = FenceGuardDirectory.Native.open(lockPath, FenceGuardDirectory.Native.ORdWr | FenceGuardDirectory.Native.OCreat, Convert.ToInt32("600", 8));
        if (fd < 0) { logger.LogError("fencing guard: cannot open {Lock}", lockPath); return 1; }
        // An agent checking whether a guard runs holds a shared lock for a moment: try for a while before concluding
        // that another guard has it.
        var locked = false;
        for (var i = 0; i < 100 && !locked; i++)
        {
            locked = FenceGuardDirectory.Native.flock(fd, FenceGuardDirectory.Native.LockEx | FenceGuardDirectory.Native.LockNb) == 0;
            if (!locked) await Task.Delay(20, ct).ConfigureAwait(false);
        }
        if (!locked)
        {
            logger.LogInformation("fencing guard: another guard holds {Lock}; exiting", lockPath);
            return 0;
        }
        logger.LogInformation("fencing guard for {Dir} running as pid {Pid}", directory.Path, Environment.ProcessId);
        var stop = Path.Combine(directory.Path, FenceGuardDirectory.StopFile);
        while (!ct.IsCancellationRequested)
        {
            if (!Directory.Exists(directory.Path)) { logger.LogInformation("fencing guard: {Dir} is gone; exiting", directory.Path); return 0; }
            if (File.Exists(stop))
            {
                File.Delete(stop);
                logger.LogInformation("fencing guard: asked to stop");
                return 0;
            }
            await CheckOnceAsync(ct).ConfigureAwait(false);
            if (!directory.ArmedNodes().Any() && directory.OwnerGone())
            {
                logger.LogInformation("fencing guard: nothing armed and the cell that owned it is gone; exiting");
                await StopReleasingAsync().ConfigureAwait(false);
                return 0;
            }
            try { await Task.Delay(Poll, ct).ConfigureAwait(false); }
            catch (OperationCanceledException) { break; }
        }
        await StopReleasingAsync().ConfigureAwait(false);
        return 0;
    }

    /// <summary>
    /// One look at every armed node; fences those whose deadline has passed. While the cell that owns the guard is gone,
    /// a node whose postmaster died too has its leader key given up (<see cref="DeadLeader"/>).
    /// </summary>
    public async Task CheckOnceAsync(CancellationToken ct)
    {
        // Read once per look, and the postmasters only when it is gone: a living cell costs the guard nothing more.
        var ownerGone = directory.OwnerGone();
        foreach (var node in directory.ArmedNodes().ToList())
        {
            try
            {
                var path = directory.ArmPath(node);
                var text = FenceGuardDirectory.ReadOrNull(path);
                if (FenceGuardDirectory.Parse(text) is not { } armed) continue;
                var now = Monotonic.NowNs();
                if (!ownerGone) _dead.Remove(node);
                else
                {
                    // The extra duty must never cost the guard its first one: whatever it throws, the deadline below is checked.
                    try { LookAtDeadLeader(node, path, text!, armed, now); }
                    catch (Exception ex) when (ex is not OutOfMemoryException)
                    {
                        logger.LogError("node {Node}: the look at a dead leader failed: {Error}", node, ex.ToString());
                    }
                }
                if (now < armed.DeadlineNs) continue;
                var late = Monotonic.Between(armed.DeadlineNs, now);
                var how = await FenceAsync(armed.Postmaster, ct).ConfigureAwait(false);
                // Disarm only if the agent did not arm again meanwhile (a renewal that came too late still stands).
                if (FenceGuardDirectory.ReadOrNull(path) == text) File.Delete(path);
                if (how is null) continue;
                var sentence = $"the fencing guard {how}: the leader lease was not renewed in time (deadline passed {late.TotalMilliseconds:0} ms before)";
                directory.ReportFenced(node, sentence);
                logger.LogWarning("node {Node}: {Sentence}", node, sentence);
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                logger.LogWarning("fencing guard: node {Node}: {Error}", node, ex.Message);
            }
        }
    }

    private readonly Dictionary<string, (string Arming, long SinceNs, string? Said)> _dead = new(StringComparer.Ordinal);
    private readonly Dictionary<string, (Task Task, long RetryAtNs)> _releasing = new(StringComparer.Ordinal);
    private EtcdStore? _store;
    private EventJournal? _journal;
    private bool _saidNoSettings;
    private static readonly TimeSpan ReleaseRetry = TimeSpan.FromSeconds(1);

    /// <summary>
    /// The owner is gone: if the node's postmaster is gone too, decides (<see cref="DeadLeader.Decide"/>) and starts the
    /// release in the background, so a slow or absent etcd never holds the guard's fencing of the other nodes.
    /// </summary>
    private void LookAtDeadLeader(string node, string path, string arming, GuardArm armed, long now)
    {
        if (_releasing.TryGetValue(node, out var busy))
        {
            if (!busy.Task.IsCompleted || now < busy.RetryAtNs) return;
            _releasing.Remove(node);
        }
        if (armed.Postmaster.Alive)
        {
            _dead.Remove(node);
            return;
        }
        // Counted from the first look that found both gone with this very arming: one written since is a sign of life.
        if (!_dead.TryGetValue(node, out var seen) || seen.Arming != arming) _dead[node] = seen = (arming, now, null);
        var settings = directory.ReadSettings();
        if (settings is null)
        {
            if (!_saidNoSettings) logger.LogWarning("fencing guard: {File} is missing: a dead leader's key is left to expire", FenceGuardDirectory.SettingsFile);
            _saidNoSettings = true;
            return;
        }
        var verdict = DeadLeader.Decide(new DeadLeader.Seen(OwnerGone: true, PostmasterAlive: false, armed is { Lease: not 0, InstanceId: not null },
            directory.MarkedSynchronous(node), Monotonic.Between(seen.SinceNs, now)), settings.ReleaseDeadLeaderAfter);
        if (!verdict.Release)
        {
            if (verdict.Sentence is { } waiting && seen.Said != waiting)
            {
                logger.LogWarning("node {Node}: {Sentence}", node, waiting);
                _dead[node] = seen with { Said = waiting };
            }
            return;
        }
        try
        {
            // Made here, on the guard's own loop (the releases run beside it): one client for every release.
            _store ??= new EtcdStore(settings.EtcdEndpoints, settings.EtcdPrefix, logger, EtcdClientTls.Load(settings.EtcdTls));
            _journal ??= new EventJournal(_store, settings.Events, $"{settings.CellId} guard", logger);
        }
        catch (ArgumentException ex)
        {
            if (!_saidNoSettings) logger.LogWarning("fencing guard: cannot reach etcd ({Error}): a dead leader's key is left to expire", ex.Message);
            _saidNoSettings = true;
            return;
        }
        _releasing[node] = (ReleaseAsync(_store, _journal, node, path, arming, armed, settings, verdict.Sentence!), Monotonic.Add(now, ReleaseRetry));
    }

    /// <summary>
    /// Gives up a dead leader's key, as its agent would have: its report first says it is gone (the others decide from
    /// the reports the moment the key goes), then the lease behind the key is revoked — that deletes the key, and only if
    /// it is still this node's (a key taken since is under another lease). Bounded by half a TTL; on failure the next
    /// look tries again, and the lease expires by itself meanwhile.
    /// </summary>
    private async Task ReleaseAsync(EtcdStore store, EventJournal journal, string node, string path, string arming, GuardArm armed, GuardSettings settings,
        string sentence)
    {
        using var budget = new CancellationTokenSource(settings.Ttl / 2);
        try
        {
            var statusKey = store.Keys.Status(armed.InstanceId!, node);
            var status = await store.GetAsync<NodeStatus>(statusKey, budget.Token).ConfigureAwait(false);
            if (status is not null)
            {
                var gone = status.Value with
                {
                    State = NodeState.Failed, Role = NodeRole.Unknown, Writable = false, Streaming = false, Connections = null,
                    Detail = "the fencing guard " + sentence, Decision = "the fencing guard " + sentence,
                    FailingSince = status.Value.FailingSince ?? DateTimeOffset.UtcNow, UpdatedAt = DateTimeOffset.UtcNow,
                };
                // Only over the report it read: a cell come back meanwhile reports for itself.
                try { await store.CompareAndPutAsync(statusKey, gone, status.ModRevision, budget.Token, status.Lease).ConfigureAwait(false); }
                catch (Grpc.Core.RpcException ex) { logger.LogWarning("node {Node}: the report of a dead leader could not be written: {Error}", node, ex.Status.Detail); }
            }
            await store.RevokeLeaseAsync(armed.Lease, budget.Token).ConfigureAwait(false);
            if (FenceGuardDirectory.ReadOrNull(path) == arming) directory.Disarm(node);
            logger.LogWarning("node {Node}: the fencing guard {Sentence}", node, sentence);
            journal.Record(armed.InstanceId!, node, EventKind.LeaderReleased, "the fencing guard " + sentence);
        }
        catch (Exception ex) when (ex is Grpc.Core.RpcException or OperationCanceledException or IOException or UnauthorizedAccessException)
        {
            logger.LogWarning("node {Node}: could not release the key of a dead leader ({Error}); trying again, and its lease expires by itself", node, ex.Message);
        }
    }

    /// <summary>Lets releases under way finish (each is bounded), writes their events, and closes the etcd client.</summary>
    private async Task StopReleasingAsync()
    {
        try { await Task.WhenAll(_releasing.Values.Select(r => r.Task)).ConfigureAwait(false); }
        catch (Exception ex) { logger.LogWarning("fencing guard: {Error}", ex.Message); }
        if (_journal is not null) await _journal.FlushAndStopAsync(TimeSpan.FromSeconds(2)).ConfigureAwait(false);
        if (_store is not null) await _store.DisposeAsync().ConfigureAwait(false);
    }

    /// <summary>Stops the process tree; returns what was done, or null when the process was already gone.</summary>
    internal static async Task<string?> FenceAsync(ProcessIdentity postmaster, CancellationToken ct)
    {
        if (!postmaster.Alive) return null;
        var tree = ProcStat.Tree(postmaster.Pid);
        _ = FenceGuardDirectory.Native.kill(postmaster.Pid, FenceGuardDirectory.Native.SigInt);
        var until = Monotonic.Add(Monotonic.NowNs(), FastStopGrace);
        while (Monotonic.NowNs() < until)
        {
            if (!postmaster.Alive) return $"stopped PostgreSQL (pid {postmaster.Pid}, fast shutdown)";
            await Task.Delay(10, ct).ConfigureAwait(false);
        }
        // Still there (hung, stopped, or a long shutdown checkpoint): kill it and everything it started, at once.
        foreach (var pid in tree.Concat(ProcStat.Tree(postmaster.Pid)).Distinct())
            _ = FenceGuardDirectory.Native.kill(pid, FenceGuardDirectory.Native.SigKill);
        return $"killed PostgreSQL (pid {postmaster.Pid} and {tree.Count - 1} children; a fast shutdown did not finish within {FastStopGrace.TotalMilliseconds:0} ms)";
    }
}
