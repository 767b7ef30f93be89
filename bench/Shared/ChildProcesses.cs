using System.Diagnostics;
using System.Runtime.InteropServices;

namespace Dingo.Bench.Shared;

/// <summary>Programs the bench starts: run to their end, or kept running and stopped by their PID.</summary>
internal static class ChildProcesses
{
    public const int SigKill = 9;
    public const int SigTerm = 15;

    [DllImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static extern int SysKill(int pid, int signal);

    /// <summary>kill(2): a negative <paramref name="pid"/> signals that whole process group.</summary>
    public static bool Signal(int pid, int signal) => SysKill(pid, signal) == 0;

    /// <summary>Runs a program to its end, output captured. On cancellation or timeout it is killed by its PID.</summary>
    public static async Task<(int Code, string Out, string Err)> RunAsync(string file, IEnumerable<string> args,
        IReadOnlyDictionary<string, string>? environment, TimeSpan timeout, CancellationToken ct)
    {
        using var process = Process.Start(StartInfo(file, args, environment)) ?? throw new InvalidOperationException($"could not start {file}");
        var stdout = process.StandardOutput.ReadToEndAsync(CancellationToken.None);
        var stderr = process.StandardError.ReadToEndAsync(CancellationToken.None);
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(ct);
        limit.CancelAfter(timeout);
        try
        {
            await process.WaitForExitAsync(limit.Token);
        }
        catch (OperationCanceledException)
        {
            Kill(process);
            ct.ThrowIfCancellationRequested();
            throw new TimeoutException($"{Path.GetFileName(file)} did not finish within {timeout.TotalSeconds:0} s");
        }
        return (process.ExitCode, await stdout, await stderr);
    }

    /// <summary>Runs a program and fails with its output unless it exits 0.</summary>
    public static async Task<string> RunCheckedAsync(string file, IReadOnlyList<string> args,
        IReadOnlyDictionary<string, string>? environment, TimeSpan timeout, CancellationToken ct)
    {
        var (code, stdout, stderr) = await RunAsync(file, args, environment, timeout, ct);
        if (code != 0)
            throw new InvalidOperationException($"{Path.GetFileName(file)} {string.Join(' ', args)} exited {code}: {Tail(stderr + stdout)}");
        return stderr + stdout;
    }

    /// <summary>Starts a long-running program whose output goes to our stderr, prefixed.</summary>
    public static Process StartService(string file, IEnumerable<string> args, IReadOnlyDictionary<string, string>? environment, string prefix)
    {
        var process = new Process { StartInfo = StartInfo(file, args, environment) };
        process.OutputDataReceived += (_, e) => { if (e.Data is not null) Console.Error.WriteLine($"{prefix}: {e.Data}"); };
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) Console.Error.WriteLine($"{prefix}: {e.Data}"); };
        if (!process.Start()) throw new InvalidOperationException($"could not start {file}");
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return process;
    }

    /// <summary>SIGTERM to the process's PID, a grace period, then SIGKILL.</summary>
    public static async Task StopAsync(Process process, TimeSpan grace)
    {
        if (process.HasExited) return;
        Signal(process.Id, SigTerm);
        using var wait = new CancellationTokenSource(grace);
        try { await process.WaitForExitAsync(wait.Token); }
        catch (OperationCanceledException) { Kill(process); }
    }

    private static void Kill(Process process)
    {
        try { ProcessTree.Kill(process); } catch (InvalidOperationException) { /* already gone */ }
        process.WaitForExit(5000);
    }

    private static ProcessStartInfo StartInfo(string file, IEnumerable<string> args, IReadOnlyDictionary<string, string>? environment)
    {
        var info = new ProcessStartInfo(file)
        {
            UseShellExecute = false,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        foreach (var a in args) info.ArgumentList.Add(a);
        info.Environment["LC_ALL"] = "C";
        if (environment is not null)
            foreach (var (key, value) in environment) info.Environment[key] = value;
        return info;
    }

    public static string Tail(string text)
    {
        var t = text.Trim();
        return t.Length <= 600 ? t : "…" + t[^600..];
    }
}
