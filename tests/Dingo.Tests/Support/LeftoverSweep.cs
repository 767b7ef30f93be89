using System.Diagnostics;

namespace Dingo.Tests.Support;

/// <summary>
/// What earlier test runs left because their process was killed before it could clean up (the test runner kills the
/// test host soon after its last test, so ProcessExit handlers do not always finish): etcd data folders in memory
/// (/dev/shm, about 125 MB each), object-store folders, podman services' folders (settings and log), test platforms' data folders, and the shared memory of PostgreSQL servers killed by tests.
/// Left alone they pile up run after run on the same machine (6.8 GB of /dev/shm was found). Swept once per test
/// process, before its first server starts. Only what no running process uses is removed: a folder named in no live
/// process's command line and untouched for 10 minutes, a POSIX segment no process maps, a System V segment nobody
/// attaches whose creator is gone. Another test run going on at the same time keeps everything it uses.
/// </summary>
public static class LeftoverSweep
{
    private static readonly Lazy<string> Outcome = new(Sweep, LazyThreadSafetyMode.ExecutionAndPublication);

    private static readonly string[] ServerFolders =
        ["dingo-test-etcd-", "dingo-etcd-cluster-", "dingo-3h-etcd-", "dingo-part-etcd-", "dingo-test-azurite-", "dingo-test-s3rver-", "dingo-test-podman-"];

    private static readonly TimeSpan Untouched = TimeSpan.FromMinutes(10);

    /// <summary>Runs the sweep once per process; returns what it removed (for a test's output).</summary>
    public static string Once() => Outcome.Value;

    internal static string Sweep()
    {
        try
        {
            var (commandLines, mapped) = LiveProcesses();
            var folders = 0;
            foreach (var root in new[] { "/dev/shm", Path.GetTempPath() }.Distinct())
            {
                if (!Directory.Exists(root)) continue;
                foreach (var dir in Directory.EnumerateDirectories(root))
                {
                    var name = Path.GetFileName(dir);
                    if (!ServerFolders.Any(p => name.StartsWith(p, StringComparison.Ordinal))) continue;
                    if (DateTime.UtcNow - Directory.GetLastWriteTimeUtc(dir) < Untouched) continue;
                    if (commandLines.Any(c => c.Contains(name, StringComparison.Ordinal))) continue;
                    try { Directory.Delete(dir, recursive: true); folders++; }
                    catch (Exception ex) when (ex is IOException or UnauthorizedAccessException) { }
                }
            }
            // Test platforms' data folders (TestPlatform.NewSettings): deleted at exit, unless the exit was cut short.
            var platforms = 0;
            var platformRoot = Path.Combine(Path.GetTempPath(), "dingo-tests");
            if (Directory.Exists(platformRoot))
            {
                foreach (var dir in Directory.EnumerateDirectories(platformRoot))
                {
                    var name = Path.GetFileName(dir);
                    if (name.Length != 12 || !name.All(char.IsAsciiHexDigitLower)) continue;
                    if (DateTime.UtcNow - LastTouched(dir) < Untouched) continue;
                    if (commandLines.Any(c => c.Contains(dir, StringComparison.Ordinal))) continue;
                    try { Directory.Delete(dir, recursive: true); platforms++; }
                    catch (Exception ex) when (ex is IOException or UnauthorizedAccessException) { }
                }
            }
            var (posix, sysv) = PostgresSharedMemory(mapped);
            return $"removed {folders} server folder(s), {platforms} test platform folder(s), {posix} POSIX and {sysv} System V PostgreSQL shared memory segment(s) left by earlier runs";
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return "sweep skipped: " + ex.Message;
        }
    }

    /// <summary>The latest change of a folder or of what it holds directly (a running platform adds files there and below).</summary>
    private static DateTime LastTouched(string dir)
    {
        var latest = Directory.GetLastWriteTimeUtc(dir);
        foreach (var entry in new DirectoryInfo(dir).EnumerateFileSystemInfos())
            if (entry.LastWriteTimeUtc > latest) latest = entry.LastWriteTimeUtc;
        return latest;
    }

    /// <summary>Every live process's command line, and the PostgreSQL segments in /dev/shm some process maps: one walk of /proc.</summary>
    private static (List<string> CommandLines, HashSet<string> MappedSegments) LiveProcesses()
    {
        var lines = new List<string>();
        var mapped = new HashSet<string>(StringComparer.Ordinal);
        foreach (var proc in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(proc), out _)) continue;
            try
            {
                lines.Add(File.ReadAllText(Path.Combine(proc, "cmdline")).Replace('\0', ' '));
                foreach (var line in File.ReadLines(Path.Combine(proc, "maps")))
                {
                    var at = line.IndexOf("/dev/shm/PostgreSQL.", StringComparison.Ordinal);
                    if (at >= 0) mapped.Add(line[at..].Split(' ')[0]);
                }
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException) { }
        }
        return (lines, mapped);
    }

    /// <summary>
    /// PostgreSQL's dynamic shared memory (/dev/shm/PostgreSQL.N) outlives a SIGKILLed server, and so does its main
    /// System V segment; PostgreSQL frees both when it starts again on the same data folder, never when the folder is
    /// deleted, as tests do.
    /// </summary>
    private static (int Posix, int Sysv) PostgresSharedMemory(HashSet<string> mapped)
    {
        var posix = 0;
        if (Directory.Exists("/dev/shm"))
        {
            foreach (var file in Directory.EnumerateFiles("/dev/shm", "PostgreSQL.*"))
            {
                if (mapped.Contains(file)) continue;
                // A segment made a moment ago may not be mapped yet.
                if (DateTime.UtcNow - File.GetLastWriteTimeUtc(file) < TimeSpan.FromMinutes(1)) continue;
                try { File.Delete(file); posix++; }
                catch (Exception ex) when (ex is IOException or UnauthorizedAccessException) { }
            }
        }
        var sysv = 0;
        // /proc/sysvipc/shm: key shmid perms size cpid lpid nattch uid gid cuid cgid atime dtime ctime ...
        if (File.Exists("/proc/sysvipc/shm") && UserId("postgres") is { } postgres)
        {
            foreach (var line in File.ReadLines("/proc/sysvipc/shm").Skip(1))
            {
                var f = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                if (f.Length < 10 || f[7] != postgres || f[6] != "0") continue;
                if (Directory.Exists($"/proc/{f[4]}")) continue; // its creator still runs
                using var ipcrm = Process.Start(new ProcessStartInfo("ipcrm", ["-m", f[1]]) { RedirectStandardError = true, UseShellExecute = false });
                if (ipcrm is null) continue;
                ipcrm.WaitForExit(5000);
                if (ipcrm.HasExited && ipcrm.ExitCode == 0) sysv++;
            }
        }
        return (posix, sysv);
    }

    private static string? UserId(string user)
    {
        foreach (var line in File.ReadLines("/etc/passwd"))
        {
            var f = line.Split(':');
            if (f.Length > 2 && f[0] == user) return f[2];
        }
        return null;
    }
}
