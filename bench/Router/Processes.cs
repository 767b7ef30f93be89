using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace Dingo.Bench.Router;

/// <summary>Child processes, signals and loopback ports.</summary>
internal static class Processes
{
    public const int SigInt = 2;
    public const int SigKill = 9;
    public const int SigTerm = 15;

    public const string PgBin = "/usr/lib/postgresql/15/bin";

    [DllImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static extern int SysKill(int pid, int signal);

    public static bool Signal(int pid, int signal) => SysKill(pid, signal) == 0;

    /// <summary>Runs a program to its end; output captured. On cancellation or timeout the process is killed by its PID.</summary>
    public static async Task<(int Code, string Out, string Err)> RunAsync(
        string file, IEnumerable<string> args, TimeSpan timeout, CancellationToken ct)
    {
        using var process = Process.Start(StartInfo(file, args)) ?? throw new InvalidOperationException($"could not start {file}");
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
            KillAndWait(process);
            ct.ThrowIfCancellationRequested();
            throw new TimeoutException($"{Path.GetFileName(file)} did not finish within {timeout.TotalSeconds:0} s");
        }
        return (process.ExitCode, await stdout, await stderr);
    }

    /// <summary>Runs a program and fails with its output unless it exits 0.</summary>
    public static async Task<string> RunCheckedAsync(string file, IEnumerable<string> args, TimeSpan timeout, CancellationToken ct)
    {
        var list = args.ToList();
        var (code, stdout, stderr) = await RunAsync(file, list, timeout, ct);
        if (code != 0)
            throw new InvalidOperationException($"{Path.GetFileName(file)} {string.Join(' ', list)} exited {code}: {Tail(stderr + stdout)}");
        return stdout;
    }

    /// <summary>Starts a long-running program whose stdout and stderr go to our stderr, prefixed.</summary>
    public static Process StartService(string file, IEnumerable<string> args, string prefix)
    {
        var process = new Process { StartInfo = StartInfo(file, args) };
        process.OutputDataReceived += (_, e) => { if (e.Data is not null) Console.Error.WriteLine($"{prefix}: {e.Data}"); };
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) Console.Error.WriteLine($"{prefix}: {e.Data}"); };
        if (!process.Start()) throw new InvalidOperationException($"could not start {file}");
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return process;
    }

    /// <summary>Sends <paramref name="signal"/> to the process's PID, waits, then SIGKILLs it if it is still there.</summary>
    public static async Task StopAsync(Process process, int signal, TimeSpan grace)
    {
        if (process.HasExited) return;
        Signal(process.Id, signal);
        using var wait = new CancellationTokenSource(grace);
        try { await process.WaitForExitAsync(wait.Token); }
        catch (OperationCanceledException) { KillAndWait(process); }
    }

    private static void KillAndWait(Process process)
    {
        try { ProcessTree.Kill(process); } catch (InvalidOperationException) { /* already gone */ }
        process.WaitForExit(5000);
    }

    private static ProcessStartInfo StartInfo(string file, IEnumerable<string> args)
    {
        var info = new ProcessStartInfo(file)
        {
            UseShellExecute = false,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = false,
        };
        foreach (var a in args) info.ArgumentList.Add(a);
        info.Environment["PGCONNECT_TIMEOUT"] = "10";
        info.Environment["LC_ALL"] = "C";
        return info;
    }

    /// <summary>A 127.0.0.1 port nobody listens on now (the kernel's choice).</summary>
    public static int FreePort()
    {
        using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        socket.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        return ((IPEndPoint)socket.LocalEndPoint!).Port;
    }

    /// <summary>`psql -c 'select 1'` through a port: proves a path reaches the PostgreSQL.</summary>
    public static async Task<string?> ProbeAsync(int port, CancellationToken ct)
    {
        var (code, stdout, stderr) = await RunAsync(Path.Combine(PgBin, "psql"),
            ["-h", "127.0.0.1", "-p", port.ToString(System.Globalization.CultureInfo.InvariantCulture), "-U", "postgres",
             "-d", "postgres", "-X", "-A", "-t", "-c", "select 1"],
            TimeSpan.FromSeconds(20), ct);
        return code == 0 && stdout.Trim() == "1" ? null : $"psql exited {code}: {Tail(stderr + stdout)}";
    }

    public static string Tail(string text)
    {
        var t = text.Trim();
        return t.Length <= 600 ? t : "…" + t[^600..];
    }
}
