using System.Collections.Concurrent;
using System.Diagnostics;

namespace Dingo.Tests.Support;

/// <summary>
/// Servers the tests start (the run's etcd, s3rver, azurite and podman service; a test's own etcd cluster), started so
/// that they end with the test process however it ends. At a normal exit each is killed by PID, all of them before any
/// folder is deleted: the test runner kills its host soon after the run, and a cleanup that deleted one server's data
/// before killing the next left that one running. If the host is killed first, the kernel ends them: each runs under
/// <c>setpriv --pdeathsig KILL</c>, and is started from one thread that lives as long as the process (the signal follows
/// the thread that started a child, not the whole process, and a thread-pool thread may retire mid-run).
/// </summary>
public static class RunProcesses
{
    private const string Setpriv = "/usr/bin/setpriv";
    private static readonly List<(Process Process, string? Folder)> Started = [];
    private static readonly List<string> Folders = [];
    private static readonly BlockingCollection<Action> Spawns = new();
    private static int _exitHooked;

    static RunProcesses()
    {
        // Never ends: it is the parent of every server, and only the process's own end may take it away.
        new Thread(() => { foreach (var spawn in Spawns.GetConsumingEnumerable()) spawn(); }) { IsBackground = true, Name = "parent of the test servers" }.Start();
    }

    /// <param name="folder">the server's data, deleted once it is gone</param>
    /// <param name="onOutput">each line it writes to stdout or stderr (discarded when null)</param>
    /// <param name="user">run as this user (its groups, its home) instead of the caller: PostgreSQL refuses root</param>
    /// <param name="workingDirectory">where it runs (null: the caller's)</param>
    public static Process Start(string file, IEnumerable<string> args, string? folder = null,
        IReadOnlyDictionary<string, string>? environment = null, Action<string>? onOutput = null, string? user = null,
        string? workingDirectory = null)
    {
        if (!File.Exists(Setpriv))
            throw new InvalidOperationException($"{Setpriv} is missing (Debian package util-linux): the test servers run under it so that they die with the test process");
        var psi = new ProcessStartInfo(Setpriv) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        if (workingDirectory is not null) psi.WorkingDirectory = workingDirectory;
        // One setpriv: a credential change after --pdeathsig would clear it (prctl(2)), so the user is switched in the same call.
        string[] asUser = user is null ? [] : [$"--reuid={user}", $"--regid={user}", "--init-groups"];
        foreach (var a in new[] { "--pdeathsig", "KILL" }.Concat(asUser).Concat(["--", file]).Concat(args)) psi.ArgumentList.Add(a);
        if (user is not null)
        {
            psi.Environment["HOME"] = user == "postgres" ? "/var/lib/postgresql" : $"/home/{user}";
            psi.Environment["USER"] = psi.Environment["LOGNAME"] = user;
        }
        foreach (var (name, value) in environment ?? new Dictionary<string, string>()) psi.Environment[name] = value;

        Process? process = null;
        Exception? failure = null;
        using var done = new ManualResetEventSlim();
        Spawns.Add(() =>
        {
            try { process = Process.Start(psi); }
            catch (Exception ex) { failure = ex; }
            finally { done.Set(); }
        });
        done.Wait();
        if (process is null) throw new InvalidOperationException($"could not start {file}: {failure?.Message}", failure);

        process.OutputDataReceived += (_, e) => { if (e.Data is not null) onOutput?.Invoke(e.Data); };
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) onOutput?.Invoke(e.Data); };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        lock (Started) Started.Add((process, folder));
        HookExit();
        return process;
    }

    /// <summary>A folder no server uses (a test's settings), deleted at exit with the servers' folders.</summary>
    public static void DeleteAtExit(string folder)
    {
        lock (Started) Folders.Add(folder);
        HookExit();
    }

    private static void HookExit()
    {
        if (Interlocked.Exchange(ref _exitHooked, 1) == 0) AppDomain.CurrentDomain.ProcessExit += (_, _) => StopAll();
    }

    private static void StopAll()
    {
        List<(Process Process, string? Folder)> started;
        List<string> folders;
        lock (Started) (started, folders) = ([.. Started], [.. Folders]);
        foreach (var (process, _) in started)
        {
            try { process.Kill(); }
            catch (Exception ex) when (ex is InvalidOperationException or System.ComponentModel.Win32Exception) { }
        }
        foreach (var (process, _) in started)
        {
            try { process.WaitForExit(5000); }
            catch (InvalidOperationException) { }
        }
        foreach (var folder in started.Select(s => s.Folder).OfType<string>().Concat(folders))
        {
            try
            {
                if (Directory.Exists(folder)) Directory.Delete(folder, recursive: true);
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException) { }
        }
    }
}
