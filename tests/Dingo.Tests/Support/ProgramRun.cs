namespace Dingo.Tests.Support;

/// <summary>Runs a program to its end and returns its exit code with stdout then stderr; killed (tree) past a deadline.</summary>
public static class ProgramRun
{
    /// <param name="unset">variables of the test process the program must not inherit</param>
    public static async Task<(int Code, string Output)> RunAsync(string file, IEnumerable<string> args, IReadOnlyDictionary<string, string>? env = null,
        IEnumerable<string>? unset = null, TimeSpan? deadline = null)
    {
        var psi = new System.Diagnostics.ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        foreach (var (k, v) in env ?? new Dictionary<string, string>()) psi.Environment[k] = v;
        foreach (var name in unset ?? []) psi.Environment.Remove(name);
        using var process = System.Diagnostics.Process.Start(psi)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        var limit = deadline ?? TimeSpan.FromSeconds(60);
        using var timeout = new CancellationTokenSource(limit);
        try { await process.WaitForExitAsync(timeout.Token); }
        catch (OperationCanceledException)
        {
            ProcessTree.Kill(process);
            throw new TimeoutException($"{string.Join(' ', psi.ArgumentList)} did not finish within {limit.TotalSeconds:0} s");
        }
        return (process.ExitCode, await stdout + await stderr);
    }

    /// <summary>The built console (src/Dingo.Cli), as `./dingo` runs it.</summary>
    public static string ConsoleDll
    {
        get
        {
            var dll = Path.Combine(TestPlatform.RepoRoot(), "src", "Dingo.Cli", "bin", "Release", "net10.0", "dingo.dll");
            Assert.True(File.Exists(dll), $"{dll} is missing: build the solution (./dingo test does)");
            return dll;
        }
    }

    /// <summary>Starts a program that runs until told to stop (`dingo logs -f`): its lines as they come, stdout and stderr.</summary>
    public static RunningProgram Start(string file, IEnumerable<string> args, IReadOnlyDictionary<string, string>? env = null)
    {
        var psi = new System.Diagnostics.ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        foreach (var (k, v) in env ?? new Dictionary<string, string>()) psi.Environment[k] = v;
        return new RunningProgram(System.Diagnostics.Process.Start(psi)!);
    }
}

/// <summary>A program started by <see cref="ProgramRun.Start"/>; killed (tree) on dispose if it still runs.</summary>
public sealed class RunningProgram : IAsyncDisposable
{
    private readonly System.Diagnostics.Process _process;
    private readonly System.Collections.Concurrent.ConcurrentQueue<string> _lines = new();

    internal RunningProgram(System.Diagnostics.Process process)
    {
        _process = process;
        _process.OutputDataReceived += (_, e) => { if (e.Data is not null) _lines.Enqueue(e.Data); };
        _process.ErrorDataReceived += (_, e) => { if (e.Data is not null) _lines.Enqueue("stderr: " + e.Data); };
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
    }

    /// <summary>Every line printed so far (stderr's prefixed "stderr: ").</summary>
    public IReadOnlyList<string> Lines => [.. _lines];

    /// <summary>
    /// SIGTERM, then its exit code once it ended (a timeout if not within the limit). Not SIGINT: a program started from a
    /// job run in the background of a shell without job control (as a CI runner may start the suite) inherits SIGINT
    /// ignored, and .NET keeps an inherited ignore — Ctrl-C tests passed at the terminal and timed out in fresh runs.
    /// </summary>
    public async Task<int> TerminateAsync(TimeSpan limit)
    {
        Assert.Equal(0, kill(_process.Id, 15));
        using var timeout = new CancellationTokenSource(limit);
        try { await _process.WaitForExitAsync(timeout.Token); }
        catch (OperationCanceledException)
        {
            throw new TimeoutException($"still running {limit.TotalSeconds:0} s after SIGTERM; it printed: {string.Join(" | ", Lines.TakeLast(20))}");
        }
        return _process.ExitCode;
    }

    public ValueTask DisposeAsync()
    {
        if (!_process.HasExited) ProcessTree.Kill(_process);
        _process.Dispose();
        return ValueTask.CompletedTask;
    }

    [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)]
    private static extern int kill(int pid, int sig);
}
